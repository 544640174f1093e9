"""Training-step time of the DDPM objective derived from the program pair vs the same loss written by hand in JAX.

The model: DDPM on 64-dimensional data (scikit-learn digits' shape), T = 1000,
linear beta schedule, a ``TimeMLP`` eps network (64 + 16 time features -> 256 ->
256 -> 256 -> 64, SiLU), batch 128.

* derived: ``gendsl.models.DDPM(...).objective`` -- the simple objective (an
  ``Expectation`` of minus the loss) of the program pair ``vp_reverse`` /
  ``vp_forward`` run through ``diffusion_elbo``: the guide's chain is recognized once
  (constants), each example runs the reverse program on the sub-grid ``(t-1, t)``
  and the eps prediction is recovered from the step's mean; the step takes
  ``objective.value_and_grad`` (as ``SVI.step`` does) and negates it.
* hand-written: ``t ~ U{2..T}``, ``x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps``,
  ``mean((net(x_t, t/T) - eps)^2)`` (the same steps ``2..T`` as the derived loss).

Each step is ``jax.jit`` of value-and-grad plus an Adam update (optax), one jitted
call per step. Protocol: (1) the two losses agree in mean over many keys; (2) warm-up,
then calls interleaved (A B, B A, ...), ``block_until_ready`` on every call;
median and min-max per call and the median of per-round ratios.

    python benchmarks/diffusion_step.py [--batch 128] [--rounds 200] [--hlo]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gendsl.models.ddpm import DDPM

D, T = 64, 1000


def make(batch, hidden):
    ddpm = DDPM((D,), T=T, hidden=hidden, depth=3)
    params = ddpm.init(jax.random.key(0))
    ab = jnp.asarray(ddpm.alpha_bar, jnp.float32)
    static = ddpm._static

    def derived_loss(p, key, xs):
        return -ddpm.objective.estimate(key, p, xs)

    def derived_value_and_grad(p, key, xs):
        value, grads = ddpm.objective.value_and_grad(key, p, xs)
        return -value, jax.tree_util.tree_map(jnp.negative, grads)

    def hand_loss(p, key, xs):
        net = eqx.combine(p["net"], static)

        def one(k, x):
            k_t, k_e = jax.random.split(k)
            t = jax.random.randint(k_t, (), 2, T + 1)
            eps = jax.random.normal(k_e, x.shape)
            z = jnp.sqrt(ab[t]) * x + jnp.sqrt(1.0 - ab[t]) * eps
            return jnp.mean((net(z, t / T) - eps) ** 2)

        return jnp.mean(jax.vmap(one)(jax.random.split(key, xs.shape[0]), xs))

    opt = optax.adam(1e-3)

    def stepper(value_and_grad):
        @jax.jit
        def step(p, o, key, xs):
            value, grads = value_and_grad(p, key, xs)
            updates, o = opt.update(grads, o, p)
            return optax.apply_updates(p, updates), o, value

        return step

    xs = jax.random.normal(jax.random.key(1), (batch, D))
    derived, hand = stepper(derived_value_and_grad), stepper(jax.value_and_grad(hand_loss))
    return params, opt.init(params), xs, derived, hand, derived_loss, hand_loss, ab


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--hlo", action="store_true", help="print op counts of both compiled steps")
    args = parser.parse_args(argv)

    params, opt_state, xs, derived, hand, derived_loss, hand_loss, _ = make(args.batch, args.hidden)

    # (1) Same noise: the derived loss draws (step, eps) per example from split keys like the hand loss, but in a
    # different order, so compare the means of many independent evaluations instead of single values.
    keys = jax.random.split(jax.random.key(2), 400)
    dv = np.asarray(jax.jit(jax.vmap(lambda k: derived_loss(params, k, xs)))(keys))
    hv = np.asarray(jax.jit(jax.vmap(lambda k: hand_loss(params, k, xs)))(keys))
    se = np.hypot(dv.std(ddof=1), hv.std(ddof=1)) / np.sqrt(keys.shape[0])
    agree = abs(dv.mean() - hv.mean()) < 4 * se

    if args.hlo:
        for name, f in [("derived", derived), ("hand-written", hand)]:
            text = f.lower(params, opt_state, jax.random.key(0), xs).compile().as_text()
            ops = [ln.split("=")[1].split("(")[0].strip().split(" ")[-1] for ln in text.splitlines() if " = " in ln]
            counts = {op: ops.count(op) for op in ("dot", "fusion", "transpose", "rng-bit-generator", "custom-call")}
            print(f"{name}: {len(ops)} HLO instructions, {counts}")

    state = {"derived": (params, opt_state), "hand-written": (params, opt_state)}
    fns = {"derived": derived, "hand-written": hand}
    times = {k: [] for k in fns}
    for name in fns:  # warm-up (compile)
        for i in range(5):
            p, o, v = fns[name](*state[name], jax.random.key(i), xs)
            jax.block_until_ready(v)
    order = list(fns)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            p, o = state[name]
            t0 = time.perf_counter()
            p, o, v = fns[name](p, o, jax.random.key(r), xs)
            jax.block_until_ready((p, v))
            times[name].append(time.perf_counter() - t0)
            state[name] = (p, o)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    rounds = np.asarray(times["derived"]) / np.asarray(times["hand-written"])
    print(f"# DDPM training step: derived loss vs hand-written ({datetime.date.today()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__})\n")
    print(f"batch {args.batch}, D = {D}, T = {T}, TimeMLP hidden {args.hidden} x 3, Adam; {args.rounds} interleaved "
          "rounds, block_until_ready on every call\n")
    print("| step | median ms | min-max ms | ratio of medians | median per-round ratio |")
    print("|---|---|---|---|---|")
    for name in fns:
        v = np.asarray(times[name]) * 1e3
        ratio = med[name] / med["hand-written"]
        per_round = float(np.median(rounds)) if name == "derived" else 1.0
        print(f"| {name} | {med[name]:.3f} | {v.min():.3f}-{v.max():.3f} | {ratio:.3f} | {per_round:.3f} |")
    print(f"\nloss means over 400 keys at the initial parameters: derived {dv.mean():.4f}, hand-written "
          f"{hv.mean():.4f} (difference within 4 SE: {bool(agree)})")


if __name__ == "__main__":
    main()
