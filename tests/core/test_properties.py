"""Properties of the core interface and handlers, over random models from ``gendsl.testing``.

Every property is an equality that must hold for *any* model; the models are
drawn by hypothesis under a fixed seed, so a run is reproducible. The statistical
test of subsampled plates uses a fixed key and a 4-standard-error bound, and
checks that the same bound rejects a wrongly scaled estimator.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, seed, settings
from hypothesis import strategies as st
from scipy import stats

import gendsl
import gendsl.distributions as dist
from gendsl import handlers
from gendsl.testing import ModelSpec, models

SETTINGS = settings(
    # 12 random models per property: each property is checked on about 130 models over the 11 tests,
    # and the draws are the same in every test (see model_property), so more examples mostly add
    # compilations of new shapes (the fast suite's budget).
    max_examples=12,
    deadline=None,  # the first example of each new shape pays for JAX compilation
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SEEDS = st.lists(st.integers(0, 2**31 - 1), min_size=2, max_size=2, unique=True)


def model_property(test):
    """Run ``test(spec, seeds)`` over random models and two distinct integer seeds.

    Every property test draws the same arguments under the same fixed seed, so
    all of them see (mostly) the same models: runs are reproducible, and later
    tests reuse the JAX compilations of earlier ones, which dominate the run
    time. Test-specific choices (a site, a constant) are derived from ``seeds``
    with ``choices_rng`` rather than drawn, to keep the draws identical, and are
    reported with ``note``.
    """
    return seed(20240601)(SETTINGS(given(spec=models(), seeds=SEEDS)(test)))


def keys(seeds: list[int]) -> tuple[jax.Array, jax.Array]:
    return jax.random.key(seeds[0]), jax.random.key(seeds[1])


def choices_rng(seeds: list[int]) -> np.random.Generator:
    return np.random.default_rng(seeds)


def assert_same_values(actual: dict, expected: dict) -> None:
    """Exact equality of two dicts of arrays, with the address in the failure message."""
    assert sorted(actual) == sorted(expected)
    for address, value in expected.items():
        np.testing.assert_array_equal(actual[address], value, err_msg=f"site {address}")


def numpyro_trace(fn, key, *args) -> dict:
    """NumPyro's own trace of ``fn`` under gendsl's address-based seed."""
    return handlers.trace(handlers.seed(fn, key=key)).get_trace(*args)


def observed_log_density(spec: ModelSpec, key) -> jax.Array:
    """``sum log p(obs)`` recomputed from NumPyro's trace, independently of gendsl's Recorder."""
    trace = numpyro_trace(spec.model, key, *spec.args)
    return sum(jnp.sum(trace[a]["fn"].log_prob(trace[a]["value"])) for a in spec.observed_sites)


@model_property
def test_assess_of_simulated_choices_is_the_trace_score(spec, seeds):
    tr = spec.model.simulate(keys(seeds)[0], *spec.args)
    np.testing.assert_allclose(spec.model.assess(tr.choices, *spec.args), tr.score, rtol=1e-5)


@model_property
def test_generate_with_all_latents_constrained_weighs_by_the_joint_density(spec, seeds):
    key, other_key = keys(seeds)
    choices = spec.model.simulate(other_key, *spec.args).latents
    tr, log_weight = spec.model.generate(key, choices, *spec.args)
    assert_same_values(tr.latents, choices)
    np.testing.assert_allclose(log_weight, spec.model.assess(choices, *spec.args), rtol=1e-5)


@model_property
def test_generate_without_constraints_weighs_by_the_observed_density(spec, seeds):
    key = keys(seeds)[0]
    tr, log_weight = spec.model.generate(key, {}, *spec.args)
    assert set(tr.observed) == set(spec.observed_sites)
    np.testing.assert_allclose(log_weight, observed_log_density(spec, key), rtol=1e-5, atol=1e-5)


@model_property
def test_condition_marks_sites_observed_with_their_values(spec, seeds):
    assume(spec.latent_sites)
    key, other_key = keys(seeds)
    rng = choices_rng(seeds)
    names = {a for a in spec.latent_sites if rng.random() < 0.5} or {spec.latent_sites[0]}
    note(f"conditioned sites: {sorted(names)}")
    values = {a: v for a, v in spec.model.simulate(other_key, *spec.args).choices.items() if a in names}
    trace = numpyro_trace(handlers.condition(spec.model, data=values), key, *spec.args)
    for address in spec.latent_sites:
        assert trace[address]["is_observed"] == (address in names), address
    assert_same_values({a: trace[a]["value"] for a in names}, values)
    conditioned = gendsl.model(handlers.condition(spec.model, data=values))
    assert set(conditioned.simulate(key, *spec.args).observed) == set(spec.observed_sites) | names


@model_property
def test_replay_reproduces_latent_choices_under_another_seed(spec, seeds):
    assume(spec.latent_sites)
    key, other_key = keys(seeds)
    first = numpyro_trace(spec.model, key, *spec.args)
    latents = {a: first[a]["value"] for a in spec.latent_sites}
    # Both orders of seed and replay must give the recorded values.
    replay_inside = handlers.seed(handlers.replay(spec.model, trace=first), key=other_key)
    replay_outside = handlers.replay(handlers.seed(spec.model, key=other_key), trace=first)
    for fn in (replay_inside, replay_outside):
        trace = handlers.trace(fn).get_trace(*spec.args)
        assert_same_values({a: trace[a]["value"] for a in spec.latent_sites}, latents)
    # The other seed alone changes every continuous latent: replay did the work.
    fresh = numpyro_trace(spec.model, other_key, *spec.args)
    for address in spec.latent_sites:
        if jnp.issubdtype(latents[address].dtype, jnp.floating):
            assert not np.array_equal(fresh[address]["value"], latents[address]), address


@model_property
def test_scale_multiplies_every_log_density(spec, seeds):
    c = float(choices_rng(seeds).integers(1, 41)) / 4
    note(f"scale: {c}")
    key = keys(seeds)[0]
    tr = spec.model.simulate(key, *spec.args)
    scaled = gendsl.model(handlers.scale(spec.model, scale=c)).simulate(key, *spec.args)
    assert_same_values(scaled.choices, tr.choices)
    for address, lp in tr.log_probs.items():
        np.testing.assert_allclose(scaled.log_probs[address], c * lp, rtol=1e-5, err_msg=address)
    # Summation order differs between c * sum(lp) and sum(c * lp): allow round-off.
    atol = 1e-5 * c * sum(float(jnp.sum(jnp.abs(lp))) for lp in tr.log_probs.values())
    np.testing.assert_allclose(scaled.score, c * tr.score, rtol=1e-5, atol=atol)


@model_property
def test_mask_false_removes_the_whole_model_density(spec, seeds):
    key = keys(seeds)[0]
    tr = spec.model.simulate(key, *spec.args)
    masked = gendsl.model(handlers.mask(spec.model, mask=False)).simulate(key, *spec.args)
    assert_same_values(masked.choices, tr.choices)
    assert_same_values(masked.log_probs, jax.tree.map(jnp.zeros_like, tr.log_probs))
    assert float(masked.score) == 0.0


@model_property
def test_mask_false_around_one_site_removes_only_that_site(spec, seeds):
    address = str(choices_rng(seeds).choice([s.name for s in spec.sites]))
    note(f"masked site: {address}")
    key = keys(seeds)[0]
    tr = spec.model.simulate(key, *spec.args)
    masked = spec.masked(address).simulate(key, *spec.args)
    assert_same_values(masked.choices, tr.choices)
    expected = dict(tr.log_probs, **{address: jnp.zeros_like(tr.log_probs[address])})
    assert_same_values(masked.log_probs, expected)


@model_property
def test_substituting_one_site_keeps_the_draws_of_independent_sites(spec, seeds):
    assume(spec.latent_sites)
    address = str(choices_rng(seeds).choice(spec.latent_sites))
    note(f"substituted site: {address}")
    key, other_key = keys(seeds)
    value = spec.model.simulate(other_key, *spec.args).choices[address]
    tr = spec.model.simulate(key, *spec.args)
    new = gendsl.model(handlers.substitute(spec.model, data={address: value})).simulate(key, *spec.args)
    np.testing.assert_array_equal(new.choices[address], value)
    independent = set(spec.latent_sites) - spec.descendants(address) - {address}
    assert_same_values({a: new.choices[a] for a in independent}, {a: tr.choices[a] for a in independent})


# Subsampled plates: the scaled log density of a random subsample is an unbiased
# estimate of the full log density.

N_DATA, SUBSAMPLE, N_ESTIMATES = 50, 5, 2000
DATA = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, N_DATA), dtype=jnp.float32)


@gendsl.model
def subsampled_normal(data):
    mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
    with gendsl.plate("data", N_DATA, subsample_size=SUBSAMPLE) as idx:
        gendsl.sample("x", dist.Normal(mu, 1.0), obs=data[idx])


def full_log_density(mu: np.ndarray) -> np.ndarray:
    """Exact log p(mu, all data) for each mu, in float64."""
    data = np.asarray(DATA, dtype=np.float64)
    return stats.norm.logpdf(mu) + stats.norm.logpdf(data[None, :], mu[:, None]).sum(axis=1)


def bias_in_standard_errors(estimates: np.ndarray, exact: np.ndarray) -> float:
    """``|mean(estimates - exact)|`` in units of its standard error."""
    error = estimates - exact
    return abs(error.mean()) / (error.std(ddof=1) / np.sqrt(error.size))


@pytest.fixture(scope="module")
def subsampled_traces():
    return jax.jit(subsampled_normal.repeat(N_ESTIMATES).simulate)(jax.random.key(0), DATA)


def test_subsampled_log_density_is_unbiased(subsampled_traces):
    tr = subsampled_traces
    mu = np.asarray(tr.choices["mu"], dtype=np.float64)
    assert np.unique(np.asarray(tr.choices["x"]), axis=0).shape[0] > 1, "subsamples never vary"
    bias = bias_in_standard_errors(np.asarray(tr.score, dtype=np.float64), full_log_density(mu))
    assert bias < 4, f"subsampled log density is biased: {bias:.1f} standard errors off"


def unscaled(tr, mu: np.ndarray) -> np.ndarray:
    """The subsample's log density without the N/M scale."""
    x = np.asarray(tr.choices["x"], dtype=np.float64)
    return stats.norm.logpdf(mu) + stats.norm.logpdf(x, mu[:, None]).sum(axis=1)


def global_site_scaled_too(tr, mu: np.ndarray) -> np.ndarray:
    """The estimate if the N/M scale leaked onto ``mu``, which sits outside the plate."""
    return np.asarray(tr.score, dtype=np.float64) + (N_DATA / SUBSAMPLE - 1) * stats.norm.logpdf(mu)


@pytest.mark.parametrize("wrong_estimate", [unscaled, global_site_scaled_too])
def test_wrongly_scaled_estimates_fail_the_unbiasedness_check(subsampled_traces, wrong_estimate):
    # The check above rejects plausible scaling bugs, so it has power.
    mu = np.asarray(subsampled_traces.choices["mu"], dtype=np.float64)
    bias = bias_in_standard_errors(wrong_estimate(subsampled_traces, mu), full_log_density(mu))
    assert bias > 4, f"the check cannot tell this wrong estimator: only {bias:.1f} standard errors off"
