"""VDM's variance-minimizing schedule update (``vdm_terms(variance_gradient=True)``) and the level denoiser.

The update must leave the ELBO alone: the same values, the same gradients in the network and the
schedule's endpoints, and for the shape the gradient of the squared diffusion term, which is a
variance gradient because the continuous-time diffusion term's expectation does not depend on
the shape (checked by quadrature over t).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gendsl.inference.diffusion import LearnedSchedule, LinearSchedule, vdm_terms
from gendsl.models.vdm import VDM, from_levels

SHAPE = ("w1", "b1", "w2", "b2", "w3")


def _net(theta, z, gamma):
    # A small nonlinear noise prediction that depends on both z and gamma (as a real network does).
    return jnp.tanh(theta[0] * z + theta[1] * gamma) * theta[2]


def _diffusion(theta, schedule, key, x, t, **kwargs):
    return vdm_terms(lambda z, g: _net(theta, z, g), schedule, key, x, antithetic_t=t, **kwargs)["diffusion"]


def _setup():
    schedule = LearnedSchedule(-8.0, 4.0, hidden=8, key=jax.random.key(0))
    theta = jnp.array([0.7, 0.05, 0.9])
    x = jnp.array([0.3, -0.8, 0.95])
    return schedule, theta, x


def test_variance_gradient_keeps_every_term_value():
    schedule, theta, x = _setup()
    eps_fn = lambda z, g: _net(theta, z, g)  # noqa: E731
    for t in (0.05, 0.5, 0.93):
        plain = vdm_terms(eps_fn, schedule, jax.random.key(1), x, antithetic_t=t)
        routed = vdm_terms(eps_fn, schedule, jax.random.key(1), x, antithetic_t=t, variance_gradient=True)
        for name in plain:
            np.testing.assert_allclose(routed[name], plain[name], rtol=1e-6)


def test_variance_gradient_is_the_elbo_gradient_for_net_and_endpoints_and_the_squared_loss_for_the_shape():
    schedule, theta, x = _setup()
    key, t = jax.random.key(2), 0.37

    def grads(fn):
        return jax.grad(fn, argnums=(0, 1))(theta, schedule)

    g_theta, g_sched = grads(lambda th, s: _diffusion(th, s, key, x, t, variance_gradient=True))
    e_theta, e_sched = grads(lambda th, s: _diffusion(th, s, key, x, t))
    _, sq_sched = grads(lambda th, s: _diffusion(th, s, key, x, t) ** 2)
    np.testing.assert_allclose(g_theta, e_theta, rtol=1e-5)
    for name in ("g0", "g1"):
        np.testing.assert_allclose(getattr(g_sched, name), getattr(e_sched, name), rtol=1e-5)
    for name in SHAPE:  # float32 rounding of gamma's normalization: a tolerance on the gradient's scale
        want = np.asarray(getattr(sq_sched, name))
        np.testing.assert_allclose(getattr(g_sched, name), want, rtol=1e-4, atol=1e-4 * np.abs(want).max() + 1e-6)
    # The check has teeth: the shape's plain ELBO gradient differs from the squared loss's.
    assert not np.allclose(e_sched.w2, sq_sched.w2, rtol=1e-2)


def test_diffusion_term_expectation_does_not_depend_on_the_schedule_shape():
    """E_t[gamma'(t)/2 ||eps - eps_hat(z_gamma(t))||^2] = int_{g0}^{g1} ||.||^2 / 2 dgamma: shape-free."""
    _, theta, x = _setup()
    ts = jnp.linspace(0.0, 1.0, 4001)

    def expectation(schedule):
        values = jax.vmap(lambda t: _diffusion(theta, schedule, jax.random.key(3), x, t))(ts)
        h = float(ts[1] - ts[0])  # Simpson's rule on the fine grid
        return h / 3 * (values[0] + values[-1] + 4 * values[1:-1:2].sum() + 2 * values[2:-1:2].sum())

    linear = expectation(LinearSchedule(-8.0, 4.0))
    learned = [expectation(LearnedSchedule(-8.0, 4.0, hidden=8, key=jax.random.key(k))) for k in (0, 5)]
    for value in learned:
        np.testing.assert_allclose(value, linear, rtol=1e-4)
    # ...whereas the endpoints do change it.
    assert abs(expectation(LinearSchedule(-6.0, 4.0)) - linear) > 1e-2 * abs(linear)


def test_variance_gradient_needs_continuous_time():
    schedule, _, x = _setup()
    with pytest.raises(ValueError, match="T=0"):
        vdm_terms(lambda z, g: z, schedule, jax.random.key(0), x, T=10, variance_gradient=True)
    with pytest.raises(ValueError, match="endpoint_fields"):
        vdm_terms(lambda z, g: z, lambda t: 2.0 * t - 1.0, jax.random.key(0), x, variance_gradient=True)


def test_vdm_variance_gradient_objective_value_unchanged():
    x = jnp.array([[0, 5, 16, 8], [1, 1, 2, 3], [16, 16, 0, 0]])
    kwargs = dict(levels=17, hidden=16, depth=1, denoiser="levels", learned_schedule=True, key=jax.random.key(0))
    plain, routed = VDM(4, **kwargs), VDM(4, variance_gradient=True, **kwargs)
    key = jax.random.key(4)
    a, b = (eqx.filter_jit(lambda v: v.objective.estimate(key, v, x))(v) for v in (plain, routed))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_levels_denoiser_at_init_is_the_uniform_prior_posterior_mean():
    vdm = VDM(3, levels=5, hidden=8, depth=1, denoiser="levels", key=jax.random.key(0))
    z, gamma = jnp.array([-0.9, 0.1, 0.55]), jnp.float32(-2.0)
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-2.0))), np.sqrt(1 / (1 + np.exp(2.0)))  # sigmoid(-gamma), sigmoid(gamma)
    values = 2 * (np.arange(5) + 0.5) / 5 - 1
    w = np.exp(-0.5 * ((np.asarray(z)[:, None] - alpha * values) / sigma) ** 2)
    x_hat = (w * values).sum(1) / w.sum(1)
    np.testing.assert_allclose(vdm.eps(z, gamma), (np.asarray(z) - alpha * x_hat) / sigma, rtol=1e-5)


def test_levels_denoiser_recovers_the_noise_at_low_noise_whatever_the_network():
    """At gamma = -12 the likelihood pins each level, so eps_hat is the true noise even for a random network."""
    vdm = VDM(4, levels=17, hidden=8, depth=1, denoiser="levels", key=jax.random.key(0))
    vdm = eqx.tree_at(lambda m: m.net.layers[-1].weight, vdm, jax.random.normal(jax.random.key(1), (68, 8)))
    x = from_levels(jnp.array([0, 5, 16, 8]), 17)
    gamma = jnp.float32(-12.0)
    eps = jax.random.normal(jax.random.key(2), (4,))
    z = jnp.sqrt(jax.nn.sigmoid(-gamma)) * x + jnp.sqrt(jax.nn.sigmoid(gamma)) * eps
    np.testing.assert_allclose(vdm.eps(z, gamma), eps, atol=2e-3)


def test_vdm_rejects_an_unknown_denoiser():
    with pytest.raises(ValueError, match="denoiser"):
        VDM(4, denoiser="x0", key=jax.random.key(0))


def test_augmentation_conditioned_vdm_reads_data_alone_as_the_identity_index():
    """Distribution augmentation: data without indices is index 0, so the bound is the data's own."""
    vdm = VDM(4, levels=17, hidden=8, depth=1, denoiser="levels", augmentations=3, key=jax.random.key(0))
    vdm = eqx.tree_at(lambda m: m.net.layers[-1].weight, vdm, jax.random.normal(jax.random.key(1), (68, 8)))
    x = jnp.array([[0, 5, 16, 8], [1, 1, 2, 3]])
    key = jax.random.key(2)
    estimate = eqx.filter_jit(lambda v, data: v.objective.estimate(key, v, data))
    alone = estimate(vdm, x)
    np.testing.assert_allclose(estimate(vdm, (x, jnp.zeros(2, jnp.int32))), alone, rtol=1e-6)
    assert abs(float(estimate(vdm, (x, jnp.array([1, 2])))) - float(alone)) > 1e-3
    plain = VDM(4, hidden=8, depth=1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="augmentations"):
        plain.objective.estimate(key, plain, (x, jnp.zeros(2, jnp.int32)))
