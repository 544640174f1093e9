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
