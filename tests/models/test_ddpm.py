"""DDPM as a Trainable: the objective on tuple data, and the ELBO of discrete data (Ho et al. 2020, section 3.3).

Ground truth for the bound: a DDPM whose network is linear in the state, ``eps_hat = w z``, on a
three-step chain. Then every term of the ELBO has a closed form in the textbook DDPM formulas
(written out here independently of the derivation): the prior KL, each step's expected KL
(the mean of a Gaussian quadratic) and, by Gauss-Hermite quadrature over ``z_1``, the
discretized decoder term.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss
from scipy import stats

from gendsl.models import DDPM
from gendsl.models.ddpm import discretized_gaussian_log_prob

ALPHA_BAR = np.array([1.0, 0.9, 0.5, 0.1])  # T = 3
W = 0.3


class LinearEps(eqx.Module):
    w: jax.Array

    def __call__(self, z, t, *cond):
        return self.w * z


def linear_ddpm(levels):
    return DDPM((2,), T=3, alpha_bar=ALPHA_BAR, net=lambda k: LinearEps(jnp.float32(W)), levels=levels)


def log_bin_probability(x, loc, scale, levels):
    """log of the N(loc, scale^2) mass of x's bin: [x - h, x + h], the end bins open (float64)."""
    h = 1.0 / (levels - 1)
    if x <= -1 + h / 2:
        return stats.norm.logcdf(x + h, loc, scale)
    if x >= 1 - h / 2:
        return stats.norm.logsf(x - h, loc, scale)
    if x - h > loc:  # the bin in the upper tail: the difference of survival functions does not cancel
        return np.log(stats.norm.sf(x - h, loc, scale) - stats.norm.sf(x + h, loc, scale))
    return np.log(stats.norm.cdf(x + h, loc, scale) - stats.norm.cdf(x - h, loc, scale))


def exact_elbo(x, levels):
    """The ELBO of one point under the linear-network DDPM, from the DDPM formulas (nats)."""
    ab = ALPHA_BAR
    x = np.asarray(x, np.float64)

    def kl(m_q, v_q, m_p, v_p):
        return 0.5 * (v_q / v_p - 1 - np.log(v_q / v_p) + (m_q - m_p) ** 2 / v_p)

    def g(t):  # the x0 prediction is g_t z_t: (z - sqrt(1 - ab) w z) / sqrt(ab)
        return (1 - np.sqrt(1 - ab[t]) * W) / np.sqrt(ab[t])

    prior_kl = kl(np.sqrt(ab[3]) * x, 1 - ab[3], 0.0, 1.0).sum()
    steps = 0.0
    for t in (2, 3):
        beta = 1 - ab[t] / ab[t - 1]
        c_x = np.sqrt(ab[t - 1]) * beta / (1 - ab[t])
        var_q = beta * (1 - ab[t - 1]) / (1 - ab[t])
        # q mean - model mean = c_x (x - g_t z_t), z_t ~ N(sqrt(ab_t) x, 1 - ab_t); model variance beta_t.
        mean_sq = c_x**2 * ((x - g(t) * np.sqrt(ab[t]) * x) ** 2 + g(t) ** 2 * (1 - ab[t]))
        steps += (0.5 * (var_q / beta - 1 - np.log(var_q / beta)) + 0.5 * mean_sq / beta).sum()
    nodes, weights = hermegauss(40)
    weights = weights / weights.sum()
    scale = np.sqrt(1 - ab[1])
    rec = 0.0
    for xi in x:
        loc = g(1) * (np.sqrt(ab[1]) * xi + np.sqrt(1 - ab[1]) * nodes)  # decoder mean at each z_1 node
        if levels is None:
            rec += weights @ stats.norm.logpdf(xi, loc, scale)
        else:
            rec += weights @ np.array([log_bin_probability(xi, m, scale, levels) for m in loc])
    return rec - prior_kl - steps


def test_discretized_decoder_is_the_gaussian_mass_of_the_bin():
    # levels = 5: bins of width 0.5 around -1, -0.5, 0, 0.5, 1, the end bins open.
    per_element = jax.jit(jax.vmap(lambda x, m, s: discretized_gaussian_log_prob(x, m, s, 5)))
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, -0.5, -1.0, -0.5, 0.0, 0.5, 1.0])
    loc = np.array([0.3, -0.4, 2.0, -3.0, 0.9, 3.5] + [0.1] * 5)  # (-0.5, loc 3.5, sd 0.3): the bin 10 sd away
    scale = np.array([0.2, 0.5, 0.3, 0.4, 0.1, 0.3] + [0.7] * 5)
    got = np.asarray(per_element(jnp.asarray(x), jnp.asarray(loc), jnp.asarray(scale)))
    expected = [log_bin_probability(*args, 5) for args in zip(x, loc, scale, strict=True)]
    np.testing.assert_allclose(got[:6], expected[:6], rtol=1e-3)  # float32 in a far tail: no cancellation
    assert np.exp(got[6:]).sum() == pytest.approx(1.0, abs=1e-6)  # the bins' masses at one decoder sum to one
    summed = jax.jit(discretized_gaussian_log_prob, static_argnums=3)  # sums over a point's elements
    assert float(summed(jnp.asarray(x[:5]), jnp.asarray(loc[:5]), jnp.asarray(scale[:5]), 5)) == pytest.approx(
        sum(expected[:5]), rel=1e-5)


@pytest.mark.slow  # statistical: 16k draws of the bound against its exact value (~4 s of compilation each)
@pytest.mark.parametrize("levels", [5, None])
def test_evaluate_is_the_elbo_of_the_hand_derived_bound(levels):
    ddpm = linear_ddpm(levels)
    x = np.array([-1.0, 0.5])  # an edge level and an inner one
    params = {"net": LinearEps(jnp.float32(W))}
    value, se = ddpm.evaluate(params, jnp.tile(jnp.asarray(x, jnp.float32), (64, 1)), jax.random.key(1),
                              samples=256)["bits_per_dim"]
    exact = -exact_elbo(x, levels) / (2 * np.log(2.0))
    assert abs(value - exact) < 4 * se, (value, exact, se)
    # Power: the discrete and continuous bounds of these points differ by 0.75 bits per dimension.
    assert se < 0.03


def test_discrete_minus_continuous_bound_is_the_log_bin_width_for_fine_levels():
    # Same keys: the KL terms and z_1 coincide, and for bins much narrower than the decoder's scale
    # log P(bin) = log density + log(bin width): the bound moves by log2((levels - 1) / 2) bits per dimension.
    levels, key = 4097, jax.random.key(3)
    xs = jnp.array([[-0.5, 0.25], [0.0, 0.75], [0.125, -0.875]])  # on the grid, inside (-1, 1)
    params = {"net": LinearEps(jnp.float32(W))}
    discrete = linear_ddpm(levels).evaluate(params, xs, key)["bits_per_dim"][0]
    continuous = linear_ddpm(None).evaluate(params, xs, key)["bits_per_dim"][0]
    assert discrete - continuous == pytest.approx(np.log2((levels - 1) / 2), abs=1e-3)


def test_objective_takes_labels_in_the_data_tuple():
    # (xs, labels) as one argument (what SVI minibatches) is the same program as xs, labels: compare the traces.
    ddpm = DDPM((2,), T=5, hidden=4, depth=1, num_classes=3, p_uncond=0.2)
    xs, labels = jnp.zeros((4, 2)), jnp.array([0, 1, 2, 1])
    params = jax.eval_shape(lambda: ddpm.init(jax.random.key(1)))
    as_tuple = jax.make_jaxpr(ddpm.objective.estimate)(jax.random.key(2), params, (xs, labels))
    spread = jax.make_jaxpr(ddpm.objective.estimate)(jax.random.key(2), params, xs, labels)
    assert str(as_tuple) == str(spread) and "randint" in str(as_tuple)
    with pytest.raises(ValueError, match=r"class-conditional; pass the data as \(xs, labels\)"):
        jax.make_jaxpr(ddpm.objective.estimate)(jax.random.key(2), params, xs)
