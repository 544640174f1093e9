"""Per-data-point bounds (``plate=``): each point's own bound, summed, against quadrature per point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.inference import iwelbo, renyi, rws
from gendsl.testing._checks import assert_unbiased, draw_estimates, fast_jit

X = jnp.array([0.5, -1.0, 2.0])
PARAMS = {"mu0": 0.3, "m": jnp.array([0.2, -0.3, 0.8]), "s": 0.9}


@gendsl.model
def model(x):
    mu0 = gendsl.param("mu0", 0.0)
    with gendsl.plate("data", x.shape[0]):
        z = gendsl.sample("z", dist.Normal(mu0, 1.0))
        gendsl.sample("x", dist.Normal(z, 1.0), obs=x)


@gendsl.model
def guide(x):
    m = gendsl.param("m", jnp.zeros(3))
    s = gendsl.param("s", 1.0)
    with gendsl.plate("data", x.shape[0]):
        gendsl.sample("z", dist.Normal(m, s))


def _pairs(params, i, order=40):
    """Quadrature nodes of two particles for point ``i``: weights, z pairs, log w pairs."""
    nodes, wts = np.polynomial.hermite_e.hermegauss(order)
    wts = jnp.asarray(wts / wts.sum())
    m, s = params["m"][i], params["s"]
    z = m + s * jnp.asarray(nodes)
    log_w = (dist.Normal(params["mu0"], 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(X[i])
             - dist.Normal(m, s).log_prob(z))
    w2 = wts[:, None] * wts[None, :]
    lw = jnp.stack(jnp.broadcast_arrays(log_w[:, None], log_w[None, :]))  # (2, n, n)
    zz = jnp.stack(jnp.broadcast_arrays(z[:, None], z[None, :]))
    return w2, zz, lw


def exact_renyi(params, alpha):
    total = 0.0
    for i in range(3):
        w2, _, lw = _pairs(params, i)
        total = total + jnp.sum(w2 * (jax.nn.logsumexp((1 - alpha) * lw, axis=0) - jnp.log(2)) / (1 - alpha))
    return total


def exact_rws_guide_grad(params):
    """E[sum_k w̄_k ∇φ log q(z_k)] per point, summed, with z_k held fixed (the wake-phase gradient)."""
    total = jax.tree_util.tree_map(jnp.zeros_like, params)
    for i in range(3):
        w2, zz, lw = _pairs(params, i)
        wbar = jax.nn.softmax(lw, axis=0)

        def log_q(p, z, i=i):
            return dist.Normal(p["m"][i], p["s"]).log_prob(z)

        g = jax.vmap(jax.vmap(jax.vmap(jax.grad(log_q), (None, 0)), (None, 0)), (None, 0))(params, zz)
        def expect(gg, wbar=wbar, w2=w2):
            extra = (1,) * (gg.ndim - 3)  # the gradient's own shape (m is a vector)
            weighted = jnp.sum(wbar.reshape(wbar.shape + extra) * gg, axis=0)
            return jnp.sum(w2.reshape(w2.shape + extra) * weighted, axis=(0, 1))

        term = jax.tree_util.tree_map(expect, g)
        total = jax.tree_util.tree_map(jnp.add, total, term)
    return total


def draws(objective, n=2000):
    """``n`` independent ``(value, gradient)`` estimates, from one compiled program."""
    return draw_estimates(lambda k: objective.value_and_grad(k, PARAMS, X), jax.random.key(0), n)


# The exact values, compiled (run op by op, the quadrature costs more than the estimators).
exact_value_and_grad = fast_jit(jax.value_and_grad(exact_renyi))


def test_per_point_renyi_matches_quadrature():
    objective = renyi(model, guide, 0.5, 2, plate="data")
    exact_value, exact_grad = exact_value_and_grad(PARAMS, 0.5)
    values, grads = draws(objective)
    assert_unbiased(values, exact_value)
    assert_unbiased(grads, exact_grad)


def test_per_point_dreg_matches_quadrature():
    objective = iwelbo(model, guide, 2, estimator="dreg", plate="data")
    exact_value, exact_grad = exact_value_and_grad(PARAMS, 0.0)  # alpha = 0 is the IWAE bound
    values, grads = draws(objective)
    assert_unbiased(values, exact_value)
    assert_unbiased(grads, exact_grad)


def test_per_point_rws_matches_quadrature():
    objective = rws(model, guide, 2, plate="data")
    values, g = draws(objective)
    exact_value, exact_grad = exact_value_and_grad(PARAMS, 0.0)
    assert_unbiased(values, exact_value)
    model_exact = exact_grad["mu0"]  # the model's gradient is the bound's: the guide is held fixed
    assert_unbiased(g["mu0"], model_exact)
    guide_exact = fast_jit(exact_rws_guide_grad)(PARAMS)
    assert_unbiased({"m": g["m"], "s": g["s"]}, {"m": guide_exact["m"], "s": guide_exact["s"]})


@gendsl.model
def global_latent(x):
    shift = gendsl.sample("shift", dist.Normal(0.0, 1.0).expand([3]).to_event(1))  # length = number of points
    model(x + shift)


@gendsl.model
def global_guide(x):
    gendsl.sample("shift", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    guide(x)


@pytest.mark.parametrize("make", [
    lambda: renyi(global_latent, global_guide, 0.5, 2, plate="data"),
    lambda: rws(global_latent, global_guide, 2, plate="data"),
    lambda: iwelbo(global_latent, global_guide, 2, estimator="dreg", plate="data"),
    lambda: iwelbo(global_latent, global_guide, 2, plate="data"),
])
def test_a_global_latent_as_long_as_the_data_is_refused(make):
    """The case the old command line's leading-axis heuristic got wrong, silently."""
    with pytest.raises(gendsl.AddressError, match=r"site 'shift' is not inside plate 'data'"):
        make().estimate(jax.random.key(0), PARAMS, X)
