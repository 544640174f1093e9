"""Log densities of textbook models, by ``Model.assess``, against scipy.stats by hand.

Each test fixes every latent choice, computes ``log p(choices, data)`` from the
model's definition with scipy in float64, and compares (gendsl computes in
float32, hence rtol 1e-5). Two tests also check a conjugacy identity, which
ties the joint density to a closed-form posterior and marginal likelihood.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import gendsl
import gendsl.distributions as dist

RTOL = 1e-5


def assess(model, choices, *args) -> float:
    return float(model.assess({k: jnp.asarray(v, dtype=jnp.float32) for k, v in choices.items()}, *args))


# Beta-Bernoulli coin: p ~ Beta(a, b), 10 flips ~ Bernoulli(p).

A, B = 2.0, 3.0
FLIPS = np.array([1, 0, 0, 1, 1, 1, 0, 1, 1, 1], dtype=np.float32)


@gendsl.model
def coin(flips):
    p = gendsl.sample("p", dist.Beta(A, B))
    with gendsl.plate("flips", flips.shape[0]):
        gendsl.sample("flip", dist.Bernoulli(probs=p), obs=flips)


@pytest.mark.parametrize("p", [0.1, 0.37, 0.8])
def test_beta_bernoulli_coin(p):
    expected = stats.beta.logpdf(p, A, B) + stats.bernoulli.logpmf(FLIPS, p).sum()
    np.testing.assert_allclose(assess(coin, {"p": p}, jnp.asarray(FLIPS)), expected, rtol=RTOL)


@pytest.mark.parametrize("p", [0.1, 0.37, 0.8])
def test_beta_bernoulli_joint_is_posterior_times_evidence(p):
    # log p(p, x) = log Beta(p | a + heads, b + tails) + log B(a + heads, b + tails) - log B(a, b)
    heads, tails = FLIPS.sum(), (1 - FLIPS).sum()
    evidence = special.betaln(A + heads, B + tails) - special.betaln(A, B)
    posterior = stats.beta.logpdf(p, A + heads, B + tails)
    np.testing.assert_allclose(assess(coin, {"p": p}, jnp.asarray(FLIPS)), posterior + evidence, rtol=RTOL)


# Normal-Normal: mu ~ Normal(0, s0), x_i ~ Normal(mu, s) for 5 points.

S0, S = 2.0, 1.5
XS = np.array([0.3, -1.2, 2.5, 0.9, 1.7])


@gendsl.model
def normal_mean(xs):
    mu = gendsl.sample("mu", dist.Normal(0.0, S0))
    with gendsl.plate("data", xs.shape[0]):
        gendsl.sample("x", dist.Normal(mu, S), obs=xs)


@pytest.mark.parametrize("mu", [-1.0, 0.4, 2.2])
def test_normal_normal_joint_is_posterior_times_evidence(mu):
    n = XS.size
    post_var = 1.0 / (1.0 / S0**2 + n / S**2)
    post_mean = post_var * XS.sum() / S**2
    posterior = stats.norm.logpdf(mu, post_mean, np.sqrt(post_var))
    evidence = stats.multivariate_normal.logpdf(XS, np.zeros(n), S0**2 * np.ones((n, n)) + S**2 * np.eye(n))
    actual = assess(normal_mean, {"mu": mu}, jnp.asarray(XS, dtype=jnp.float32))
    np.testing.assert_allclose(actual, posterior + evidence, rtol=RTOL)


# Eight schools (centred): mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_j ~ N(mu, tau), y_j ~ N(theta_j, sigma_j).

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


@gendsl.model
def eight_schools(y, sigma):
    mu = gendsl.sample("mu", dist.Normal(0.0, 5.0))
    tau = gendsl.sample("tau", dist.HalfCauchy(5.0))
    with gendsl.plate("schools", y.shape[0]):
        theta = gendsl.sample("theta", dist.Normal(mu, tau))
        gendsl.sample("y", dist.Normal(theta, sigma), obs=y)


def test_eight_schools():
    mu, tau = 4.4, 3.6
    theta = np.array([6.2, 5.1, 3.0, 4.8, 2.9, 3.7, 7.5, 5.6])
    expected = (
        stats.norm.logpdf(mu, 0.0, 5.0)
        + stats.halfcauchy.logpdf(tau, scale=5.0)
        + stats.norm.logpdf(theta, mu, tau).sum()
        + stats.norm.logpdf(Y, theta, SIGMA).sum()
    )
    actual = assess(
        eight_schools, {"mu": mu, "tau": tau, "theta": theta},
        jnp.asarray(Y, dtype=jnp.float32), jnp.asarray(SIGMA, dtype=jnp.float32),
    )
    np.testing.assert_allclose(actual, expected, rtol=RTOL)


# Poisson-Gamma: rate ~ Gamma(shape 2, rate 0.5), counts_i ~ Poisson(rate).

COUNTS = np.array([3, 7, 4, 0, 5, 6])


@gendsl.model
def poisson_gamma(counts):
    rate = gendsl.sample("rate", dist.Gamma(2.0, 0.5))
    with gendsl.plate("counts", counts.shape[0]):
        gendsl.sample("count", dist.Poisson(rate), obs=counts)


@pytest.mark.parametrize("rate", [0.5, 4.2, 11.0])
def test_poisson_gamma(rate):
    expected = stats.gamma.logpdf(rate, a=2.0, scale=1 / 0.5) + stats.poisson.logpmf(COUNTS, rate).sum()
    np.testing.assert_allclose(assess(poisson_gamma, {"rate": rate}, jnp.asarray(COUNTS)), expected, rtol=RTOL)


# Gaussian mixture with a plate: weights ~ Dirichlet, locs_k ~ N(0, 10), z_i ~ Cat(weights), x_i ~ N(locs[z_i], 1).

ALPHA = np.array([2.0, 3.0, 4.0])
MIXTURE_X = np.array([-4.1, -3.2, 0.4, 0.1, 5.3, 4.4, 6.0])


@gendsl.model
def mixture(x):
    weights = gendsl.sample("weights", dist.Dirichlet(jnp.asarray(ALPHA, dtype=jnp.float32)))
    with gendsl.plate("components", ALPHA.size):
        locs = gendsl.sample("locs", dist.Normal(0.0, 10.0))
    with gendsl.plate("data", x.shape[0]):
        z = gendsl.sample("z", dist.Categorical(probs=weights))
        gendsl.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def test_categorical_mixture():
    weights = np.array([0.25, 0.35, 0.4])
    locs = np.array([-3.5, 0.0, 5.0])
    z = np.array([0, 0, 1, 1, 2, 2, 2])
    expected = (
        stats.dirichlet.logpdf(weights, ALPHA)
        + stats.norm.logpdf(locs, 0.0, 10.0).sum()
        + np.log(weights[z]).sum()
        + stats.norm.logpdf(MIXTURE_X, locs[z], 1.0).sum()
    )
    choices = {"weights": jnp.asarray(weights, dtype=jnp.float32),
               "locs": jnp.asarray(locs, dtype=jnp.float32), "z": jnp.asarray(z)}
    actual = mixture.assess(choices, jnp.asarray(MIXTURE_X, dtype=jnp.float32))
    np.testing.assert_allclose(actual, expected, rtol=RTOL)


# AR(1) state-space model written with gendsl.scan: x_t ~ N(phi x_{t-1}, q), y_t ~ N(x_t, r).

PHI, Q, R = 0.8, 0.5, 0.3
AR_Y = np.array([0.2, 0.9, 0.4, -0.3, -0.1, 0.6])


@gendsl.model
def ar1(ys):
    def step(x_prev, y):
        x = gendsl.sample("x", dist.Normal(PHI * x_prev, Q))
        gendsl.sample("y", dist.Normal(x, R), obs=y)
        return x, None

    gendsl.scan("t", step, jnp.zeros(()), ys)


def test_ar1_scan():
    x = np.array([0.1, 0.7, 0.5, -0.2, 0.0, 0.4])
    x_prev = np.concatenate([[0.0], x[:-1]])
    expected = stats.norm.logpdf(x, PHI * x_prev, Q).sum() + stats.norm.logpdf(AR_Y, x, R).sum()
    actual = ar1.assess({"t/x": jnp.asarray(x, dtype=jnp.float32)}, jnp.asarray(AR_Y, dtype=jnp.float32))
    np.testing.assert_allclose(actual, expected, rtol=RTOL)
