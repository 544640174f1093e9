"""Run the peer benchmarks (genjax.vi, and NumPyro / Pyro on the noisy cone) and write their reports.

``python benchmarks/genjax_peer/report.py`` (from the repository root, in gendsl's environment) runs

* ``benchmarks/noisy_cone_peers.py`` (Table 4: gendsl, NumPyro, Pyro) with this Python;
* ``benchmarks/genjax_peer/noisy_cone.py`` (Table 4 in genjax) with the genjax environment's Python;
* ``benchmarks/genjax_peer/vae_step.py`` at batch 64..1024 with the genjax environment's Python
  (Table 1 peer: genjax / hand-written in genjax's JAX);
* ``air_feasibility.py`` (genjax), then ``air_gendsl.py`` (this Python) and ``air_genjax.py`` (genjax):
  Table 2, AIR with REINFORCE+baseline and ENUM in both systems (needs MNIST in ``AIR_DATA``, default
  ``../shared/data/mnist``);

and writes ``benchmarks/genjax_peer/RESULTS_genjax.md`` and ``benchmarks/noisy_cone_peers_result.md``
(``--out-dir`` elsewhere; ``--quick`` checks the scripts and prints instead of writing). A part that
fails is reported in place; the others still run.
The genjax environment is ``/work/venvs/genjax`` (``python3.11 -m venv /work/venvs/genjax &&
/work/venvs/genjax/bin/pip install genjax``) or the interpreter named by ``GENJAX_PYTHON``; without it the
genjax parts are skipped with a message. ``benchmarks/run_all.py`` calls :func:`peer_sections`
(``run_all.py --peers-only`` runs just this step).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GENJAX_PYTHON = Path(os.environ.get("GENJAX_PYTHON", "/work/venvs/genjax/bin/python"))
AIR_DATA = Path(os.environ.get("AIR_DATA", ROOT.parent / "shared" / "data" / "mnist"))
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
6. **`jax.nn.relu` fails in any ADEV expectation** (it is a `custom_jvp` function; the interpreter's
   default rule raises "TypeError: zeros_like requires ndarray or scalar arguments, got WrappedFun").
   AIR's networks use `jnp.maximum(x, 0)` instead (same values).
7. **`adev.baseline(prim)` fails when the baseline has a symbolic-zero tangent** (a constant or
   `stop_gradient`-ed baseline: "primal and tangent arguments to jax.jvp must have the same tree
   structure"). AIR passes the learned baseline with its tangent; the primitive subtracts and adds it
   back, so its gradient cancels. genjax does not fit baselines: AIR's learned baseline is fitted by
   least squares to the sampled ELBO next to ADEV's gradient (gendsl fits it inside its estimator).
8. **IWAE(K)**: `vi.IWELBO` cannot run (3), so AIR's IWAE(2) draws its two particles one after the other
   in one expectation (unrolled) and returns `logsumexp(log w) - log 2`.
"""


class PeerFailure(RuntimeError):
    """A peer script exited with an error (its output tail is in the message)."""


def _run(python: str | Path, script: list[str]) -> tuple[str, float, str]:
    shown = f"{python} {' '.join(script)}"
    print(f"$ {shown}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    out = subprocess.run([str(python), *script], cwd=ROOT, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PeerFailure(f"`{shown}` failed (exit {out.returncode}): {last}")
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


def _cone_peers(steps: list[str], figures: dict) -> tuple[list[str], list[str]]:
    cone = _run(sys.executable, ["benchmarks/noisy_cone_peers.py", *steps])
    figures["cone_peers"] = _json(cone[0])
    md = [
        "## 4. Table 4 peers: noisy cone, ELBO and IWELBO(5) in gendsl, NumPyro, Pyro (and genjax)",
        "",
        f"`{cone[2]}` ({cone[1]:.0f} s)",
        "",
        _strip(cone[0]),
        "",
    ]
    cp = figures["cone_peers"]
    fig = "; ".join(
        f"{name}: " + ", ".join(f"{sys_} {cp[f'{name}/{sys_}']['mean']:.2f}" for sys_ in ("gendsl", "NumPyro", "Pyro")
                                if f"{name}/{sys_}" in cp)
        for name in ("ELBO", "IWELBO(5)")
    )
    return md, [f"| 4. Table 4 under one protocol (mean over seeds) | {fig} | measured |"]


def _cone_genjax(steps: list[str], figures: dict) -> tuple[list[str], list[str]]:
    gj_cone = _run(GENJAX_PYTHON, ["benchmarks/genjax_peer/noisy_cone.py", "--hierarchical", *steps])
    figures["cone_genjax"] = cg = _json(gj_cone[0])
    md = [
        "### genjax 0.10.3 on the noisy cone (same protocol)",
        "",
        f"`{gj_cone[2]}` ({gj_cone[1]:.0f} s)",
        "",
        _strip(gj_cone[0]),
        "",
    ]
    fig = "; ".join(f"{name}: genjax {cg[f'{name}/genjax']['mean']:.2f}" for name in ("ELBO", "IWELBO(5)"))
    return md, [f"| genjax.vi in Table 4 (mean over seeds, after corrections 1-4) | {fig} | measured |"]


def _table1(quick: bool, figures: dict) -> tuple[list[str], list[str]]:
    t1_md, t1 = table1(quick)
    figures["table1_genjax"] = t1
    md = [
        "## 1b. Table 1 peer: genjax.vi's VAE ELBO gradient vs hand-written JAX in genjax's environment",
        "",
        "Ratios are to the hand-written step measured in the same process (genjax runs on jax 0.5.3, gendsl on "
        "its own JAX; compare ratios, not milliseconds): median of per-round ratios.",
        "",
        *t1_md,
    ]
    ratios = ", ".join(f"{d['genjax']['ratio_rounds']:.2f} (B={b})" for b, d in t1.items())
    pe = ", ".join(f"{d['genjax_pe']['ratio_rounds_pe']:.2f}" for d in t1.values())
    return md, [
        f"| genjax.vi in Table 1 (measured, not a goal) | genjax batched program / hand-written (genjax's JAX): "
        f"{ratios}; per-example programs / hand-written per-example: {pe} | measured |"
    ]


def _air(quick: bool, figures: dict) -> tuple[list[str], list[str]]:
    feas = _run(GENJAX_PYTHON, ["benchmarks/genjax_peer/air_feasibility.py"])
    md = ["## 3b. Table 2 peer: AIR in genjax 0.10.3", "", f"`{feas[2]}` ({feas[1]:.0f} s)", "", _strip(feas[0]), ""]
    if not (AIR_DATA / "t10k-images-idx3-ubyte.gz").exists() and not (AIR_DATA / "train-images-idx3-ubyte.gz").exists():
        msg = f"AIR timing skipped: no MNIST in {AIR_DATA} (set AIR_DATA)"
        print(msg, file=sys.stderr)
        return [*md, msg + ".", ""], [f"| genjax.vi in Table 2 (AIR) | {msg} | - |"]
    estimators = ["REINFORCE+baseline", "ENUM"] + ([] if quick else ["IWAE(2)+REINFORCE"])
    small = ["--keys", "4", "--rounds", "1", "--warmup", "1", "--n", "2000"] if quick else ["--keys", "48",
                                                                                           "--rounds", "20"]
    small += ["--estimators", ",".join(estimators)]
    npz = Path(tempfile.gettempdir()) / "air_peer_report.npz"
    common = ["--npz", str(npz), "--data", str(AIR_DATA), *small]
    ref = _run(sys.executable, ["benchmarks/genjax_peer/air_gendsl.py", *common,
                                *(["--check-images", "2"] if quick else [])])
    ref_out = Path(tempfile.gettempdir()) / "air_peer_report_gendsl.md"
    ref_out.write_text(ref[0])
    gj = _run(GENJAX_PYTHON, ["benchmarks/genjax_peer/air_genjax.py", *common, "--gendsl", str(ref_out)])
    figures["air_gendsl"] = _json(ref[0])
    figures["air_genjax"] = air = _json(gj[0])
    md += [f"`{ref[2]}` ({ref[1]:.0f} s)", "", _strip(ref[0]), "", f"`{gj[2]}` ({gj[1]:.0f} s)", "", _strip(gj[0]), ""]
    g = figures["air_gendsl"]["timing"]
    fig = "; ".join(
        f"{n}: genjax {air['timing'][n]['median_ms']:.0f} ms/step vs gendsl {g[n]['median_ms']:.0f} ms/step "
        f"(anchor-normalized {air['timing'][n]['ratio_anchor'] / g[n]['ratio_anchor']:.2f}×)"
        for n in estimators
    )
    return md, [f"| genjax.vi in Table 2 (AIR; MVD and IWAE(2)+MVD not expressible: `flip_mvd` raises) | {fig} "
                "| measured |"]


def peer_sections(quick: bool = False) -> tuple[list[str], list[str], dict]:
    """Run every peer benchmark; returns (markdown sections, summary-table rows, raw figures).

    A part that fails (or whose environment is missing) is reported in place and the others still run.
    """
    steps = ["--steps", "500", "--seeds", "2", "--eval-samples", "1000", "--check-samples", "2000"] if quick else []
    figures: dict = {}
    md: list[str] = []
    summary: list[str] = []

    def part(label, fn, *args):
        try:
            m, rows = fn(*args)
        except (PeerFailure, KeyError, ValueError) as e:
            print(f"{label}: {e}", file=sys.stderr)
            m, rows = [f"{label}: not measured, {e}", ""], [f"| {label} | not measured: {e} | failed |"]
        md.extend(m)
        summary.extend(rows)

    part("Table 4 peers (noisy cone: gendsl, NumPyro, Pyro)", _cone_peers, steps, figures)
    if not genjax_available():
        msg = (
            f"genjax peer skipped: no genjax environment at {GENJAX_PYTHON} (python3.11 -m venv /work/venvs/genjax "
            "&& /work/venvs/genjax/bin/pip install genjax; or set GENJAX_PYTHON)"
        )
        print(msg, file=sys.stderr)
        md += [f"genjax: {msg}.", ""]
        summary.append(f"| genjax.vi as a peer (Tables 1, 2, 4) | {msg} | - |")
        return md, summary, figures
    part("genjax.vi in Table 4 (noisy cone)", _cone_genjax, steps, figures)
    part("genjax.vi in Table 1 (VAE)", _table1, quick, figures)
    part("genjax.vi in Table 2 (AIR)", _air, quick, figures)
    md += ["", CORRECTIONS]
    return md, summary, figures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps and calls: checks the scripts, not for numbers")
    p.add_argument("--out-dir", default=None, help="write the two reports here (default: their places in the "
                   "repository; with --quick: nowhere, the report is printed)")
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
    # the noisy-cone section: from the first heading to the next heading or genjax line
    end = next((i for i, line in enumerate(md) if i > 0 and line.startswith(("## ", "### ", "genjax"))), len(md))
    cone = "\n".join(["# Noisy cone peers", "", *md[1:end]]) + "\n"
    if args.quick and args.out_dir is None:
        print(text)  # a quick run checks the scripts; it does not replace measured reports
        return
    results = Path(args.out_dir) / "RESULTS_genjax.md" if args.out_dir else HERE / "RESULTS_genjax.md"
    cone_path = Path(args.out_dir) / "noisy_cone_peers_result.md" if args.out_dir else (
        ROOT / "benchmarks" / "noisy_cone_peers_result.md")
    results.write_text(text)
    cone_path.write_text(cone)
    print(f"wrote {results} and {cone_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
