"""Run the benchmarks with modest settings and write ``benchmarks/RESULTS.md``.

``python benchmarks/run_all.py`` (about 6-8 minutes on 2 shared CPU cores) runs

* ``vae_step.py`` at batch sizes 64, 128, 256, 512 and 1024 (Table 1: ELBO gradient step,
  gendsl vs hand-written JAX vs NumPyro; fewer timed calls for the bigger batches);
* ``first_step.py`` (time to first step in fresh processes);
* ``scaling.py`` (gendsl ELBO step vs batch 64..4096 and vs latent dimension 10..100);
* ``air.py`` and ``grad_variance.py`` with ``--air`` (Table 2 and gradient variance, ~35 min; without it
  the recorded ``air_result.md`` and ``grad_variance_result.md`` are included);
* ``genjax_peer/report.py`` (unless ``--no-peers``): the noisy cone in gendsl, NumPyro and Pyro, and
  genjax.vi in Tables 1, 2, 4 through the genjax environment's Python (skipped with a message without it);

and writes the report: a summary of the goals of the benchmarks issue, then each
section's tables with the command that produced them, the machine and the date.
Options: ``--quick`` (far fewer calls, for checking the script), ``--out PATH``, ``--peers-only`` (only the
peer step, printed).
Benchmarks are not tests: nothing here asserts anything about time.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# batch -> timed calls (fewer for big batches; the checks and compilation dominate anyway)
VAE_CALLS = {64: 200, 128: 150, 256: 100, 512: 60, 1024: 40}
VAE_KEYS = 20  # keys of vae_step's Monte Carlo agreement check (modest: it is a sanity check here)


def run(cmd: list[str]) -> tuple[str, float, str]:
    """Run ``python benchmarks/...`` from the repository root; returns (stdout, seconds, the command as shown)."""
    shown = "python " + " ".join(cmd)
    print(f"$ {shown}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"failed: {shown}")
    print(f"  done in {dt:.0f} s", file=sys.stderr, flush=True)
    return out.stdout, dt, shown


def json_line(text: str) -> dict:
    for line in text.splitlines():
        if line.startswith("JSON: "):
            return json.loads(line[len("JSON: ") :])
    raise ValueError("no JSON line")


def strip_json(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("JSON: ")).strip()


def vae_rows(text: str) -> dict:
    """The ELBO rows of a vae_step.py table: implementation -> (median ms, ratio of medians, per-round ratio)."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| ELBO |"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        impl = "gendsl" if cells[1].startswith("gendsl") else "numpyro" if cells[1].startswith("NumPyro") else "hand"
        rows[impl] = (float(cells[2]), float(cells[4]), float(cells[5]))
    return rows


def load_peer_report():
    """``benchmarks/genjax_peer/report.py`` as a module (its genjax parts skip themselves without genjax's venv)."""
    spec = importlib.util.spec_from_file_location("peer_report", HERE / "genjax_peer" / "report.py")
    peer_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer_report)
    return peer_report


def recorded_peers() -> tuple[list[str], list[str]]:
    """Sections and summary rows from the recorded peer results (for ``--no-peers``)."""
    md, rows = [], []
    for name, title in (
        ("noisy_cone_peers_result.md", "## 4. Table 4 peers (recorded `benchmarks/noisy_cone_peers_result.md`)"),
        ("genjax_peer/RESULTS_genjax.md", "## genjax.vi as a peer (recorded `genjax_peer/RESULTS_genjax.md`)"),
    ):
        path = HERE / name
        if not path.exists():
            continue
        body = [("#" + line if line.startswith("## ") else line) for line in path.read_text().splitlines()[1:]]
        md += [title, *body, ""]
    cone = HERE / "noisy_cone_peers_result.md"
    if cone.exists():
        means = {}
        for line in cone.read_text().splitlines():
            c = [x.strip() for x in line.split("|")[1:-1]]
            if len(c) >= 4 and c[0] in ("ELBO", "IWELBO(5)") and c[1] in ("gendsl", "NumPyro", "Pyro", "genjax 0.10.3"):
                means.setdefault(c[0], []).append(f"{c[1]} {c[3]}")
        fig = "; ".join(f"{k}: " + ", ".join(v) for k, v in means.items())
        rows.append(f"| 4. Table 4 under one protocol (mean over 5 seeds ± sd; recorded) | {fig} | measured |")
    return md, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="very few calls (to check the script, not for numbers)")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--no-peers", action="store_true", help="skip the peer benchmarks (genjax.vi, noisy-cone peers)")
    p.add_argument("--peers-only", action="store_true", help="run only the peer step and print its sections")
    p.add_argument("--air", action="store_true", help="rerun air.py and grad_variance.py (~35 min; else recorded)")
    args = p.parse_args(argv)
    started = datetime.datetime.now()
    t_all = time.perf_counter()
    scale = 10 if args.quick else 1

    # --- peers only (genjax_peer block): the peer step alone, printed, RESULTS.md untouched ----------------
    if args.peers_only:
        peer_md, peer_summary, _ = load_peer_report().peer_sections(args.quick)
        print("\n".join(["| item | measured | verdict |", "|---|---|---|", *peer_summary, "", *peer_md]))
        return

    # --- Table 1 ---------------------------------------------------------------------------
    table1 = {}
    for b, calls in VAE_CALLS.items():
        c = max(calls // scale, 5)
        table1[b] = run(
            ["benchmarks/vae_step.py", "--batch", str(b), "--calls", str(c), "--warmup", "5", "--keys", str(VAE_KEYS)]
        )

    # --- time to first step -----------------------------------------------------------------
    first = run(["benchmarks/first_step.py", "--reps", "1" if args.quick else "3"])

    # --- scaling -----------------------------------------------------------------------------
    scaling = run(["benchmarks/scaling.py", "--calls", str(max(30 // scale, 3))])

    # --- peers: genjax.vi in Tables 1, 2, 4 and the noisy cone in NumPyro / Pyro ------------------
    # (benchmarks/genjax_peer/report.py; the genjax part runs in its own environment or is skipped)
    peer_md, peer_summary = [], []
    if not args.no_peers:
        peer_md, peer_summary, _ = load_peer_report().peer_sections(args.quick)
    else:  # the recorded peer results (noisy_cone_peers.py alone takes ~15 min; genjax runs in its own venv)
        peer_md, peer_summary = recorded_peers()
    elapsed = time.perf_counter() - t_all

    # --- summary -----------------------------------------------------------------------------
    t1 = {b: vae_rows(out) for b, (out, _, _) in table1.items()}
    worst_med = max(r["gendsl"][1] for r in t1.values())
    worst_round = max(r["gendsl"][2] for r in t1.values())
    t1_holds = worst_round <= 1.02
    t1_fig = (
        "gendsl/hand, median of per-round ratios: "
        + ", ".join(f"{r['gendsl'][2]:.3f} (B={b})" for b, r in t1.items())
        + f"; worst ratio of medians {worst_med:.3f}"
    )
    worst_b = max(t1, key=lambda b: t1[b]["gendsl"][2])
    t1_verdict = (
        "holds"
        if t1_holds
        else (
            f"missed at B={worst_b} ({t1[worst_b]['gendsl'][2]:.3f}); NumPyro in the same run: "
            f"{t1[worst_b]['numpyro'][2]:.3f}"
        )
    )
    if t1_holds and worst_med > 1.02:
        t1_verdict = "holds by the per-round ratio; the ratio of medians exceeds 1.02 at some batch (noise)"

    fs = json_line(first[0])["median"]
    fs_ratio = fs["gendsl"]["total"] / fs["numpyro"]["total"]
    fs_fig = (
        f"total (import + init + first step) median: gendsl {fs['gendsl']['total']:.2f} s, NumPyro "
        f"{fs['numpyro']['total']:.2f} s, hand-written {fs['hand']['total']:.2f} s; gendsl/NumPyro {fs_ratio:.2f} "
        f"(import {fs['gendsl']['import']:.2f} vs {fs['numpyro']['import']:.2f} s, init {fs['gendsl']['init']:.2f} "
        f"vs {fs['numpyro']['init']:.2f} s, first step {fs['gendsl']['first_step']:.2f} vs "
        f"{fs['numpyro']['first_step']:.2f} s)"
    )
    fs_verdict = "holds" if fs_ratio < 1 else "missed"

    sc = json_line(scaling[0])
    per_point = sc["per_point_us"]
    sc_fig = (
        f"batch {sc['batches'][0]}..{sc['batches'][-1]}: {sc['batch_ms'][0]:.2f} -> {sc['batch_ms'][-1]:.1f} ms, "
        f"{per_point[0]:.2f} -> {per_point[-1]:.2f} µs per data point; superlinear steps: "
        + ("; ".join(sc["superlinear"]) if sc["superlinear"] else "none")
        + f"; latent dim {sc['latents'][0]}..{sc['latents'][-1]} at batch 256: "
        f"{sc['latent_ms'][0]:.2f} -> {sc['latent_ms'][-1]:.2f} ms, straight-line fit largest residual "
        f"{100 * sc['latent_max_resid']:.1f}%"
    )
    sc_holds = not sc["superlinear"] and sc["latent_max_resid"] < 0.10
    sc_verdict = "holds" if sc_holds else "missed (see the scaling section)"
    if sc["superlinear"] and sc["latent_max_resid"] < 0.10:
        hand_growth = [h2 / h1 for h1, h2 in zip(sc["hand_ms"], sc["hand_ms"][1:], strict=False)]
        gen_growth = [g2 / g1 for g1, g2 in zip(sc["batch_ms"], sc["batch_ms"][1:], strict=False)]
        if all(g <= 1.1 * h for g, h in zip(gen_growth, hand_growth, strict=True)):
            sc_verdict = (
                "missed at the superlinear steps listed, but the hand-written JAX step grows as much there: "
                "XLA:CPU and the caches (one 4096x784 f32 activation is 12.8 MB), not gendsl overhead"
            )

    # why gendsl's import is slower: the biggest imports of `import gendsl.inference` (python -X importtime)
    imp = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import gendsl.inference"],
        capture_output=True,
        text=True,
        check=False,
    ).stderr
    cumulative = {}
    for line in imp.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if m and len(m.group(2)) <= 3:  # top-level and first-level imports
            cumulative[m.group(3)] = int(m.group(1)) / 1e6
    top = sorted(cumulative.items(), key=lambda kv: -kv[1])[:6]
    import_note = (
        '`python -X importtime -c "import gendsl.inference"` (one cold-ish run, cumulative seconds of the '
        "top-level and first-level imports): " + ", ".join(f"`{k}` {v:.2f}" for k, v in top)
    )

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{cpu_name()}, {cpus} CPU cores, CPU only, shared machine (timings are noisy)"
    date = f"{started:%Y-%m-%d %H:%M}"

    md = [
        "# Benchmark results",
        "",
        f"Produced by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` on {date} "
        f"(total {elapsed / 60:.1f} min). Machine: {machine}. Python {platform.python_version()}.",
        "Each section below gives the exact command, and each script prints its own date, machine and versions.",
        "Benchmarks are not tests: nothing asserts anything about time; ratios on a shared 2-core machine move by "
        "a few percent between runs.",
        "",
        "## Summary",
        "",
        "| goal (benchmarks issue) | measured | verdict |",
        "|---|---|---|",
        f"| 1. Table 1: gendsl ELBO gradient step / hand-written JAX ≤ 1.02 at batch 64-1024 | {t1_fig} "
        f"| {t1_verdict} |",
        f"| 2. Time to first step (fresh process) below NumPyro | {fs_fig} | {fs_verdict} |",
        f"| 6. Step time grows linearly in batch size (64-4096) and latent dimension | {sc_fig} | {sc_verdict} |",
        "| 3. Table 2: AIR on multi-MNIST, gendsl vs Pyro (≥ 10× over Pyro; ENUM ≤ 2× REINFORCE) "
        "| not yet measured | - |",
        "| 5. Gradient variance per estimator vs NumPyro `TraceGraph_ELBO` | not yet measured | - |",
        "",
        "## 1. Table 1: ELBO gradient step, gendsl vs hand-written JAX vs NumPyro",
        "",
        "784-200-10 VAE, tanh, random binary data; one jitted call returning the ELBO and its gradient. "
        "Ratios are to the hand-written step: ratio of medians / median of per-round ratios.",
        "",
        "| batch | hand-written ms | gendsl ms | NumPyro ms | gendsl / hand | NumPyro / hand |",
        "|---|---|---|---|---|---|",
    ]
    for b, r in t1.items():
        md.append(
            f"| {b} | {r['hand'][0]} | {r['gendsl'][0]} | {r['numpyro'][0]} | {r['gendsl'][1]:.3f} / "
            f"{r['gendsl'][2]:.3f} | {r['numpyro'][1]:.3f} / {r['numpyro'][2]:.3f} |"
        )
    md += ["", "Full output of each run (same-noise and Monte Carlo checks, IWELBO(5) too):", ""]
    for b, (out, dt, shown) in table1.items():
        md += [f"### batch {b}", "", f"`{shown}` ({dt:.0f} s)", "", out.strip(), ""]
    md += [
        "## 2. Time to first step",
        "",
        f"`{first[2]}` ({first[1]:.0f} s)",
        "",
        strip_json(first[0]),
        "",
        "Where gendsl's import time goes: " + import_note + ".",
        "",
        "## 6. Scaling of the gendsl ELBO step",
        "",
        f"`{scaling[2]}` ({scaling[1]:.0f} s)",
        "",
        strip_json(scaling[0]),
        "",
        "## Not yet measured",
        "",
        "- 3. Table 2: Attend-Infer-Repeat on multi-MNIST, seconds per epoch per estimator (REINFORCE with "
        "baselines, ENUM, MVD, IWAE(2)+REINFORCE, IWAE(2)+MVD), gendsl vs Pyro; ELBO and count accuracy after a "
        "fixed wall-clock budget.",
        "- 5. Gradient variance of each estimator (REINFORCE, +baselines, ENUM, MVD) at fixed parameters and the "
        "variance × time product, next to NumPyro `TraceGraph_ELBO`.",
        "",
    ]
    # peer rows after the goals' rows, peer sections before "Not yet measured" (or at the end)
    rows = [i for i, line in enumerate(md) if line.startswith("| ")]
    at = next((i for i in rows if i > md.index("## Summary")), len(md)) if "## Summary" in md else len(md)
    while at < len(md) and md[at].startswith("|"):  # past the header, the |---| line and the rows
        at += 1
    md[at:at] = peer_summary
    at = md.index("## Not yet measured") if "## Not yet measured" in md else len(md)
    md[at:at] = peer_md
    # --- items 3 (AIR, Table 2) and 5 (gradient variance): benchmarks/air_report.py -------------
    import air_report

    air_rows, air_md = air_report.sections(args.quick, run=args.air)
    if air_rows:
        stale = ("| 3. Table 2: AIR", "| 5. Gradient variance", "- 3. Table 2:", "- 5. Gradient variance")
        at = next((i for i, line in enumerate(md) if line.startswith(stale[:2])), md.index("## Summary") + 4)
        md = [line for line in md if not line.startswith(stale)]
        md[at:at] = air_rows
        at = md.index("## Not yet measured") if "## Not yet measured" in md else len(md)
        md[at:at] = air_md
    # --- flows and kernels (part B): the recorded benchmarks/flows_2d_result.md (trains six models: not rerun) --
    flows = HERE / "flows_2d_result.md"
    if flows.exists():
        body = [("#" + line if line.startswith("## ") else line) for line in flows.read_text().splitlines()[1:]]
        section = ["## 2-D flows: flow matching and PFGM++ vs GMM-8 (recorded `flows_2d_result.md`)", *body, ""]
        at = md.index("## Not yet measured") if "## Not yet measured" in md else len(md)
        md[at:at] = section
    # --- dependency tracking (variance reduction issue): rerun, about 3 minutes ------------------------------
    dep = run(["benchmarks/dependency_tracking.py", "-n", str(8000 // scale), "--calls", str(max(200 // scale, 10))])
    body = [("#" + line if line.startswith("# ") else line) for line in dep[0].splitlines() if line.strip() != "done"]
    body = [line for line in body if not line.endswith(" done")]
    section = [f"`{dep[2]}` ({dep[1]:.0f} s)", "", *body, ""]
    at = md.index("## Not yet measured") if "## Not yet measured" in md else len(md)
    md[at:at] = section
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in body if line.startswith("| ")]
    tracked = {c[0]: c for c in cells if len(c) == 6 and c[1] == "gendsl, tracking"}
    numpyro = {c[0]: c for c in cells if len(c) == 6 and c[1].startswith("NumPyro")}
    dep_fig = "; ".join(
        f"{m}: {c[5]} lower than without (variance {c[2]}, NumPyro TraceGraph_ELBO {numpyro[m][2]})"
        for m, c in tracked.items()
    )
    flat = {m: float(c[2]) for m, c in tracked.items() if m.startswith("plate")}
    dep_ok = bool(flat) and max(flat.values()) / min(flat.values()) < 2
    row = f"| Dependency tracking (variance issue): per-point variance flat in N, lower than without | {dep_fig} "
    row += f"| {'holds' if dep_ok else 'missed'} |"
    at = next(i for i, line in enumerate(md) if line.startswith("| 6. Step time")) + 1
    md.insert(at, row)
    if "## Not yet measured" in md:
        at = md.index("## Not yet measured")
        if not any(line.strip() for line in md[at + 1 :]):
            md = md[:at]  # everything was measured
    Path(args.out).write_text("\n".join(md))
    print(f"wrote {args.out} in {elapsed / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
