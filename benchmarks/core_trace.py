"""gendsl's core interface vs NumPyro's handlers on the 784-200-10 VAE model.

The model (no encoder): for a batch of B binary 28x28 images ``x``,
``z_i ~ Normal(0, I_10)`` in a plate over the batch, ``x_i ~ Bernoulli(logits =
decoder(z_i)).to_event(1)``, with the decoder a 10-200-784 MLP (an equinox
module passed as a model argument). The gendsl model and the NumPyro model have
the same body; only the primitives differ (``gendsl.sample`` vs ``numpyro.sample``).

What is compared:

* simulate: gendsl ``model.simulate(key, dec, x)`` (returns a Trace: values and
  per-site log densities) vs NumPyro ``trace(seed(model, key)).get_trace(dec, x)``
  reduced to the same content (sample values and per-site log densities).
* assess: gendsl ``model.assess(choices, dec, x)`` vs
  ``numpyro.infer.util.log_density(model, (dec, x), {}, choices)[0]``.

Measurements:

1. One-time cost of jit: ``jax.jit(f).lower(...)`` (Python tracing + lowering) and
   ``.compile()`` (XLA), fresh functions and ``jax.clear_caches()`` before every
   measurement, gendsl and NumPyro alternating (A B, B A, ...).
2. One-time cost of the eager path (cold caches): NumPyro's
   ``SVI(model, guide, optax.adam, Trace_ELBO()).init(key, dec, x)`` (guide: a
   mean-field Normal over z with ``numpyro.param`` loc/scale), against gendsl's
   ``model.simulate`` run eagerly followed by the first call of
   ``jax.jit(model.assess)`` (trace + compile + run). Both components and their
   NumPyro counterparts (eager ``trace(seed(...))`` plus per-site log densities,
   the same content as a gendsl Trace, and the first ``jit(log_density)`` call)
   are reported separately too.
3. Run time of the compiled functions: warm-up, then gendsl and NumPyro calls
   interleaved, ``block_until_ready`` on every call; median and min-max per call.

Run ``python benchmarks/core_trace.py --help`` for options.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.handlers as nh
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.util import log_density

import gendsl
import gendsl.distributions as dist

Z_DIM, HIDDEN, X_DIM = 10, 200, 784


class Decoder(eqx.Module):
    """10 -> 200 -> 784 MLP returning Bernoulli logits (every leaf is an array)."""

    l1: eqx.nn.Linear
    l2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.l1 = eqx.nn.Linear(Z_DIM, HIDDEN, key=k1)
        self.l2 = eqx.nn.Linear(HIDDEN, X_DIM, key=k2)

    def __call__(self, z):
        return self.l2(jax.nn.relu(self.l1(z)))


@gendsl.model
def vae_gendsl(decoder, x):
    with gendsl.plate("batch", x.shape[0]):
        z = gendsl.sample("z", dist.Normal(jnp.zeros(Z_DIM), 1.0).to_event(1))
        logits = jax.vmap(decoder)(z)
        gendsl.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def vae_numpyro(decoder, x):
    with numpyro.plate("batch", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(Z_DIM), 1.0).to_event(1))
        logits = jax.vmap(decoder)(z)
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def guide_numpyro(decoder, x):
    b = x.shape[0]
    loc = numpyro.param("loc", jnp.zeros((b, Z_DIM)))
    scale = numpyro.param("scale", jnp.ones((b, Z_DIM)), constraint=dist.constraints.positive)
    with numpyro.plate("batch", b):
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


@gendsl.model
def guide_gendsl(decoder, x):
    b = x.shape[0]
    loc = gendsl.param("loc", jnp.zeros((b, Z_DIM)))
    scale = gendsl.param("scale", jnp.ones((b, Z_DIM)), constraint=dist.constraints.positive)
    with gendsl.plate("batch", b):
        gendsl.sample("z", dist.Normal(loc, scale).to_event(1))


# --- the functions being compared; factories give fresh function objects ---------------


def make_gendsl_simulate():
    def simulate(key, decoder, x):
        return vae_gendsl.simulate(key, decoder, x)

    return simulate


def make_numpyro_simulate():
    def simulate(key, decoder, x):
        tr = nh.trace(nh.seed(vae_numpyro, rng_seed=key)).get_trace(decoder, x)
        choices, log_probs = {}, {}
        for name, site in tr.items():
            if site["type"] == "sample":
                choices[name] = site["value"]
                lp = site["fn"].log_prob(site["value"])
                log_probs[name] = lp if site["scale"] is None else lp * site["scale"]
        return choices, log_probs

    return simulate


def make_gendsl_assess():
    def assess(choices, decoder, x):
        return vae_gendsl.assess(choices, decoder, x)

    return assess


def make_numpyro_assess():
    def assess(choices, decoder, x):
        return log_density(vae_numpyro, (decoder, x), {}, choices)[0]

    return assess


# --- data ---------------------------------------------------------------------------------


def load_batch(batch: int, data: str | None, key) -> jax.Array:
    if data is None:
        return jax.random.bernoulli(key, 0.13, (batch, X_DIM)).astype(jnp.float32)
    path = Path(data) / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, X_DIM)
    return jnp.asarray((raw[:batch] / 255.0 > 0.5).astype(np.float32))  # static binarization


# --- timing helpers -------------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def block(tree):
    return jax.block_until_ready(tree)


def time_lower_compile(make, args):
    jax.clear_caches()
    t0 = now()
    lowered = jax.jit(make()).lower(*args)
    t1 = now()
    lowered.compile()
    t2 = now()
    return t1 - t0, t2 - t1


def time_eager_gendsl(key, dec, x):
    jax.clear_caches()
    t0 = now()
    tr = block(vae_gendsl.simulate(key, dec, x))
    t1 = now()
    block(jax.jit(make_gendsl_assess())(tr.latents, dec, x))
    t2 = now()
    return t1 - t0, t2 - t1


def time_eager_numpyro(key, dec, x):
    jax.clear_caches()
    t0 = now()
    choices, _ = block(make_numpyro_simulate()(key, dec, x))  # same content as a gendsl Trace
    t1 = now()
    block(jax.jit(make_numpyro_assess())(choices, dec, x))
    t2 = now()
    return t1 - t0, t2 - t1


def time_svi_init(key, dec, x):
    jax.clear_caches()
    svi = SVI(vae_numpyro, guide_numpyro, optax.adam(1e-3), Trace_ELBO())
    t0 = now()
    block(svi.init(key, dec, x))
    return now() - t0


def time_gendsl_svi_init(key, dec, x):
    from gendsl.inference import SVI as GendslSVI
    from gendsl.inference import elbo

    jax.clear_caches()
    svi = GendslSVI(elbo(vae_gendsl, guide_gendsl), optax.adam(1e-3))
    t0 = now()
    block(svi.init(key, dec, x))
    return now() - t0


def alternating(reps, *measures):
    """Run each measurement ``reps`` times, rotating which goes first (A B, B A, ...)."""
    results = [[] for _ in measures]
    for r in range(reps):
        for i in range(len(measures)):
            j = (i + r) % len(measures)
            results[j].append(measures[j]())
    return results


def interleaved_calls(calls, fa, fb, args_a, args_b, warmup=5):
    for _ in range(warmup):
        block(fa(*args_a))
        block(fb(*args_b))
    ta, tb = [], []
    for _ in range(calls):
        t0 = now()
        block(fa(*args_a))
        t1 = now()
        block(fb(*args_b))
        t2 = now()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return ta, tb


# --- reporting --------------------------------------------------------------------------------


def num(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt(xs, unit):
    scale = {"s": 1.0, "ms": 1e3}[unit]
    med = statistics.median(xs) * scale
    return f"{num(med)} ({num(min(xs) * scale)}-{num(max(xs) * scale)})"


def row(name, g, n, unit):
    ratio = statistics.median(g) / statistics.median(n) if n else float("nan")
    return f"| {name} | {unit} | {fmt(g, unit)} | {fmt(n, unit) if n else '-'} | {ratio:.2f} |"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="repetitions of each one-time measurement")
    p.add_argument("--calls", type=int, default=200, help="timed calls of each compiled function")
    p.add_argument("--batch", type=int, default=128, help="images per batch")
    p.add_argument("--data", default=None, help="folder with t10k-images-idx3-ubyte.gz (default: random)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    jax.config.update("jax_enable_compilation_cache", False)
    key = jax.random.key(args.seed)
    k_dec, k_x, k_run = jax.random.split(key, 3)
    dec = Decoder(k_dec)
    x = load_batch(args.batch, args.data, k_x)

    # sanity: the two implementations compute the same density
    tr = vae_gendsl.simulate(k_run, dec, x)
    lp_g = vae_gendsl.assess(tr.latents, dec, x)
    lp_n = log_density(vae_numpyro, (dec, x), {}, tr.latents)[0]
    np.testing.assert_allclose(np.asarray(lp_g), np.asarray(lp_n), rtol=1e-5)
    assert tr.choices["z"].shape == (args.batch, Z_DIM) and tr.log_probs["x"].shape == (args.batch,)
    choices = {"z": tr.choices["z"]}

    rows = []
    # 1. jit one-time cost
    for what, mg, mn, a in (
        ("simulate", make_gendsl_simulate, make_numpyro_simulate, (k_run, dec, x)),
        ("assess", make_gendsl_assess, make_numpyro_assess, (choices, dec, x)),
    ):
        g, n = alternating(
            args.reps, lambda mg=mg, a=a: time_lower_compile(mg, a), lambda mn=mn, a=a: time_lower_compile(mn, a)
        )
        rows.append(row(f"jit {what}: trace+lower", [t[0] for t in g], [t[0] for t in n], "ms"))
        rows.append(row(f"jit {what}: XLA compile", [t[1] for t in g], [t[1] for t in n], "ms"))
        rows.append(row(f"jit {what}: total", [sum(t) for t in g], [sum(t) for t in n], "ms"))

    # 2. eager one-time cost (cold caches)
    g, n, svi, gsvi = alternating(
        args.reps,
        lambda: time_eager_gendsl(k_run, dec, x),
        lambda: time_eager_numpyro(k_run, dec, x),
        lambda: time_svi_init(k_run, dec, x),
        lambda: time_gendsl_svi_init(k_run, dec, x),
    )
    rows.append(row("eager simulate / trace(seed) + log_probs (cold)", [t[0] for t in g], [t[0] for t in n], "ms"))
    rows.append(row("first jit(assess) / jit(log_density) call", [t[1] for t in g], [t[1] for t in n], "ms"))
    rows.append(row("one-time cost: gendsl simulate + jit(assess) vs SVI.init", [sum(t) for t in g], svi, "ms"))
    rows.append(row("one-time cost: SVI.init, gendsl vs NumPyro (same model and guide)", gsvi, svi, "ms"))

    # 3. run time of compiled functions
    ks = jax.random.split(k_run, 2)
    for what, fg, fn, a in (
        ("simulate", jax.jit(make_gendsl_simulate()), jax.jit(make_numpyro_simulate()), (ks[1], dec, x)),
        ("assess", jax.jit(make_gendsl_assess()), jax.jit(make_numpyro_assess()), (choices, dec, x)),
    ):
        g, n = interleaved_calls(args.calls, fg, fn, a, a)
        rows.append(row(f"run: compiled {what} per call", g, n, "ms"))

    dev = jax.devices()[0]
    print(
        f"VAE 784-200-10, batch {args.batch}, data={'MNIST (threshold 0.5)' if args.data else 'random binary'}; "
        f"reps={args.reps}, calls={args.calls}\n"
        f"jax {jax.__version__}, numpyro {numpyro.__version__}, {dev.platform} ({dev.device_kind}), "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}\n"
        f"assess agrees: gendsl {float(lp_g):.4f} vs NumPyro {float(lp_n):.4f}\n"
    )
    print("| measurement | unit | gendsl median (min-max) | NumPyro median (min-max) | gendsl/NumPyro |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
