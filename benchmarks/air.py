"""Attend-Infer-Repeat on multi-MNIST (the paper's Table 2): seconds per epoch per estimator, gendsl vs Pyro.

Model: ``gendsl.models.air`` (50x50 canvas, up to 3 objects, 20x20 windows, z_what of
dimension 10, GRU guide of 128 units); the same model in Pyro is ``benchmarks/air_pyro.py``.
Data: ``benchmarks/multi_mnist.py`` canvases (0-3 digits; training canvases from the
first 8,000 MNIST digits of the folder's file, held-out canvases from the rest).

Estimators of the ELBO gradient (``z_where``, ``z_what`` reparameterized in every case):

=====================  =======================================================  =================================
row                    gendsl (per image, vmapped over the minibatch)            Pyro
=====================  =======================================================  =================================
REINFORCE+baseline     ``elbo``, ``Reinforce(baseline=air.baseline)``            ``TraceGraph_ELBO``, nn_baseline
ENUM                   ``elbo``, ``ENUM`` (exact sum over the 2^3 patterns)       ``TraceEnum_ELBO``, guide enum
MVD                    ``elbo``, ``MVD``                                          n/a (no MVD in Pyro)
IWAE(2)+REINFORCE      ``iwelbo(.., 2)``, ``Reinforce(baseline=air.baseline)``    n/a (see air_pyro.py)
IWAE(2)+MVD            ``iwelbo(.., 2)``, ``MVD``                                 n/a
=====================  =======================================================  =================================

1. Step time: one optimizer step (gradient estimate + Adam update) on a minibatch,
   after a warm-up (compilation), every system called once per round in a rotating
   order (A B C ... then B C ... A), ``block_until_ready`` on every gendsl call (Pyro's
   ``svi.step`` is synchronous). Seconds per epoch = median step time x steps per epoch.
2. Fixed wall-clock budget: each estimator trains from the same initial parameters
   for ``--budget`` seconds (the clock starts after the first, compiling, step), then
   the held-out ELBO (one guide sample per image, nats per image) and the count
   accuracy (objects in one guide sample vs the true count) are measured.

    python benchmarks/air.py --data ../shared/data/mnist                # ~25 min on 2 CPU cores
    python benchmarks/air.py --data ../shared/data/mnist --budget 30 --rounds 3 --no-pyro   # quick

Prints a markdown report (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gendsl.datasets import mnist_images, multi_mnist
from gendsl.inference import ENUM, MVD, Reinforce, elbo, iwelbo
from gendsl.models.air import AIRConfig, batch_value_and_grad, count_objects, make_air, with_strategy

ESTIMATORS = ["REINFORCE+baseline", "ENUM", "MVD", "IWAE(2)+REINFORCE", "IWAE(2)+MVD"]
PYRO_KIND = {"REINFORCE+baseline": "reinforce", "ENUM": "enum"}


def objective(air, name: str):
    baseline = Reinforce(baseline=air.baseline)
    strategy = {
        "REINFORCE+baseline": baseline,
        "ENUM": ENUM,
        "MVD": MVD,
        "IWAE(2)+REINFORCE": baseline,
        "IWAE(2)+MVD": MVD,
    }[name]
    guide = with_strategy(air.guide, strategy)
    return iwelbo(air.model, guide, 2) if name.startswith("IWAE") else elbo(air.model, guide)


class GendslRunner:
    """One estimator's jitted training step on gendsl's AIR."""

    def __init__(self, air, name, params, lr):
        self.opt = optax.adam(lr)
        obj = objective(air, name)

        def step(params, opt_state, key, images):
            value, grads = batch_value_and_grad(obj, key, params, images)
            grads = jax.tree_util.tree_map(jnp.negative, grads)  # ascend the objective
            updates, opt_state = self.opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        self.step_fn = jax.jit(step)
        self.params, self.state = params, self.opt.init(params)
        self.key = jax.random.key(1)
        self.t = 0

    def step(self, images):
        self.t += 1
        self.params, self.state, value = self.step_fn(
            self.params, self.state, jax.random.fold_in(self.key, self.t), images
        )
        return float(jax.block_until_ready(value))


class PyroRunner:
    def __init__(self, kind, config, lr, seed):
        import torch
        from air_pyro import make_svi

        self.torch = torch
        self.svi, self.nets = make_svi(kind, config, lr, seed)
        self.config = config

    def step(self, images):
        return -self.svi.step(self.torch.as_tensor(images)) / len(images)


def gendsl_eval(air, params, images, counts, seed=0):
    """Held-out mean ELBO per image (one guide sample each) and count accuracy of one guide sample."""
    est = objective(air, "REINFORCE+baseline")

    @jax.jit
    def one(key, x):
        value = est.estimate(key, params, x)
        tr = air.guide.bind(params).simulate(jax.random.fold_in(key, 1), x)
        return value, count_objects(tr.choices, air.config.steps)

    keys = jax.random.split(jax.random.key(seed + 100), len(images))
    values, found = jax.lax.map(lambda a: one(*a), (keys, jnp.asarray(images)), batch_size=100)
    return float(jnp.mean(values)), float(np.mean(np.asarray(found) == counts))


def pyro_eval(runner, images, counts):
    import pyro
    import torch
    from air_pyro import make_pyro_air
    from pyro import poutine
    from pyro.infer import Trace_ELBO

    model, guide, nets = make_pyro_air(runner.config)
    nets.load_state_dict(runner.nets.state_dict())
    x = torch.as_tensor(images)
    values, found = [], []
    with torch.no_grad():
        pyro.set_rng_seed(100)
        for i in range(0, len(x), 100):
            batch = x[i : i + 100]
            values.append(-Trace_ELBO().loss(model, guide, batch))
            tr = poutine.trace(guide).get_trace(batch)
            present, count = torch.ones(len(batch)), torch.zeros(len(batch))
            for t in range(runner.config.steps):
                present = present * tr.nodes[f"z_pres_{t}"]["value"]
                count = count + present
            found.append(count.numpy())
    return float(np.sum(values) / len(x)), float(np.mean(np.concatenate(found) == counts))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist", help="MNIST folder (IDX files)")
    parser.add_argument("--n", type=int, default=10000, help="training canvases (one epoch)")
    parser.add_argument("--test", type=int, default=1000, help="held-out canvases")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rounds", type=int, default=8, help="timing rounds (one step of every system each)")
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds per estimator")
    parser.add_argument("--no-pyro", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--estimators",
        default=",".join(ESTIMATORS),
        help=f"comma-separated rows to run (default all: {','.join(ESTIMATORS)})",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    unknown = sorted(set(estimators) - set(ESTIMATORS))
    if unknown or "REINFORCE+baseline" not in estimators:
        parser.error(
            f"--estimators: unknown {unknown}; choose from {ESTIMATORS}, including REINFORCE+baseline "
            "(the reference of the cost column)"
        )

    digits = mnist_images(args.data)
    split = int(len(digits) * 0.8)
    train, _train_counts = multi_mnist(digits[:split], args.n, seed=args.seed)
    test, test_counts = multi_mnist(digits[split:], args.test, seed=args.seed + 1)
    config = AIRConfig()
    air = make_air(config)
    init = {
        **air.model.init(jax.random.key(args.seed), jnp.asarray(train[0])),
        **air.guide.init(jax.random.key(args.seed + 1), jnp.asarray(train[0])),
    }
    steps_per_epoch = math.ceil(args.n / args.batch)
    rng = np.random.default_rng(args.seed)

    def minibatch():
        return train[rng.choice(args.n, args.batch, replace=False)]

    use_pyro = not args.no_pyro
    if use_pyro:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)

    # ---- 1. step time, interleaved
    systems = {}
    compile_s = {}
    for name in estimators:
        systems[("gendsl", name)] = GendslRunner(air, name, init, args.lr)
    if use_pyro:
        for name, kind in PYRO_KIND.items():
            if name not in estimators:
                continue
            systems[("Pyro", name)] = PyroRunner(kind, config, args.lr, args.seed)
    warm = minibatch()
    for k, runner in systems.items():
        t0 = time.perf_counter()
        runner.step(warm)
        compile_s[k] = time.perf_counter() - t0
        runner.step(warm)
        print(f"warm {k}: first step {compile_s[k]:.1f} s", file=sys.stderr)
    times = {k: [] for k in systems}
    order = list(systems)
    for r in range(args.rounds):
        batch = minibatch()
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for k in rotated:
            t0 = time.perf_counter()
            systems[k].step(batch)
            times[k].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    med = {k: float(np.median(v)) for k, v in times.items()}

    # ---- 2. fixed wall-clock budget
    quality = {}
    for k in systems:
        name = k[1]
        runner = (
            GendslRunner(air, name, init, args.lr)
            if k[0] == "gendsl"
            else PyroRunner(PYRO_KIND[name], config, args.lr, args.seed)
        )
        runner.step(minibatch())  # compile
        t0, n_steps = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.budget:
            runner.step(minibatch())
            n_steps += 1
        if k[0] == "gendsl":
            value, acc = gendsl_eval(air, runner.params, test, test_counts, args.seed)
        else:
            value, acc = pyro_eval(runner, test, test_counts)
        quality[k] = (n_steps, value, acc)
        print(f"budget {k}: {n_steps} steps, ELBO {value:.1f}, count accuracy {acc:.3f}", file=sys.stderr)
    init_value, init_acc = gendsl_eval(air, init, test, test_counts, args.seed)

    # ---- report
    md = [
        "# Attend-Infer-Repeat on multi-MNIST: gendsl vs Pyro (Table 2)",
        "",
        f"`python benchmarks/air.py --data {args.data} --n {args.n} --batch {args.batch} --rounds {args.rounds} "
        f"--budget {args.budget:g}{' --no-pyro' if not use_pyro else ''}"
        + (f" --estimators {args.estimators}" if estimators != ESTIMATORS else "")
        + f"` on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared with other jobs), {datetime.date.today()}; jax {jax.__version__}"
        + (f", torch {torch.__version__}, pyro {__import__('pyro').__version__}" if use_pyro else "")
        + ".",
        "",
        f"Epoch = {args.n} canvases = {steps_per_epoch} steps of {args.batch}. Step = gradient estimate + Adam update; "
        f"median over {args.rounds} interleaved rounds (min-max in brackets); seconds per epoch = median step x "
        f"{steps_per_epoch}.",
        "",
        "| estimator | gendsl ms/step [min-max] | gendsl s/epoch | Pyro ms/step [min-max] | Pyro s/epoch | "
        "Pyro / gendsl | cost vs REINFORCE+baseline (gendsl) | first step (compile), gendsl / Pyro |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = med[("gendsl", "REINFORCE+baseline")]
    for name in estimators:
        g = ("gendsl", name)
        p = ("Pyro", name)
        row = (
            f"| {name} | {med[g] * 1e3:.0f} [{min(times[g]) * 1e3:.0f}-{max(times[g]) * 1e3:.0f}] | "
            f"{med[g] * steps_per_epoch:.1f} | "
        )
        if p in med:
            row += (
                f"{med[p] * 1e3:.0f} [{min(times[p]) * 1e3:.0f}-{max(times[p]) * 1e3:.0f}] | "
                f"{med[p] * steps_per_epoch:.1f} | {med[p] / med[g]:.1f}x | "
            )
        else:
            row += "n/a | n/a | n/a | "
        row += f"{med[g] / base:.2f}x | {compile_s[g]:.1f} s / " + (f"{compile_s[p]:.1f} s |" if p in med else "n/a |")
        md.append(row)
    if ("Pyro", "ENUM") in med:
        md += [
            "",
            f"Pyro's own ENUM / REINFORCE+baseline cost: "
            f"{med[('Pyro', 'ENUM')] / med[('Pyro', 'REINFORCE+baseline')]:.2f}x.",
        ]
    md += [
        "",
        f"## After {args.budget:g} s of training per estimator",
        "",
        f"Same initial parameters, learning rate {args.lr:g}, batch {args.batch}; held-out: {args.test} canvases "
        "built from digits not used for training. ELBO: nats per image, one guide sample per image; count "
        f"accuracy: objects in one guide sample = true count (at initialization: ELBO {init_value:.0f}, "
        f"accuracy {init_acc:.3f}; always guessing one count scores about 0.25).",
        "",
        "| system | estimator | steps in budget | held-out ELBO | count accuracy |",
        "|---|---|---|---|---|",
    ]
    for k, (n_steps, value, acc) in quality.items():
        md.append(f"| {k[0]} | {k[1]} | {n_steps} | {value:.1f} | {acc:.3f} |")
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
