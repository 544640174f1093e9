"""Table 2 peer, gendsl side: reference values and step times of gendsl's AIR for ``air_genjax.py``.

Runs in gendsl's environment. Uses ``gendsl.models.air`` and ``benchmarks/air.py``'s objectives unchanged
(REINFORCE with the learned baseline ``air.baseline``, and ENUM, at every ``z_pres`` site), with
``benchmarks/air.py``'s data, initial parameters and minibatches.

1. Writes ``--npz``: the initial parameters (flat names, ``air_common.flatten``), ``--check-images``
   canvases, one set of guide choices per canvas (drawn by gendsl's guide) and gendsl's log densities of
   the model and the guide at those choices (``assess``): ``air_genjax.py`` evaluates its programs at
   the same parameters, images and choices.
2. Monte Carlo reference: for each estimator, ``batch_value_and_grad`` on the check canvases with
   ``--keys`` independent keys: the mean ELBO and the mean of a few gradient coordinates
   (``air_common.PROBES``), with standard errors.
3. Step time: one step = ``batch_value_and_grad`` on a ``--batch`` minibatch + an Adam update
   (``air_common.adam_ascent``, the same code as genjax's side), jitted, ``block_until_ready``; the
   estimators and a plain-JAX anchor step (``air_common.reference_step``) are called once per round in
   a rotating order.

Prints a markdown summary and a ``JSON:`` line.

    python benchmarks/genjax_peer/air_gendsl.py --npz /tmp/air_peer.npz --data ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import air as air_bench
import air_common

from gendsl.models.air import AIRConfig, batch_value_and_grad, make_air

NAMES = ["REINFORCE+baseline", "ENUM"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--n", type=int, default=10000, help="training canvases (one epoch), as benchmarks/air.py")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--npz", required=True, help="where to write parameters, check data and reference values")
    p.add_argument("--check-images", type=int, default=8)
    p.add_argument("--keys", type=int, default=200, help="keys for the Monte Carlo reference")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-checks", action="store_true", help="only time (the .npz must exist)")
    p.add_argument("--estimators", default=",".join(NAMES), help="comma-separated, from air.py's ESTIMATORS")
    args = p.parse_args(argv)

    train, minibatch = air_common.problem(args.data, args.n, args.seed)
    air = make_air(AIRConfig())
    init = {**air.model.init(jax.random.key(args.seed), jnp.asarray(train[0])),
            **air.guide.init(jax.random.key(args.seed + 1), jnp.asarray(train[0]))}
    names = args.estimators.split(",")
    objectives = {name: air_bench.objective(air, name) for name in names}
    notes, out = [], {}

    if not args.skip_checks:
        images = jnp.asarray(train[: args.check_images])
        guide, model = air.guide.bind(init), air.model.bind(init)
        choices, logp, logq = [], [], []
        for i, img in enumerate(images):
            tr = jax.jit(guide.simulate)(jax.random.key(1000 + i), img)
            choices.append({k: np.asarray(v) for k, v in tr.choices.items()})
            logq.append(float(jax.jit(guide.assess)(tr.choices, img)))
            logp.append(float(jax.jit(model.assess)(tr.choices, img)))
        data = {f"param/{k}": v for k, v in air_common.flatten(init).items()}
        data["images"] = np.asarray(images)
        for name in choices[0]:
            data[f"choice/{name}"] = np.stack([c[name] for c in choices])
        data["logp"], data["logq"] = np.asarray(logp), np.asarray(logq)
        notes.append(
            f"log densities at gendsl guide draws, {len(images)} canvases: log p(x, z) "
            + ", ".join(f"{v:.3f}" for v in logp[:3]) + ", ...; log q(z | x) " + ", ".join(f"{v:.3f}" for v in logq[:3])
            + ", ..."
        )

        keys = jax.random.split(jax.random.key(7), args.keys)
        for name, obj in objectives.items():

            def one(k, obj=obj):
                value, grads = batch_value_and_grad(obj, k, init, images)
                return value, jnp.stack(air_common.probe_values(air_common.flatten_jax(grads)))

            t0 = time.perf_counter()
            values, probes = jax.jit(lambda ks, f=one: jax.lax.map(f, ks))(keys)
            dt = time.perf_counter() - t0
            m, se = air_common.mean_se(values)
            pm = np.asarray(probes, np.float64)
            out[name] = {"value": [m, se], "probes": [[float(c.mean()), float(c.std(ddof=1) / math.sqrt(len(c)))]
                                                      for c in pm.T]}
            data[f"mc/{name}/values"] = np.asarray(values)
            data[f"mc/{name}/probes"] = pm
            notes.append(f"{name}: ELBO per canvas, mean ± s.e. over {args.keys} keys: {m:.2f} ± {se:.2f} ({dt:.0f} s)")
        np.savez(args.npz, **data)

    # ---- step time
    ref_fn, ref_args = air_common.reference_step()
    runners = {}
    for name, obj in objectives.items():

        def step(params, state, key, images, obj=obj):
            value, grads = batch_value_and_grad(obj, key, params, images)
            params, state = air_common.adam_ascent(params, grads, state, args.lr)
            return params, state, value

        runners[name] = [jax.jit(step), init, air_common.adam_init(init), 0]

    def call(name, batch):
        if name == "anchor":
            jax.block_until_ready(ref_fn(*ref_args))
            return
        r = runners[name]
        r[3] += 1
        r[1], r[2], value = r[0](r[1], r[2], jax.random.fold_in(jax.random.key(1), r[3]), batch)
        jax.block_until_ready(value)

    order = ["anchor", *names]
    first = {}
    warm = jnp.asarray(minibatch(args.batch))
    for name in order:
        t0 = time.perf_counter()
        call(name, warm)
        first[name] = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            call(name, warm)
    times = {name: [] for name in order}
    for r in range(args.rounds):
        batch = jnp.asarray(minibatch(args.batch))
        for name in order[r % len(order):] + order[: r % len(order)]:
            t0 = time.perf_counter()
            call(name, batch)
            times[name].append(time.perf_counter() - t0)
    steps_per_epoch = math.ceil(args.n / args.batch)
    timing = {}
    for name in order:
        t = np.asarray(times[name])
        timing[name] = {"median_ms": float(np.median(t) * 1e3), "min_ms": float(t.min() * 1e3),
                        "max_ms": float(t.max() * 1e3), "first_s": first[name],
                        "ratio_anchor": float(np.median(t / np.asarray(times["anchor"])))}
    out["timing"] = timing
    out["steps_per_epoch"] = steps_per_epoch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"gendsl AIR (jax {jax.__version__}), batch {args.batch}, {args.rounds} interleaved rounds after "
          f"{args.warmup} warm-up calls, load average {load:.1f} at the end\n")
    for line in notes:
        print(f"- {line}")
    print("\n| step | median ms [min-max] | s/epoch | median per-round ratio to the anchor | first call s |")
    print("|---|---|---|---|---|")
    for name, d in timing.items():
        per_epoch = f"{d['median_ms'] * steps_per_epoch / 1e3:.1f}" if name != "anchor" else "-"
        print(f"| {name} | {d['median_ms']:.0f} [{d['min_ms']:.0f}-{d['max_ms']:.0f}] | {per_epoch} | "
              f"{d['ratio_anchor']:.2f} | {d['first_s']:.1f} |")
    print("JSON: " + json.dumps(out))


if __name__ == "__main__":
    main()
