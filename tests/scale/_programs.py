"""The small programs the scale-out tests train on 1, 2 and 8 devices (imported by the worker scripts).

Each case is ``(svi, data, batch_size, extra_args)``: one estimator family each, small enough
for 50 steps in a few seconds on CPU. The data has 256 points and every batch size is a
multiple of 8, so the batch splits evenly over 1, 2, 4 and 8 devices.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import gendsl
import gendsl.distributions as dist
from gendsl.inference import ENUM, MVD, SVI, Reinforce, elbo, iwelbo, vimco

N, D, Z, H = 256, 12, 3, 16


def binary_data(seed: int = 7, n: int = N, d: int = D):
    return (jax.random.uniform(jax.random.key(seed), (n, d)) < 0.3).astype(jnp.float32)


def _vae():
    @gendsl.model
    def model(x):
        decoder = gendsl.module("decoder", lambda k: eqx.nn.MLP(Z, D, H, 1, activation=jnp.tanh, key=k))
        with gendsl.plate("batch", x.shape[0]):
            z = gendsl.sample("z", dist.Normal(jnp.zeros(Z), 1.0).to_event(1))
            gendsl.sample("x", dist.Bernoulli(logits=jax.vmap(decoder)(z)).to_event(1), obs=x)

    @gendsl.model
    def guide(x):
        encoder = gendsl.module("encoder", lambda k: eqx.nn.MLP(D, 2 * Z, H, 1, activation=jnp.tanh, key=k))
        out = jax.vmap(encoder)(x)
        with gendsl.plate("batch", x.shape[0]):
            gendsl.sample("z", dist.Normal(out[:, :Z], jax.nn.softplus(out[:, Z:]) + 1e-3).to_event(1))

    return model, guide


def _discrete(strategy):
    """One binary latent per point: a two-component mixture with a learned encoder for q(z | x)."""

    @gendsl.model
    def model(x):
        means = gendsl.param("means", jnp.stack([jnp.full(D, -0.5), jnp.full(D, 0.5)]))
        with gendsl.plate("batch", x.shape[0]):
            z = gendsl.sample("z", dist.Bernoulli(0.5))
            gendsl.sample("x", dist.Normal(means[z.astype(jnp.int32)], 1.0).to_event(1), obs=x)

    @gendsl.model
    def guide(x):
        w = gendsl.param("w", jnp.zeros(D))
        b = gendsl.param("b", 0.0)
        with gendsl.plate("batch", x.shape[0]):
            gendsl.sample("z", dist.Bernoulli(logits=x @ w + b), strategy=strategy)

    return model, guide


def mixture_data(seed: int = 3, n: int = N):
    k1, k2 = jax.random.split(jax.random.key(seed))
    z = jax.random.bernoulli(k1, 0.4, (n,))
    return jnp.where(z[:, None], 1.0, -1.0) + jax.random.normal(k2, (n, D))


def case(name: str):
    """``(svi, data, batch_size, extra_args)`` of a named case."""
    if name == "tiny":  # for the fast test: a conjugate model, nothing to compile but a few ops
        @gendsl.model
        def p(x):
            mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
            with gendsl.plate("n", x.shape[0]):
                gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)

        @gendsl.model
        def q(x):
            s = gendsl.param("s", 0.5, constraint=dist.constraints.positive)
            gendsl.sample("mu", dist.Normal(gendsl.param("m", 0.0), s))

        return SVI(elbo(p, q), optax.adam(0.05)), jax.random.normal(jax.random.key(1), (64,)) + 1.0, 16, ()
    if name == "vae":
        model, guide = _vae()
        return SVI(elbo(model, guide), optax.adam(3e-3)), binary_data(), 64, ()
    if name == "iwelbo-dreg":
        model, guide = _vae()
        return SVI(iwelbo(model, guide, 3, estimator="dreg", plate="batch"), optax.adam(3e-3)), binary_data(), 64, ()
    if name == "reinforce":  # REINFORCE with an EMA baseline per element of the plate (dependency tracking)
        model, guide = _discrete(Reinforce(baseline="ema"))
        return SVI(elbo(model, guide), optax.adam(1e-2)), mixture_data(), 64, ()
    if name == "enum":
        model, guide = _discrete(ENUM)
        return SVI(elbo(model, guide), optax.adam(1e-2)), mixture_data(), 64, ()
    if name == "mvd":
        model, guide = _discrete(MVD)
        return SVI(elbo(model, guide), optax.adam(1e-2)), mixture_data(), 64, ()
    if name == "vimco-per-point":
        model, guide = _discrete(Reinforce(baseline=None))
        return SVI(vimco(model, guide, 3), optax.adam(1e-2), per_point=True), mixture_data(), 32, ()
    if name == "flow-matching":
        from gendsl.models import FlowMatching

        fm = FlowMatching(2, hidden=16, depth=1)
        data = 0.5 * jax.random.normal(jax.random.key(0), (N, 2)) + 1.0
        return SVI(fm.objective, optax.adam(1e-2)), data, 64, ()
    if name == "ddpm":
        from gendsl.models import DDPM

        ddpm = DDPM((4,), T=50, hidden=16, depth=1)
        data = jax.random.normal(jax.random.key(0), (N, 4)) * 0.5
        return SVI(ddpm.objective, optax.adam(1e-3)), data, 64, ()
    raise ValueError(f"unknown case {name!r}")


CASES = ("vae", "iwelbo-dreg", "reinforce", "enum", "mvd", "vimco-per-point", "flow-matching", "ddpm")
