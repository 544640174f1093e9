"""A conjugate normal model: mu ~ N(0, 10), x_i ~ N(mu, 1); exact posterior known. Used by tests/cli."""

import jax.numpy as jnp
import numpy as np

import gendsl
import gendsl.distributions as dist
from gendsl.distributions import constraints


@gendsl.model
def model(x):
    mu = gendsl.sample("mu", dist.Normal(0.0, 10.0))
    with gendsl.plate("data", x.shape[0]):
        gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)


@gendsl.model
def guide(x):
    loc = gendsl.param("loc", 0.0)
    scale = gendsl.param("scale", 1.0, constraint=constraints.positive)
    gendsl.sample("mu", dist.Normal(loc, scale))


def data():
    """40 training and 10 test points from N(2, 1)."""
    x = np.random.default_rng(0).normal(2.0, 1.0, size=50).astype(np.float32)
    return jnp.asarray(x[:40]), jnp.asarray(x[40:])


defaults = {"steps": 300, "lr": 0.05, "checkpoint_every": 100, "chunk_size": 50, "posterior_draws": 500}
