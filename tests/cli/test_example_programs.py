"""The paper-model examples as `gendsl fit` programs (issue 14): each trains, evaluates, samples and resumes.

Fast suite: every example but the five costliest to compile takes 20 training steps through `gendsl fit`
(compilation dominates). Slow suite: those five too, and fit -> eval -> sample -> report on each, and a run
stopped at step 10 and resumed equals the uninterrupted 20-step run bit for bit (checkpoint, parameters, EMA).
"""

import json
import signal

import numpy as np
import pytest

from gendsl.cli import _fit as fit_module

from .cli_helpers import EXAMPLES

# Per example: extra fit options (small minibatches: the defaults are sized for real runs), eval options, and
# sample options.
CASES = {
    "diffusion_edm.py": (["--batch-size", "64"], ["--limit", "40", "--probes", "1"], ["--sampling-steps", "6"]),
    "diffusion_vdm_digits.py": (["--batch-size", "32"], ["--data", "test", "--limit", "40"],
                                ["--sampling-steps", "10"]),
    "diffusion_ddpm_cfg.py": (["--batch-size", "64"], ["--limit", "40", "--samples", "2"],
                              ["--class", "1", "--guidance-scale", "2", "--sampler", "ddim", "--sampling-steps", "5"]),
    "diffusion_diffusevae.py": (["--batch-size", "32"], ["--limit", "40", "--samples", "2"],
                                ["--sampling-steps", "5"]),
    "air_multi_mnist.py": (["--batch-size", "4", "--data", "{mnist}"], ["--limit", "12", "--samples", "2"], []),
    "flow_moons.py": (["--batch-size", "64"], ["--limit", "40"], ["--sampling-steps", "6"]),
    "pfgmpp_moons.py": (["--batch-size", "64"], ["--limit", "40"], ["--sampling-steps", "6"]),
}
SHORT = ["--steps", "20", "--warmup", "2", "--chunk-size", "10", "--checkpoint-every", "10", "--quiet"]


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "__meta__"}


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """A stand-in MNIST folder: 60 random 28x28 images in IDX format (the examples take the folder with --data)."""
    import gzip

    folder = tmp_path_factory.mktemp("mnist")
    images = np.random.default_rng(0).integers(0, 256, size=(60, 28, 28)).astype(np.uint8)
    header = b"".join(int(v).to_bytes(4, "big") for v in (2051, *images.shape))
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    return folder


def _options(name, mnist):
    return [[str(mnist) if a == "{mnist}" else a for a in part] for part in CASES[name]]


def _fit(gendsl_cli, name, out, mnist, *extra):
    fit, _, _ = _options(name, mnist)
    result = gendsl_cli("fit", EXAMPLES / name, "--out", out, *SHORT, *fit, *extra)
    assert result.code == 0, result.err
    return result


# Compilation of these takes 10-25 s each on two cores (AIR's recurrent guide and REINFORCE gradient, the
# diffusion chains, PFGM++'s ODE likelihood): the fast suite has no room for them, so their 20-step fit runs in
# the slow suite, with the rest of their pipeline. PFGM++ and EDM go through the same Trainable path as flow_moons.
COSTLY = {"air_multi_mnist.py", "diffusion_ddpm_cfg.py", "diffusion_diffusevae.py", "diffusion_edm.py",
          "pfgmpp_moons.py"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in COSTLY else n for n in sorted(CASES)])
def test_example_trains_with_gendsl_fit(name, gendsl_cli, tmp_path, mnist):
    out = tmp_path / "run"
    _fit(gendsl_cli, name, out, mnist)
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "completed" and config["resolved"]["kind"] == "trainable"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 21  # a header, step 0 (held-out only) and 20 steps
    assert all(np.isfinite(v).all() for v in _arrays(out / "params.npz").values())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_fit_eval_sample_report_and_resume(name, gendsl_cli, tmp_path, mnist):
    fit, evaluate, sample = _options(name, mnist)
    prog, whole = EXAMPLES / name, tmp_path / "whole"
    _fit(gendsl_cli, name, whole, mnist)
    r = gendsl_cli("eval", prog, "--run", whole, *evaluate)
    assert r.code == 0, r.err
    metrics = json.loads((whole / "eval.json").read_text())["metrics"]
    assert metrics and all(np.isfinite(m["value"]) and m["se"] >= 0 for m in metrics.values())
    if name == "diffusion_vdm_digits.py":
        # eval's figure is the library's ELBO in bits/dim on the run's (EMA) parameters with eval's key.
        import jax

        from gendsl.cli._trained import open_trained

        run = open_trained(str(prog), str(whole), "test")
        test = jax.tree_util.tree_map(lambda a: a[:40], run.setup.data.test)  # (images, augmentation indices)
        expected = float(run.params.bits_per_dim(jax.random.key(0), test, samples=10))
        assert run.meta["weights"] == "ema" and json.loads((whole / "eval.json").read_text())["points"] == 40
        np.testing.assert_allclose(metrics["bits_per_dim"]["value"], expected, rtol=1e-5)
    r = gendsl_cli("sample", prog, "--run", whole, "-n", "16", *sample)
    assert r.code == 0, r.err
    assert _arrays(whole / "samples.npz")["x"].shape[0] == 16
    assert (whole / "samples.png").read_bytes()[:4] == b"\x89PNG"
    page = (whole / "report.html").read_text()
    assert "samples" in page and "data:image/png;base64," in page

    # A SIGTERM that arrives during the chunk ending at step 10 (the handler's flag, set as the signal sets it):
    # the fit checkpoints there and exits 143; --resume finishes the run.
    part = tmp_path / "part"
    with pytest.MonkeyPatch.context() as patch:
        original = fit_module._Progress.__call__

        def terminated_at_10(self, info):
            if info.step >= 10:
                self.signals.received = signal.SIGTERM
            return original(self, info)

        patch.setattr(fit_module._Progress, "__call__", terminated_at_10)
        r = gendsl_cli("fit", prog, "--out", part, *SHORT, *fit)
    assert r.code == 128 + signal.SIGTERM and "SIGTERM: stopped at step 10" in r.err
    r = gendsl_cli("fit", prog, "--out", part, "--resume", "--quiet")
    assert r.code == 0, r.err
    for file in ("checkpoint.npz", "params.npz", "ema_params.npz"):
        if (whole / file).exists():
            a, b = _arrays(whole / file), _arrays(part / file)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), file
