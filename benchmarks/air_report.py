"""RESULTS.md sections for issue 5 items 3 (AIR, Table 2) and 5 (gradient variance), used by ``run_all.py``.

``benchmarks/air.py`` takes about 30 minutes and ``benchmarks/grad_variance.py`` about 5, so
``run_all.py`` reruns them only with ``--air`` (writing ``air_result.md`` and
``grad_variance_result.md``); otherwise it includes the recorded results.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
AIR = HERE / "air_result.md"
VARIANCE = HERE / "grad_variance_result.md"


def rerun(quick: bool, data: str = "../shared/data/mnist") -> None:
    """Run both benchmarks, writing their result files (``quick``: tiny settings, to check the scripts)."""
    air = ["--n", "640", "--test", "200", "--rounds", "2", "--budget", "10"] if quick else []
    var = ["-n", "500", "--n-air", "20", "--rounds", "5"] if quick else []
    for cmd in (["benchmarks/air.py", "--data", data, *air, "--out", str(AIR)],
                ["benchmarks/grad_variance.py", "--data", data, *var, "--out", str(VARIANCE)]):
        print("$ python " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, capture_output=True)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def air_summary(text: str) -> tuple[str, str, str, str]:
    """``(speed figure, speed verdict, ENUM figure, ENUM verdict)`` from an air_result.md."""
    rows = {}
    for line in text.splitlines():
        c = _cells(line)
        if line.startswith("| ") and len(c) == 8 and c[0] in ("REINFORCE+baseline", "ENUM", "MVD"):
            rows.setdefault(c[0], c)
    speedups = {k: float(r[5].rstrip("x")) for k, r in rows.items() if r[5] != "n/a"}
    enum_cost = float(rows["ENUM"][6].rstrip("x"))
    speed = ", ".join(f"{k} {v:.1f}x" for k, v in speedups.items())
    speed_ok = bool(speedups) and min(speedups.values()) >= 10
    return (
        f"Pyro / gendsl seconds per epoch: {speed}",
        "holds" if speed_ok else "missed (see section 3)",
        f"gendsl ENUM / REINFORCE+baseline step: {enum_cost:.2f}x",
        "holds" if enum_cost <= 2 else "missed (see section 3: 8 enumerated paths per image)",
    )


def variance_summary(text: str) -> str:
    rows = [_cells(line) for line in text.splitlines() if line.startswith("| AIR |")]
    return "AIR, mean per-parameter variance: " + ", ".join(f"{r[1]} {float(r[2]):.3g}" for r in rows)


def _section(number: int, text: str) -> list[str]:
    """The result file as a RESULTS.md section: its title numbered, its subsections one level down."""
    title, _, body = text.strip().partition("\n")
    body = "\n".join("#" + line if line.startswith("## ") else line for line in body.splitlines())
    return [f"## {number}. {title.lstrip('# ')}", body.strip(), ""]


def sections(quick: bool = False, run: bool = False) -> tuple[list[str], list[str]]:
    """``(summary rows, markdown sections)`` for RESULTS.md."""
    if run:
        rerun(quick)
    summary, md = [], []
    if AIR.exists():
        text = AIR.read_text()
        speed, speed_v, enum, enum_v = air_summary(text)
        summary += [f"| 3. Table 2: AIR, gendsl ≥ 10× faster than Pyro per epoch | {speed} | {speed_v} |",
                    f"| 3. Table 2: AIR, ENUM ≤ 2× REINFORCE | {enum} | {enum_v} |"]
        md += _section(3, text)
    if VARIANCE.exists():
        text = VARIANCE.read_text()
        summary.append(f"| 5. Gradient variance per estimator vs NumPyro `TraceGraph_ELBO` | "
                       f"{variance_summary(text)} | measured (no goal) |")
        md += _section(5, text)
    return summary, md
