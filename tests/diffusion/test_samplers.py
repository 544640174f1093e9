"""Samplers on Gaussian data, where the exact noise predictor and denoiser are known in closed form.

For data ``x ~ N(m, C)``: with ``z = a x + s eps``, ``E[x | z] = m + a C (a^2 C + s^2 I)^-1 (z - a m)``
and ``eps_hat = (z - a E[x | z]) / s``; at noise level sigma, EDM's ideal denoiser is
``D(y; sigma) = m + C (C + sigma^2 I)^-1 (y - m)``. The samples' mean and covariance
must match ``(m, C)`` within four standard errors of the sample estimates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendsl.inference.diffusion import ddim_sample, ddpm_sample, edm_sample, guided, karras_sigmas
from gendsl.models.ddpm import linear_alpha_bar

M = jnp.array([1.0, -0.5])
C = jnp.array([[1.0, 0.6], [0.6, 0.5]])
N = 4000
AB = linear_alpha_bar(1000)
LAM, U = jnp.linalg.eigh(C)  # C = U diag(LAM) U^T: the 2x2 solves below become elementwise


def _shrink(y, gain):
    """``U diag(gain) U^T y``."""
    return U @ (gain * (U.T @ y))


def exact_eps(params, z, t):
    ab = jnp.asarray(AB, jnp.float32)[t]
    a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    mean_x = M + _shrink(z - a * M, a * LAM / (a**2 * LAM + s**2))
    return (z - a * mean_x) / s


def exact_denoiser(params, y, sigma):
    return M + _shrink(y - M, LAM / (LAM + sigma**2))


def assert_gaussian(x, mean, cov):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    mean, cov = np.asarray(mean), np.asarray(cov)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 4 * se_mean), (x.mean(0), mean, se_mean)
    emp = np.cov(x.T)
    # Standard error of a sample covariance entry of a Gaussian: sqrt((C_ii C_jj + C_ij^2) / n).
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(emp - cov) < 4 * se_cov), (emp, cov, se_cov)


def test_ancestral_ddpm_samples_the_data_distribution():
    x = ddpm_sample(exact_eps, None, jax.random.key(0), AB, (N, 2))
    assert_gaussian(x, M, C)


@pytest.mark.parametrize("eta, steps", [(0.0, 50), (1.0, 500)])
def test_ddim_samples_the_data_distribution(eta, steps):
    """Coarse grids are biased (eta = 0 with 20 steps: variance 0.84 of 1; eta = 1 needs ~500 steps)."""
    times = np.linspace(1000, 0, steps + 1).round().astype(int)
    x = ddim_sample(exact_eps, None, jax.random.key(1), AB, times, (N, 2), eta=eta)
    assert_gaussian(x, M, C)


@pytest.mark.parametrize("churn, steps", [(0.0, 32), (30.0, 128)])
def test_edm_heun_samples_the_data_distribution(churn, steps):
    """Churn re-noises to sigma_hat = (1 + gamma) sigma and takes a longer ODE step: with 32 steps and
    S_churn = 30 (gamma = 0.41) the variance comes out 9% high; 128 steps are within noise."""
    x = edm_sample(exact_denoiser, None, jax.random.key(2), karras_sigmas(steps), (N, 2), churn=churn,
                   s_tmin=0.05, s_tmax=50.0)
    assert_gaussian(x, M, C)


def test_samplers_compile_once():
    traces = {"eps": 0, "den": 0}

    def eps(params, z, t):
        traces["eps"] += 1
        return exact_eps(params, z, t) * params

    def den(params, y, sigma):
        traces["den"] += 1
        return exact_denoiser(params, y, sigma) * params

    times = np.linspace(1000, 0, 11).round().astype(int)
    sigmas = karras_sigmas(8)
    for i in range(3):
        p = jnp.asarray(1.0 + 0.1 * i)  # new parameter values, same shapes: no retrace
        ddim_sample(eps, p, jax.random.key(i), AB, times, (16, 2))
        edm_sample(den, p, jax.random.key(i), sigmas, (16, 2))
        if i == 0:
            first = dict(traces)
    assert traces == first


def test_classifier_free_guidance_sharpens_toward_the_condition():
    """Two classes N(+mu, 1), N(-mu, 1): the guided eps is (1+w) eps(c) - w eps(none); w > 0 pushes samples out."""
    mu = 2.0

    def eps(params, z, t, label):
        ab = jnp.asarray(AB, jnp.float32)[t]
        a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        # label 0: N(+mu, 1); label 1: N(-mu, 1); label 2 (none): the equal mixture.
        def post_mean(m):
            return m + a * (z - a * m) / (a**2 + s**2)

        w_pos = jax.nn.sigmoid(2 * a * mu * z / (a**2 + s**2) * 1.0)
        mixture = w_pos * post_mean(mu) + (1 - w_pos) * post_mean(-mu)
        mean_x = jnp.select([label == 0, label == 1], [post_mean(mu), post_mean(-mu)], mixture)
        return (z - a * mean_x) / s

    times = np.linspace(1000, 0, 51).round().astype(int)
    labels = jnp.zeros(N, jnp.int32)
    plain = ddim_sample(guided(eps, 0.0, 2), None, jax.random.key(3), AB, times, (N, 1), cond=(labels,))
    assert_gaussian(plain, jnp.array([mu]), jnp.eye(1))
    strong = ddim_sample(guided(eps, 3.0, 2), None, jax.random.key(3), AB, times, (N, 1), cond=(labels,))
    assert float(strong.mean()) > mu + 0.1 and float(strong.std()) < 1.0
