"""Subsampled plates inside objectives: the guide's and the model's plates draw the same indices.

Ground truth: the full-data ELBO and its gradient in closed form (a Gaussian model with a
mean-field Gaussian guide), and the exact log evidence (a guide equal to the posterior). Every
statistical check is ``|mean - exact| < 4 SE`` over independent keys, and each test would fail
if the guide and the model subsampled different points (the scale then multiplies mismatched
terms) or if the N/B scale were applied twice or not at all.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.inference import elbo, iwelbo, renyi
from gendsl.testing._checks import assert_unbiased, draw_estimates

N, B = 12, 3
X = jnp.linspace(-1.5, 2.5, N)
PARAMS = {"m": 0.3, "s": 0.7, "c": jnp.linspace(-1.0, 1.0, N), "t": 0.8}
LOG_2PI = math.log(2 * math.pi)


@gendsl.model
def model(x):
    mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
    with gendsl.plate("N", N, subsample_size=B) as idx:
        z = gendsl.sample("z", dist.Normal(mu, 1.0))
        gendsl.sample("x", dist.Normal(z, 1.0), obs=x[idx])


@gendsl.model
def guide(x):
    gendsl.sample("mu", dist.Normal(gendsl.param("m", 0.0), gendsl.param("s", 1.0)))
    c, t = gendsl.param("c", jnp.zeros(N)), gendsl.param("t", 1.0)
    with gendsl.plate("N", N, subsample_size=B) as idx:
        gendsl.sample("z", dist.Normal(c[idx], t))


def full_elbo(params):
    """The full-data ELBO in closed form (expected Gaussian log densities plus the entropy)."""
    m, s, c, t = params["m"], params["s"], params["c"], params["t"]
    prior = -0.5 * LOG_2PI - 0.5 * (m**2 + s**2)
    z_given_mu = jnp.sum(-0.5 * LOG_2PI - 0.5 * ((c - m) ** 2 + t**2 + s**2))
    x_given_z = jnp.sum(-0.5 * LOG_2PI - 0.5 * ((X - c) ** 2 + t**2))
    entropy = 0.5 * jnp.log(2 * math.pi * math.e * s**2) + N * 0.5 * jnp.log(2 * math.pi * math.e * t**2)
    return prior + z_given_mu + x_given_z + entropy


def test_subsampled_elbo_and_gradient_are_unbiased_for_the_full_data_elbo():
    objective = elbo(model, guide)
    values = draw_estimates(lambda k: objective.estimate(k, PARAMS, X), jax.random.key(0), 4000)
    assert_unbiased(values, full_elbo(PARAMS), name="subsampled ELBO")
    grads = draw_estimates(lambda k: objective.grad(k, PARAMS, X), jax.random.key(1), 4000)
    assert_unbiased(grads, jax.grad(full_elbo)(PARAMS), name="subsampled ELBO gradient")


def test_the_guide_and_the_model_see_the_same_indices():
    """Each estimate is the N/B-scaled sum over one subsample: its z's observations are the guide's."""

    # With t -> 0 and c = X the z terms are deterministic given the indices; a mismatch between
    # the guide's and the model's indices would pair z_i with x_j and change the value.
    params = {**PARAMS, "c": X, "t": 1e-3}

    def one(key):
        return elbo(model, guide).estimate(key, params, X)

    est = draw_estimates(one, jax.random.key(2), 200)
    assert np.all(np.isfinite(np.asarray(est)))
    assert_unbiased(est, full_elbo(params), name="ELBO with matched indices")


@gendsl.model
def local_model(x):
    with gendsl.plate("N", N, subsample_size=B) as idx:
        z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        gendsl.sample("x", dist.Normal(z, 1.0), obs=x[idx])


@gendsl.model
def posterior(x):
    with gendsl.plate("N", N, subsample_size=B) as idx:
        gendsl.sample("z", dist.Normal(0.5 * x[idx], 0.5**0.5))


@pytest.mark.parametrize(
    "objective",
    [iwelbo(local_model, posterior, 4), renyi(local_model, posterior, 0.5, 4)],
    ids=["iwelbo", "renyi"],
)
def test_multi_particle_bounds_with_subsampling_equal_the_log_evidence_in_expectation(objective):
    """With the exact posterior every particle's weight is N/B times the subsample's evidence.

    The particles must share the subsample: with independent subsamples the log-mean-exp of
    unequal weights would exceed their mean, and the estimate would be biased upward.
    """
    log_evidence = jnp.sum(dist.Normal(0.0, 2**0.5).log_prob(X))
    values = draw_estimates(lambda k: objective.estimate(k, {}, X), jax.random.key(3), 2000)
    _, se = assert_unbiased(values, log_evidence, name="subsampled bound")
    assert se > 0  # the subsample is random, so the estimate is


@gendsl.model
def nested_model(y):
    mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
    with (
        gendsl.plate("rows", 6, subsample_size=2, dim=-2) as rows,
        gendsl.plate("cols", 5, subsample_size=3, dim=-1) as cols,
    ):
        gendsl.sample("y", dist.Normal(mu, 1.0), obs=y[rows][:, cols])


@gendsl.model
def global_guide(y):
    gendsl.sample("mu", dist.Normal(gendsl.param("m", 0.0), gendsl.param("s", 1.0)))


Y = jnp.arange(30.0).reshape(6, 5) / 10.0


def nested_full_elbo(params):
    m, s = params["m"], params["s"]
    prior = -0.5 * LOG_2PI - 0.5 * (m**2 + s**2)
    lik = jnp.sum(-0.5 * LOG_2PI - 0.5 * ((Y - m) ** 2 + s**2))
    return prior + lik + 0.5 * jnp.log(2 * math.pi * math.e * s**2)


def test_nested_subsampled_plates_in_a_model_whose_guide_has_no_plate():
    """The model's plates draw their own indices inside the objective (the guide has none)."""
    objective = elbo(nested_model, global_guide)
    params = {"m": 0.4, "s": 0.6}
    grads = draw_estimates(lambda k: objective.grad(k, params, Y), jax.random.key(4), 4000)
    assert_unbiased(grads, jax.grad(nested_full_elbo)(params), name="nested subsampled gradient")


@gendsl.model
def sequences(x):
    with gendsl.plate("N", x.shape[0], subsample_size=2, dim=-1) as idx:

        def step(z, x_t):
            z = gendsl.sample("z", dist.Normal(0.5 * z, 1.0))
            gendsl.sample("x", dist.Normal(z, 1.0), obs=x_t)
            return z, None

        gendsl.scan("t", step, jnp.zeros(2), xs=x[idx].T)


@gendsl.model
def sequences_full(x):
    with gendsl.plate("N", x.shape[0], dim=-1):

        def step(z, x_t):
            z = gendsl.sample("z", dist.Normal(0.5 * z, 1.0))
            gendsl.sample("x", dist.Normal(z, 1.0), obs=x_t)
            return z, None

        gendsl.scan("t", step, jnp.zeros(x.shape[0]), xs=x.T)


def test_subsampled_plate_around_a_scan_is_unbiased_for_the_full_data_bound():
    xs = jnp.arange(15.0).reshape(5, 3) / 7.0
    sub = draw_estimates(lambda k: elbo(sequences, _loop_guide(2)).estimate(k, {}, xs), jax.random.key(5), 3000)
    full = draw_estimates(lambda k: elbo(sequences_full, _loop_guide(5)).estimate(k, {}, xs), jax.random.key(6), 3000)
    sub, full = np.asarray(sub, np.float64), np.asarray(full, np.float64)
    se = np.hypot(sub.std() / np.sqrt(sub.size), full.std() / np.sqrt(full.size))
    assert abs(sub.mean() - full.mean()) < 4 * se, (sub.mean(), full.mean(), se)


def _loop_guide(width):
    """A guide over the loop's sites: the prior's own chain, with the plate of the given width."""

    @gendsl.model
    def guide(x):
        subsample = None if width == x.shape[0] else width
        with gendsl.plate("N", x.shape[0], subsample_size=subsample, dim=-1):

            def step(z, _):
                z = gendsl.sample("z", dist.Normal(0.5 * z, 1.0))
                return z, None

            gendsl.scan("t", step, jnp.zeros(width), length=x.shape[1])

    return guide


def test_density_outside_an_objective_still_needs_the_indices():
    tr = model.simulate(jax.random.key(0), X)
    with pytest.raises(gendsl.MissingChoiceError, match="plate 'N' draws 3 of 12"):
        model.assess(tr.choices, X)
    np.testing.assert_allclose(model.assess({**tr.choices, **tr.subsamples}, X), tr.score, rtol=1e-6)


def test_a_per_point_bound_over_a_subsampled_plate_is_refused():
    with pytest.raises(gendsl.AddressError, match="plate 'N' is subsampled"):
        iwelbo(local_model, posterior, 2, plate="N").estimate(jax.random.key(0), {}, X)
