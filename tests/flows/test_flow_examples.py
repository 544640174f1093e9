"""The flow examples run as scripts and print their comparison with the GMM-8 baseline."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_flow_moons_runs(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "flow_moons.py"), "--steps", "200", "--reflow", "100",
                           "--plot", str(tmp_path / "moons.png")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "energy distance to held-out data: flow" in done.stdout and "GMM-8" in done.stdout
    assert "straightness" in done.stdout and (tmp_path / "moons.png").exists()


@pytest.mark.slow
def test_pfgmpp_moons_runs():
    done = subprocess.run([sys.executable, str(EXAMPLES / "pfgmpp_moons.py"), "--steps", "200", "--D", "8", "inf",
                           "--sample-steps", "8"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "PFGM++ D=8: energy distance" in done.stdout and "PFGM++ D=inf: energy distance" in done.stdout
