"""Per-data-point latents, a continuous one and a discrete one (REINFORCE with an EMA baseline).

Used by tests/cli for minibatches, per-point objectives and bit-for-bit resume: the
SVI state then holds a minibatch position, optimizer moments and an EMA baseline.
"""

import jax.numpy as jnp
import numpy as np

import gendsl
import gendsl.distributions as dist
from gendsl.distributions import constraints


@gendsl.model
def model(x):
    w = gendsl.param("w", 0.5)
    with gendsl.plate("data", x.shape[0]):
        z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        b = gendsl.sample("b", dist.Bernoulli(0.5))
        gendsl.sample("x", dist.Normal(w * z + 2.0 * b, 0.5), obs=x)


@gendsl.model
def guide(x):
    a = gendsl.param("a", 0.1)
    s = gendsl.param("s", 1.0, constraint=constraints.positive)
    c = gendsl.param("c", 0.0)
    with gendsl.plate("data", x.shape[0]):
        gendsl.sample("z", dist.Normal(a * x, s))
        gendsl.sample("b", dist.Bernoulli(logits=c * x))


def data():
    """64 training points and 16 test points."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, size=80) + 2.0 * (rng.random(80) < 0.5)
    return jnp.asarray(x[:64], jnp.float32), jnp.asarray(x[64:], jnp.float32)


defaults = {"steps": 40, "batch_size": 8, "lr": 0.01, "checkpoint_every": 10, "chunk_size": 4,
            "posterior_draws": 100, "posterior_points": 10}
