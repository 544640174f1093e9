"""gendsl and NumPyro interoperate in both directions.

* A plain NumPyro model (``numpyro.sample`` / ``plate`` / ``deterministic``) is a
  gendsl model: ``simulate`` / ``assess`` / ``generate`` agree with
  ``numpyro.infer.util.log_density``.
* A gendsl model is a NumPyro model: ``MCMC(NUTS)``, ``Predictive`` and
  ``numpyro.handlers`` give the values NumPyro documents. Statistical checks use
  conjugate / linear-Gaussian models with closed-form posteriors and bounds of
  4 Monte-Carlo standard errors (fixed seeds, so the tests are deterministic).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.handlers as nh
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.util import log_density, potential_energy
from scipy import stats

import gendsl
import gendsl.distributions as dist

# --------------------------------------------------------------------------------------
# shared models and helpers
# --------------------------------------------------------------------------------------

TAU = 2.0  # prior sd of mu (prior mean 0)
SIGMA = 1.5  # known observation sd
N = 20


@gendsl.model
def conj(x=None):
    """Normal-Normal model written in gendsl."""
    mu = gendsl.sample("mu", dist.Normal(0.0, TAU))
    gendsl.deterministic("mu2", 2.0 * mu)
    with gendsl.plate("data", N):
        gendsl.sample("x", dist.Normal(mu, SIGMA), obs=x)
    return mu


def conj_numpyro(x=None):
    """The same model written with NumPyro primitives only (its twin)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, TAU))
    numpyro.deterministic("mu2", 2.0 * mu)
    with numpyro.plate("data", N):
        numpyro.sample("x", dist.Normal(mu, SIGMA), obs=x)
    return mu


def conj_posterior(x):
    """Exact posterior (mean, sd) of mu given x."""
    prec = 1.0 / TAU**2 + len(x) / SIGMA**2
    return float(np.sum(x) / SIGMA**2 / prec), float(np.sqrt(1.0 / prec))


def ess(draws) -> float:
    return float(effective_sample_size(np.asarray(draws)[None]))


def mean_sd_with_se(draws):
    """Sample mean and sd with their MC standard errors (ESS-based; delta method for sd)."""
    d = np.asarray(draws, dtype=np.float64)
    m, sd = d.mean(), d.std()
    sq = (d - m) ** 2
    se_mean = sd / np.sqrt(ess(d))
    se_sd = sq.std() / np.sqrt(ess(sq)) / (2 * sd)
    return m, sd, se_mean, se_sd


@pytest.fixture(scope="module")
def data():
    return np.asarray(np.random.default_rng(0).normal(1.2, SIGMA, size=N), dtype=np.float32)


@pytest.fixture(scope="module")
def nuts_samples(data):
    mcmc = MCMC(NUTS(conj), num_warmup=500, num_samples=1000, num_chains=1, progress_bar=False)
    mcmc.run(jax.random.key(1), jnp.asarray(data))
    return mcmc.get_samples()


# --------------------------------------------------------------------------------------
# 1. a plain NumPyro model through gendsl's interface
# --------------------------------------------------------------------------------------


def regression(x, y=None):
    """Plain NumPyro: constrained latent, vector latent, deterministic, plate."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    mean = numpyro.deterministic("mean", x @ w + b)
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(mean, s), obs=y)
    return mean


@pytest.fixture(scope="module")
def reg_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(15, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.4 * rng.normal(size=15)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def _manual_regression_logp(x, y, w, b, s):
    lp = stats.norm.logpdf(np.asarray(w), 0, 1).sum() + stats.norm.logpdf(float(b), 0, 1)
    lp += stats.halfnorm.logpdf(float(s))
    lp += stats.norm.logpdf(np.asarray(y), np.asarray(x @ w + b), float(s)).sum()
    return lp


def test_numpyro_model_simulate(reg_data):
    x, y = reg_data
    m = gendsl.model(regression)
    tr = m.simulate(jax.random.key(3), x, y)
    assert set(tr.choices) == {"w", "b", "s", "y"}
    assert tr.observed == ("y",)
    assert set(tr.latents) == {"w", "b", "s"}
    np.testing.assert_array_equal(tr.choices["y"], y)
    # event dims summed, plate dims kept
    assert tr.log_probs["w"].shape == () and tr.log_probs["y"].shape == (15,)
    assert float(tr.choices["s"]) > 0
    w, b, s = tr.choices["w"], tr.choices["b"], tr.choices["s"]
    np.testing.assert_allclose(tr.deterministics["mean"], x @ w + b, rtol=1e-6)
    np.testing.assert_allclose(tr.retval, x @ w + b, rtol=1e-6)
    np.testing.assert_allclose(tr.log_probs["s"], dist.HalfNormal(1.0).log_prob(s), rtol=1e-6)
    lp_ref, _ = log_density(regression, (x, y), {}, tr.latents)
    np.testing.assert_allclose(tr.score, lp_ref, rtol=1e-5)
    np.testing.assert_allclose(tr.score, _manual_regression_logp(x, y, w, b, s), rtol=1e-4)
    # reproducible from the key; y unobserved is sampled with the plate's shape
    tr2 = m.simulate(jax.random.key(3), x, y)
    np.testing.assert_array_equal(tr2.choices["w"], w)
    tr3 = m.simulate(jax.random.key(3), x)
    assert tr3.observed == () and tr3.choices["y"].shape == (15,)
    np.testing.assert_array_equal(tr3.choices["w"], w)  # address-based keys: same draw at "w"


def test_numpyro_model_assess_matches_log_density(reg_data):
    x, y = reg_data
    m = gendsl.model(regression)
    choices = {"w": jnp.array([0.9, -1.8, 0.4]), "b": jnp.array(0.2), "s": jnp.array(0.5)}
    lp_ref, _ = log_density(regression, (x, y), {}, choices)
    np.testing.assert_allclose(m.assess(choices, x, y), lp_ref, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(m.assess)(choices, x, y), lp_ref, rtol=1e-5)
    np.testing.assert_allclose(m.assess(choices, x, y), _manual_regression_logp(x, y, *choices.values()), rtol=1e-4)
    # a value for the observed site replaces the observation (as substitute does)
    y2 = y + 1.0
    lp2, _ = log_density(regression, (x, y2), {}, choices)
    np.testing.assert_allclose(m.assess({**choices, "y": y2}, x, y), lp2, rtol=1e-6)
    # gradients agree too
    g = jax.grad(lambda c: m.assess(c, x, y))(choices)
    g_ref = jax.grad(lambda c: log_density(regression, (x, y), {}, c)[0])(choices)
    for k in choices:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-5, atol=1e-5)
    with pytest.raises(gendsl.MissingChoiceError):
        m.assess({"w": choices["w"], "b": choices["b"]}, x, y)


def test_numpyro_model_generate_weight(reg_data):
    x, y = reg_data
    m = gendsl.model(regression)
    w0 = jnp.array([1.0, -2.0, 0.5])
    tr, weight = m.generate(jax.random.key(5), {"w": w0}, x, y)
    np.testing.assert_array_equal(tr.choices["w"], w0)
    _, site_tr = log_density(regression, (x, y), {}, tr.latents)

    def site_lp(name):
        site = site_tr[name]
        return jnp.sum(site["fn"].log_prob(site["value"]))

    np.testing.assert_allclose(weight, site_lp("w") + site_lp("y"), rtol=1e-5)
    np.testing.assert_allclose(weight, tr.score - tr.site_score("b") - tr.site_score("s"), rtol=1e-5)
    # nothing constrained: the weight is the likelihood of the observations
    tr0, w_none = m.generate(jax.random.key(5), {}, x, y)
    np.testing.assert_allclose(w_none, tr0.site_score("y"), rtol=1e-6)
    # every latent constrained: the weight is the joint density (= assess)
    full = {"w": w0, "b": jnp.array(0.3), "s": jnp.array(0.4)}
    _, w_full = m.generate(jax.random.key(5), full, x, y)
    np.testing.assert_allclose(w_full, log_density(regression, (x, y), {}, full)[0], rtol=1e-6)
    # jit-compiled generate: same draws, same weight
    tr_j, w_j = jax.jit(m.generate)(jax.random.key(5), {"w": w0}, x, y)
    np.testing.assert_allclose(w_j, weight, rtol=1e-5)
    np.testing.assert_allclose(tr_j.choices["s"], tr.choices["s"], rtol=1e-6)


def test_numpyro_subsampled_plate_scale():
    """A subsampled ``numpyro.plate`` scales log densities by N / batch, as log_density does."""

    def sub(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("n", 10, subsample_size=4) as idx:
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        return idx

    m = gendsl.model(sub)
    y = jnp.arange(10.0)
    tr = m.simulate(jax.random.key(0), y)
    idx = tr.retval
    assert idx.shape == (4,) and len(set(np.asarray(idx).tolist())) == 4
    expected = dist.Normal(tr.choices["mu"], 1.0).log_prob(y[idx]) * 2.5
    np.testing.assert_allclose(tr.log_probs["y"], expected, rtol=1e-6)
    # assess has no key, so a subsampled plate needs one from a seed; the same key
    # draws the same indices (address "#plate/n") and gives the same score
    seeded = gendsl.model(gendsl.handlers.seed(sub, key=jax.random.key(0)))
    np.testing.assert_allclose(seeded.assess(tr.latents, y), tr.score, rtol=1e-6)


# --------------------------------------------------------------------------------------
# 2. a gendsl model under NumPyro's NUTS
# --------------------------------------------------------------------------------------


def test_nuts_on_gendsl_model_matches_conjugate_posterior(data, nuts_samples):
    mu = np.asarray(nuts_samples["mu"])
    assert mu.shape == (1000,)
    np.testing.assert_allclose(nuts_samples["mu2"], 2.0 * nuts_samples["mu"], rtol=1e-6)
    post_mean, post_sd = conj_posterior(data)
    m, sd, se_mean, se_sd = mean_sd_with_se(mu)
    assert ess(mu) > 200, ess(mu)
    assert abs(m - post_mean) < 4 * se_mean, (m, post_mean, se_mean)
    assert abs(sd - post_sd) < 4 * se_sd, (sd, post_sd, se_sd)


def test_gendsl_and_numpyro_twin_have_same_potential(data):
    """NUTS sees the same potential energy for the gendsl model and its NumPyro twin."""
    x = jnp.asarray(data)
    for v in (-1.0, 0.3, 2.5):
        pe = potential_energy(conj, (x,), {}, {"mu": jnp.array(v)})
        pe_ref = potential_energy(conj_numpyro, (x,), {}, {"mu": jnp.array(v)})
        np.testing.assert_allclose(pe, pe_ref, rtol=1e-6)
        np.testing.assert_allclose(-pe, conj.assess({"mu": v}, x), rtol=1e-6)


# --------------------------------------------------------------------------------------
# 3. Predictive
# --------------------------------------------------------------------------------------


def test_prior_predictive():
    S = 4000
    out = Predictive(conj, num_samples=S)(jax.random.key(2))
    assert set(out) == {"mu", "mu2", "x"}
    assert out["mu"].shape == (S,) and out["mu2"].shape == (S,) and out["x"].shape == (S, N)
    mu, x = np.asarray(out["mu"], np.float64), np.asarray(out["x"], np.float64)
    np.testing.assert_allclose(out["mu2"], 2 * out["mu"], rtol=1e-6)
    # mu ~ N(0, TAU): independent draws, SE of mean TAU/sqrt(S), of sd TAU/sqrt(2S)
    assert abs(mu.mean()) < 4 * TAU / np.sqrt(S)
    assert abs(mu.std() - TAU) < 4 * TAU / np.sqrt(2 * S)
    # x - mu ~ N(0, SIGMA) iid over S*N entries
    resid = x - mu[:, None]
    assert abs(resid.mean()) < 4 * SIGMA / np.sqrt(S * N)
    assert abs(resid.std() - SIGMA) < 4 * SIGMA / np.sqrt(2 * S * N)
    # marginal of one x: N(0, TAU^2 + SIGMA^2)
    marg = np.sqrt(TAU**2 + SIGMA**2)
    assert abs(x[:, 0].std() - marg) < 4 * marg / np.sqrt(2 * S)
    # draws are distinct across samples (keys are split per sample)
    assert np.unique(x, axis=0).shape[0] == S


def test_posterior_predictive_fixed_sample():
    S = 2000
    post = {"mu": jnp.full((S,), 1.5)}
    out = Predictive(conj, posterior_samples=post)(jax.random.key(4))
    assert set(out) == {"mu2", "x"}  # sites given in posterior_samples are not returned
    assert out["x"].shape == (S, N)
    np.testing.assert_allclose(out["mu2"], 3.0)
    x = np.asarray(out["x"], np.float64)
    assert abs(x.mean() - 1.5) < 4 * SIGMA / np.sqrt(S * N)
    assert abs(x.std() - SIGMA) < 4 * SIGMA / np.sqrt(2 * S * N)
    # return_sites selects what comes back, including the given site
    out2 = Predictive(conj, posterior_samples=post, return_sites=["mu", "x"])(jax.random.key(4))
    assert set(out2) == {"mu", "x"}
    np.testing.assert_allclose(out2["mu"], 1.5)


def test_posterior_predictive_from_nuts(data, nuts_samples):
    out = Predictive(conj, posterior_samples={"mu": nuts_samples["mu"]})(jax.random.key(6))
    assert out["x"].shape == (1000, N)
    resid = np.asarray(out["x"], np.float64) - np.asarray(nuts_samples["mu"])[:, None]
    assert abs(resid.mean()) < 4 * SIGMA / np.sqrt(resid.size)
    # the posterior predictive of one new point: N(post_mean, post_sd^2 + SIGMA^2)
    post_mean, post_sd = conj_posterior(data)
    x0 = np.asarray(out["x"][:, 0], np.float64)
    pred_sd = np.sqrt(post_sd**2 + SIGMA**2)
    assert abs(x0.mean() - post_mean) < 4 * pred_sd / np.sqrt(ess(x0))


# --------------------------------------------------------------------------------------
# 4. NumPyro handlers on gendsl models
# --------------------------------------------------------------------------------------


def test_numpyro_seed_and_trace_match_numpyro_twin(data):
    x = jnp.asarray(data)
    tr = nh.trace(nh.seed(conj, rng_seed=7)).get_trace(x)
    ref = nh.trace(nh.seed(conj_numpyro, rng_seed=7)).get_trace(x)
    assert list(tr) == list(ref) == ["mu", "mu2", "data", "x"]
    for name in ("mu", "mu2", "x"):
        assert tr[name]["type"] == ref[name]["type"]
        np.testing.assert_array_equal(tr[name]["value"], ref[name]["value"])
    assert tr["x"]["is_observed"] and not tr["mu"]["is_observed"]
    assert tr["x"]["fn"].batch_shape == (N,)
    assert [f.name for f in tr["x"]["cond_indep_stack"]] == ["data"]
    # numpyro.seed splits keys in program order: the first site uses split(key)[1]
    key = jax.random.PRNGKey(7)
    expected_mu = dist.Normal(0.0, TAU).sample(jax.random.split(key)[1])
    np.testing.assert_allclose(tr["mu"]["value"], expected_mu, rtol=1e-6)
    other = nh.seed(conj, rng_seed=8)(x)
    assert float(other) != float(tr["mu"]["value"])


def test_numpyro_condition(data):
    x = jnp.asarray(data)
    cond = nh.condition(conj, data={"mu": 0.7})
    tr = nh.trace(nh.seed(cond, rng_seed=0)).get_trace(x)
    assert tr["mu"]["is_observed"] and float(tr["mu"]["value"]) == pytest.approx(0.7)
    np.testing.assert_allclose(tr["mu2"]["value"], 1.4, rtol=1e-6)
    m = gendsl.model(cond)
    gtr = m.simulate(jax.random.key(0), x)
    assert set(gtr.observed) == {"mu", "x"} and gtr.latents == {}
    expected = stats.norm.logpdf(0.7, 0, TAU) + stats.norm.logpdf(data, 0.7, SIGMA).sum()
    np.testing.assert_allclose(gtr.score, expected, rtol=1e-5)
    np.testing.assert_allclose(m.assess({}, x), expected, rtol=1e-5)
    # generate's weight counts the conditioned site (it is observed)
    _, w = m.generate(jax.random.key(1), {}, x)
    np.testing.assert_allclose(w, expected, rtol=1e-5)


def test_numpyro_substitute(data):
    x = jnp.asarray(data)
    sub = nh.substitute(conj, data={"mu": 0.7})
    tr = nh.trace(nh.seed(sub, rng_seed=0)).get_trace(x)
    assert not tr["mu"]["is_observed"] and float(tr["mu"]["value"]) == pytest.approx(0.7)
    m = gendsl.model(sub)
    gtr = m.simulate(jax.random.key(0), x)
    assert gtr.observed == ("x",) and float(gtr.choices["mu"]) == pytest.approx(0.7)
    np.testing.assert_allclose(gtr.score, conj.assess({"mu": 0.7}, x), rtol=1e-6)
    # the inner substitute supplies the value assess would otherwise miss
    np.testing.assert_allclose(m.assess({}, x), conj.assess({"mu": 0.7}, x), rtol=1e-6)
    # an outer substitute overrides an inner one (NumPyro's rule)
    outer = nh.substitute(sub, data={"mu": -0.2})
    assert float(nh.seed(outer, rng_seed=0)(x)) == pytest.approx(-0.2)


def test_numpyro_block(data):
    x = jnp.asarray(data)
    tr = nh.trace(nh.block(nh.seed(conj, rng_seed=0), hide=["mu"])).get_trace(x)
    assert "mu" not in tr and "x" in tr
    tr = nh.trace(nh.block(nh.seed(conj, rng_seed=0), expose=["mu"])).get_trace(x)
    assert list(tr) == ["mu"]
    # a gendsl model sees only what the block lets through
    m = gendsl.model(nh.block(conj, hide=["mu"]))
    gtr = m.simulate(jax.random.key(0), x)
    assert set(gtr.choices) == {"x"} and "mu2" in gtr.deterministics
    expected = dist.Normal(gtr.retval, SIGMA).log_prob(x).sum()
    np.testing.assert_allclose(gtr.score, expected, rtol=1e-6)
    # the hidden site cannot reach the seed by name: NumPyro's block fetches a key with an
    # unnamed numpyro.prng_key(), which gendsl's seed keys by program order ("#prng_key0")
    key = jax.random.key(0)
    block_key = gendsl.handlers.seed(numpyro.prng_key, key=key)()
    np.testing.assert_allclose(gtr.retval, dist.Normal(0.0, TAU).sample(block_key), rtol=1e-6)
    np.testing.assert_array_equal(m.simulate(key, x).retval, gtr.retval)


def test_numpyro_scale(data):
    x = jnp.asarray(data)
    scaled = nh.scale(conj, scale=3.0)
    tr = nh.trace(nh.seed(scaled, rng_seed=0)).get_trace(x)
    assert tr["mu"]["scale"] == 3.0 and tr["x"]["scale"] == 3.0
    choices = {"mu": jnp.array(0.4)}
    np.testing.assert_allclose(log_density(scaled, (x,), {}, choices)[0], 3.0 * conj.assess(choices, x), rtol=1e-6)
    m = gendsl.model(scaled)
    np.testing.assert_allclose(m.assess(choices, x), 3.0 * conj.assess(choices, x), rtol=1e-6)
    gtr = m.simulate(jax.random.key(0), x)
    base = conj.simulate(jax.random.key(0), x)
    np.testing.assert_allclose(gtr.log_probs["x"], 3.0 * base.log_probs["x"], rtol=1e-6)
    # nested scales multiply
    np.testing.assert_allclose(
        gendsl.model(nh.scale(scaled, scale=0.5)).assess(choices, x),
        1.5 * conj.assess(choices, x),
        rtol=1e-6,
    )


def test_numpyro_mask(data):
    x = jnp.asarray(data)
    choices = {"mu": jnp.array(0.4)}
    np.testing.assert_allclose(gendsl.model(nh.mask(conj, mask=False)).assess(choices, x), 0.0)
    np.testing.assert_allclose(
        gendsl.model(nh.mask(conj, mask=True)).assess(choices, x), conj.assess(choices, x), rtol=1e-6
    )
    np.testing.assert_allclose(log_density(nh.mask(conj, mask=False), (x,), {}, choices)[0], 0.0)

    # the missing-data idiom: a mask over the plate inside a gendsl model
    @gendsl.model
    def masked(x, keep):
        mu = gendsl.sample("mu", dist.Normal(0.0, TAU))
        with gendsl.plate("data", N), gendsl.handlers.mask(mask=keep):
            gendsl.sample("x", dist.Normal(mu, SIGMA), obs=x)

    keep = jnp.arange(N) % 3 != 0
    expected = stats.norm.logpdf(0.4, 0, TAU) + stats.norm.logpdf(data[np.asarray(keep)], 0.4, SIGMA).sum()
    np.testing.assert_allclose(masked.assess(choices, x, keep), expected, rtol=1e-5)
    tr = masked.simulate(jax.random.key(0), x, keep)
    np.testing.assert_array_equal(np.asarray(tr.log_probs["x"])[~np.asarray(keep)], 0.0)
    np.testing.assert_allclose(
        log_density(masked, (x, keep), {}, choices)[0], masked.assess(choices, x, keep), rtol=1e-6
    )


def test_gendsl_seed_composes_with_numpyro_condition():
    key = jax.random.key(11)
    free = gendsl.handlers.seed(conj, key=key)
    tr_free = nh.trace(free).get_trace()
    # gendsl's seed handler reproduces model.simulate exactly
    sim = conj.simulate(key)
    for name in ("mu", "x"):
        np.testing.assert_array_equal(tr_free[name]["value"], sim.choices[name])

    inner = nh.trace(gendsl.handlers.seed(nh.condition(conj, data={"mu": 0.7}), key=key)).get_trace()
    outer = nh.trace(nh.condition(gendsl.handlers.seed(conj, key=key), data={"mu": 0.7})).get_trace()
    for tr in (inner, outer):
        assert tr["mu"]["is_observed"] and float(tr["mu"]["value"]) == pytest.approx(0.7)
    np.testing.assert_array_equal(inner["x"]["value"], outer["x"]["value"])
    # address-based keys: "x" uses the same noise whatever mu is, so conditioning mu
    # shifts every draw of x by exactly (0.7 - mu_free)
    np.testing.assert_allclose(inner["x"]["value"] - 0.7, tr_free["x"]["value"] - tr_free["mu"]["value"], atol=1e-5)
    # gendsl.generate with the same constraint and key gives the same draws
    gtr, _ = conj.generate(key, {"mu": 0.7})
    np.testing.assert_allclose(gtr.choices["x"], inner["x"]["value"], rtol=1e-6)
    # NumPyro's substitute composes the same way
    sub = nh.trace(gendsl.handlers.seed(nh.substitute(conj, data={"mu": 0.7}), key=key)).get_trace()
    assert not sub["mu"]["is_observed"]
    np.testing.assert_array_equal(sub["x"]["value"], inner["x"]["value"])


def test_inner_seed_wins_between_gendsl_and_numpyro_seeds():
    """The seed closest to the model hands out the keys, in either order."""
    np_inner = gendsl.handlers.seed(nh.seed(conj, rng_seed=3), key=99)()
    np.testing.assert_array_equal(np_inner, nh.seed(conj, rng_seed=3)())
    g_inner = nh.seed(gendsl.handlers.seed(conj, key=99), rng_seed=3)()
    np.testing.assert_array_equal(g_inner, conj.simulate(99).retval)


# --------------------------------------------------------------------------------------
# 5. gendsl.scan under NUTS: a linear-Gaussian random walk with a latent drift
# --------------------------------------------------------------------------------------

T = 20
SD_D, Q, R = 1.0, 0.3, 0.5  # prior sd of the drift, step noise sd, observation noise sd


@gendsl.model
def walk(ys):
    drift = gendsl.sample("drift", dist.Normal(0.0, SD_D))

    def step(z, y):
        z = gendsl.sample("z", dist.Normal(z + drift, Q))
        gendsl.sample("y", dist.Normal(z, R), obs=y)
        return z, None

    gendsl.scan("walk", step, jnp.zeros(()), ys)
    return drift


def walk_joint_cov():
    """Covariance of (drift, z_1..z_T, y_1..y_T): w = B v, v ~ N(0, I)."""
    steps = np.arange(1, T + 1, dtype=np.float64)
    lower = np.tril(np.ones((T, T)))
    B = np.zeros((1 + 2 * T, 1 + 2 * T))
    B[0, 0] = SD_D
    B[1 : T + 1, 0] = SD_D * steps
    B[1 : T + 1, 1 : T + 1] = Q * lower
    B[T + 1 :, : T + 1] = B[1 : T + 1, : T + 1]
    B[T + 1 :, T + 1 :] = R * np.eye(T)
    return B @ B.T


def drift_posterior(ys):
    cov = walk_joint_cov()
    c_dy, c_yy = cov[0, T + 1 :], cov[T + 1 :, T + 1 :]
    gain = np.linalg.solve(c_yy, c_dy)
    return float(gain @ ys), float(np.sqrt(cov[0, 0] - gain @ c_dy))


@pytest.fixture(scope="module")
def walk_data():
    rng = np.random.default_rng(3)
    z = np.cumsum(0.4 + Q * rng.normal(size=T))
    return (z + R * rng.normal(size=T)).astype(np.float32)


def test_scan_walk_log_density_is_the_joint_gaussian(walk_data):
    ys = jnp.asarray(walk_data)
    z = jnp.asarray(np.cumsum(0.35 + 0.1 * np.sin(np.arange(T))), jnp.float32)
    params = {"drift": jnp.array(0.35), "walk/z": z}
    w = np.concatenate([[0.35], np.asarray(z, np.float64), walk_data.astype(np.float64)])
    expected = stats.multivariate_normal(np.zeros(1 + 2 * T), walk_joint_cov()).logpdf(w)
    np.testing.assert_allclose(walk.assess(params, ys), expected, rtol=1e-4)
    np.testing.assert_allclose(log_density(walk, (ys,), {}, params)[0], expected, rtol=1e-4)
    tr = walk.simulate(jax.random.key(0), ys)
    assert tr.choices["walk/z"].shape == (T,) and tr.observed == ("walk/y",)


def test_scan_walk_potential_energy(walk_data):
    """potential_energy (what NUTS differentiates) of the scan model: -log joint."""
    ys = jnp.asarray(walk_data)
    params = {"drift": jnp.array(0.35), "walk/z": jnp.asarray(np.cumsum(np.full(T, 0.35)), jnp.float32)}
    pe = potential_energy(walk, (ys,), {}, params)
    np.testing.assert_allclose(-pe, walk.assess(params, ys), rtol=1e-5)


@pytest.mark.slow  # a second NUTS run; the fast checks of what NUTS sees are the two tests above
def test_nuts_on_scan_walk_matches_kalman_posterior(walk_data):
    ys = jnp.asarray(walk_data)
    mcmc = MCMC(NUTS(walk), num_warmup=500, num_samples=1000, num_chains=1, progress_bar=False)
    mcmc.run(jax.random.key(2), ys)
    drift = np.asarray(mcmc.get_samples()["drift"])
    assert drift.shape == (1000,) and mcmc.get_samples()["walk/z"].shape == (1000, T)
    post_mean, post_sd = drift_posterior(walk_data.astype(np.float64))
    m, sd, se_mean, se_sd = mean_sd_with_se(drift)
    assert abs(m - post_mean) < 4 * se_mean, (m, post_mean, se_mean)
    assert abs(sd - post_sd) < 4 * se_sd, (sd, post_sd, se_sd)
