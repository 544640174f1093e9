"""The particle fold (``gendsl.inference._layout``): the same values and gradients, one matmul per layer.

``repeat`` traces its vectorized particles through ``fold_particle_products``, which rewrites
the products of a network applied to particles x data points into one matmul. The reference
is the same objective traced with the fold switched off (``repeat`` as a plain ``jax.vmap``,
the implementation before the fold), at the same key: every multi-particle objective must give
the same value and gradient.
"""

from unittest import mock

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import check_jaxpr, subjaxprs

import gendsl
import gendsl.distributions as dist
from gendsl.inference import (
    REINFORCE,
    _language,
    init_params,
    iwelbo,
    p_wake,
    q_wake,
    renyi,
    rws,
    vimco,
)
from gendsl.inference._layout import fold_particle_products, rewrite_closed

X_DIM, HIDDEN, Z_DIM, B, K = 12, 8, 3, 6, 3


def _vae():
    """A small VAE shaped like ``benchmarks/vae_step.py``'s: equinox MLPs under ``jax.vmap`` in a plate."""

    @gendsl.model
    def model(x):
        decoder = gendsl.module("decoder", lambda k: eqx.nn.MLP(Z_DIM, X_DIM, HIDDEN, 1, activation=jnp.tanh, key=k))
        with gendsl.plate("batch", x.shape[0]):
            z = gendsl.sample("z", dist.Normal(jnp.zeros(Z_DIM), 1.0).to_event(1))
            gendsl.sample("x", dist.Bernoulli(logits=jax.vmap(decoder)(z)).to_event(1), obs=x)

    @gendsl.model
    def guide(x):
        encoder = gendsl.module("encoder", lambda k: eqx.nn.MLP(X_DIM, 2 * Z_DIM, HIDDEN, 1, key=k))
        out = jax.vmap(encoder)(x)
        with gendsl.plate("batch", x.shape[0]):
            gendsl.sample("z", dist.Normal(out[:, :Z_DIM], jax.nn.softplus(out[:, Z_DIM:])).to_event(1))

    return model, guide


def _discrete():
    """A REINFORCE latent per data point through a network: iwelbo/rws track dependencies per element."""

    @gendsl.model
    def model(x):
        decoder = gendsl.module("decoder", lambda k: eqx.nn.MLP(1, X_DIM, HIDDEN, 1, key=k))
        with gendsl.plate("batch", x.shape[0]):
            z = gendsl.sample("z", dist.Bernoulli(0.4))
            gendsl.sample("x", dist.Normal(jax.vmap(decoder)(z[:, None]), 1.0).to_event(1), obs=x)

    @gendsl.model
    def guide(x):
        encoder = gendsl.module("encoder", lambda k: eqx.nn.MLP(X_DIM, 1, HIDDEN, 1, key=k))
        with gendsl.plate("batch", x.shape[0]):
            gendsl.sample("z", dist.Bernoulli(logits=jax.vmap(encoder)(x)[:, 0]), strategy=REINFORCE)

    return model, guide


VAE, DISCRETE = _vae(), _discrete()
OBJECTIVES = {
    "iwelbo": lambda p, q: iwelbo(p, q, K),
    "iwelbo_plate": lambda p, q: iwelbo(p, q, K, plate="batch"),
    "dreg": lambda p, q: iwelbo(p, q, K, estimator="dreg"),
    "dreg_plate": lambda p, q: iwelbo(p, q, K, estimator="dreg", plate="batch"),
    "renyi": lambda p, q: renyi(p, q, 0.5, K),
    "renyi_plate": lambda p, q: renyi(p, q, 0.5, K, plate="batch"),
    "rws": lambda p, q: rws(p, q, K),
    "rws_plate": lambda p, q: rws(p, q, K, plate="batch"),
    "vimco": lambda p, q: vimco(p, q, K),
    "p_wake": lambda p, q: p_wake(p, q, K),
    "q_wake": lambda p, q: q_wake(p, q, K),
}


def _data(programs):
    x = jax.random.bernoulli(jax.random.key(0), 0.3, (B, X_DIM)).astype(jnp.float32)
    return init_params(iwelbo(*programs, 2), jax.random.key(1), x)[0], x


def _step(objective, *, samples=1, folded=True):
    """The compiled ``value_and_grad``, traced with the fold on or off (a fresh function: a fresh trace)."""

    def step(key, params, x):
        return objective.value_and_grad(key, params, x, samples=samples)

    if folded:
        return jax.jit(step)

    def unfolded(*args):
        with mock.patch.object(_language, "fold_particle_products", lambda particles, **_: particles):
            return step(*args)

    return jax.jit(unfolded)


def _assert_same(after, before):
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(after[1]), jax.tree_util.tree_leaves(before[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


# The fold is one rewrite under every objective; the fast suite checks it under two that
# differ in how they read the particles (a joint bound, VIMCO's leave-one-out baselines),
# the full suite under all.
FAST = {"iwelbo", "vimco"}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(OBJECTIVES)])
def test_value_and_gradient_equal_before_the_fold(name):
    objective = OBJECTIVES[name](*VAE)
    params, x = _data(VAE)
    for seed in range(2):
        key = jax.random.key(seed)
        _assert_same(_step(objective)(key, params, x), _step(objective, folded=False)(key, params, x))


def test_replicates_equal_before_the_fold():
    """``samples=2`` vmaps the replicates around the particles: the fold sits inside that vmap."""
    objective = iwelbo(*VAE, K, plate="batch")
    params, x = _data(VAE)
    key = jax.random.key(3)
    _assert_same(_step(objective, samples=2)(key, params, x), _step(objective, samples=2, folded=False)(key, params, x))


@pytest.mark.parametrize("name", ["vimco", pytest.param("iwelbo_plate", marks=pytest.mark.slow),
                                  pytest.param("rws_plate", marks=pytest.mark.slow)])
def test_score_function_sites_equal_before_the_fold(name):
    """REINFORCE sites (with dependency tracking, or VIMCO's baselines) get the same gradient."""
    objective = OBJECTIVES[name](*DISCRETE)
    params, x = _data(DISCRETE)
    key = jax.random.key(4)
    _assert_same(_step(objective)(key, params, x), _step(objective, folded=False)(key, params, x))


def _dots(jaxpr):
    """Every ``dot_general`` of ``jaxpr`` and of the jaxprs inside it."""
    found = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    for sub in subjaxprs(jaxpr):
        found += _dots(sub)
    return found


def _transposed_products(jaxpr):
    """``transpose`` equations applied to the output of a ``dot_general``, at every level."""
    products = {e.outvars[0] for e in jaxpr.eqns if e.primitive.name == "dot_general"}
    found = [e for e in jaxpr.eqns if e.primitive.name == "transpose" and e.invars[0] in products]
    for sub in subjaxprs(jaxpr):
        found += _transposed_products(sub)
    return found


def test_iwelbo_step_has_one_matmul_per_layer():
    """Forward and backward, every product is a matmul of rank-2 operands, none transposed after."""
    objective = iwelbo(*VAE, K)
    params, x = _data(VAE)
    key = jax.random.key(0)
    after = jax.make_jaxpr(_step(objective))(key, params, x).jaxpr
    before = jax.make_jaxpr(_step(objective, folded=False))(key, params, x).jaxpr
    assert max(max(v.aval.ndim for v in e.invars) for e in _dots(after)) == 2
    assert not _transposed_products(after)
    # the same check on the program before the fold: particles x data points as two axes
    assert max(max(v.aval.ndim for v in e.invars) for e in _dots(before)) == 3
    assert _transposed_products(before)


# --- the rewrite on its own ------------------------------------------------------------------


def _mlp(key):
    return eqx.nn.MLP(4, 5, 6, 2, activation=jnp.tanh, key=key)


def _einsum_products(w, z):
    """Products the fold must leave alone or keep exact: batch axes, two contracted axes, a reused output."""
    per_particle = jnp.einsum("kbi,kio->kbo", z, jnp.broadcast_to(w, (z.shape[0], *w.shape)))
    two_axes = jnp.einsum("kbi,kbi->k", z, z)
    product = jnp.einsum("oi,kbi->okb", w.T, z)
    return per_particle, two_axes, product, jnp.transpose(product, (1, 2, 0)) * product.sum()


CASES = {
    "nested_vmap_mlp": lambda net, w, z: jax.vmap(jax.vmap(net))(z),
    "jitted_network": lambda net, w, z: jax.vmap(jax.vmap(jax.jit(lambda v: net(v))))(z),
    "precision": lambda net, w, z: jax.vmap(
        jax.vmap(lambda v: jnp.tanh(jnp.dot(w.T, v, precision=("highest", "default")) + w[0]))
    )(z),
    "other_products": lambda net, w, z: _einsum_products(w, z),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rewrite_keeps_every_output_and_gradient(case):
    net = _mlp(jax.random.key(0))
    w = jax.random.normal(jax.random.key(1), (4, 5))
    z = jax.random.normal(jax.random.key(2), (3, 7, 4))
    f = CASES[case]

    weights, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(weights_, w_, z_, rewritten):
        net_ = eqx.combine(weights_, static)
        out = fold_particle_products(lambda: f(net_, w_, z_))() if rewritten else f(net_, w_, z_)
        return sum(jnp.sum(jnp.sin(o)) for o in jax.tree_util.tree_leaves(out)), out

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (g_after, out_after), (g_before, out_before) = grad(weights, w, z, True), grad(weights, w, z, False)
    for a, b in zip(
        jax.tree_util.tree_leaves((out_after, g_after)), jax.tree_util.tree_leaves((out_before, g_before)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    closed = jax.make_jaxpr(lambda: f(net, w, z))()
    rewritten = rewrite_closed(closed)
    check_jaxpr(rewritten.jaxpr)
    if case == "other_products":  # the product read twice keeps its transpose (swapping it would add one)
        assert len(_transposed_products(rewritten.jaxpr)) == 1
    else:  # a network applied to rank-3 activations: every product swapped and folded
        assert not _transposed_products(rewritten.jaxpr)
        assert max(max(v.aval.ndim for v in e.invars) for e in _dots(rewritten.jaxpr)) == 2
