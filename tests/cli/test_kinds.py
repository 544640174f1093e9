"""Program kinds of ``gendsl fit`` (issue 14): a Trainable, an objective alone; EMA, early stopping.

Tiny sizes throughout (a FlowMatching of width 16 on 2-D Gaussian data, 20 steps): the fast
suite's budget is tight.
"""

import json

import numpy as np
import pytest

from .cli_helpers import assert_one_line

TRAINABLE = '''
import jax
from gendsl.models import FlowMatching

trainable = FlowMatching(2, hidden=16, depth=1)


def data():
    x = 0.5 * jax.random.normal(jax.random.key(0), (120, 2)) + 1.0
    return x[:100], x[100:]


defaults = {"batch_size": 16, "lr": 1e-2, "chunk_size": 5, "checkpoint_every": 10}
'''

# mu starts at -5; the training data sit at +3 and the held-out data at -3, so the held-out
# objective improves while mu passes -3 and worsens after: a validation curve that turns.
TURNING = '''
import jax.numpy as jnp
from gendsl.inference import expectation

objective = expectation(lambda params, x: -jnp.mean((x - params["mu"]) ** 2))


def init_params(key, data):
    return {"mu": jnp.full((1,), -5.0)}


def data():
    return jnp.full((8, 1), 3.0), jnp.full((4, 1), -3.0)
'''


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "__meta__"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 20-step FlowMatching run with --ema (and its program)."""
    from gendsl.cli import main

    folder = tmp_path_factory.mktemp("kinds")
    prog = folder / "fm.py"
    prog.write_text(TRAINABLE)
    out = folder / "run"
    assert main(["fit", str(prog), "--steps", "20", "--ema", "0.9", "--out", str(out), "--quiet"]) == 0
    return prog, out


def test_trainable_fit_eval_sample_with_ema(trained, gendsl_cli):
    prog, out = trained
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["kind"] == "trainable" and config["resolved"]["class"] == "FlowMatching"
    assert config["options"]["ema"] == 0.9
    params, ema = _arrays(out / "params.npz"), _arrays(out / "ema_params.npz")
    png = (out / "loss.png").read_bytes()
    assert int.from_bytes(png[16:20], "big") > 1000  # two panels: the training and the held-out objective
    assert params.keys() == ema.keys()
    assert any(not np.array_equal(params[k], ema[k]) for k in params)

    r = gendsl_cli("eval", prog, "--run", out, "--limit", "10")
    assert r.code == 0, r.err
    result = json.loads((out / "eval.json").read_text())
    assert result["weights"] == "ema" and result["points"] == 10
    assert {"nll", "mmd"} <= set(result["metrics"]) and result["metrics"]["nll"]["se"] > 0
    assert "EMA weights" in r.out and "+-" in r.out

    r = gendsl_cli("sample", prog, "--run", out, "-n", "30", "--sampling-steps", "4")
    assert r.code == 0, r.err
    assert _arrays(out / "samples.npz")["x"].shape == (30, 2)
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert_one_line(gendsl_cli("sample", prog, "--run", out, "--sampler", "ddim"), "--sampler", "no `method`")
    assert_one_line(gendsl_cli("sample", prog, "--run", out, "--class", "1"), "--class", "no `labels`")
    assert gendsl_cli("sample", prog, "--run", out, "--guidance-scale", "-1").code == 2
    assert gendsl_cli("eval", prog, "--run", out, "--exact", "--probes", "2").code == 2


@pytest.mark.slow
def test_eval_with_hutchinson_probes(trained, gendsl_cli):
    # Hutchinson's divergence with 3 probes: the same points, an unbiased estimate of the exact log-likelihood.
    prog, out = trained
    assert gendsl_cli("eval", prog, "--run", out, "--limit", "10").code == 0
    exact = json.loads((out / "eval.json").read_text())["metrics"]["nll"]
    r = gendsl_cli("eval", prog, "--run", out, "--limit", "10", "--probes", "3")
    assert r.code == 0, r.err
    assert "Hutchinson divergence, 3 probes" in r.out
    hutchinson = json.loads((out / "eval.json").read_text())["metrics"]["nll"]
    assert hutchinson["value"] != exact["value"] and abs(hutchinson["value"] - exact["value"]) < 4 * hutchinson["se"]


@pytest.mark.slow
def test_eval_raw_uses_the_trained_parameters(trained, gendsl_cli):
    prog, out = trained
    raw = gendsl_cli("eval", prog, "--run", out, "--limit", "10", "--raw")
    assert raw.code == 0, raw.err
    assert json.loads((out / "eval.json").read_text())["weights"] == "params"


def test_resume_with_ema_is_bit_for_bit(trained, gendsl_cli, tmp_path):
    prog, whole = trained
    part = tmp_path / "part"
    assert gendsl_cli("fit", prog, "--steps", "10", "--ema", "0.9", "--out", part, "--quiet").code == 0
    r = gendsl_cli("fit", prog, "--steps", "20", "--out", part, "--resume", "--quiet")
    assert r.code == 0, r.err
    for name in ("checkpoint.npz", "params.npz", "ema_params.npz"):
        a, b = _arrays(whole / name), _arrays(part / name)
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a), name


def test_early_stopping_restores_the_best_state(program, gendsl_cli, tmp_path):
    prog = program(TURNING)
    out = tmp_path / "run"
    r = gendsl_cli("fit", prog, "--steps", "100", "--lr", "0.1", "--chunk-size", "5", "--validate-every", "5",
                   "--patience", "2", "--out", out, "--quiet")
    assert r.code == 0, r.err
    config = json.loads((out / "config.json").read_text())
    early = config["early_stopping"]
    assert early["stopped_at"] == early["best_step"] + 10 < 100
    assert config["options"]["validate_every"] == 5 and config["options"]["patience"] == 2
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("held_out_objective")
    held = {int(r[0]): float(r[column]) for r in rows[1:] if r[column]}
    assert max(held, key=held.get) == early["best_step"]
    # The saved state is the best step's: the same as a run of exactly that many steps.
    best = tmp_path / "best"
    assert gendsl_cli("fit", prog, "--steps", early["best_step"], "--lr", "0.1", "--chunk-size", "5",
                      "--out", best, "--quiet").code == 0
    assert np.array_equal(_arrays(out / "params.npz")["mu"], _arrays(best / "params.npz")["mu"])
    assert "early stopping" in (out / "summary.txt").read_text()


def test_objective_program_and_warmup(program, gendsl_cli, tmp_path):
    prog = program(TURNING)
    out = tmp_path / "run"
    r = gendsl_cli("fit", prog, "--steps", "20", "--lr", "0.1", "--warmup", "10", "--out", out, "--quiet")
    assert r.code == 0, r.err
    assert json.loads((out / "config.json").read_text())["resolved"]["kind"] == "objective"
    r = gendsl_cli("eval", prog, "--run", out)
    assert r.code == 0, r.err
    assert "objective" in json.loads((out / "eval.json").read_text())["metrics"]
    assert_one_line(gendsl_cli("sample", prog, "--run", out), "no sampler")


def test_ambiguous_kinds_name_the_candidates(program, gendsl_cli, tmp_path):
    two = program(TRAINABLE.replace("trainable = ", "fm_a = ") + "fm_b = FlowMatching(2, hidden=8, depth=1)\n")
    assert_one_line(gendsl_cli("fit", two, "--out", tmp_path / "a"), "several Trainable", "`fm_a`", "`fm_b`")
    both = program(TRAINABLE + "\nimport gendsl\n\n@gendsl.model\ndef model(x):\n    pass\n", name="both.py")
    assert_one_line(gendsl_cli("fit", both, "--out", tmp_path / "b"), "ambiguous", "`trainable`", "`model`")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_flow_moons_example_fit_eval_sample(gendsl_cli, tmp_path):
    from .cli_helpers import EXAMPLES

    prog, out = EXAMPLES / "flow_moons.py", tmp_path / "run"
    r = gendsl_cli("fit", prog, "--steps", "20", "--warmup", "5", "--checkpoint-every", "10", "--out", out, "--quiet")
    assert r.code == 0, r.err
    assert (out / "ema_params.npz").exists()
    assert gendsl_cli("eval", prog, "--run", out, "--limit", "50").code == 0
    assert "nll" in json.loads((out / "eval.json").read_text())["metrics"]
    assert gendsl_cli("sample", prog, "--run", out, "-n", "100", "--sampling-steps", "8").code == 0
    assert (out / "samples.png").exists()
