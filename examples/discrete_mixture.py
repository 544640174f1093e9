"""A Gaussian mixture with discrete assignments, fitted with ENUM or with REINFORCE and a baseline.

Two hundred points from three normal clusters (generated here, with a fixed
seed). The model has a discrete latent per point, its cluster ``z[i]``, and the
cluster centres ``locs`` as a continuous latent::

    locs ~ Normal(0, 10)^3;  z[i] ~ Categorical(weights);  x[i] ~ Normal(locs[z[i]], scale)

with ``weights`` and ``scale`` learned as parameters. The guide draws ``locs``
from a normal and each ``z[i]`` from an amortized categorical whose logits are
a quadratic function of ``x[i]`` (the exact posterior of ``z[i]`` given the
other variables has this form).

The gradient through the discrete ``z`` needs a strategy, chosen per site from
the command line:

    gendsl fit examples/discrete_mixture.py                     # ENUM (this program's default)
    gendsl fit examples/discrete_mixture.py --strategy reinforce \\
        --out runs/discrete_mixture_reinforce                   # REINFORCE, EMA baseline
    gendsl fit examples/discrete_mixture.py --strategy reinforce:notrack \\
        --out runs/discrete_mixture_notrack                     # ... without dependency tracking

ENUM sums over each ``z[i]``'s three values (a local expectation per point): a
low-variance gradient, at the price of re-running the objective for every
point and value. REINFORCE needs only samples. Thanks to dependency tracking,
the score of each assignment ``z[i]`` is paired with its own point's terms
(``locs[z]`` is read per point, which the analysis of the program sees) and
its own EMA baseline: with one sample per step it reaches the ELBO ENUM reaches
(-490.7 after 3,000 steps), in about half of ENUM's time on a CPU. Without
tracking (``reinforce:notrack``) all 200 scores share one noisy signal, the
whole objective, and training stalls near -531: the clusters are not found.
``reinforce:loo --particles 4`` (leave-one-out baselines) also reaches -490.7.
``locs`` is reparameterized in every case.
"""

import jax.numpy as jnp
import numpy as np

import gendsl
import gendsl.distributions as dist
from gendsl.distributions import constraints

K = 3
TRUE_WEIGHTS, TRUE_LOCS, TRUE_SCALE = (0.3, 0.5, 0.2), (-4.0, 0.0, 5.0), 1.0


@gendsl.model
def model(x):
    locs = gendsl.sample("locs", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    weights = gendsl.param("weights", jnp.ones(K) / K, constraint=constraints.simplex)
    scale = gendsl.param("scale", 2.0, constraint=constraints.positive)
    with gendsl.plate("data", x.shape[0]):
        z = gendsl.sample("z", dist.Categorical(probs=weights))
        gendsl.sample("x", dist.Normal(locs[z], scale), obs=x)


@gendsl.model
def guide(x):
    loc = gendsl.param("locs_loc", jnp.array([-2.0, 0.0, 2.0]))  # distinct starts break the label symmetry
    scale = gendsl.param("locs_scale", jnp.full(K, 0.5), constraint=constraints.positive)
    gendsl.sample("locs", dist.Normal(loc, scale).to_event(1))
    coef = gendsl.param("assign_coef", jnp.zeros((3, K)))
    features = jnp.stack([jnp.ones_like(x), x, x**2 / 10.0], axis=-1)
    with gendsl.plate("data", x.shape[0]):
        gendsl.sample("z", dist.Categorical(logits=features @ coef))


def data(n: int = 200):
    """``n`` points from the true mixture (numpy's generator, seed 0)."""
    rng = np.random.default_rng(0)
    z = rng.choice(K, size=n, p=TRUE_WEIGHTS)
    x = rng.normal(np.take(TRUE_LOCS, z), TRUE_SCALE)
    return jnp.asarray(x, jnp.float32)


defaults = {"strategy": "enum", "steps": 3000, "lr": 0.02, "checkpoint_every": 500}


if __name__ == "__main__":
    import sys

    from gendsl.cli import main

    sys.exit(main(["fit", __file__, *sys.argv[1:]]))


