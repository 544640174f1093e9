"""Derived targets: velocity by jax.jvp of path programs, score by jax.grad of kernel programs.

Each derived target is compared with the closed form of the paper it comes from;
each derived loss with its closed-form expectation (within 4 standard errors).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import gendsl
import gendsl.distributions as dist
from gendsl.inference import REINFORCE, EstimatorError
from gendsl.inference.diffusion import (
    denoising_objective,
    denoising_score_matching,
    flow_matching,
    kernel_score,
    linear_path,
    path_velocity,
    stochastic_interpolant,
    trig_path,
)
from gendsl.testing import assert_unbiased

KEY = jax.random.key(0)
X1 = jnp.array([1.5, -2.0, 0.25])


def _noise(path, key, t, x1, site="x0"):
    return path.simulate(key, t, x1).choices[site]


@pytest.mark.parametrize("t", [0.0, 0.3, 0.99])
def test_linear_path_velocity_is_x1_minus_x0(t):
    x_t, v = jax.jit(path_velocity(linear_path))(KEY, t, X1)
    x0 = _noise(linear_path, KEY, t, X1)
    np.testing.assert_allclose(v, X1 - x0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x_t, (1 - t) * x0 + t * X1, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.8])
def test_trig_path_velocity(t):
    _, v = path_velocity(trig_path)(KEY, t, X1)
    x0 = _noise(trig_path, KEY, t, X1)
    a = jnp.pi * t / 2
    np.testing.assert_allclose(v, jnp.pi / 2 * (jnp.cos(a) * X1 - jnp.sin(a) * x0), rtol=1e-5, atol=1e-6)


def test_stochastic_interpolant_velocity_includes_latent_term():
    gamma = lambda t: jnp.sqrt(2 * t * (1 - t))  # noqa: E731
    path = stochastic_interpolant(lambda t: 1 - t, lambda t: t, gamma)
    t = 0.3
    _, v = path_velocity(path)(KEY, t, X1)
    tr = path.simulate(KEY, t, X1)
    x0, z = tr.choices["x0"], tr.choices["z"]
    dgamma = (1 - 2 * t) / jnp.sqrt(2 * t * (1 - t))
    np.testing.assert_allclose(v, X1 - x0 + dgamma * z, rtol=1e-5, atol=1e-6)


def test_path_with_a_sample_site_for_x_t():
    """x_t ~ N(t x1, (1 - t + 0.1 t)^2): the reparameterized draw's velocity is mu' + sigma' eps."""

    @gendsl.model
    def path(t, x1):
        return gendsl.sample("x_t", dist.Normal(t * x1, 1 - 0.9 * t).to_event(1))

    t = 0.4
    x_t, v = path_velocity(path)(KEY, t, X1)
    eps = (x_t - t * X1) / (1 - 0.9 * t)
    np.testing.assert_allclose(v, X1 - 0.9 * eps, rtol=1e-5, atol=1e-6)


def test_velocity_needs_reparameterized_sites():
    @gendsl.model
    def coin_path(t, x1):
        b = gendsl.sample("flip", dist.Bernoulli(t))
        return gendsl.deterministic("x_t", b * x1)

    with pytest.raises(EstimatorError, match=r"site 'flip'.*Bernoulli.* has no reparameterized sampler"):
        path_velocity(coin_path)(KEY, 0.5, X1)

    @gendsl.model
    def reinforce_path(t, x1):
        x0 = gendsl.sample("x0", dist.Normal(0.0, 1.0).expand([3]).to_event(1), strategy=REINFORCE)
        return gendsl.deterministic("x_t", (1 - t) * x0 + t * x1)

    with pytest.raises(EstimatorError, match=r"site 'x0'.*strategy"):
        path_velocity(reinforce_path)(KEY, 0.5, X1)


def test_missing_site_is_named():
    with pytest.raises(gendsl.AddressError, match="expected a site 'y_t'"):
        path_velocity(linear_path, site="y_t")(KEY, 0.5, X1)


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_vp_kernel_score_matches_closed_form(t):
    @gendsl.model
    def vp(t, x0):
        alpha = jnp.exp(-0.5 * (0.1 * t + 9.95 * t**2))
        gendsl.sample("x_t", dist.Normal(alpha * x0, jnp.sqrt(1 - alpha**2)).to_event(1))

    x_t, score = jax.jit(kernel_score(vp))(KEY, t, X1)
    alpha = jnp.exp(-0.5 * (0.1 * t + 9.95 * t**2))
    np.testing.assert_allclose(score, -(x_t - alpha * X1) / (1 - alpha**2), rtol=1e-4)


def test_kernel_score_errors_name_the_problem():
    @gendsl.model
    def two_step(t, x0):
        s = gendsl.sample("s", dist.LogNormal(0.0, 1.0))
        gendsl.sample("x_t", dist.Normal(x0, s * t).to_event(1))

    with pytest.raises(EstimatorError, match=r"also draws \['s'\]"):
        kernel_score(two_step)(KEY, 0.5, X1)
    with pytest.raises(EstimatorError, match="'x_t' must be a latent sample site"):
        kernel_score(linear_path)(KEY, 0.5, X1)


def _replicates(objective, params, data, n=200):
    keys = jax.random.split(jax.random.key(7), n)
    return np.asarray(jax.jit(jax.vmap(lambda k: objective.estimate(k, params, data)))(keys))


def test_flow_matching_objective_expectation():
    """Constant velocity w, data fixed at c: E||w - (c - x0)||^2 = ||w - c||^2 + d."""

    @gendsl.model
    def const(x, t):
        return gendsl.param("w", jnp.zeros(2)) + 0.0 * x

    c = jnp.array([1.0, -0.5])
    w = jnp.array([0.3, 0.2])
    fm = flow_matching(linear_path, const)
    data = jnp.tile(c, (128, 1))
    est = _replicates(fm, {"w": w}, data, n=100)
    assert_unbiased(est, -(jnp.sum((w - c) ** 2) + 2.0))
    grads = jax.jit(jax.vmap(lambda k: fm.grad(k, {"w": w}, data)["w"]))(jax.random.split(KEY, 100))
    assert_unbiased(np.asarray(grads), -2 * (w - c))


def test_flow_matching_trains_a_net_with_svi():
    """A linear-in-x velocity learns the exact Gaussian-to-Gaussian field at t = 0.5."""
    import optax

    from gendsl.inference import SVI

    @gendsl.model
    def net(x, t):
        a = gendsl.param("a", jnp.zeros(3))  # v = a0 + a1 t + a2 x is not exact, so test only at t=0.5 region
        return a[0] + a[1] * t + a[2] * x

    data = 2.0 + 0.5 * jax.random.normal(jax.random.key(3), (2048, 1))
    fm = flow_matching(linear_path, net, time=dist.Uniform(0.45, 0.55))
    result = SVI(fm, optax.adam(0.05)).run(jax.random.key(1), 600, data, batch_size=256, progress=False)
    a = np.asarray(result.params["a"])
    # exact E[x1 - x0 | x_t = x] at t = 1/2 for x1 ~ N(2, 1/4): mu + (t s^2 - (1 - t)) / v_t (x - t mu)
    t, mu, s2 = 0.5, 2.0, 0.25
    v_t = (1 - t) ** 2 + t**2 * s2
    slope = (t * s2 - (1 - t)) / v_t
    pred = a[0] + a[1] * t + a[2] * 1.3
    exact = mu + slope * (1.3 - t * mu)
    assert abs(pred - exact) < 0.1, (pred, exact)
    assert abs(a[2] - slope) < 0.1


def test_dsm_objective_at_the_exact_score():
    """At the true score of N(0, I) data, the VE DSM loss has a closed form given the data.

    With x_t = x0 + t eps, s(x_t) - grad log k = -x0 / (1 + t^2) + eps / (t (1 + t^2)), so with
    weight t^2 the loss is (t^2 m + d) / (1 + t^2)^2 for m = mean ||x0||^2 (d / (1 + t^2) when m = d).
    """

    @gendsl.model
    def ve(t, x0):
        gendsl.sample("x_t", dist.Normal(x0, t).to_event(1))

    @gendsl.model
    def exact(x, t):
        return -x / (1.0 + t**2) + gendsl.param("c", 0.0)

    dsm = denoising_score_matching(ve, exact, time=dist.Uniform(0.5, 1.0), weight=lambda t: t**2)
    x0 = jax.random.normal(jax.random.key(2), (512, 2))
    m = float(jnp.mean(jnp.sum(x0**2, -1)))
    expected = quad(lambda t: (t**2 * m + 2.0) / (1 + t**2) ** 2, 0.5, 1.0)[0] / 0.5
    assert_unbiased(_replicates(dsm, {"c": 0.0}, x0), -expected)


def test_denoising_objective_at_the_bayes_denoiser():
    """D(x) = x / (1 + s^2): D - x0 = (s eps - s^2 x0) / (1 + s^2), so the loss is (s^2 d + s^4 m) / (1 + s^2)^2."""

    @gendsl.model
    def ve(sigma, x0):
        gendsl.sample("x_t", dist.Normal(x0, sigma).to_event(1))

    @gendsl.model
    def bayes(x, sigma):
        return x / (1.0 + sigma**2) + gendsl.param("c", 0.0)

    objective = denoising_objective(ve, bayes, time=dist.Uniform(0.5, 2.0))
    x0 = jax.random.normal(jax.random.key(2), (512, 2))
    m = float(jnp.mean(jnp.sum(x0**2, -1)))
    expected = quad(lambda s: (2 * s**2 + s**4 * m) / (1 + s**2) ** 2, 0.5, 2.0)[0] / 1.5
    assert_unbiased(_replicates(objective, {"c": 0.0}, x0), -expected)
