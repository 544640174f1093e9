"""``gendsl eval``: the held-out ELBO and an importance-weighted log-likelihood estimate (IWAE-K).

The numbers come from ``gendsl.inference.evaluate_bounds``. With minibatch
training (``--batch-size``), both are computed for every data point separately
and averaged: the IWAE-K bound ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` of each
point, as in Burda et al. (2016). It is a lower bound of ``log p(x)`` that
tightens as ``K`` grows. Without minibatches (a model of the whole data set,
like eight schools), the numbers are for the whole data set: ``log p(data)``.
Each number is the mean of ``--repeats`` independent estimates, reported with
its Monte-Carlo standard error.
"""

from __future__ import annotations

import inspect
import os
import time

import jax
import jax.numpy as jnp

from gendsl.cli._errors import CLIError
from gendsl.cli._posterior_run import evaluate_posterior, is_nuts_run
from gendsl.cli._program import take
from gendsl.cli._runfolder import RunFolder
from gendsl.cli._trained import open_trained

__all__ = ["evaluate"]


def evaluate(args) -> int:
    """Run ``gendsl eval``; returns the exit code."""
    from gendsl.inference import evaluate_bounds

    if is_nuts_run(args.run):
        for flag, given in (("--probes", args.probes), ("--exact", args.exact), ("--raw", args.raw)):
            if given:
                raise CLIError(f"{flag}: this is a NUTS run (posterior draws, no parameters or ODE likelihood): "
                               "drop it")
        return evaluate_posterior(args)
    run = open_trained(args.program, args.run, args.data, raw=args.raw)
    setup, params = run.setup, run.params
    data, split = setup.data.test, "test"
    if data is None or args.split == "train":
        data, split = setup.data.train, "train"
    if args.split == "test" and setup.data.test is None:
        print("note: the program's data() has no test split; evaluating on the training data")
    if setup.kind.kind != "vi":
        return _evaluate_direct(args, run, data, split)
    for flag, given in (("--probes", args.probes), ("--exact", args.exact)):
        if given:
            raise CLIError(f"{flag}: applies to a Trainable run with an ODE likelihood (flows, PFGM++, EDM); this "
                           "run trains a model and a guide, evaluated by its ELBO and IWAE bound: drop it")
    K, S, R = args.particles, args.samples, args.repeats
    if setup.batched and args.limit:
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        data = take(data, jnp.arange(min(n, args.limit)))
    t0 = time.perf_counter()
    chunk = max(1, min(args.eval_batch_size, 200_000 // (max(K, S) * R)))
    r = setup.program.call(
        "in the model or guide", evaluate_bounds, setup.model, setup.guide, params, data, key=jax.random.key(args.seed),
        particles=K, samples=S, repeats=R, per_point=setup.batched, chunk=chunk,
    )
    if r.points is not None:
        unit = f"nats per data point ({r.points} {split} points)"
    else:
        unit = f"nats ({split} data as one data set)"
    seconds = time.perf_counter() - t0
    result = {
        "split": split,
        "points": r.points,
        "step": run.meta.get("step"),
        "elbo": r.elbo,
        "elbo_se": r.elbo_se,
        "elbo_samples": S,
        f"iwae_{K}": r.iwae,
        f"iwae_{K}_se": r.iwae_se,
        "particles": K,
        "repeats": R,
        "seed": args.seed,
        "seconds": round(seconds, 2),
    }
    path = run.folder.write_json(RunFolder.EVAL, result)
    print(f"{os.path.basename(args.program)} at step {run.meta.get('step')}, {unit}:")
    print(f"  ELBO ({S} samples):     {r.elbo:10.3f} +- {r.elbo_se:.3f}")
    print(f"  IWAE-{K} log-likelihood: {r.iwae:10.3f} +- {r.iwae_se:.3f}   (a lower bound of log p(x))")
    print(f"  (+- is the Monte-Carlo standard error over {R} repeats; {seconds:.1f} s) -> {path}")
    return 0


def _evaluate_options(args, kind) -> dict:
    """``evaluate``'s keyword options from the command line: ``samples`` (Monte-Carlo draws per point of a
    bound) and ``probes`` (Hutchinson), where the model's ``evaluate`` has them."""
    accepts = inspect.signature(kind.trainable.evaluate).parameters
    options = {"samples": args.samples} if "samples" in accepts else {}
    if args.probes is None and not args.exact:
        return options
    if "probes" not in accepts:
        flag = "--exact" if args.exact else f"--probes {args.probes}"
        raise CLIError(f"{flag}: {type(kind.trainable).__name__}.evaluate has no ODE likelihood to choose a divergence "
                       "for (flows, PFGM++ and EDM have); drop it")
    return {**options, "probes": args.probes} if args.probes is not None else options


def _evaluate_direct(args, run, data, split: str) -> int:
    """A Trainable's own metric (``trainable.evaluate``), or an objective's held-out value, with standard errors."""
    import numpy as np

    setup, params = run.setup, run.params
    n = jax.tree_util.tree_leaves(data)[0].shape[0] if jax.tree_util.tree_leaves(data)[0].ndim else None
    if args.limit and n is not None:
        data = take(data, jnp.arange(min(n, args.limit)))
        n = min(n, args.limit)
    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    kind = setup.kind
    if kind.kind == "trainable":
        options = _evaluate_options(args, kind)
        metrics = setup.program.call(f"in {kind.name}.evaluate(params, data, key)", kind.trainable.evaluate,
                                     params, data, key, **options)
        what = f"{type(kind.trainable).__name__}.evaluate"
        if options.get("probes"):
            what += f" (Hutchinson divergence, {options['probes']} probes per point)"
        if options.get("samples"):
            what += f" ({options['samples']} Monte-Carlo draws per point)"
    else:
        for flag, given in (("--probes", args.probes), ("--exact", args.exact)):
            if given:
                raise CLIError(f"{flag}: applies to a Trainable with an ODE likelihood; `{kind.name}` is an objective "
                               "alone, evaluated by its own value: drop it")
        # An objective alone has no metric of its own: its value on the split, --repeats estimates.
        objective = setup.built.objective
        keys = jax.random.split(key, args.repeats)
        values = [float(setup.program.call("in the objective", objective.estimate, k, params, data,
                                           samples=args.samples)) for k in keys]
        se = float(np.std(values, ddof=1) / np.sqrt(len(values)))
        metrics = {"objective": (float(np.mean(values)), se)}
        what = f"the objective ({args.repeats} estimates of {args.samples} samples)"
    seconds = time.perf_counter() - t0
    table = {name: {"value": float(v), "se": float(e)} for name, (v, e) in metrics.items()}
    result = {"kind": kind.kind, "split": split, "points": n, "step": run.meta.get("step"),
              "weights": run.meta.get("weights"), "metrics": table, "seed": args.seed, "seconds": round(seconds, 2)}
    path = run.folder.write_json(RunFolder.EVAL, result)
    weights = " (EMA weights)" if run.meta.get("weights") == "ema" else ""
    print(f"{os.path.basename(args.program)} at step {run.meta.get('step')}{weights}, {what} on {n} {split} points:")
    for name, m in table.items():
        print(f"  {name:<14} {m['value']:12.5g} +- {m['se']:.3g}")
    print(f"  (+- is the standard error; {seconds:.1f} s) -> {path}")
    return 0
