"""`gendsl fit --devices N|all` (issue 15): data parallelism from the command line.

The equality runs need several devices, which JAX on CPU makes only when
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set before it starts: they run
``gendsl`` in child processes (slow suite). The option's error cases run in-process.
"""

import subprocess
import sys

import numpy as np
import pytest

from .cli_helpers import LIGHT_ENV, PROGRAMS, assert_one_line

FOUR = {**LIGHT_ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
OPTIONS = ["--batch-size", "8", "--chunk-size", "10", "--checkpoint-every", "25", "--quiet"]


def _gendsl(*argv):
    result = subprocess.run([sys.executable, "-m", "gendsl.cli", *map(str, argv)], env=FOUR, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "__meta__"}


def test_devices_option_errors(gendsl_cli, tmp_path):
    prog = PROGRAMS / "points.py"
    line = assert_one_line(gendsl_cli("fit", prog, "--devices", "2", "--out", tmp_path / "a"), "--devices 2",
                           "JAX sees 1")
    assert "xla_force_host_platform_device_count=2" in line
    for bad in ("0", "two", "-1"):
        assert_one_line(gendsl_cli("fit", prog, "--devices", bad, "--out", tmp_path / "b"), "--devices")
    assert_one_line(gendsl_cli("fit", prog, "--method", "nuts", "--devices", "1", "--out", tmp_path / "c"),
                    "--devices applies to --method vi")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_four_devices_train_like_one_and_resume_on_two(tmp_path):
    """points.py (a reparameterized latent and a REINFORCE one with an EMA baseline, per data point) for 50 steps
    on 1 and on 4 devices; then the 4-device checkpoint at step 25 resumed on 2 devices to step 50.

    Same keys, minibatches and per-point noise: only the order of float32 sums differs (the gradient's
    all-reduce), so the parameters agree to about 1e-6 relative after 50 Adam steps; 1e-4 leaves room.
    """
    prog = PROGRAMS / "points.py"
    one, four, two = tmp_path / "one", tmp_path / "four", tmp_path / "two"
    _gendsl("fit", prog, "--steps", 50, "--out", one, *OPTIONS)
    _gendsl("fit", prog, "--steps", 50, "--devices", 4, "--out", four, *OPTIONS)
    _gendsl("fit", prog, "--steps", 25, "--devices", 4, "--out", two, *OPTIONS)
    _gendsl("fit", prog, "--steps", 50, "--devices", 2, "--out", two, "--resume", "--quiet")
    a, b, c = _arrays(one / "params.npz"), _arrays(four / "params.npz"), _arrays(two / "params.npz")
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(c[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
    config = (four / "config.json").read_text()
    assert '"devices": 4' in config


# ----------------------------------------------------------------------------- --seeds


def test_seeds_option_errors(gendsl_cli, tmp_path):
    prog = PROGRAMS / "points.py"
    out = tmp_path / "runs"
    for argv, fragments in [
        (("--seeds", "3:1"), ("--seeds", "at least one seed")),
        (("--seeds", "0,0"), ("--seeds", "distinct")),
        (("--seeds", "a:b"), ("--seeds", "A:B")),
        (("--seeds", "0:2", "--seed", "1"), ("--seed and --seeds",)),
        (("--seeds", "0:2", "--resume"), ("--resume with --seeds", "seed<k> --resume")),
        (("--seeds", "0:2", "--validate-every", "5"), ("--validate-every with --seeds",)),
        (("--seeds", "0:3", "--devices", "2"), ("--devices 2",)),
    ]:
        assert_one_line(gendsl_cli("fit", prog, "--out", out, *argv), *fragments)
    assert not out.exists()


@pytest.mark.slow
def test_seeds_equal_separate_runs_and_resume_alone(gendsl_cli, tmp_path):
    """--seeds 0:4: four run folders whose parameters, checkpoints and metrics equal four single-seed runs (vmap
    over fits may reorder float sums: equal to 1e-5 relative), a comparison plot, and each folder resumable."""
    prog = PROGRAMS / "points.py"
    options = ["--steps", "40", "--batch-size", "8", "--chunk-size", "10", "--checkpoint-every", "20", "--quiet"]
    r = gendsl_cli("fit", prog, "--seeds", "0:4", "--out", tmp_path / "many", *options)
    assert r.code == 0, r.err
    assert (tmp_path / "many" / "seeds.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "many" / "seeds.txt").read_text().splitlines()
    assert [line.split()[0] for line in table[1:5]] == ["0", "1", "2", "3"] and table[5].startswith("  mean")
    for seed in range(4):
        single = tmp_path / f"single{seed}"
        assert gendsl_cli("fit", prog, "--seed", seed, "--out", single, *options).code == 0
        folder = tmp_path / "many" / f"seed{seed}"
        for name in ("params.npz", "checkpoint.npz"):
            a, b = _arrays(single / name), _arrays(folder / name)
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=f"seed {seed} {name} {k}")
        assert (folder / "report.html").exists() and (folder / "posterior.nc").exists()
    # A seed's folder is an ordinary run: it resumes alone, to where a single run of 60 steps ends.
    assert gendsl_cli("fit", prog, "--out", tmp_path / "many" / "seed2", "--resume", "--steps", "60",
                      "--quiet").code == 0
    assert gendsl_cli("fit", prog, "--seed", "2", "--out", tmp_path / "long", *options[2:], "--steps", "60").code == 0
    a, b = _arrays(tmp_path / "long" / "params.npz"), _arrays(tmp_path / "many" / "seed2" / "params.npz")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)
