"""Helpers shared by the benchmark scripts: the machine they ran on, and older code to compare with.

The scripts run from the repository root as ``python benchmarks/<name>.py``, so this
module is importable as ``from _common import cpu_name, checkout``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def checkout(rev: str) -> str:
    """The code at ``rev`` in a temporary folder, importable as ``gendsl`` with that folder first on ``sys.path``.

    A ``git archive`` of ``rev``, with ``gendsl/inference`` and ``gendsl/models`` linked to its
    ``inference/`` and ``models/`` (the package-dir mapping of the editable install), so that a
    "before" measurement runs the old code in the same sitting as the new one.
    """
    root = tempfile.mkdtemp(prefix="gendsl-before-")
    archive = subprocess.run(["git", "-C", REPO, "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    for sub in ("inference", "models"):
        os.symlink(os.path.join(root, sub), os.path.join(root, "gendsl", sub))
    return root
