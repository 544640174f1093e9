"""Interrupted runs (SIGINT, SIGTERM, kill -9) resume to bit-for-bit the parameters of an uninterrupted run.

These tests run `gendsl` in a child process, as a user would, and interrupt it mid-training.
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gendsl.cli._checkpoint import read_meta

from .cli_helpers import LIGHT_ENV, PROGRAMS

OPTIONS = ["--checkpoint-every", "20", "--chunk-size", "4", "--quiet"]


def start(out):
    """`gendsl fit` of the points program, far too long to finish, in a child process."""
    argv = [sys.executable, "-m", "gendsl.cli", "fit", str(PROGRAMS / "points.py"), "--out", str(out),
            "--steps", "1000000", *OPTIONS]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=LIGHT_ENV)


def wait_for(condition, child, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"gendsl exited early ({child.returncode}): {child.stderr.read()}")
        if condition():
            return
        time.sleep(0.05)
    child.kill()
    pytest.fail("timed out waiting for the training to progress")


def checkpoint_step(out):
    try:
        return read_meta(str(out / "checkpoint.npz"), "checkpoint")["step"]
    except Exception:
        return -1


def rows(out):
    try:
        with open(out / "metrics.csv") as f:
            return len(list(csv.DictReader(f)))
    except OSError:
        return 0


def arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k].tobytes() for k in npz.files if k != "__meta__"}


def assert_resumes_exactly(gendsl_cli, out, tmp_path):
    """--resume to a few steps past the checkpoint equals a fresh, uninterrupted run of the same length."""
    total = checkpoint_step(out) + 14
    resumed = gendsl_cli("fit", PROGRAMS / "points.py", "--out", out, "--resume", "--steps", total, *OPTIONS)
    assert resumed.code == 0, resumed.err
    fresh = tmp_path / "fresh"
    whole = gendsl_cli("fit", PROGRAMS / "points.py", "--out", fresh, "--steps", total, *OPTIONS)
    assert whole.code == 0, whole.err
    assert arrays(out / "params.npz") == arrays(fresh / "params.npz")
    assert arrays(out / "checkpoint.npz") == arrays(fresh / "checkpoint.npz")


# Both signals go through one handler, in a real subprocess (10 s): slow. The fast suite checks the
# handler's path (checkpoint at the chunk where the flag is set, exit 143, --resume) in
# tests/cli/test_example_programs.py, with the flag set as the signal sets it.
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits(gendsl_cli, tmp_path, signum):
    out = tmp_path / "run"
    child = start(out)
    wait_for(lambda: rows(out) > 30, child)
    child.send_signal(signum)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"{name}: stopped at step" in err and "--resume" in err
    step = int(err.split("stopped at step ")[1].split(";")[0])
    assert checkpoint_step(out) == step >= 30  # a checkpoint at the step where it stopped, not only every 20
    if signum == signal.SIGTERM:
        assert_resumes_exactly(gendsl_cli, out, tmp_path)


# Slow: its fast siblings are test_checkpoints_are_replaced_atomically (a crash while writing keeps the previous
# checkpoint, in-process) and test_signal_saves_a_checkpoint_and_exits[SIGTERM] (a child's checkpoint resumes exactly).
@pytest.mark.slow
def test_kill_9_between_checkpoints_leaves_a_valid_checkpoint(gendsl_cli, tmp_path):
    out = tmp_path / "run"
    child = start(out)
    wait_for(lambda: checkpoint_step(out) >= 60, child)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert checkpoint_step(out) >= 60  # complete and readable: never a half-written file
    leftovers = [f for f in os.listdir(out) if ".tmp-" in f]
    for f in leftovers:  # a temporary file of the killed write may remain; it is never read
        os.remove(out / f)
    assert_resumes_exactly(gendsl_cli, out, tmp_path)


@pytest.mark.skipif(shutil.which("gendsl") is None, reason="the gendsl entry point is not installed")
def test_installed_entry_point():
    """The installed script runs (one child process: each pays JAX's import); the help texts are checked below."""
    done = subprocess.run(["gendsl", "fit", "--help"], capture_output=True, text=True, timeout=120, env=LIGHT_ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: gendsl fit")


def test_help_and_version(gendsl_cli):
    for argv in (["--help"], ["fit", "--help"], ["sample", "--help"], ["eval", "--help"]):
        result = gendsl_cli(*argv)
        assert result.code == 0, result.err
        assert "usage: gendsl" in result.out
    fit_help = gendsl_cli("fit", "--help").out
    for flag in ("--objective", "--particles", "--steps", "--batch-size", "--lr", "--optimizer", "--seed", "--out",
                 "--resume", "--checkpoint-every", "--device", "--debug", "--strategy", "--data", "exit codes"):
        assert flag in fit_help, flag
    version = gendsl_cli("--version")
    assert version.code == 0 and version.out.startswith("gendsl ")
