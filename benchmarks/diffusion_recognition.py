"""Recognition + compile + first step of a DDPM with T steps: the chain unrolled vs written with ``gendsl.scan``.

The model is ``benchmarks/diffusion_step.py``'s: ``gendsl.models.DDPM`` on 64-dimensional data,
linear beta schedule, a ``TimeMLP`` eps network (256 x 3), batch 128, Adam 1e-3, trained by the
simple objective derived by ``diffusion_elbo`` from the program pair ``vp_reverse`` / ``vp_forward``.
Variants:

* ``scan``: ``DDPM(..., form="scan")`` (the default): both chains are ``gendsl.scan`` loops, the
  recognition traces the loop body once;
* ``unrolled``: ``DDPM(..., form="unrolled")``: the chains as Python loops, one site per step;
* ``before``: the code at ``--before`` (default: the commit before the scan form), whose DDPM was
  the unrolled programs and whose recognition traced them.

Each code version runs from a ``git archive`` of its commit (``--after``, default ``HEAD``, for
``scan`` and ``unrolled``), imported ahead of any installed ``gendsl``: a benchmark of committed code,
unaffected by edits in the working tree while it runs.

Every measurement is one fresh Python process (``--one VARIANT T``; cold caches, no persistent
compilation cache), which times with ``time.perf_counter``:

* import: ``jax``, ``optax``, ``gendsl.models``, ``gendsl.inference``;
* build: ``DDPM(...)`` (the program pair and ``diffusion_elbo``);
* recognize: ``ddpm.elbo.chain({}, x)``: tracing the guide, recognizing its Gaussian-linear chain,
  collapsing it (what every first use of the objectives waits for);
* init: ``SVI(ddpm.objective, adam).init(key, xs)`` (parameters and optimizer state);
* first step: ``jax.jit(svi.step)`` and its first call, ``block_until_ready`` (tracing the derived
  objective + XLA compilation + one step);
* total: build + recognize + init + first step (import excluded: the same for every variant);
  "process" is the parent's wall time of the subprocess.

The driver runs the variants and the T's interleaved (round r: every (T, variant) once), ``--reps``
rounds, and prints a markdown table of medians and min-max, and the first step's loss per variant
(the same keys: the variants must agree).

    python benchmarks/diffusion_recognition.py [--T 100 1000 4000] [--reps 3] [--before REV] [--after REV]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from _common import REPO, checkout, cpu_name

VARIANTS = ("before", "unrolled", "scan")
PHASES = ("import", "build", "recognize", "init", "first_step", "total", "process")
D, HIDDEN, DEPTH, BATCH = 64, 256, 3, 128
# The commit before the scan form (diffusion_elbo then traced the unrolled programs).
BEFORE = "1100c02"


def one(variant: str, T: int, root: str) -> dict:
    """Measure one variant in this (fresh) process, importing gendsl from ``root``; seconds per phase."""
    sys.path.insert(0, root)  # the snapshot's gendsl (its inference/ and models/ linked inside it)
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import optax

    import gendsl.inference.diffusion._derivation as derivation
    from gendsl.inference import SVI
    from gendsl.models.ddpm import DDPM

    if not os.path.realpath(derivation.__file__).startswith(os.path.realpath(root)):
        raise RuntimeError(f"imported {derivation.__file__}, expected the tree at {root}")
    t1 = time.perf_counter()
    options = {} if variant == "before" else {"form": variant}
    ddpm = DDPM((D,), T=T, hidden=HIDDEN, depth=DEPTH, **options)
    xs = jax.random.normal(jax.random.key(0), (BATCH, D))
    t2 = time.perf_counter()
    chain = ddpm.elbo.chain({}, xs[0])
    jax.block_until_ready(chain.table)
    t3 = time.perf_counter()
    svi = SVI(ddpm.objective, optax.adam(1e-3))
    state = jax.block_until_ready(svi.init(jax.random.key(1), xs))
    t4 = time.perf_counter()
    state, info = jax.block_until_ready(jax.jit(svi.step)(state, xs))
    t5 = time.perf_counter()
    return {"import": t1 - t0, "build": t2 - t1, "recognize": t3 - t2, "init": t4 - t3, "first_step": t5 - t4,
            "total": t5 - t1, "loss": -float(info.objective), "A_T": float(jnp.asarray(chain.A)[-1])}


def run_one(variant: str, T: int, root: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", variant, str(T), "--root", root]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{variant} T={T} failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process"] = wall
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[100, 1000, 4000], help="numbers of diffusion steps")
    p.add_argument("--reps", type=int, default=3, help="fresh processes per (T, variant), interleaved")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--before", default=BEFORE, help="the commit measured as 'before'")
    p.add_argument("--after", default="HEAD", help="the commit measured as 'scan' and 'unrolled'")
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "T"), help="internal: measure one, print JSON")
    p.add_argument("--root", help="internal: the tree to import gendsl from")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.root)))
        return
    started = datetime.datetime.now()
    after = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", args.after], capture_output=True, text=True,
                           check=True).stdout.strip()
    trees = {rev: checkout(rev) for rev in {args.before if v == "before" else after for v in args.variants}}
    roots = {v: trees[args.before if v == "before" else after] for v in args.variants}
    results = {(T, v): [] for T in args.T for v in args.variants}
    for r in range(args.reps):
        for T in args.T:
            for v in args.variants:
                res = run_one(v, T, roots[v])
                results[T, v].append(res)
                print(f"round {r + 1}: T={T} {v}: " + ", ".join(f"{ph} {res[ph]:.2f}" for ph in PHASES),
                      file=sys.stderr, flush=True)
    for tree in trees.values():
        shutil.rmtree(tree)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import jax  # only for the versions line, after all measurements

    print(
        f"DDPM (64-dim data, TimeMLP {HIDDEN}x{DEPTH}, batch {BATCH}, Adam): recognition + compile + first step; "
        f"each measurement in a fresh process, (T, variant) interleaved, {args.reps} processes each\n"
        f"{started:%Y-%m-%d %H:%M}; {cpu_name()}, {cpus} CPU cores, CPU only; jax {jax.__version__}, "
        f"Python {platform.python_version()}; 'before' = commit {args.before}, 'unrolled' and 'scan' = commit {after}\n"
    )
    print("Seconds: median (min-max). total = build + recognize + init + first step (import excluded).\n")
    print("| T | variant | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 2) + "|")
    medians = {}
    for T in args.T:
        for v in args.variants:
            rows = results[T, v]
            medians[f"{T}/{v}"] = {ph: statistics.median(r[ph] for r in rows) for ph in PHASES}
            cells = [f"{medians[f'{T}/{v}'][ph]:.2f} ({min(r[ph] for r in rows):.2f}-{max(r[ph] for r in rows):.2f})"
                     for ph in PHASES]
            print(f"| {T} | {v} | " + " | ".join(cells) + " |")
    print("\nFirst-step loss and A_T (sanity, same keys): " + "; ".join(
        f"T={T} {v} {results[T, v][0]['loss']:.5f} / {results[T, v][0]['A_T']:.6f}"
        for T in args.T for v in args.variants))
    print("JSON: " + json.dumps({"median": medians}))


if __name__ == "__main__":
    main()
