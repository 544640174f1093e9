"""Exact ENUM over chained sites: the nested sum equals brute force, value and gradient.

The estimator weighs each complete path of enumerated values by its probability, read at the
path's last execution (``_estimator._surrogate``); this checks it on sites whose distributions
depend on the values enumerated before them, against the sum over every path written out.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

import gendsl
import gendsl.distributions as dist
from gendsl.inference import ENUM, expectation, sim
from gendsl.testing import draw_estimates
from gendsl.testing._checks import fast_jit


def probabilities(p, a, b):
    """The three sites' distributions given the values before them (shared by guide and brute force)."""
    pa = jax.nn.sigmoid(p["t"])
    pb = jax.nn.softmax(p["w"] + 0.7 * a * jnp.arange(3.0))
    pc = jax.nn.sigmoid(p["t"] - 0.5 * b + a)
    return pa, pb, pc


def integrand(p, a, b, c):
    return jnp.sin(p["t"] * (1.0 + a)) + (b - 1.0) ** 2 * p["w"][0] + c * a * jnp.exp(p["w"][2]) + 0.3 * b * c


@gendsl.model
def guide(p):
    a = gendsl.sample("a", dist.Bernoulli(probs=probabilities(p, 0.0, 0.0)[0]), strategy=ENUM)
    b = gendsl.sample("b", dist.Categorical(probs=probabilities(p, a, 0.0)[1]), strategy=ENUM)
    gendsl.sample("c", dist.Bernoulli(probs=probabilities(p, a, b)[2]), strategy=ENUM)


def brute_force(p):
    total = 0.0
    for a, b, c in itertools.product([0.0, 1.0], [0, 1, 2], [0.0, 1.0]):
        pa = probabilities(p, a, b)[0]
        pb = probabilities(p, a, b)[1][b]
        pc = probabilities(p, a, b)[2]
        mass = (pa if a else 1 - pa) * pb * (pc if c else 1 - pc)
        total = total + mass * integrand(p, a, b, c)
    return total


def test_three_chained_enum_sites_are_summed_exactly():
    def f(p):
        z, _ = sim(guide)(p)
        return integrand(p, z["a"], z["b"], z["c"])

    params = {"t": jnp.float32(0.4), "w": jnp.array([0.3, -0.2, 0.5])}
    values, grads = draw_estimates(lambda k: expectation(f).value_and_grad(k, params), jax.random.key(0), 3)
    exact_value, exact_grad = fast_jit(jax.value_and_grad(brute_force))(params)
    np.testing.assert_allclose(values, float(exact_value), rtol=1e-5)  # every key: no sampling left
    for g, e in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(exact_grad), strict=True):
        np.testing.assert_allclose(g, np.broadcast_to(e, g.shape), rtol=1e-4, atol=1e-6)
