"""`gendsl fit`: outputs, checkpoints, bit-for-bit resume, and stopping on non-finite values."""

import csv
import json
import math
import shutil
import zipfile

import arviz as az
import numpy as np
import pytest

import gendsl
from gendsl.cli._checkpoint import read_meta, save_tree

from .cli_helpers import PROGRAMS, assert_one_line, listing


def arrays(path):
    """The arrays of an .npz file (no pickle), without its header."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "__meta__"}


def assert_same_bytes(a, b):
    """Two .npz files hold the same arrays, bit for bit."""
    x, y = arrays(a), arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes(), k


@pytest.fixture(scope="module")
def normal_run(tmp_path_factory):
    """One finished run of the conjugate normal program (300 steps, its defaults)."""
    from gendsl.cli import main

    out = tmp_path_factory.mktemp("normal") / "run"
    assert main(["fit", str(PROGRAMS / "normal.py"), "--out", str(out), "--quiet"]) == 0
    return out


def test_fit_writes_every_output(normal_run):
    assert set(listing(normal_run)) >= {
        "params.npz", "checkpoint.npz", "metrics.csv", "loss.png", "posterior.nc", "summary.txt", "config.json"
    }
    assert (normal_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parameters_are_the_exact_posterior(normal_run):
    x = np.random.default_rng(0).normal(2.0, 1.0, size=50).astype(np.float32)[:40]
    precision = 1 / 100 + len(x)
    params = arrays(normal_run / "params.npz")
    assert abs(float(params["loc"]) - x.sum() / precision) < 0.05
    assert abs(float(params["scale"]) - precision**-0.5) < 0.05
    # Safe format: plain arrays plus a JSON header naming the writer.
    meta = read_meta(str(normal_run / "params.npz"), "parameters")
    assert meta["gendsl_version"] == gendsl.__version__ and meta["step"] == 300


def test_config_records_the_exact_configuration(normal_run):
    config = json.loads((normal_run / "config.json").read_text())
    assert config["gendsl_version"] == gendsl.__version__
    assert config["status"] == "completed"
    assert config["options"]["lr"] == 0.05 and config["options"]["steps"] == 300  # from the program's defaults
    assert config["options"]["objective"] == "elbo" and config["resolved"]["guide"] == "guide"
    assert config["versions"]["jax"]


def test_metrics_has_one_row_per_step_and_held_out_elbo(normal_run):
    with open(normal_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert steps == list(range(0, 301))
    held = [float(r["held_out_elbo"]) for r in rows if r["held_out_elbo"]]
    assert len(held) == 4  # steps 0, 100, 200, 300
    assert held[-1] > held[0]
    assert all(math.isfinite(float(r["objective"])) for r in rows[1:])


def test_posterior_nc_has_draws_observed_data_and_log_likelihood(normal_run):
    idata = az.from_netcdf(normal_run / "posterior.nc")
    assert idata.posterior["mu"].shape == (1, 500)
    assert idata.observed_data["x"].shape == (40,)
    assert idata.log_likelihood["x"].shape == (1, 500, 40)
    summary = (normal_run / "summary.txt").read_text()
    assert "mu" in summary and "mean" in summary


def test_sample_and_eval(normal_run, gendsl_cli):
    program = PROGRAMS / "normal.py"
    result = gendsl_cli("sample", program, "--run", normal_run, "-n", 7, "--from", "posterior")
    assert result.code == 0, result.err
    draws = arrays(normal_run / "samples.npz")
    assert draws["mu"].shape == (7,) and draws["x"].shape == (7, 40)
    result = gendsl_cli("eval", program, "--run", normal_run, "--particles", 20)
    assert result.code == 0, result.err
    report = json.loads((normal_run / "eval.json").read_text())
    # Whole-data-set numbers (no minibatches): IWAE-20 >= ELBO up to noise; both near log p(test data).
    assert report["split"] == "test" and report["iwae_20"] >= report["elbo"] - 3 * report["elbo_se"]
    assert -30 < report["elbo"] < -5
    assert_one_line(gendsl_cli("eval", program, "--run", normal_run, "--probes", 4), "--probes", "model and a guide")
    assert_one_line(gendsl_cli("sample", program, "--run", normal_run, "--class", 1), "--class", "Trainable run")


def test_existing_run_is_not_overwritten(normal_run, gendsl_cli, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(normal_run, out)
    before = (out / "params.npz").read_bytes()
    result = gendsl_cli("fit", PROGRAMS / "normal.py", "--out", out, "--steps", 5)
    assert result.code == 2 and "already holds a run" in result.err and "--overwrite" in result.err
    assert (out / "params.npz").read_bytes() == before
    assert gendsl_cli("fit", PROGRAMS / "normal.py", "--out", out, "--steps", 5, "--overwrite", "--quiet").code == 0
    assert read_meta(str(out / "params.npz"), "parameters")["step"] == 5


def run_points(gendsl_cli, out, *extra):
    return gendsl_cli("fit", PROGRAMS / "points.py", "--out", out, "--quiet", *extra)


@pytest.fixture(scope="module")
def points_run(tmp_path_factory):
    """One finished run of the points program (40 steps in one go, its defaults); tests that change it copy it."""
    from gendsl.cli import main

    out = tmp_path_factory.mktemp("points") / "run"
    assert main(["fit", str(PROGRAMS / "points.py"), "--out", str(out), "--quiet"]) == 0
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_resume_is_bit_for_bit(points_run, gendsl_cli, tmp_path):
    """40 steps in one go equal 18 steps, then --resume to 40 (minibatches, Adam moments, EMA baseline)."""
    assert run_points(gendsl_cli, tmp_path / "split", "--steps", 18).code == 0  # not a chunk boundary
    result = run_points(gendsl_cli, tmp_path / "split", "--resume", "--steps", 40)
    assert result.code == 0, result.err
    assert read_meta(str(points_run / "checkpoint.npz"), "checkpoint")["step"] == 40
    assert_same_bytes(points_run / "params.npz", tmp_path / "split" / "params.npz")
    assert_same_bytes(points_run / "checkpoint.npz", tmp_path / "split" / "checkpoint.npz")
    with open(tmp_path / "split" / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(0, 41))


def test_resume_keeps_the_configuration(points_run, gendsl_cli, tmp_path):
    out = copy_of(points_run, tmp_path)
    result = run_points(gendsl_cli, out, "--resume", "--steps", 60, "--lr", 0.1)
    assert result.code == 2 and "--lr 0.1 differs from the run's 0.01" in result.err
    assert read_meta(str(out / "checkpoint.npz"), "checkpoint")["step"] == 40


def test_corrupted_checkpoint_is_a_clear_error(points_run, gendsl_cli, tmp_path):
    out = copy_of(points_run, tmp_path)
    data = (out / "checkpoint.npz").read_bytes()
    (out / "checkpoint.npz").write_bytes(data[: len(data) // 2])
    result = run_points(gendsl_cli, out, "--resume", "--steps", 60)
    assert result.code == 2 and "damaged" in result.err and "Traceback" not in result.err
    # A checkpoint of another program's structure (a wrong leaf) is refused too.
    save_tree(str(out / "checkpoint.npz"), {"params": {"w": np.zeros(3)}}, {"kind": "checkpoint", "step": 10})
    result = run_points(gendsl_cli, out, "--resume", "--steps", 60)
    assert result.code == 2 and "does not match this program" in result.err


def test_results_of_another_version_are_refused(points_run, gendsl_cli, tmp_path):
    out = copy_of(points_run, tmp_path)
    # params.npz written by "gendsl 0.0.1": sample refuses it with one line.
    with np.load(out / "params.npz", allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files}
    meta = json.loads(str(content["__meta__"]))
    content["__meta__"] = np.array(json.dumps(dict(meta, gendsl_version="0.0.1")))
    np.savez(out / "params.npz", **content)
    result = gendsl_cli("sample", PROGRAMS / "points.py", "--run", out, "-n", 4)
    assert result.code == 2 and "written by gendsl 0.0.1" in result.err
    # config.json of another version: --resume refuses.
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, gendsl_version="0.0.1")))
    result = run_points(gendsl_cli, out, "--resume", "--steps", 60)
    assert result.code == 2 and "gendsl 0.0.1" in result.err


NAN_PROGRAM = '''
import jax.numpy as jnp
import gendsl, gendsl.distributions as dist

@gendsl.model
def model(x):
    mu = gendsl.sample("mu", dist.Normal(0.0, 10.0))
    gendsl.factor("wall", jnp.where(mu > 3.0, jnp.nan, 0.0))  # the model is undefined past mu = 3
    with gendsl.plate("data", x.shape[0]):
        gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)

@gendsl.model
def guide(x):
    gendsl.sample("mu", dist.Normal(gendsl.param("loc", 0.0), 0.01))

def data():
    return jnp.full(20, 5.0)

defaults = {"steps": 200, "lr": 0.0005, "optimizer": "sgd", "checkpoint_every": 10, "chunk_size": 4}
'''


def test_non_finite_objective_stops_and_keeps_the_last_finite_checkpoint(gendsl_cli, program, tmp_path):
    out = tmp_path / "run"
    result = gendsl_cli("fit", program(NAN_PROGRAM), "--out", out, "--quiet")
    assert result.code == 1
    line = result.error_lines[-1]
    assert "not finite at step" in line and "last checkpoint, at step" in line
    bad = int(line.split("not finite at step ")[1].split()[0])
    kept = read_meta(str(out / "checkpoint.npz"), "checkpoint")["step"]
    assert kept == (bad - 1) // 10 * 10 and kept > 0
    params = arrays(out / "params.npz")
    assert np.isfinite(params["loc"]) and float(params["loc"]) < 3.0
    assert json.loads((out / "config.json").read_text())["status"].startswith("stopped: non-finite")
    with open(out / "metrics.csv") as f:
        assert int(list(csv.DictReader(f))[-1]["step"]) == bad - 1


def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact (write to a temp file, fsync, rename)."""
    from gendsl.cli import _checkpoint

    path = str(tmp_path / "checkpoint.npz")
    save_tree(path, {"w": np.arange(3.0)}, {"kind": "checkpoint", "step": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed in the middle of writing

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        _checkpoint.save_tree(path, {"w": np.arange(3.0) + 1}, {"kind": "checkpoint", "step": 2})
    monkeypatch.undo()
    assert read_meta(path, "checkpoint")["step"] == 1
    assert zipfile.is_zipfile(path)
    assert listing(tmp_path) == ["checkpoint.npz"]  # no temporary file left behind


def test_progress_is_whole_lines_when_stderr_is_not_a_terminal(gendsl_cli, tmp_path):
    """In a log file a redrawn bar would be one long line of carriage returns: print lines instead."""
    result = gendsl_cli("fit", PROGRAMS / "normal.py", "--out", tmp_path / "run", "--steps", 40, "--chunk-size", 4)
    assert result.code == 0, result.err
    assert "\r" not in result.err
    lines = [line for line in result.err.splitlines() if line.startswith("fit: step ")]
    assert [line.split(" (")[0] for line in lines] == [f"fit: step {4 * k}/40" for k in range(1, 11)]
    assert all("steps/s, ETA" in line and ", objective " in line and ", held-out " in line for line in lines)
