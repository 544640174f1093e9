"""VDM's continuous-time ELBO and EDM's objective against the papers' formulas and closed-form expectations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendsl.inference.diffusion import (
    LearnedSchedule,
    LinearSchedule,
    discrete_decoder_log_prob,
    edm_objective,
    edm_precond,
    edm_weight,
    gamma_and_derivative,
    vdm_terms,
)


def _mean_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(), v.std(ddof=1) / np.sqrt(v.size)


def test_learned_schedule_is_monotone_with_jvp_derivative():
    g = LearnedSchedule(-6.0, 4.0, key=jax.random.key(1))
    ts = jnp.linspace(0.0, 1.0, 101)
    values, slopes = jax.vmap(lambda t: gamma_and_derivative(g, t))(ts)
    assert np.all(np.diff(values) > 0) and np.all(slopes > 0)
    np.testing.assert_allclose([values[0], values[-1]], [-6.0, 4.0], atol=1e-5)
    h = 1e-3
    fd = (jax.vmap(g)(ts[1:-1] + h) - jax.vmap(g)(ts[1:-1] - h)) / (2 * h)
    np.testing.assert_allclose(slopes[1:-1], fd, rtol=2e-2)
    assert float(gamma_and_derivative(LinearSchedule(-6.0, 4.0), 0.3)[1]) == pytest.approx(10.0)


@pytest.mark.parametrize("T", [0, 10])
def test_vdm_diffusion_loss_matches_closed_form_on_gaussian_data(T):
    """x ~ N(0, s^2 I) with the exact eps_hat = E[eps | z_t]: the continuous diffusion loss is
    1/2 D [ln(1 + s^2 e^-gamma_min) - ln(1 + s^2 e^-gamma_max)]; the T-step loss is
    T/2 D sum_i (e^(g_i - g_(i-1)) - 1) Var(eps | z_(t_i)) with Var(eps | z) = SNR s^2 / (SNR s^2 + 1)."""
    s, D, gmin, gmax = 0.7, 3, -4.0, 6.0
    schedule = LearnedSchedule(gmin, gmax, key=jax.random.key(0))

    def eps_hat(z, gamma):
        a2, s2 = jax.nn.sigmoid(-gamma), jax.nn.sigmoid(gamma)
        return jnp.sqrt(s2) * z / (a2 * s**2 + s2)

    def one(k):
        kx, kt = jax.random.split(k)
        x = s * jax.random.normal(kx, (D,))
        return vdm_terms(eps_hat, schedule, kt, x, T=T)["diffusion"]

    values = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(2), 40_000))
    if T == 0:
        exact = 0.5 * D * (np.log1p(s**2 * np.exp(-gmin)) - np.log1p(s**2 * np.exp(-gmax)))
    else:
        g = np.asarray(jax.vmap(schedule)(jnp.linspace(0.0, 1.0, T + 1)), np.float64)
        snr = np.exp(-g[1:])
        exact = 0.5 * D * np.sum(np.expm1(g[1:] - g[:-1]) * snr * s**2 / (snr * s**2 + 1))
    mean, se = _mean_se(values)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_vdm_prior_and_reconstruction():
    gamma = LinearSchedule(-10.0, 8.0)
    x = jnp.array([0.5, -0.25])
    terms = vdm_terms(lambda z, g: 0 * z, gamma, jax.random.key(0), x, decoder_log_prob=lambda z0, g0: -1.5)
    a2, s2 = float(jax.nn.sigmoid(-8.0)), float(jax.nn.sigmoid(8.0))
    exact_prior = 0.5 * np.sum(s2 + a2 * np.asarray(x) ** 2 - 1 - np.log(s2))
    assert float(terms["prior_kl"]) == pytest.approx(exact_prior, rel=1e-5)
    assert float(terms["reconstruction"]) == pytest.approx(-1.5)  # log p(x | z_0): the ELBO's sign


def test_discrete_decoder_is_a_normalized_distribution_peaked_at_the_level():
    levels, gamma0 = 17, -5.0
    z0 = jnp.array([0.1])
    probs = jnp.exp(jnp.array([discrete_decoder_log_prob(z0, jnp.array([k]), gamma0, levels) for k in range(levels)]))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    values = 2 * (np.arange(levels) + 0.5) / levels - 1
    alpha0 = float(jnp.sqrt(jax.nn.sigmoid(-gamma0)))
    assert int(probs.argmax()) == int(np.argmin(np.abs(values - 0.1 / alpha0)))


def test_edm_preconditioning_matches_the_paper():
    sd = 0.5
    for sigma in [0.002, 0.1, 0.5, 2.0, 80.0]:
        c_skip, c_out, c_in, c_noise = map(float, edm_precond(sigma, sd))
        assert c_skip == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-6)
        assert c_out == pytest.approx(sigma * sd / np.sqrt(sigma**2 + sd**2), rel=1e-6)
        assert c_in == pytest.approx(1 / np.sqrt(sigma**2 + sd**2), rel=1e-6)
        assert c_noise == pytest.approx(np.log(sigma) / 4, rel=1e-6)
        # The weight makes the raw network's effective target unit-weighted: lambda * c_out^2 = 1.
        assert float(edm_weight(sigma, sd)) * c_out**2 == pytest.approx(1.0, rel=1e-5)


def test_edm_objective_of_the_ideal_denoiser_is_minus_one_per_dimension():
    """Data N(0, sd^2): D*(y) = sd^2 / (sd^2 + sigma^2) y, E||D* - x||^2 = sd^2 sigma^2 / (sd^2 + sigma^2) per
    dimension, and lambda(sigma) times that is exactly 1 for every sigma: the loss (minus the objective) is 1."""
    sd = 0.5

    def raw_ideal(params, u, c_noise):
        sigma = jnp.exp(4 * c_noise)
        c_skip, c_out, c_in, _ = edm_precond(sigma, sd)
        y = u / c_in
        return (sd**2 / (sd**2 + sigma**2) * y - c_skip * y) / c_out

    xs = sd * jax.random.normal(jax.random.key(0), (20_000, 4))
    objective = edm_objective(raw_ideal, sigma_data=sd)
    per_batch = jax.jit(jax.vmap(lambda k, x: -objective.estimate(k, None, x[None])))(
        jax.random.split(jax.random.key(1), xs.shape[0]), xs
    )
    mean, se = _mean_se(per_batch)
    assert abs(mean - 1.0) < 4 * se, (mean, se)
