"""ODE sampling and exact likelihoods against Gaussian closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal, norm

from gendsl.inference.diffusion import denoiser_velocity, ode_log_likelihood, ode_solve, probability_flow
from gendsl.testing import assert_unbiased

MU = jnp.array([1.0, -2.0])
S = jnp.array([0.5, 1.5])  # data ~ N(MU, diag(S^2))
B0, B1 = 0.1, 20.0  # VP SDE: beta(t) = B0 + (B1 - B0) t


def vp_alpha(t):
    return jnp.exp(-0.5 * (B0 * t + 0.5 * (B1 - B0) * t**2))


def vp_var(t):
    a = vp_alpha(t)
    return a**2 * S**2 + 1 - a**2


def vp_score(x, t, args):
    return -(x - vp_alpha(t) * MU) / vp_var(t)


def vp_velocity():
    beta = lambda t: B0 + (B1 - B0) * t  # noqa: E731
    return probability_flow(vp_score, lambda x, t: -0.5 * beta(t) * x, lambda t: jnp.sqrt(beta(t)))


def exact_logpdf(x):
    return norm.logpdf(x, MU, S).sum(-1)


X = jnp.array([[1.0, -2.0], [0.2, 0.5], [2.1, -4.0], [-0.5, 1.0]])


def test_vp_probability_flow_likelihood_is_exact():
    def prior(z):
        return norm.logpdf(z, vp_alpha(1.0) * MU, jnp.sqrt(vp_var(1.0))).sum()

    lp = jax.jit(lambda x: ode_log_likelihood(vp_velocity(), x, 0.0, 1.0, prior, rtol=1e-6, atol=1e-6))(X)
    np.testing.assert_allclose(lp, exact_logpdf(X), atol=1e-3)


def test_ve_probability_flow_likelihood_is_exact():
    smin, smax = 0.01, 20.0
    sigma = lambda t: smin * (smax / smin) ** t  # noqa: E731
    dsigma2 = lambda t: 2 * sigma(t) ** 2 * jnp.log(smax / smin)  # noqa: E731
    var = lambda t: S**2 + sigma(t) ** 2  # noqa: E731

    def velocity(x, t, args):  # dx = sqrt(d sigma^2/dt) dW: v = -1/2 (d sigma^2/dt) score
        return -0.5 * dsigma2(t) * (-(x - MU) / var(t))

    def prior(z):
        return norm.logpdf(z, MU, jnp.sqrt(var(1.0))).sum()

    lp = ode_log_likelihood(velocity, X, 0.0, 1.0, prior, rtol=1e-6, atol=1e-6)
    # the data at t = 0 are N(MU, S^2 + smin^2)
    np.testing.assert_allclose(lp, norm.logpdf(X, MU, jnp.sqrt(var(0.0))).sum(-1), atol=1e-3)


def fm_velocity(x, t, args):
    """E[x1 - x0 | x_t = x] for the linear path from N(0, I) to N(MU, S^2) (exact)."""
    v_t = (1 - t) ** 2 + t**2 * S**2
    return MU + (t * S**2 - (1 - t)) / v_t * (x - t * MU)


def test_flow_matching_ode_likelihood_is_exact():
    lp = ode_log_likelihood(fm_velocity, X, 1.0, 0.0, lambda z: norm.logpdf(z).sum(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lp, exact_logpdf(X), atol=1e-3)


@pytest.mark.slow
def test_hutchinson_divergence_is_unbiased():
    """A non-diagonal field (rotation-coupled) so that the probe matters; exact trace as reference."""
    rot = jnp.array([[0.0, 1.0], [-1.0, 0.0]])

    def velocity(x, t, args):
        return fm_velocity(x, t, args) + 0.7 * rot @ jnp.tanh(x)

    prior = lambda z: norm.logpdf(z).sum()  # noqa: E731
    x = X[1:2]
    exact = ode_log_likelihood(velocity, x, 1.0, 0.0, prior)[0]
    keys = jax.random.split(jax.random.key(0), 200)
    est = jax.jit(jax.vmap(lambda k: ode_log_likelihood(velocity, x, 1.0, 0.0, prior, divergence="hutchinson",
                                                        key=k)[0]))(keys)
    assert_unbiased(np.asarray(est), float(exact))
    assert float(jnp.std(est)) > 1e-3  # it is a genuinely stochastic estimate
    # Four probes: still unbiased, and the mean of four independent one-probe estimates (the path does not
    # depend on the probes), so the variance is a quarter. The log of a ratio of two sample variances of n = 200
    # has a standard error of about sqrt(2/199 + 2/199) = 0.14 for near-normal estimates: 4 of them is 0.57.
    four = jax.jit(jax.vmap(lambda k: ode_log_likelihood(velocity, x, 1.0, 0.0, prior, divergence="hutchinson",
                                                         key=k, probes=4)[0]))(jax.random.split(jax.random.key(1), 200))
    assert_unbiased(np.asarray(four), float(exact))
    assert abs(np.log(float(jnp.var(est)) / float(jnp.var(four)) / 4.0)) < 0.57


def test_flow_matching_ode_samples_the_data_distribution():
    z = jax.random.normal(jax.random.key(1), (20000, 2))
    x = jax.jit(lambda z: ode_solve(fm_velocity, z, 0.0, 1.0, steps=50))(z)
    assert_unbiased(np.asarray(x), np.asarray(MU))
    assert_unbiased(np.asarray((x - MU) ** 2), np.asarray(S**2))


def test_denoiser_ode_from_sigma_max_samples_gaussian_data():
    """EDM ODE with the exact denoiser of N(MU, S^2), from sigma_max = 80 down to 0.002 on EDM's rho grid."""

    def denoiser(x, sigma, args):
        return MU + S**2 / (S**2 + sigma**2) * (x - MU)

    smax, smin, n = 80.0, 0.002, 64
    i = jnp.arange(n + 1) / n
    ts = (smax ** (1 / 7) + i * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    x_T = MU + jnp.sqrt(S**2 + smax**2) * jax.random.normal(jax.random.key(2), (20000, 2))
    x = ode_solve(denoiser_velocity(denoiser), x_T, smax, smin, ts=ts)
    assert_unbiased(np.asarray(x), np.asarray(MU))
    assert_unbiased(np.asarray((x - MU) ** 2), np.asarray(S**2 + smin**2), sigmas=4.0)


def test_samplers_compile_once():
    traces = []

    def velocity(x, t, args):
        traces.append(1)  # runs only while tracing
        return args["a"] * x + args["b"]

    sample = jax.jit(lambda p, z: ode_solve(velocity, z, 0.0, 1.0, args=p, steps=10))
    loglik = jax.jit(lambda p, x: ode_log_likelihood(velocity, x, 1.0, 0.0, lambda z: norm.logpdf(z).sum(), args=p))
    z = jnp.ones((5, 2))
    sample({"a": 0.1, "b": 0.0}, z)
    loglik({"a": 0.1, "b": 0.0}, z)
    n = len(traces)
    for i in range(3):
        p = {"a": jnp.asarray(0.2 * i), "b": jnp.asarray(float(i))}
        sample(p, z + i)
        loglik(p, z - i)
    assert len(traces) == n


def test_ode_log_likelihood_validates_options():
    with pytest.raises(ValueError, match="needs key"):
        ode_log_likelihood(fm_velocity, X, 1.0, 0.0, norm.logpdf, divergence="hutchinson")
    with pytest.raises(ValueError, match="'exact' or 'hutchinson'"):
        ode_log_likelihood(fm_velocity, X, 1.0, 0.0, norm.logpdf, divergence="trace")
    with pytest.raises(ValueError, match="positive int"):
        ode_solve(fm_velocity, X, 0.0, 1.0, steps=0)


def test_multivariate_gaussian_with_correlation():
    """A correlated 2-D Gaussian under the linear path: the exact velocity uses the full covariance."""
    cov = jnp.array([[1.0, 0.8], [0.8, 2.0]])
    mu = jnp.array([0.5, 1.0])

    def velocity(x, t, args):
        v_t = (1 - t) ** 2 * jnp.eye(2) + t**2 * cov
        c = t * cov - (1 - t) * jnp.eye(2)
        return mu + c @ jnp.linalg.solve(v_t, x - t * mu)

    lp = ode_log_likelihood(velocity, X, 1.0, 0.0, lambda z: norm.logpdf(z).sum(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lp, multivariate_normal.logpdf(X, mu, cov), atol=1e-3)
