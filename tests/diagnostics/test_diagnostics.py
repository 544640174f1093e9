"""gendsl.diagnostics against ground truth: closed-form KLs, brute-force Monte Carlo KLs, known encoders."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl._handlers import seed
from gendsl._trace import Recorder
from gendsl.diagnostics import (
    collapse_report,
    drop_passive,
    passive_variables,
    representation_correlation,
)

X = jnp.linspace(-1.5, 1.5, 40)


def _normal_kl(mu, s):
    return 0.5 * (s**2 + mu**2 - 1.0) - np.log(s)


def test_analytic_kl_per_dimension_equals_the_closed_form():
    loc_scale = np.array([1.0, 0.0, 0.3]), np.array([0.5, 1.0, 0.9])

    @gendsl.model
    def p(x):
        with gendsl.plate("data", x.shape[0]):
            gendsl.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    @gendsl.model
    def q(x):
        with gendsl.plate("data", x.shape[0]):
            loc = x[:, None] * loc_scale[0]
            gendsl.sample("z", dist.Normal(loc, loc_scale[1]).to_event(1))

    (site,) = collapse_report(p, q, {}, X, key=jax.random.key(0), num_samples=2).values()
    mu = np.asarray(X, np.float64)[:, None] * loc_scale[0]
    np.testing.assert_allclose(site.kl, _normal_kl(mu, loc_scale[1]).mean(axis=0), rtol=1e-5, atol=1e-6)
    assert site.analytic
    np.testing.assert_array_equal(site.collapsed, [False, True, False])
    np.testing.assert_array_equal(site.active, [True, False, True])
    np.testing.assert_allclose(site.mean_variance, mu.var(axis=0, ddof=1), rtol=1e-5, atol=1e-7)


# A two-level model: w (Normal guide, Normal prior: closed form) and u | w (Laplace guide,
# Normal prior: no closed form, Monte Carlo), both per data point.
def _q_params(x):
    return (0.8 * x, 0.6), (0.5 * x, 0.7)  # (loc, scale) of w, (loc, scale) of u


def _brute_force(x, n, key):
    """Per-element log q - log p at n guide draws per point, written out by hand."""
    (mw, sw), (mu, su) = _q_params(np.asarray(x, np.float64))
    rng = np.random.default_rng(key)
    w = mw + sw * rng.normal(size=(n, len(x)))
    u = mu + rng.laplace(scale=su, size=(n, len(x)))
    lq_w = -0.5 * ((w - mw) / sw) ** 2 - np.log(sw)
    lp_w = -0.5 * w**2
    lq_u = -np.abs(u - mu) / su - np.log(2 * su)
    lp_u = -0.5 * ((u - w) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi)
    return lq_w - lp_w, lq_u - lp_u


def _mean_se(a):
    a = a.reshape(-1, *a.shape[2:])
    return a.mean(axis=0), a.std(axis=0, ddof=1) / np.sqrt(len(a))


def _check(site, brute, analytic):
    mean, se = _mean_se(brute)
    assert site.analytic == analytic
    # Both Monte Carlo: their errors add. A closed form has none: its kl_se is the spread over the data.
    total_se = np.sqrt(se**2 + (0 if analytic else site.kl_se**2))
    assert np.all(np.abs(site.kl - mean) < 4 * total_se), (site.kl, mean, total_se)


def test_kls_equal_brute_force_monte_carlo_in_a_plate():
    @gendsl.model
    def p(x):
        with gendsl.plate("data", x.shape[0]):
            w = gendsl.sample("w", dist.Normal(0.0, 1.0))
            gendsl.sample("u", dist.Normal(w, 0.5))

    @gendsl.model
    def q(x):
        (mw, sw), (mu, su) = _q_params(x)
        with gendsl.plate("data", x.shape[0]):
            gendsl.sample("w", dist.Normal(mw, sw))
            gendsl.sample("u", dist.Laplace(mu, su))

    report = collapse_report(p, q, {}, X, key=jax.random.key(1), num_samples=200)
    w, u = _brute_force(X, 400, 0)
    _check(report["w"], w, analytic=True)
    _check(report["u"], u, analytic=False)
    assert report["w"].kl.shape == report["u"].kl.shape == ()


def test_kls_equal_brute_force_monte_carlo_in_a_scan():
    """The same sites drawn in a gendsl.scan of 3 steps (the plate inside the body): one KL per step."""
    gains = jnp.array([1.0, 0.5, 0.0])

    @gendsl.model
    def p(x):
        def body(_, g):
            with gendsl.plate("data", x.shape[0]):
                w = gendsl.sample("w", dist.Normal(0.0, 1.0))
                gendsl.sample("u", dist.Normal(w, 0.5))
            return None, None

        gendsl.scan("loop", body, None, gains)

    @gendsl.model
    def q(x):
        def body(_, g):
            (mw, sw), (mu, su) = _q_params(g * x)
            with gendsl.plate("data", x.shape[0]):
                gendsl.sample("w", dist.Normal(mw, sw))
                gendsl.sample("u", dist.Laplace(mu, su))
            return None, None

        gendsl.scan("loop", body, None, gains)

    report = collapse_report(p, q, {}, X, key=jax.random.key(2), num_samples=200)
    assert report["loop/w"].kl.shape == (3,) and report["loop/u"].kl.shape == (3,)
    for t, g in enumerate(np.asarray(gains)):
        w, u = _brute_force(g * X, 400, t)
        _check(report["loop/w"]._replace(kl=report["loop/w"].kl[t], kl_se=report["loop/w"].kl_se[t]), w, True)
        _check(report["loop/u"]._replace(kl=report["loop/u"].kl[t], kl_se=report["loop/u"].kl_se[t]), u, False)
    # Step 2 ignores x: w's posterior mean is constant there, an inactive unit.
    np.testing.assert_array_equal(report["loop/w"].active, [True, True, False])


def test_a_prior_on_a_later_guide_draw_takes_the_monte_carlo_kl():
    """HVAE order: the model draws z2 then z1 | z2, the guide z1 then z2 | z1.

    At z1 the closed form given the guide's z2 (which depends on z1) would be biased, so the
    report uses the sampled log-ratio there, and the closed form at z2.
    """

    @gendsl.model
    def p(x):
        with gendsl.plate("data", x.shape[0]):
            z2 = gendsl.sample("z2", dist.Normal(0.0, 1.0))
            gendsl.sample("z1", dist.Normal(z2, 0.5))

    @gendsl.model
    def q(x):
        with gendsl.plate("data", x.shape[0]):
            z1 = gendsl.sample("z1", dist.Normal(0.8 * x, 0.6))
            gendsl.sample("z2", dist.Normal(0.5 * z1, 0.7))

    report = collapse_report(p, q, {}, X, key=jax.random.key(3), num_samples=200)
    rng = np.random.default_rng(4)
    x = np.asarray(X, np.float64)
    z1 = 0.8 * x + 0.6 * rng.normal(size=(400, len(x)))
    z2 = 0.5 * z1 + 0.7 * rng.normal(size=z1.shape)
    kl_z1 = -0.5 * ((z1 - 0.8 * x) / 0.6) ** 2 - np.log(0.6) + 0.5 * ((z1 - z2) / 0.5) ** 2 + np.log(0.5)
    kl_z2 = -0.5 * ((z2 - 0.5 * z1) / 0.7) ** 2 - np.log(0.7) + 0.5 * z2**2
    _check(report["z1"], kl_z1, analytic=False)
    _check(report["z2"], kl_z2, analytic=True)


def test_loop_distributions_are_recorded_only_when_asked():
    """By default a loop emits no distributions: the compiled programs of simulate and the objectives are unchanged."""

    def body(c, _):
        z = gendsl.sample("z", dist.Normal(c, 1.0))
        return z, None

    def program(flag):
        def run(key):
            rec = Recorder(loop_distributions=flag)
            with rec, seed(key=key):
                gendsl.scan("walk", body, 0.0, length=5)
            return rec.trace(None).site_distribution("walk/z")[0].step_fn

        return run

    assert program(False)(jax.random.key(0)) is None
    np.testing.assert_array_equal(program(True)(jax.random.key(0)).scale, np.ones(5))

    def loop_outputs(flag):
        jaxpr = jax.make_jaxpr(program(flag))(jax.random.key(0))
        (scan,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
        return len(scan.outvars)

    assert loop_outputs(True) == loop_outputs(False) + 2  # Normal's loc and scale, stacked


def test_passive_variables_are_exact_on_a_known_encoder():
    rng = np.random.default_rng(0)
    n = 300
    # Columns: active (moving mean, small variance), passive (still mean, prior variance),
    # still but confident (a constant: neither), nearly still with variance just below the threshold.
    means = rng.normal(size=(n, 4)) * np.array([1.0, 0.05, 0.05, 0.05])
    variances = np.tile([0.05, 0.97, 0.1, 0.79], (n, 1))
    np.testing.assert_array_equal(passive_variables(means, variances), [False, True, False, False])
    np.testing.assert_array_equal(drop_passive(means, [False, True, False, False]), means[:, [0, 2, 3]])
    with pytest.raises(ValueError, match="passive_variables"):
        passive_variables(means, variances[:, :2])


def test_representation_correlation_of_independent_normals():
    n = 1000
    z = np.random.default_rng(0).normal(size=(n, 64))
    assert abs(representation_correlation(z) / np.sqrt(2 / (np.pi * n)) - 1) < 0.1
    assert representation_correlation(np.c_[z[:, :1], 2 * z[:, :1] + 1]) == pytest.approx(1.0)


def test_diagnostics_md_example():
    docs = pathlib.Path(__file__).resolve().parents[2] / "docs" / "diagnostics.md"
    (block,) = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(block, str(docs), "exec"), namespace)
    site = namespace["report"]["z"]
    np.testing.assert_array_equal(site.collapsed, [False, True])
