"""Run the peer benchmarks (genjax.vi, and NumPyro / Pyro on the noisy cone) and write their reports.

``python benchmarks/genjax_peer/report.py`` (from the repository root, in gendsl's environment) runs

* ``benchmarks/genjax_peer/vae_step.py`` at batch 64..1024 with the genjax environment's Python
  (Table 1 peer: genjax / hand-written in genjax's JAX);
* ``benchmarks/genjax_peer/noisy_cone.py`` (Table 4 in genjax) and ``air_feasibility.py`` (Table 2),
  also with the genjax environment's Python;
* ``benchmarks/noisy_cone_peers.py`` (Table 4: gendsl, NumPyro, Pyro) with this Python;

and writes ``benchmarks/genjax_peer/RESULTS_genjax.md`` and ``benchmarks/noisy_cone_peers_result.md``.
The genjax environment is ``/work/venvs/genjax`` (``python3.11 -m venv /work/venvs/genjax &&
/work/venvs/genjax/bin/pip install genjax``) or the interpreter named by ``GENJAX_PYTHON``; without it the
genjax parts are skipped with a message. ``benchmarks/run_all.py`` calls :func:`peer_sections`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GENJAX_PYTHON = Path(os.environ.get("GENJAX_PYTHON", "/work/venvs/genjax/bin/python"))
BATCH_CALLS = {64: 100, 128: 80, 256: 60, 512: 40, 1024: 30}

CORRECTIONS = """\
Corrections and workarounds applied to genjax 0.10.3 (each found by comparing its values with a
hand-written or brute-force computation at the same parameters; the scripts print both):

1. **`marginal()` guides report log density 0.** `Marginal.random_weighted` without an algorithm returns
   `trace.project(key, ~selection)`; with the default selection (all addresses) that is the density of
   nothing, 0, so `vi.ELBO` / `vi.IWELBO` weight by `p(x, z)` instead of `p(x, z) / q(z)`: the stock VAE
   objective is `E_q[log p(x, z)]` (printed as "stock" in the Table 1 runs). Correction: `ScoredMarginal`
   (`vae_step.py`), a `Marginal` whose `random_weighted` returns the guide trace's score. With a subset
   selection (HVI's `marginal(S["x"] | S["y"])`) the same line weighs the kept choices by the density of
   the *discarded* ones (0 for the noisy cone's `u ~ U(0, 1)`), so genjax's stock HVI is far from the
   bound (`noisy_cone.py --hierarchical` prints both).
2. **The reparameterized ADEV primitives of one expectation share their key.** The interpreter passes its
   own key to every `normal_reparam` / `mv_normal_diag_reparam` and to the continuation after it; the
   primitive's internal split is not passed on. Two `normal_reparam` sites (the noisy cone's x and y) draw
   the same ε. The VAE has one (vector) site and is unaffected. Workaround for the noisy cone: x and y
   drawn by genjax's TFP `normal`, whose sampler (`loc + scale * N(0, 1)` in JAX code) ADEV differentiates
   as ordinary JAX code (the reparameterization gradient), with keys from genjax's per-address handler.
   Its values and mean gradients agree with brute force (printed).
3. **No batching rule for ADEV's sample primitive**, so `vi.IWELBO` (`ImportanceK` `vmap`s the guide over
   particles) fails with any ADEV-primitive guide (NotImplementedError). The TFP-`normal` guide of (2) runs.
4. **`Expectation.estimate` raises** (it passes zeros where its type check wants dual numbers). Values are
   taken from the forward-mode estimate with zero tangents, the same computation.
5. ADEV stages its program on the flat list of argument arrays, so a parameter pytree goes in as its leaves.
"""


def _run(python: str | Path, script: list[str]) -> tuple[str, float, str]:
    shown = f"{python} {' '.join(script)}"
    print(f"$ {shown}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    out = subprocess.run([str(python), *script], cwd=ROOT, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
        raise SystemExit(f"failed: {shown}")
    print(f"  done in {dt:.0f} s", file=sys.stderr, flush=True)
    return out.stdout, dt, shown


def _json(text: str) -> dict:
    for line in text.splitlines():
        if line.startswith("JSON: "):
            return json.loads(line[len("JSON: ") :])
    raise ValueError("no JSON line")


def _strip(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("JSON: ")).strip()


def genjax_available() -> bool:
    return GENJAX_PYTHON.exists()


def table1(quick: bool) -> tuple[list[str], dict]:
    """genjax VAE step at every batch size: markdown lines and ``batch -> JSON``."""
    runs = {}
    for b, calls in BATCH_CALLS.items():
        c = max(calls // (10 if quick else 1), 5)
        keys = "10" if quick else "40"
        runs[b] = _run(
            GENJAX_PYTHON, ["benchmarks/genjax_peer/vae_step.py", "--batch", str(b), "--calls", str(c), "--keys", keys]
        )
    data = {b: _json(out)["steps"] for b, (out, _, _) in runs.items()}
    md = [
        "| batch | hand-written ms | genjax batched ms | genjax / hand | hand per-example ms | genjax per-example ms "
        "| genjax per-example / hand per-example | genjax per-example / hand |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, d in data.items():
        md.append(
            f"| {b} | {d['hand']['median_ms']:.2f} | {d['genjax']['median_ms']:.2f} | "
            f"{d['genjax']['ratio_rounds']:.3f} | {d['hand_pe']['median_ms']:.1f} | {d['genjax_pe']['median_ms']:.1f} "
            f"| {d['genjax_pe']['ratio_rounds_pe']:.3f} | {d['genjax_pe']['ratio_rounds']:.2f} |"
        )
    md += ["", "Full output of each run (identical-noise and Monte Carlo checks):", ""]
    for b, (out, dt, shown) in runs.items():
        md += [f"#### batch {b}", "", f"`{shown}` ({dt:.0f} s)", "", _strip(out), ""]
    return md, data


def peer_sections(quick: bool = False) -> tuple[list[str], list[str], dict]:
    """Run every peer benchmark; returns (markdown sections, summary-table rows, raw figures)."""
    steps = ["--steps", "500", "--seeds", "2", "--eval-samples", "1000", "--check-samples", "2000"] if quick else []
    figures: dict = {}
    md: list[str] = []
    summary: list[str] = []

    # --- Table 4: gendsl, NumPyro, Pyro ------------------------------------------------------------
    cone = _run(sys.executable, ["benchmarks/noisy_cone_peers.py", *steps])
    figures["cone_peers"] = _json(cone[0])
    md += [
        "## 4. Table 4 peers: noisy cone, ELBO and IWELBO(5) in gendsl, NumPyro, Pyro (and genjax)",
        "",
        f"`{cone[2]}` ({cone[1]:.0f} s)",
        "",
        _strip(cone[0]),
        "",
    ]

    if not genjax_available():
        msg = (
            f"genjax peer skipped: no genjax environment at {GENJAX_PYTHON} (python3.11 -m venv /work/venvs/genjax "
            "&& /work/venvs/genjax/bin/pip install genjax; or set GENJAX_PYTHON)"
        )
        print(msg, file=sys.stderr)
        md += [f"genjax: {msg}.", ""]
        summary.append(f"| genjax.vi as a peer (Tables 1, 2, 4) | {msg} | - |")
        return md, summary, figures

    gj_cone = _run(GENJAX_PYTHON, ["benchmarks/genjax_peer/noisy_cone.py", "--hierarchical", *steps])
    figures["cone_genjax"] = _json(gj_cone[0])
    md += [
        "### genjax 0.10.3 on the noisy cone (same protocol)",
        "",
        f"`{gj_cone[2]}` ({gj_cone[1]:.0f} s)",
        "",
        _strip(gj_cone[0]),
        "",
    ]

    # --- Table 1 ----------------------------------------------------------------------------------
    t1_md, t1 = table1(quick)
    figures["table1_genjax"] = t1
    md += [
        "## 1b. Table 1 peer: genjax.vi's VAE ELBO gradient vs hand-written JAX in genjax's environment",
        "",
        "Ratios are to the hand-written step measured in the same process (genjax runs on jax 0.5.3, gendsl on "
        "its own JAX; compare ratios, not milliseconds): median of per-round ratios.",
        "",
        *t1_md,
    ]

    # --- Table 2 ----------------------------------------------------------------------------------
    air = _run(GENJAX_PYTHON, ["benchmarks/genjax_peer/air_feasibility.py"])
    md += [
        "## 3b. Table 2 peer: AIR in genjax 0.10.3",
        "",
        f"`{air[2]}` ({air[1]:.0f} s)",
        "",
        _strip(air[0]),
        "",
        "See `benchmarks/genjax_peer/RESULTS_genjax.md` for what this means for AIR.",
        "",
        CORRECTIONS,
    ]

    ratios = ", ".join(f"{d['genjax']['ratio_rounds']:.2f} (B={b})" for b, d in t1.items())
    pe = ", ".join(f"{d['genjax_pe']['ratio_rounds_pe']:.2f}" for d in t1.values())
    cp, cg = figures["cone_peers"], figures["cone_genjax"]
    cone_fig = "; ".join(
        f"{name}: "
        + ", ".join(
            f"{sys_} {cp[f'{name}/{sys_}']['mean']:.2f}"
            for sys_ in ("gendsl", "NumPyro", "Pyro")
            if f"{name}/{sys_}" in cp
        )
        + f", genjax {cg[f'{name}/genjax']['mean']:.2f}"
        for name in ("ELBO", "IWELBO(5)")
    )
    summary += [
        f"| genjax.vi in Table 1 (measured, not a goal) | genjax batched program / hand-written (genjax's JAX): "
        f"{ratios}; per-example programs / hand-written per-example: {pe} | measured |",
        f"| 4. Table 4 under one protocol (mean over seeds) | {cone_fig} | measured |",
        "| genjax.vi in Table 2 (AIR) | not run: `flip_mvd` raises TypeError, IWAE particles cannot `vmap` ADEV "
        "primitives, reparam sites share keys (air_feasibility.py) | not expressible as shipped |",
    ]
    return md, summary, figures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps and calls: checks the scripts, not for numbers")
    args = p.parse_args(argv)
    started = datetime.datetime.now()
    md, summary, _ = peer_sections(args.quick)
    head = [
        "# Peer benchmarks: genjax.vi, NumPyro and Pyro",
        "",
        f"Produced by `python benchmarks/genjax_peer/report.py{' --quick' if args.quick else ''}` on "
        f"{started:%Y-%m-%d %H:%M}; each section gives its command, and each script prints machine and versions.",
        "",
        "| item | measured | verdict |",
        "|---|---|---|",
        *summary,
        "",
    ]
    text = "\n".join(head + md) + "\n"
    (HERE / "RESULTS_genjax.md").write_text(text)
    cone = md[: md.index("### genjax 0.10.3 on the noisy cone (same protocol)")] if genjax_available() else md
    (ROOT / "benchmarks" / "noisy_cone_peers_result.md").write_text("\n".join(["# Noisy cone peers", "", *cone[1:]]))
    print(f"wrote {HERE / 'RESULTS_genjax.md'} and benchmarks/noisy_cone_peers_result.md", file=sys.stderr)


if __name__ == "__main__":
    main()
