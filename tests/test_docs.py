"""The Python examples in docs/*.md run as written (and say what they claim)."""

import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def run(block: str, name: str) -> dict:
    namespace: dict = {}
    exec(compile(block, str(DOCS / name), "exec"), namespace)
    return namespace


def test_diffusion_md_example():
    (block,) = blocks("diffusion.md")
    ns = run(block, "diffusion.md")
    import jax

    # The derived ELBO and the naive bound of the same programs are unbiased for the same number.
    d, elbo, model, guide = ns["d"], ns["elbo"], ns["model"], ns["guide"]
    keys = jax.random.split(jax.random.key(1), 2000)
    derived = np.asarray(jax.jit(jax.vmap(lambda k: d.elbo({}, k, 1.0)))(keys))
    naive_objective = elbo(model, guide)
    naive = np.asarray(jax.jit(jax.vmap(lambda k: naive_objective.estimate(k, {}, 1.0, jnp.arange(1, 6))))(keys))
    se = np.sqrt(derived.var(ddof=1) / derived.size + naive.var(ddof=1) / naive.size)
    assert abs(derived.mean() - naive.mean()) < 4 * se


def test_flows_md_example():
    (block,) = blocks("flows.md")
    ns = run(block, "flows.md")
    x_t, v = ns["x_t"], ns["v"]
    assert x_t.shape == (2,) and v.shape == (2,)


def test_objectives_md_example():
    """The analytic-KL ELBO's gradient: unbiased for the closed form, less variance than the Monte Carlo one."""
    (block,) = blocks("objectives.md")
    ns = run(block, "objectives.md")
    variance = ns["variance"]
    assert all(variance["analytic"][name] < variance["mc"][name] for name in ("loc", "scale"))
    # ELBO = sum_i [E log N(x_i; z_i, 1) - KL(N(loc_i, scale_i) || N(0, 1))]: d/dloc = x - 2 loc,
    # d/dscale = 1/scale - 2 scale.
    x, params, grads = ns["x"], ns["params"], ns["grads"]  # the loop's last: kl="analytic"
    exact = {"loc": x - 2 * params["loc"], "scale": 1 / params["scale"] - 2 * params["scale"]}
    for name, g in grads.items():
        se = np.asarray(g).std(axis=0, ddof=1) / np.sqrt(g.shape[0])
        assert np.all(np.abs(np.asarray(g).mean(axis=0) - exact[name]) < 4 * se + 1e-6), name


# Trains a flow for 600 steps; tests/models/test_protocol.py covers the same protocol and exact NLL fast.
@pytest.mark.slow
def test_models_md_example():
    """The Trainable protocol end to end: the fitted flow's exact NLL is near the data's entropy."""
    (block,) = blocks("models.md")
    ns = run(block, "models.md")
    assert ns["samples"].shape == (256, 2)
    nll, se = ns["nll"], ns["se"]
    assert 0 < se < 0.5 and abs(nll - (1 + np.log(2 * np.pi * 0.25))) < 0.5
    assert ns["result"].best_step is not None


def test_fit_md_program_block_is_a_program(tmp_path):
    program = blocks("fit.md")[0]
    ns = run(program, "fit.md")
    assert {"model", "guide", "data", "defaults"} <= set(ns)


@pytest.mark.slow
def test_fit_md_reading_a_run_folder(tmp_path):
    """The docs' "reading a run from Python" block, on a run folder gendsl fit just wrote."""
    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "runs" / "eight_schools"
    subprocess.run([sys.executable, "-m", "gendsl.cli", "fit", str(root / "examples" / "eight_schools.py"),
                    "--steps", "200", "--out", str(out), "--quiet"], check=True, cwd=tmp_path)
    block = blocks("fit.md")[1]
    ns = {}
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ns = run(block, "fit.md")
    finally:
        os.chdir(cwd)
    assert "mu" in ns["idata"].posterior


# Fits three autoguides; tests/inference/test_autoguides.py checks each against exact posteriors fast.
@pytest.mark.slow
def test_autoguides_md_example():
    (block,) = blocks("autoguides.md")
    ns = run(block, "autoguides.md")
    # The exact posterior correlation of (a, b) given a + b + noise(0.3) with N(0, 1) priors.
    assert abs(float(ns["corr"]) - (-1 / 1.09)) < 0.02
