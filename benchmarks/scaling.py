"""Scaling of the gendsl ELBO gradient step on the VAE: time vs batch size and vs latent dimension.

The VAE of ``vae_step.py`` (encoder 784-200-(mu, softplus sigma), decoder -200-784,
tanh, ``Bernoulli(logits).to_event(1)``, a plate over the batch, random binary data),
with the latent dimension a parameter here. What is timed: one jitted
``elbo(model, guide).value_and_grad(key, params, x)`` call, ``block_until_ready``.

Every configuration is compiled and warmed up first; then ``--calls`` rounds, each
running every configuration once (rotating order), so a load change on a shared
machine hits all configurations alike. Reported: median and min-max ms per call, ms per
data point, and the growth factor between consecutive sizes next to the linear factor.

Linear growth here means ``t(B) ~ a + b B`` with a small fixed ``a``: the time per data
point should approach a constant as B grows. Doubling the batch should cost at most
2x; a factor above 2 (beyond noise, here > 2.2) is superlinear growth. For the latent
dimension d the cost is ``a + b d`` with ``a`` the 784-wide layers (which do not depend
on d); a straight-line fit and its largest relative residual are reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import gendsl
import gendsl.distributions as dist
from gendsl.inference import elbo, init_params

HIDDEN, X_DIM = 200, 784


def make_step(z_dim: int, batch: int):
    def make_encoder(key):
        return eqx.nn.MLP(X_DIM, 2 * z_dim, HIDDEN, 1, activation=jnp.tanh, key=key)

    def make_decoder(key):
        return eqx.nn.MLP(z_dim, X_DIM, HIDDEN, 1, activation=jnp.tanh, key=key)

    @gendsl.model
    def model(x):
        decoder = gendsl.module("decoder", make_decoder)
        with gendsl.plate("batch", x.shape[0]):
            z = gendsl.sample("z", dist.Normal(jnp.zeros(z_dim), 1.0).to_event(1))
            gendsl.sample("x", dist.Bernoulli(logits=jax.vmap(decoder)(z)).to_event(1), obs=x)

    @gendsl.model
    def guide(x):
        out = jax.vmap(gendsl.module("encoder", make_encoder))(x)
        with gendsl.plate("batch", x.shape[0]):
            gendsl.sample("z", dist.Normal(out[:, :z_dim], jax.nn.softplus(out[:, z_dim:])).to_event(1))

    obj = elbo(model, guide)
    k_init, k_x = jax.random.split(jax.random.key(batch * 1000 + z_dim))
    x = jax.random.bernoulli(k_x, 0.13, (batch, X_DIM)).astype(jnp.float32)
    params = init_params(obj, k_init, x)[0]
    fn = jax.jit(lambda k, p_, x_: obj.value_and_grad(k, p_, x_))
    return fn, (jax.random.key(1), params, x)


def make_hand_step(batch: int):
    """The hand-written ELBO step of ``vae_step.py`` (latent dim 10) at this batch size, same data and keys."""
    from vae_step import hand_value_and_grad, make_decoder, make_encoder, make_hand

    _, (key, params, x) = make_step(10, batch)
    k = jax.random.key(0)
    statics = (
        eqx.partition(make_encoder(k, jnp.tanh), eqx.is_inexact_array)[1],
        eqx.partition(make_decoder(k, jnp.tanh), eqx.is_inexact_array)[1],
    )
    return jax.jit(hand_value_and_grad(make_hand(statics)["elbo"], None)), (key, params, x)


def time_configs(configs, calls, warmup):
    """``configs``: list of (fn, args). Returns ms per call, one array per config."""
    for fn, a in configs:
        for _ in range(warmup):
            jax.block_until_ready(fn(*a))
    times = [[] for _ in configs]
    n = len(configs)
    for r in range(calls):
        for i in range(n):
            j = (i + r) % n
            fn, a = configs[j]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            times[j].append((time.perf_counter() - t0) * 1e3)
    return [np.asarray(t) for t in times]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="64,128,256,512,1024,2048,4096")
    p.add_argument("--latents", default="10,20,50,100")
    p.add_argument("--latent-batch", type=int, default=256, help="batch size of the latent-dimension sweep")
    p.add_argument("--calls", type=int, default=15, help="timed rounds (each runs every configuration once)")
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    latents = [int(d) for d in args.latents.split(",")]
    started = datetime.datetime.now()

    both = time_configs([c for b in batches for c in (make_step(10, b), make_hand_step(b))], args.calls, args.warmup)
    tb, th = both[0::2], both[1::2]
    mh = [float(np.median(t)) for t in th]
    tl = time_configs([make_step(d, args.latent_batch) for d in latents], args.calls, args.warmup)
    mb = [float(np.median(t)) for t in tb]
    ml = [float(np.median(t)) for t in tl]

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"gendsl ELBO gradient step (`elbo(...).value_and_grad`, jitted), VAE 784-200-d, tanh, random binary data; "
        f"{args.calls} rounds of all configurations (rotating order) after {args.warmup} warm-up calls each\n"
        f"{started:%Y-%m-%d %H:%M}; {cpus} CPU cores, JAX backend {jax.devices()[0].platform} "
        f"(shared machine: noisy); jax {jax.__version__}, gendsl {gendsl.__version__}, "
        f"Python {platform.python_version()}\n"
    )
    print("Batch size (latent dim 10):\n")
    print(
        "| batch | median ms | min-max ms | µs per data point | growth vs previous | linear growth "
        "| hand-written JAX ms (same rounds) | hand-written growth |"
    )
    print("|---|---|---|---|---|---|---|---|")
    superlinear = []
    for i, (b, t) in enumerate(zip(batches, tb, strict=True)):
        growth = lin = hgrowth = "-"
        if i:
            hgrowth = f"{mh[i] / mh[i - 1]:.2f}x"
            g, lin_f = mb[i] / mb[i - 1], b / batches[i - 1]
            growth, lin = f"{g:.2f}x", f"{lin_f:.2f}x"
            if g > 1.1 * lin_f:
                superlinear.append(
                    f"{batches[i - 1]}->{b}: {g:.2f}x for {lin_f:.0f}x data (hand-written: {mh[i] / mh[i - 1]:.2f}x)"
                )
        print(
            f"| {b} | {mb[i]:.2f} | {t.min():.2f}-{t.max():.2f} | {1e3 * mb[i] / b:.2f} | {growth} | {lin} "
            f"| {mh[i]:.2f} | {hgrowth} |"
        )
    per_point = [m / b for m, b in zip(mb, batches, strict=True)]
    print(
        f"\nTime per data point: {1e3 * per_point[0]:.2f} µs at batch {batches[0]}, minimum "
        f"{1e3 * min(per_point):.2f} µs at batch {batches[int(np.argmin(per_point))]}, {1e3 * per_point[-1]:.2f} µs "
        f"at batch {batches[-1]}. Superlinear steps (growth > 1.1 x linear): "
        + ("; ".join(superlinear) if superlinear else "none")
        + "."
    )

    print(f"\nLatent dimension (batch {args.latent_batch}):\n")
    print("| latent dim | median ms | min-max ms | µs per data point | straight-line fit ms | residual |")
    print("|---|---|---|---|---|---|")
    slope, icpt = np.polyfit(latents, ml, 1)
    resid = []
    for d, m, t in zip(latents, ml, tl, strict=True):
        fit = icpt + slope * d
        resid.append((m - fit) / fit)
        print(
            f"| {d} | {m:.2f} | {t.min():.2f}-{t.max():.2f} | {1e3 * m / args.latent_batch:.2f} | {fit:.2f} | "
            f"{100 * resid[-1]:+.1f}% |"
        )
    print(
        f"\nFit: {icpt:.2f} ms + {slope * 1e3:.1f} µs per latent dimension; largest residual "
        f"{100 * max(abs(r) for r in resid):.1f}%."
    )
    print(
        "JSON: "
        + json.dumps(
            {
                "batches": batches,
                "batch_ms": mb,
                "hand_ms": mh,
                "superlinear": superlinear,
                "per_point_us": [1e3 * v for v in per_point],
                "latents": latents,
                "latent_ms": ml,
                "latent_fit": [float(icpt), float(slope)],
                "latent_max_resid": float(max(abs(r) for r in resid)),
            }
        )
    )


if __name__ == "__main__":
    main()
