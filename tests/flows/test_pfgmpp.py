"""The PFGM++ kernel: density, sampler, score and loss, and its Gaussian limit as D grows.

Ground truth: with r = sigma sqrt(D) the kernel is the multivariate Student-t with D
degrees of freedom and scale sigma (NumPyro's MultivariateStudentT, SciPy's t for one
coordinate), whose excess kurtosis is 6 / (D - 4).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as ndist
import pytest
from scipy import stats

import gendsl
from gendsl.inference import EstimatorError
from gendsl.inference.diffusion import (
    PFGMPPKernel,
    kernel_score,
    pfgmpp_kernel,
    pfgmpp_objective,
    pfgmpp_perturb,
    pfgmpp_r,
)
from gendsl.testing import assert_unbiased

Y = jnp.array([0.5, -1.0, 2.0])


@pytest.mark.parametrize("D", [1.0, 4.0, 64.0])
def test_log_prob_is_the_aligned_student_t(D):
    sigma = 0.7
    k = PFGMPPKernel(Y, pfgmpp_r(sigma, D), D)
    ref = ndist.MultivariateStudentT(D, Y, sigma * jnp.eye(3))
    x = jax.random.normal(jax.random.key(0), (10, 3)) * 2.0
    np.testing.assert_allclose(k.log_prob(x), ref.log_prob(x), rtol=1e-5, atol=1e-5)


def test_density_normalizes_in_one_dimension():
    from scipy.integrate import quad

    k = PFGMPPKernel(jnp.zeros(1), 1.3, 3.0)
    total = quad(lambda x: float(jnp.exp(k.log_prob(jnp.array([x])))), -np.inf, np.inf)[0]
    assert abs(total - 1.0) < 1e-5


@pytest.mark.parametrize("sampler", ["distribution", "program"])
def test_samples_match_the_kernel(sampler):
    """KS tests of a coordinate against Student-t(D, scale sigma) and of the radius against the exact radial law."""
    D, sigma = 6.0, 0.8
    n = 20000 if sampler == "distribution" else 5000  # the program variant vmaps per-draw Beta samplers: slower
    key = jax.random.key(1)
    if sampler == "distribution":
        x = PFGMPPKernel(Y, pfgmpp_r(sigma, D), D).sample(key, (n,))
    else:
        keys = jax.random.split(key, n)
        x = jax.jit(jax.vmap(lambda k: pfgmpp_perturb.simulate(k, sigma, Y, D).deterministics["x_t"]))(keys)
    x = np.asarray(x, np.float64)
    for i in range(3):
        assert stats.kstest(x[:, i], stats.t(df=D, loc=float(Y[i]), scale=sigma).cdf).pvalue > 1e-3
    # ||x - y||^2 / (N sigma^2) of a multivariate t is F(N, D)
    f = np.sum((x - np.asarray(Y)) ** 2, -1) / (3 * sigma**2)
    assert stats.kstest(f, stats.f(3, D).cdf).pvalue > 1e-3
    # the direction is uniform: E[u] = 0, E[u u^T] = I / N
    u = (x - np.asarray(Y)) / np.linalg.norm(x - np.asarray(Y), axis=-1, keepdims=True)
    assert_unbiased(u, np.zeros(3))
    assert_unbiased(u[:, :, None] * u[:, None, :], np.eye(3) / 3)


# Sampling at three D (3.5 s); the objective's limit (fast, below) shows the same D -> infinity behaviour.
@pytest.mark.slow
def test_samples_approach_the_gaussian_as_D_grows():
    """Excess kurtosis 6/(D-4) and variance D/(D-2) sigma^2 shrink to the Gaussian's 0 and sigma^2."""
    sigma, n = 1.0, 200000
    kurt, ks = [], []
    for D in [16.0, 64.0, 1024.0, 1e6]:
        x = np.asarray(PFGMPPKernel(jnp.zeros(2), pfgmpp_r(sigma, D), D).sample(jax.random.key(2), (n,)), np.float64)
        c = x[:, 0]
        z = c**2
        assert_unbiased(z, D / (D - 2) * sigma**2)
        kurt.append(stats.kurtosis(c))
        ks.append(stats.kstest(c, stats.norm(scale=sigma).cdf).statistic)
    # sample kurtosis SE ~ sqrt(24 / n) = 0.011 (Gaussian); heavier tails inflate it, hence 0.05 for D = 16
    expected, tol = np.array([6 / 12, 6 / 60, 6 / 1020, 0.0]), np.array([0.15, 0.05, 0.04, 0.04])
    assert np.all(np.abs(np.array(kurt) - expected) < tol), (kurt, expected)
    assert ks[0] > ks[1] > ks[3]
    assert ks[3] < 0.005  # indistinguishable from N(0, 1) at n = 200,000 (critical value 0.003 at 5%)


def test_score_by_autodiff_matches_closed_form():
    D, sigma = 5.0, 0.9
    x, s = jax.jit(kernel_score(pfgmpp_kernel(D)))(jax.random.key(3), sigma, Y)
    r2 = pfgmpp_r(sigma, D) ** 2
    np.testing.assert_allclose(s, -(3 + D) * (x - Y) / (jnp.sum((x - Y) ** 2) + r2), rtol=1e-5)
    x, s = kernel_score(pfgmpp_kernel(None))(jax.random.key(3), sigma, Y)
    np.testing.assert_allclose(s, -(x - Y) / sigma**2, rtol=1e-5)


def test_the_constructive_program_has_no_closed_form_score():
    with pytest.raises(EstimatorError, match="'x_t' must be a latent sample site"):
        kernel_score(lambda s, y: pfgmpp_perturb(s, y, 4.0))(jax.random.key(0), 1.0, Y)


def test_kernel_validates_D():
    with pytest.raises(ValueError, match="positive number"):
        pfgmpp_kernel(0)


@gendsl.model
def shrink(x, sigma):
    """A fixed linear denoiser c(sigma) x, far from optimal for heavy tails."""
    return gendsl.param("w", 1.0) * x / (1.0 + sigma**2)


def test_objective_tends_to_the_gaussian_objective_as_D_grows():
    """Same denoiser and data: the PFGM++ loss gap to EDM's Gaussian loss shrinks like 1/D."""
    data = jax.random.normal(jax.random.key(4), (128, 2)) * 0.5
    keys = jax.random.split(jax.random.key(5), 300)

    @jax.jit
    def replicates(D):  # D traced: one compilation for every D
        obj = pfgmpp_objective(shrink, D=D)
        return jax.vmap(lambda k: obj.estimate(k, {"w": 1.0}, data))(keys)

    gaussian = pfgmpp_objective(shrink, D=None)
    gauss = np.asarray(jax.jit(jax.vmap(lambda k: gaussian.estimate(k, {"w": 1.0}, data)))(keys))
    gaps = {}
    for D in [4.0, 64.0, 1e5]:
        diff = np.asarray(replicates(jnp.asarray(D))) - gauss  # common random numbers for sigma: paired
        gaps[D] = diff
    mean4, se4 = gaps[4.0].mean(), gaps[4.0].std(ddof=1) / np.sqrt(len(keys))
    assert abs(mean4) > 8 * se4  # heavy tails change the loss measurably at small D
    assert abs(gaps[64.0].mean()) < abs(mean4) / 4
    assert_unbiased(gaps[1e5], 0.0)  # D -> inf: EDM's loss within 4 SE
