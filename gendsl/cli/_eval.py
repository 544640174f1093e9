"""``gendsl eval``: the held-out ELBO and an importance-weighted log-likelihood estimate (IWAE-K).

With minibatch training (``--batch-size``), both are computed for every data
point separately (``jax.vmap`` over points, each with its own key) and
averaged: the IWAE-K bound ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` of each
point, as in Burda et al. (2016). It is a lower bound of ``log p(x)`` that
tightens as ``K`` grows. Without minibatches (a model of the whole data set,
like eight schools), the numbers are for the whole data set: ``log p(data)``.
Each number is the mean of ``--repeats`` independent estimates, reported with
its Monte-Carlo standard error.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gendsl.cli._outputs import write_json
from gendsl.cli._program import take
from gendsl.cli._run import open_run

__all__ = ["evaluate"]


def evaluate(args) -> int:
    """Run ``gendsl eval``; returns the exit code."""
    from gendsl.inference import elbo, iwelbo

    run = open_run(args.program, args.run, args.data)
    setup, params = run.setup, run.params
    data, split = setup.data.test, "test"
    if data is None or args.split == "train":
        data, split = setup.data.train, "train"
    if args.split == "test" and setup.data.test is None:
        print("note: the program's data() has no test split; evaluating on the training data")
    K, S, R = args.particles, args.samples, args.repeats
    bound, iw = elbo(setup.model, setup.guide), iwelbo(setup.model, setup.guide, K)
    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    if setup.batched:
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        if args.limit:
            n = min(n, args.limit)
        chunk = max(1, min(args.eval_batch_size, 200_000 // (max(K, S) * R)))

        def per_point(k, x):
            one = jax.tree_util.tree_map(lambda a: a[None], x)
            k1, k2 = jax.random.split(k)
            return bound.estimate(k1, params, one, samples=S), iw.estimate(k2, params, one)

        run_chunk = jax.jit(jax.vmap(jax.vmap(per_point, in_axes=(0, None)), in_axes=(0, 0)))
        elbos, iwaes = [], []
        for start in range(0, n, chunk):
            x = take(data, jnp.arange(start, min(start + chunk, n)))
            m = jax.tree_util.tree_leaves(x)[0].shape[0]
            keys = jax.random.split(jax.random.fold_in(key, start), m * R).reshape(m, R)
            e, w = setup.program.call("in the model or guide", run_chunk, keys, x)
            elbos.append(np.asarray(e))
            iwaes.append(np.asarray(w))
        e, w = np.concatenate(elbos), np.concatenate(iwaes)  # (points, repeats)
        # Average over points; the standard error is over the repeats of that average.
        elbo_mean, elbo_se = _mean_se(e.mean(axis=0))
        iwae_mean, iwae_se = _mean_se(w.mean(axis=0))
        unit = f"nats per data point ({n} {split} points)"
    else:
        n = None
        keys = jax.random.split(key, 2 * R).reshape(2, R)
        e = jax.jit(jax.vmap(lambda k: bound.estimate(k, params, data, samples=S)))(keys[0])
        w = jax.jit(jax.vmap(lambda k: iw.estimate(k, params, data)))(keys[1])
        elbo_mean, elbo_se = _mean_se(np.asarray(e))
        iwae_mean, iwae_se = _mean_se(np.asarray(w))
        unit = f"nats ({split} data as one data set)"
    seconds = time.perf_counter() - t0
    result = {
        "split": split,
        "points": n,
        "step": run.meta.get("step"),
        "elbo": elbo_mean,
        "elbo_se": elbo_se,
        "elbo_samples": S,
        f"iwae_{K}": iwae_mean,
        f"iwae_{K}_se": iwae_se,
        "particles": K,
        "repeats": R,
        "seed": args.seed,
        "seconds": round(seconds, 2),
    }
    path = os.path.join(run.folder, "eval.json")
    write_json(path, result)
    print(f"{os.path.basename(args.program)} at step {run.meta.get('step')}, {unit}:")
    print(f"  ELBO ({S} samples):     {elbo_mean:10.3f} +- {elbo_se:.3f}")
    print(f"  IWAE-{K} log-likelihood: {iwae_mean:10.3f} +- {iwae_se:.3f}   (a lower bound of log p(x))")
    print(f"  (+- is the Monte-Carlo standard error over {R} repeats; {seconds:.1f} s) -> {path}")
    return 0


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), se
