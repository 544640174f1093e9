"""Reliability of the command line (issue 13): the catalogue of what can go wrong, fault injection, fuzzing.

* ``CATALOGUE``: every bad input or bad run-folder state we know of, as one in-process call of
  ``gendsl`` that must exit with the given code and one line on stderr naming the problem,
  and change no file. It holds the cases that always worked (moved here from
  test_failures.py) and the cases of issue 13 (marked ``# 13``), each of which failed before
  the fix (checked against the code before it).
* Tests of the cases that need more than one call: the run-folder lock (held by this process,
  by a child killed with ``kill -9``), divergence warnings, leftovers, consistent snapshots.
* ``test_fault_injection`` (slow): a fit killed (``kill -9`` or SIGTERM) at random moments, 20
  times, each resumed to bit-for-bit the uninterrupted run, no temporary file left.
* Property-based fuzzing (hypothesis) of the option parser and the program loader: exit code 2
  with exactly one line on stderr, or success; never a traceback, never exit code 1.
"""

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gendsl.cli import main
from gendsl.cli._checkpoint import read_meta
from gendsl.cli._runfolder import RunFolder

from .cli_helpers import EXAMPLES, LIGHT_ENV, NORMAL_MODELS, PROGRAMS, assert_one_line, listing
from .test_signals import arrays, checkpoint_step, rows, wait_for

REPO = EXAMPLES.parent

GOOD_DATA = '''
def data():
    return jnp.array([1.0, 2.0, 3.0])
'''

NO_PLATE_MODEL = '''
import jax.numpy as jnp
import gendsl, gendsl.distributions as dist

@gendsl.model
def model(x):
    mu = gendsl.sample("mu", dist.Normal(0.0, 10.0))
    gendsl.sample("x", dist.Normal(mu, 1.0).expand(x.shape).to_event(1), obs=x)

@gendsl.model
def guide(x):
    gendsl.sample("mu", dist.Normal(gendsl.param("loc", 0.0), 1.0))
'''

# A short run of the normal program: the starting point of the run-folder cases.
SHORT = ["--steps", "20", "--checkpoint-every", "10", "--chunk-size", "5", "--posterior-draws", "50"]


def set_option(name, value):
    """An edit of a run folder: ``config.json``'s option ``name`` set to ``value`` (as a user might)."""

    def edit(out):
        config = json.loads((out / "config.json").read_text())
        config["options"][name] = value
        (out / "config.json").write_text(json.dumps(config))

    return edit


def replace_file(name, content: bytes | None):
    """An edit of a run folder: the file ``name`` replaced by ``content``, or by a directory if None."""

    def edit(out):
        os.remove(out / name)
        if content is None:
            os.mkdir(out / name)
        else:
            (out / name).write_bytes(content)

    return edit


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of ``gendsl`` that must fail with one line and change nothing.

    ``argv`` and ``fragments`` may use ``{prog}`` (the program file), ``{out}`` (the run folder)
    and ``{tmp}`` (the test's folder).
    """

    argv: tuple
    fragments: tuple
    source: str | None = None  # the program's text; None: tests/cli/programs/normal.py
    code: int = 2
    run: bool = False  # {out} starts as a copy of a finished short run
    edit: Callable | None = None  # edits {out} before the call


def fit(*extra, run=False, **kw):
    return dict(argv=("fit", "{prog}", "--out", "{out}", *extra), run=run, **kw)


CATALOGUE = {
    # -- the program file
    "missing-file": Case(argv=("fit", "{tmp}/nope.py", "--out", "{out}"), fragments=("nope.py", "no such file")),
    "syntax-error": Case(**fit(), source="import gendsl\n\ndef f(:\n    pass\n",
                         fragments=("gendsl fit: error:", "{prog}:3", "SyntaxError")),
    "exception-at-import": Case(**fit(), source="import gendsl\n\nx = 1\ny = x / 0\n",
                                fragments=("{prog}:4", "ZeroDivisionError", "importing")),
    "null-bytes": Case(**fit(), source="x = 1\x00\n", fragments=("{prog}",)),
    "a-directory": Case(argv=("fit", "{tmp}", "--out", "{out}"), fragments=("is a directory",)),
    "no-model": Case(**fit(), source="def data():\n    return [1.0]\n", fragments=("no model", "def model")),
    "model-without-guide": Case(**fit(), source=NORMAL_MODELS.split("@gendsl.model\ndef guide")[0] + GOOD_DATA,
                                fragments=("no guide", 'guide = "auto"')),
    "several-candidates": Case(
        **fit(), fragments=("several candidate", "`m1`", "--model"),
        source=NORMAL_MODELS.replace("def model(", "def m1(").replace("def guide(", "def g1(")
        + "\n@gendsl.model\ndef g2(x):\n    gendsl.sample('mu', dist.Normal(0.0, 1.0))\n" + GOOD_DATA),
    "two-models-neither-observing": Case(
        **fit(), fragments=("ambiguous", "`model` and `guide`"),
        source="import jax.numpy as jnp\nimport gendsl, gendsl.distributions as dist\n"
        "@gendsl.model\ndef a(x):\n    gendsl.sample('mu', dist.Normal(0.0, 1.0))\n"
        "@gendsl.model\ndef b(x):\n    gendsl.sample('mu', dist.Normal(0.0, 2.0))\n" + GOOD_DATA),
    "program-objective-not-an-expectation": Case(
        **fit(), source=NORMAL_MODELS + GOOD_DATA + "\ndef objective(model, guide):\n    return 3\n",
        fragments=("returned a int",)),
    "unknown-key-in-defaults": Case(**fit(), source=NORMAL_MODELS + GOOD_DATA + "\ndefaults = {'learning_rate': 0.1}\n",
                                    fragments=("defaults", "'learning_rate'", "lr")),
    "bad-value-in-defaults": Case(**fit(), source=NORMAL_MODELS + GOOD_DATA + "\ndefaults = {'steps': -5}\n",
                                  fragments=("defaults['steps']", "positive")),
    "defaults-not-a-dict": Case(**fit(), source=NORMAL_MODELS + GOOD_DATA + "\ndefaults = [1, 2]\n",
                                fragments=("defaults", "dict")),
    # 13: a NumPy scalar in a message is shown as a number, not as np.float32(nan)
    "numpy-nan-in-defaults": Case(
        **fit(), source=NORMAL_MODELS + GOOD_DATA + "\nimport numpy as np\ndefaults = {'lr': np.float32('nan')}\n",
        fragments=("defaults['lr']", "got nan")),
    # -- the data
    "no-data": Case(**fit(), source=NORMAL_MODELS, fragments=("no data", "def data()")),
    "exception-in-data": Case(**fit(), source=NORMAL_MODELS + "\ndef data():\n    return jnp.load('missing.npy')\n",
                              fragments=("prog.py:", "in data()")),
    "data-with-nan": Case(**fit(), source=NORMAL_MODELS + "\ndef data():\n    return jnp.array([1.0, jnp.nan, 2.0])\n",
                          fragments=("NaN", "index (1,)")),
    "data-of-wrong-shape": Case(**fit(), source=NORMAL_MODELS + "\ndef data():\n    return jnp.ones((5, 3))\n",
                                fragments=("ObservationError", "shape (5, 3)", "prog.py:")),
    "data-given-but-not-taken": Case(**fit("--data", "x.bin"), source=NORMAL_MODELS + GOOD_DATA,
                                     fragments=("takes no argument",)),
    "data-path-missing": Case(**fit(), source=NORMAL_MODELS + "\ndef data(path):\n    return jnp.ones(3)\n",
                              fragments=("--data PATH",)),
    # 13: no data points is an error, with a plate or without one (it fitted the prior)
    "zero-data-points": Case(**fit(), source=NORMAL_MODELS + "\ndef data():\n    return jnp.zeros(0)\n",
                             fragments=("no data points", "shape (0,)")),
    "zero-data-points-no-plate": Case(**fit(), source=NO_PLATE_MODEL + "\ndef data():\n    return jnp.zeros(0)\n",
                                      fragments=("no data points",)),
    "zero-test-points": Case(**fit(), source=NORMAL_MODELS + "\ndef data():\n    return jnp.ones(3), jnp.ones(0)\n",
                             fragments=("test data has no data points",)),
    # 13: the error for a missing data folder names the folder given
    "missing-mnist-folder": Case(argv=("fit", str(EXAMPLES / "vae_mnist.py"), "--data", "{tmp}/no/mnist", "--out",
                                       "{out}"), fragments=("{tmp}/no/mnist: no such folder", "MNIST's IDX files")),
    # -- options on the command line
    "unknown-objective": Case(**fit("--objective", "elbow"), fragments=("unknown objective 'elbow'",)),
    "negative-lr": Case(**fit("--lr", "-1"), fragments=("--lr",)),
    "nan-lr": Case(**fit("--lr", "nan"), fragments=("--lr",)),
    "zero-steps": Case(**fit("--steps", "0"), fragments=("--steps",)),
    "steps-not-a-number": Case(**fit("--steps", "ten"), fragments=("--steps",)),
    "batch-larger-than-data": Case(**fit("--batch-size", "1000"), fragments=("larger than the training data",)),
    "unknown-optimizer": Case(**fit("--optimizer", "adamx"), fragments=("--optimizer",)),
    "vimco-one-particle": Case(**fit("--objective", "vimco", "--particles", "1"),
                               fragments=("vimco needs --particles 2",)),
    "unknown-strategy": Case(**fit("--strategy", "mu=bogus"), fragments=("unknown strategy 'bogus'",)),
    "strategy-unfit-for-site": Case(**fit("--strategy", "mu=enum"), fragments=("mu': ENUM needs a finite support",)),
    "no-such-device": Case(**fit("--device", "tpu"), fragments=("--device",)),
    # 13: the hint names the command's own help
    "unknown-flag": Case(**fit("--unknown-flag"), fragments=("unrecognized arguments", "`gendsl fit --help`")),
    "zero-chunk-size": Case(**fit("--chunk-size", "0"), fragments=("--chunk-size",)),
    "zero-checkpoint-every": Case(**fit("--checkpoint-every", "0"), fragments=("--checkpoint-every",)),
    # -- run folders
    "out-is-a-file": Case(**fit(), edit=lambda out: out.write_text("x"), fragments=("not a directory",)),
    "out-holds-a-run": Case(**fit(run=True), fragments=("already holds a run", "--overwrite")),
    "resume-without-a-run": Case(**fit("--resume"), fragments=("no run",)),
    "resume-changes-lr": Case(**fit("--resume", "--lr", "0.1", run=True), fragments=("--lr 0.1 differs",)),
    "resume-damaged-checkpoint": Case(**fit("--resume", run=True), edit=replace_file("checkpoint.npz", b"PK\x03\x04"),
                                      fragments=("checkpoint.npz: damaged",)),
    # 13: --steps is the total; fewer than done is refused, and nothing changes
    "resume-steps-below-done": Case(**fit("--resume", "--steps", "10", run=True),
                                    fragments=("already done 20 steps", "--steps 20 or more")),
    # 13: options read back from config.json are checked like any other
    "config-negative-lr": Case(**fit("--resume", "--steps", "30", run=True), edit=set_option("lr", -1),
                               fragments=("config.json: options['lr']", "positive")),
    "config-zero-checkpoint-every": Case(**fit("--resume", "--steps", "30", run=True),
                                         edit=set_option("checkpoint_every", 0),
                                         fragments=("config.json: options['checkpoint_every']",)),
    "config-zero-chunk-size": Case(**fit("--resume", "--steps", "30", run=True), edit=set_option("chunk_size", 0),
                                   fragments=("config.json: options['chunk_size']",)),
    "config-unknown-option": Case(**fit("--resume", "--steps", "30", run=True), edit=set_option("speed", 3),
                                  fragments=("config.json: options['speed']", "unknown option")),
    "eval-config-bad-value": Case(argv=("eval", "{prog}", "--run", "{out}"), run=True,
                                  edit=set_option("chunk_size", 0), fragments=("config.json: options['chunk_size']",)),
    "sample-config-bad-value": Case(argv=("sample", "{prog}", "--run", "{out}"), run=True,
                                    edit=set_option("lr", "fast"), fragments=("config.json: options['lr']",)),
    # 13: config.json named once
    "config-is-a-directory": Case(**fit("--resume", run=True), edit=replace_file("config.json", None),
                                  fragments=("config.json: cannot be read",)),
    "config-not-json": Case(argv=("eval", "{prog}", "--run", "{out}"), run=True,
                            edit=replace_file("config.json", b"{oops"), fragments=("config.json: damaged",)),
    # 13: "the parameters is damaged"
    "sample-damaged-params": Case(argv=("sample", "{prog}", "--run", "{out}"), run=True,
                                  edit=replace_file("params.npz", b"garbage"),
                                  fragments=("params.npz: damaged, or not a gendsl parameters file",)),
    "sample-without-a-run": Case(argv=("sample", "{prog}", "--run", "{tmp}"), fragments=("no config.json",)),
    "eval-without-a-folder": Case(argv=("eval", "{prog}", "--run", "{tmp}/x"), fragments=("no such directory",)),
    "sample-bad-n": Case(argv=("sample", "{prog}", "--run", "{out}", "-n", "0"), fragments=("-n",)),
    "eval-one-repeat": Case(argv=("eval", "{prog}", "--run", "{out}", "--repeats", "1"), fragments=("--repeats",)),
    "sample-unknown-flag": Case(argv=("sample", "{prog}", "--run", "{out}", "--bogus"),
                                fragments=("`gendsl sample --help`",)),
    # 14: EMA, warm-up, validation-based early stopping
    "ema-one": Case(**fit("--ema", "1"), fragments=("--ema", "between 0 and 1")),
    "ema-not-a-number": Case(**fit("--ema", "slow"), fragments=("--ema", "expected a number")),
    "warmup-negative": Case(**fit("--warmup", "-5"), fragments=("--warmup", "non-negative")),
    "warmup-as-long-as-the-run": Case(**fit("--warmup", "20", "--steps", "20"),
                                      fragments=("--warmup 20", "shorter than the run")),
    "validate-every-zero": Case(**fit("--validate-every", "0"), fragments=("--validate-every", "positive")),
    "validate-every-without-test-data": Case(**fit("--validate-every", "10"), source=NORMAL_MODELS + GOOD_DATA,
                                             fragments=("--validate-every 10", "(train, test)")),
    "patience-without-validate-every": Case(**fit("--patience", "3"), fragments=("--patience 3", "--validate-every")),
    "patience-zero": Case(**fit("--patience", "0"), fragments=("--patience", "positive")),
    "resume-changes-ema": Case(**fit("--resume", "--ema", "0.9", run=True), fragments=("--ema 0.9", "differs")),
    "ema-with-nuts": Case(**fit("--method", "nuts", "--ema", "0.9"), fragments=("--ema", "--method vi")),
}


def snapshot(folder):
    """Every file under ``folder`` with its bytes (a directory as None)."""
    if not os.path.isdir(folder):
        return {"": folder.read_bytes()} if os.path.exists(folder) else {}
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = None
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished short run of the normal program (20 steps)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["fit", str(PROGRAMS / "normal.py"), "--out", str(out), "--quiet", *SHORT]) == 0
    return out


@pytest.mark.parametrize("case", list(CATALOGUE.values()), ids=list(CATALOGUE))
def test_catalogue(case, gendsl_cli, tmp_path, request):
    out = tmp_path / "out"
    prog = PROGRAMS / "normal.py"
    if case.source is not None:
        prog = tmp_path / "prog.py"
        prog.write_text(textwrap.dedent(case.source))
    if case.run:
        shutil.copytree(request.getfixturevalue("finished"), out)
    if case.edit is not None:
        case.edit(out)
    names = {"prog": prog, "out": out, "tmp": tmp_path}
    before = snapshot(out)
    result = gendsl_cli(*(a.format(**names) for a in case.argv))
    assert_one_line(result, *(f.format(**names) for f in case.fragments), code=case.code)
    assert snapshot(out) == before  # nothing written, nothing changed


# ----------------------------------------------------------------------------- the run-folder lock


def test_a_locked_folder_is_refused_naming_the_holder_and_nothing_changes(finished, gendsl_cli, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    with RunFolder(str(out)).lock():  # as a running fit holds it
        before = snapshot(out)
        for extra in (["--overwrite"], ["--resume", "--steps", "40"]):
            result = gendsl_cli("fit", PROGRAMS / "normal.py", "--out", out, *extra, *SHORT[2:])
            assert_one_line(result, f"in use by another `gendsl fit` (pid {os.getpid()})")
            assert snapshot(out) == before
        # eval reads a consistent snapshot meanwhile, with a note that the fit runs
        result = gendsl_cli("eval", PROGRAMS / "normal.py", "--run", out, "--particles", 5, "--repeats", 2)
        assert result.code == 0, result.err
        assert "still running" in result.err and "at step 20" in result.err
    assert (out / ".lock").read_text().strip() == str(os.getpid())
    result = gendsl_cli("fit", PROGRAMS / "normal.py", "--out", out, "--resume", "--steps", 30, "--quiet")
    assert result.code == 0, result.err  # the lock went with its holder


def test_kill_9_never_leaves_a_stale_lock(finished, gendsl_cli, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    holder = ("import sys, time\nfrom gendsl.cli._runfolder import RunFolder\n"
              "lock = RunFolder(sys.argv[1]).lock()\nprint('locked', flush=True)\ntime.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True,
                             env=LIGHT_ENV)
    try:
        assert child.stdout.readline().strip() == "locked"
        result = gendsl_cli("fit", PROGRAMS / "normal.py", "--out", out, "--resume", "--steps", 30)
        assert_one_line(result, f"(pid {child.pid})")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    result = gendsl_cli("fit", PROGRAMS / "normal.py", "--out", out, "--resume", "--steps", 30, "--quiet")
    assert result.code == 0, result.err


# ----------------------------------------------------------------------------- snapshots, leftovers, logging


def test_eval_refuses_parameters_of_another_run(finished, gendsl_cli, tmp_path):
    """config.json and params.npz of two different runs (an --overwrite between two reads) are never mixed."""
    other = tmp_path / "other"
    assert gendsl_cli("fit", PROGRAMS / "normal.py", "--out", other, "--quiet", *SHORT).code == 0
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.copy(other / "params.npz", out / "params.npz")
    for command in ("eval", "sample"):
        assert_one_line(gendsl_cli(command, PROGRAMS / "normal.py", "--run", out), "belong to different runs")


def test_leftover_temporary_files_are_removed_at_the_next_start(finished, gendsl_cli, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".checkpoint.npz.tmp-{dead.pid}").write_bytes(b"half a checkpoint")
    (out / f".params.npz.tmp-{dead.pid}").write_bytes(b"half")
    live = out / f".eval.json.tmp-{os.getppid()}"  # a live process's write in progress: never touched
    live.write_text("{")
    result = gendsl_cli("fit", PROGRAMS / "normal.py", "--out", out, "--resume", "--steps", 30, "--quiet")
    assert result.code == 0, result.err
    assert [f for f in listing(out) if ".tmp-" in f] == [live.name]


def test_xla_logging_is_quieted_unless_debug(gendsl_cli, monkeypatch):
    for argv, level in ((["fit", "nope.py"], "2"), (["fit", "nope.py", "--debug"], "1")):
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # what JAX sets when imported
        assert gendsl_cli(*argv).code == 2
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == level


def test_docs_point_at_no_folder_a_clone_lacks():
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert "shared/data" not in path.read_text(), path


# ----------------------------------------------------------------------------- divergence


# The normal model with a guide of fixed scale: plain SGD on its loc oscillates and grows (by 1.1 per step at
# lr 0.0525, slowly enough for the library's guard), or jumps to 1e16 at once (lr 1e6, which the guard stops).
LOC_ONLY = NORMAL_MODELS + '''
import numpy as np

def data():
    x = np.random.default_rng(0).normal(2.0, 1.0, size=50).astype(np.float32)
    return jnp.asarray(x[:40]), jnp.asarray(x[40:])
'''
DIVERGING = ["--optimizer", "sgd", "--lr", "0.0525", "--steps", "100", "--checkpoint-every", "50", "--chunk-size",
             "25", "--posterior-draws", "50", "--quiet"]


def test_divergence_guard_is_reported_as_divergence(gendsl_cli, program, tmp_path):
    out = tmp_path / "run"
    result = gendsl_cli("fit", program(LOC_ONLY), "--out", out, "--lr", "1e6", "--optimizer", "sgd",
                        "--steps", 20, "--chunk-size", 5, "--quiet")
    line = assert_one_line(result, "diverged at step 2", "past the divergence guard", "last checkpoint, at step 0",
                           code=1)
    assert "not finite" not in line and "np.float" not in line
    assert json.loads((out / "config.json").read_text())["status"] == "stopped: diverged at step 2"


def test_an_objective_worsening_by_orders_of_magnitude_is_a_warning(gendsl_cli, program, tmp_path):
    out = tmp_path / "run"
    result = gendsl_cli("fit", program(LOC_ONLY), "--out", out, *DIVERGING)
    assert result.code == 0, result.err
    warning = [line for line in result.out.splitlines() if line.startswith("warning: training diverges")]
    assert len(warning) == 1 and "held-out ELBO fell from" in warning[0] and "at step 50" in warning[0]
    assert warning[0] in (out / "summary.txt").read_text()
    assert json.loads((out / "config.json").read_text())["warning"] == warning[0]


def test_stop_on_divergence_keeps_the_last_good_checkpoint(gendsl_cli, program, tmp_path):
    out = tmp_path / "run"
    result = gendsl_cli("fit", program(LOC_ONLY), "--out", out, "--stop-on-divergence", *DIVERGING)
    line = assert_one_line(result, "training diverges", "--stop-on-divergence", code=1)
    kept = int(line.split("last checkpoint, at step ")[1].split(",")[0])
    assert read_meta(str(out / "checkpoint.npz"), "checkpoint")["step"] == kept == 0
    assert json.loads((out / "config.json").read_text())["status"] == "stopped: diverged at step 50"


@pytest.mark.slow
def test_the_vae_at_lr_1e6_is_flagged(gendsl_cli, tmp_path):
    """The issue's case: `--lr 1e6` on the digits VAE reached a held-out ELBO of -4e9 with exit code 0."""
    out = tmp_path / "run"
    result = gendsl_cli("fit", EXAMPLES / "vae_digits.py", "--out", out, "--lr", "1e6", "--steps", 1000,
                        "--checkpoint-every", 250, "--quiet")
    if result.code == 0:
        assert "warning: training diverges" in result.out
        assert "warning: training diverges" in (out / "summary.txt").read_text()
    else:
        assert_one_line(result, "diverge", code=1)


# ----------------------------------------------------------------------------- fault injection


def _child(out, steps):
    argv = [sys.executable, "-m", "gendsl.cli", "fit", str(PROGRAMS / "points.py"), "--out", str(out), "--steps",
            str(steps), "--checkpoint-every", "20", "--chunk-size", "4", "--quiet"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=LIGHT_ENV)


@pytest.mark.slow
def test_fault_injection(gendsl_cli, tmp_path):
    """20 fits killed at random moments (kill -9 or SIGTERM) and resumed: each ends bit for bit where one
    uninterrupted run ends, and no temporary file remains."""
    total, rng = 400, random.Random(13)
    reference = tmp_path / "reference"
    options = ["--checkpoint-every", "20", "--chunk-size", "4", "--quiet"]
    assert gendsl_cli("fit", PROGRAMS / "points.py", "--out", reference, "--steps", total, *options).code == 0
    figures = []
    for trial in range(20):
        out = tmp_path / f"trial{trial}"
        child = _child(out, 1_000_000)  # never finishes by itself
        try:
            threshold = rng.randint(1, 300)
            wait_for(lambda: checkpoint_step(out) >= 0 and rows(out) >= threshold, child)  # noqa: B023
            signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
            child.send_signal(signum)
            child.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        stopped = checkpoint_step(out)
        result = gendsl_cli("fit", PROGRAMS / "points.py", "--out", out, "--resume", "--steps", total, *options)
        assert result.code == 0, result.err
        assert arrays(out / "params.npz") == arrays(reference / "params.npz"), trial
        assert arrays(out / "checkpoint.npz") == arrays(reference / "checkpoint.npz"), trial
        leftovers = [f for f in listing(out) if ".tmp-" in f]
        assert leftovers == [], leftovers
        figures.append((signal.Signals(signum).name, stopped))
    print("fault injection:", figures)


# ----------------------------------------------------------------------------- fuzzing


def _fuzz_call(capsys, monkeypatch, argv):
    """``main(argv)`` with training replaced by a no-op: the parser, the loader and every check run."""
    from gendsl.cli import _fit

    monkeypatch.setattr(_fit, "_train", lambda *a, **k: 0)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(lines) == 1, lines
    return code


OPTION_FLAGS = ["--objective", "--particles", "--alpha", "--strategy", "--steps", "--batch-size", "--lr", "--optimizer",
                "--schedule", "--clip", "--seed", "--chunk-size", "--checkpoint-every", "--per-point",
                "--posterior-draws", "--posterior-points", "--device", "--model", "--guide", "--data", "--ema",
                "--warmup", "--validate-every", "--patience"]
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "3", "1e-3", "nan", "inf", "-inf", "", "none", "elbo", "iwelbo", "vimco", "adam",
                     "cosine", "auto", "on", "cpu", "gpu", "enum", "mu=enum", "mu=reparam", "reinforce:loo", "1e400",
                     "1_000", "=", "--", "guide", "model", "x" * 300]),
    st.integers(-10, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _options(draw_pairs):
    return [item for flag, value in draw_pairs for item in (flag, value)]


@settings(max_examples=12, **FUZZ)
@given(pairs=st.lists(st.tuples(st.sampled_from(OPTION_FLAGS), VALUES), max_size=3))
def test_fuzz_options(pairs, capsys, monkeypatch, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "out"
    _fuzz_call(capsys, monkeypatch, ["fit", PROGRAMS / "normal.py", "--out", out, *_options(pairs)])


@pytest.mark.slow
@settings(max_examples=300, **FUZZ)
@given(pairs=st.lists(st.tuples(st.sampled_from(OPTION_FLAGS), VALUES), max_size=4))
def test_fuzz_options_more(pairs, capsys, monkeypatch, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "out"
    _fuzz_call(capsys, monkeypatch, ["fit", PROGRAMS / "normal.py", "--out", out, *_options(pairs)])


# Pieces of program files, well-formed and not: a fuzzed program is a few of them, joined or cut.
PIECES = [
    NORMAL_MODELS, GOOD_DATA, NO_PLATE_MODEL,
    "\ndef data():\n    return None\n", "\ndef data():\n    return 'text'\n", "\ndef data():\n    return []\n",
    "\ndef data():\n    return {'a': jnp.ones(3), 'b': 'x'}\n", "\ndef data():\n    return jnp.ones((2, 0))\n",
    "\ndef data():\n    return (jnp.ones(3), jnp.ones((2, 2)))\n", "\ndef data():\n    return [[1, 2], [3]]\n",
    "\ndef data(a, b):\n    return jnp.ones(3)\n", "\ndata = 3\n", "\ndef data():\n    raise RuntimeError('x')\n",
    "\ndef data():\n    return jnp.array([1e40])\n", "\ndef data():\n    return jnp.ones(3, dtype=bool)\n",
    "\ndefaults = {'steps': 'many'}\n", "\ndefaults = None\n", "\ndefaults = {1: 2}\n",
    "\ndefaults = {'lr': float('inf')}\n", "\ndefaults = {'strategy': 3}\n", "\nguide = 'auto'\n", "\nguide = 7\n",
    "\nmodel = 'model'\n", "\nobjective = 'nope'\n", "\nobjective = 5\n", "\nstrategies = {'mu': 'bogus'}\n",
    "\nstrategies = 3\n", "\nimage_shape = 'x'\n", "\nimport sys\nsys.exit(3)\n", "\nraise SystemExit\n",
    "\nimport os\n", "\ndef model(x):\n    return 1 / 0\n", "\nimport numpy\n", "\nx = (\n", "\n\tdef\n",
    "\nimport no_such_module_xyz\n",
]


@st.composite
def program_text(draw):
    parts = draw(st.lists(st.sampled_from(PIECES), min_size=0, max_size=4))
    text = "".join(parts)
    if text and draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=8)) + text[cut:]
    return text


@settings(max_examples=12, **FUZZ)
@given(source=st.one_of(program_text(), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_fuzz_programs(source, capsys, monkeypatch, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzprog")
    path = folder / "prog.py"
    path.write_bytes(source.encode("utf-8", "surrogatepass"))
    _fuzz_call(capsys, monkeypatch, ["fit", path, "--out", folder / "out", "--steps", "3"])


@pytest.mark.slow
@settings(max_examples=300, **FUZZ)
@given(source=st.one_of(program_text(), st.binary(max_size=80).map(lambda b: b.decode("latin-1"))))
def test_fuzz_programs_more(source, capsys, monkeypatch, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzprog")
    path = folder / "prog.py"
    path.write_bytes(source.encode("utf-8", "surrogatepass"))
    _fuzz_call(capsys, monkeypatch, ["fit", path, "--out", folder / "out", "--steps", "3"])
