"""Gradient variance of each estimator at fixed parameters, and variance x time, next to NumPyro TraceGraph_ELBO.

Three models with discrete latents, the ELBO gradient in every parameter:

* ``coin``: ``z ~ Bernoulli(0.3)``, ``x ~ Normal(2z, 1)`` observed at 3; guide
  ``Bernoulli(logits=theta)`` at ``theta = -1`` (the README's example; exact gradient 0.8165).
* ``mixture``: six points of a three-component Gaussian mixture (means -2, 0, 2, weights
  0.3, 0.4, 0.3), ``z_i ~ Categorical`` in a plate; guide ``Categorical(logits=phi_i)``
  at fixed ``phi`` (a plate: per-data-point dependency tracking matters here).
* ``AIR``: ``gendsl.models.air`` at its initial parameters on one fixed multi-MNIST
  canvas with two digits (the continuous sites are reparameterized in every row; the
  rows differ in the ``z_pres`` sites).

Estimators (gendsl, REINFORCE with dependency tracking): REINFORCE without baseline;
REINFORCE with baselines (a constant per site and element: the mean of its EMA baseline
over 500 steps at the fixed parameters, i.e. about the mean of the site's cost); ENUM;
MVD. ``elbo`` drops the zero-mean ``∇θ log q`` term at the drawn value of ENUM and MVD
sites; the "(log q term kept)" rows are the same estimators in an ELBO written with
``sim`` (as a user would, and as ``elbo`` computed before issue 20), which keeps it.
NumPyro: ``TraceGraph_ELBO`` (REINFORCE with dependency tracking, no baselines) on
the same model functions (gendsl models run under NumPyro's handlers), same
parameters, ``jax.grad`` of its loss.

Reported per estimator: the mean over parameters of the per-parameter variance of one
gradient estimate (``n`` independent estimates), the median time of one jitted
estimate (estimators interleaved, ``block_until_ready``), their product (variance x
time: the variance per second of compute, lower is better), and a bias check (the
fraction of parameters whose mean differs from the ENUM mean by more than 4 combined
standard errors; about 0 for unbiased estimators).

    python benchmarks/grad_variance.py --data ../shared/data/mnist      # ~5 min on 2 CPU cores
    python benchmarks/grad_variance.py --models coin,mixture            # the small models only (~1 min)

With ``--auto``, instead: the sites are marked ``AUTO`` and ``gendsl.inference.choose_strategies``
picks each model's estimator by its own measurement (gradient variance x time of ENUM, MVD and
REINFORCE with an EMA baseline, ``--auto-repeats`` estimates each, at the same parameters); the table
gives its figures, its choice and how long the choice took (issue 16, item 5).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import TraceGraph_ELBO

import gendsl
import gendsl.distributions as dist
from gendsl.datasets import mnist_images, multi_mnist
from gendsl.inference import AUTO, ENUM, MVD, Reinforce, choose_strategies, density, elbo, expectation, sim
from gendsl.models.air import make_air

KEPT = " (log q term kept)"
ROWS = ["REINFORCE", "REINFORCE+baselines", "ENUM", "ENUM" + KEPT, "MVD", "MVD" + KEPT, "NumPyro TraceGraph_ELBO"]


def coin():
    @gendsl.model
    def p():
        z = gendsl.sample("z", dist.Bernoulli(0.3))
        gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=3.0)

    @gendsl.model
    def q():
        gendsl.sample("z", dist.Bernoulli(logits=gendsl.param("theta", 0.0)))

    return p, q, {"theta": jnp.array(-1.0)}, ()


def mixture():
    x = jnp.array([-2.3, -1.1, 0.2, 0.7, 1.9, 2.6])
    means = jnp.array([-2.0, 0.0, 2.0])

    @gendsl.model
    def p(x):
        with gendsl.plate("data", x.shape[0]):
            z = gendsl.sample("z", dist.Categorical(probs=jnp.array([0.3, 0.4, 0.3])))
            gendsl.sample("x", dist.Normal(means[z], 1.0), obs=x)

    @gendsl.model
    def q(x):
        phi = gendsl.param("phi", jnp.zeros((x.shape[0], 3)))
        with gendsl.plate("data", x.shape[0]):
            gendsl.sample("z", dist.Categorical(logits=phi))

    phi = jnp.array([[1.0, 0.0, -1.0], [0.5, 0.5, -1.0], [-0.5, 1.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0],
                     [-1.0, -0.5, 1.0]])
    return p, q, {"phi": phi}, (x,)


def air_problem(data, seed):
    digits = mnist_images(data)
    images, counts = multi_mnist(digits, 50, seed=seed)
    image = jnp.asarray(images[int(np.flatnonzero(counts == 2)[0])])
    air = make_air()
    params = {**air.model.init(jax.random.key(seed), image), **air.guide.init(jax.random.key(seed + 1), image)}
    return air.model, air.guide, params, (image,)


def strategy_for(row):
    return {"REINFORCE": Reinforce(baseline=None), "REINFORCE+baselines": Reinforce(baseline="ema"), "ENUM": ENUM,
            "MVD": MVD}[row.removesuffix(KEPT)]


def kept_elbo(p, q):
    """The ELBO as a user writes it with ``sim``: every site keeps the zero-mean ``∇θ log q`` term
    at its draw, which ``elbo`` drops (for ENUM and MVD sites since issue 20, item 3)."""

    def f(params, *args):
        z, log_q = sim(q.bind(params))(*args)
        return density(p.bind(params))(z, *args) - log_q

    return expectation(f, models=(p, q))


def with_rules(q, strategy, sites):
    return gendsl.model(gendsl.handlers.strategy(q, rules={s: strategy for s in sites}))


def estimators(p, q, params, args, sites):
    """One jitted ``key -> gradient`` function per row."""
    out = {}
    for row in ROWS[:-1]:
        guide = with_rules(q, strategy_for(row), sites)
        objective = kept_elbo(p, guide) if row.endswith(KEPT) else elbo(p, guide)
        if row == "REINFORCE+baselines":
            # Per-site constant baselines at the fixed parameters: the EMA baselines' trajectory
            # averaged over 500 steps after 100 of burn-in (a single EMA value is too noisy).
            def ema_step(b, k, objective=objective):
                b = objective.value_and_grad_with_baselines(k, params, *args, baselines=b)[2]
                return b, b

            b0 = objective.value_and_grad_with_baselines(jax.random.key(0), params, *args)[2]
            _, path = jax.jit(lambda b: jax.lax.scan(ema_step, b, jax.random.split(jax.random.key(1), 600)))(b0)
            b = jax.tree_util.tree_map(lambda a: jnp.mean(a[100:], axis=0), path)

            def grad(k, objective=objective, b=b):
                return objective.value_and_grad_with_baselines(k, params, *args, baselines=b)[1]
        else:
            def grad(k, objective=objective):
                return objective.grad(k, params, *args)
        out[row] = jax.jit(grad)
    loss = TraceGraph_ELBO()

    def numpyro_grad(k):
        # The loss is -ELBO (with TraceGraph's surrogate): its gradient is minus the ELBO gradient.
        g = jax.grad(lambda prm: loss.loss(k, prm, p, q, *args))(params)
        return jax.tree_util.tree_map(jnp.negative, g)

    out[ROWS[-1]] = jax.jit(numpyro_grad)
    return out


def flat(tree):
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def draws(fn, n, seed, chunk):
    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.lax.map(lambda k: flat(fn(k)), keys, batch_size=chunk), np.float64)


def measure(name, problem, n, rounds, chunk, sites):
    p, q, params, args = problem
    fns = estimators(p, q, params, args, sites)
    samples = {row: draws(fn, n, 7, chunk) for row, fn in fns.items()}
    for fn in fns.values():
        jax.block_until_ready(fn(jax.random.key(0)))
    times = {row: [] for row in fns}
    order = list(fns)
    for r in range(rounds):
        for row in order[r % len(order):] + order[: r % len(order)]:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[row](jax.random.key(r)))
            times[row].append(time.perf_counter() - t0)
    ref_mean = samples["ENUM"].mean(0)
    ref_se = samples["ENUM"].std(0, ddof=1) / np.sqrt(n)
    lines = []
    for row, g in samples.items():
        var = g.var(0, ddof=1)
        se = np.sqrt(var / n + ref_se**2)
        off = np.abs(g.mean(0) - ref_mean) > 4 * se + 1e-6 + 1e-4 * np.abs(ref_mean)
        t = float(np.median(times[row]))
        lines.append(f"| {name} | {row} | {var.mean():.4g} | {t * 1e3:.2f} | {var.mean() * t:.3g} | "
                     f"{off.mean():.3f} |")
        print(lines[-1], file=sys.stderr)
    return lines, g.shape[1]


def auto(name, problem, sites, repeats, seed):
    """The rows of ``choose_strategies`` on one model (``--auto``)."""
    p, q, params, args = problem
    t0 = time.perf_counter()
    choice = choose_strategies(elbo(p, with_rules(q, AUTO, sites)), jax.random.key(seed), *args, params=params,
                               repeats=repeats)
    seconds = time.perf_counter() - t0
    lines = []
    for r in choice.rows:
        where = r.sites[0] if len(r.sites) == 1 else f"{r.sites[0]} .. {r.sites[-1]} ({len(r.sites)})"
        if r.reason is not None:
            lines.append(f"| {name} | {where} | {r.candidate} | skipped: {r.reason} | | | |")
            continue
        product = "0 (exact)" if r.exact else f"{r.product:.3g}"
        lines.append(f"| {name} | {where} | {r.candidate} | {r.variance:.4g} ± {r.variance_se:.2g} | "
                     f"{r.seconds * 1e3:.3f} | {product} | {'**chosen**' if r.chosen else ''} |")
    lines.append(f"| {name} | | choice took {seconds:.1f} s | | | | |")
    for line in lines:
        print(line, file=sys.stderr)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist", help="MNIST folder (for the AIR canvas)")
    parser.add_argument("-n", type=int, default=20000, help="gradient estimates per row (small models)")
    parser.add_argument("--n-air", type=int, default=400, help="gradient estimates per row (AIR)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--models", default="coin,mixture,AIR",
                        help="comma-separated subset of coin, mixture, AIR (AIR needs --data)")
    parser.add_argument("--auto", action="store_true", help="run choose_strategies (AUTO) on each model instead")
    parser.add_argument("--auto-repeats", type=int, default=64, help="estimates per candidate with --auto")
    args = parser.parse_args()
    chosen = args.models.split(",")
    unknown = sorted(set(chosen) - {"coin", "mixture", "AIR"})
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from coin, mixture, AIR")
    numpyro.enable_x64(False)

    md = [
        "# Gradient variance per estimator at fixed parameters (issue 5, item 5)",
        "",
        f"`python benchmarks/grad_variance.py --data {args.data} -n {args.n} --n-air {args.n_air} "
        f"--rounds {args.rounds} --models {args.models}` on {platform.machine()}, {os.cpu_count()} CPU cores "
        "(shared with other jobs), "
        f"{datetime.date.today()}; jax {jax.__version__}, numpyro {numpyro.__version__}.",
        "",
        "Variance: mean over parameters of the per-parameter variance of one ELBO-gradient estimate. Time: median "
        "of one jitted estimate, estimators interleaved. Off vs ENUM: fraction of parameters whose mean is more than "
        "4 combined standard errors from the ENUM mean (about 0 when unbiased).",
        "",
        "| model | estimator | variance | ms / estimate | variance x s | off vs ENUM |",
        "|---|---|---|---|---|---|",
    ]
    sizes = {}
    problems = {
        "coin": lambda: (coin(), args.n, 5000, ["z"]),
        "mixture": lambda: (mixture(), args.n, 5000, ["z"]),
        "AIR": lambda: (air_problem(args.data, args.seed), args.n_air, 25, ["z_pres_*"]),
    }
    if args.auto:
        md[0] = "# AUTO: estimator chosen by measured gradient variance x time (issue 16, item 5)"
        md[2] = (f"`python benchmarks/grad_variance.py --auto --auto-repeats {args.auto_repeats} --data {args.data} "
                 f"--models {args.models}` on {platform.machine()}, {os.cpu_count()} CPU cores (shared), "
                 f"{datetime.date.today()}; jax {jax.__version__}.")
        md[4] = ("Variance ± standard error: mean over parameters of the per-parameter variance of one ELBO-gradient "
                 "estimate. Time: median of the timed estimates, candidates interleaved.")
        md[6:8] = ["| model | sites | candidate | variance | ms / estimate | variance x s | choice |",
                   "|---|---|---|---|---|---|---|"]
    for name in chosen:
        problem, n, chunk, sites = problems[name]()
        if args.auto:
            md += auto(name, problem, sites, args.auto_repeats, args.seed)
            sizes[name] = sum(np.size(a) for a in jax.tree_util.tree_leaves(problem[2]))
            continue
        lines, sizes[name] = measure(name, problem, n, args.rounds, chunk, sites)
        md += lines
    md += ["", "Parameters: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + "."]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
