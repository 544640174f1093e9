"""SVI: compiles once, stops on non-finite values, recovers conjugate posteriors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.distributions import constraints
from gendsl.inference import REINFORCE, SVI, NonFiniteError, Reinforce, elbo


@gendsl.model
def normal_model(x):
    mu = gendsl.sample("mu", dist.Normal(0.0, 2.0))
    with gendsl.plate("n", x.shape[0]):
        gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)


def normal_guide(strategy=None):
    @gendsl.model
    def guide(x):
        loc = gendsl.param("loc", 0.0)
        scale = gendsl.param("scale", 1.0, constraint=constraints.positive)
        gendsl.sample("mu", dist.Normal(loc, scale), strategy=strategy)

    return guide


X = jnp.array([0.3, 1.2, 0.8, 1.9, 1.1, 0.4, 1.5, 0.9])


def test_step_traces_once_over_100_steps():
    traces = []

    @gendsl.model
    def counted(x):
        traces.append(1)  # runs once per trace, never at run time
        normal_model(x)

    svi = SVI(elbo(counted, normal_guide()), optax.adam(0.01))
    state = svi.init(jax.random.key(0), X)
    step = jax.jit(svi.step)
    traces.clear()
    for _ in range(100):
        state, info = step(state, X)
    assert len(traces) == 1
    assert int(state.step) == 100 and bool(info.finite)


def test_constrained_params_stay_in_support_and_run_chunks():
    svi = SVI(elbo(normal_model, normal_guide()), optax.adam(0.05))
    result = svi.run(jax.random.key(0), 250, X, chunk_size=100, progress=False)
    assert result.objective.shape == (250,)
    assert float(result.params["scale"]) > 0
    # The unconstrained value is the log of the constrained one.
    np.testing.assert_allclose(np.exp(result.state.params["scale"]), result.params["scale"], rtol=1e-5)


def test_non_finite_objective_stops_and_keeps_last_finite_state():
    @gendsl.model
    def exploding(x):
        mu = gendsl.sample("mu", dist.Normal(0.0, 2.0))
        gendsl.factor("boom", jnp.where(mu > 0.5, jnp.nan, 0.0))
        with gendsl.plate("n", x.shape[0]):
            gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)

    @gendsl.model
    def guide(x):
        gendsl.sample("mu", dist.Normal(gendsl.param("loc", -3.0), 0.01))

    svi = SVI(elbo(exploding, guide), optax.sgd(0.05))
    with pytest.raises(NonFiniteError, match=r"not finite at step \d+; stopped") as err:
        svi.run(jax.random.key(0), 500, X, chunk_size=50, progress=False)
    result = err.value.result
    assert np.all(np.isfinite(result.objective))
    # The kept state is the one after the last finite step, and it has moved.
    assert int(result.state.step) == len(result.objective) > 0
    assert np.isfinite(float(result.params["loc"])) and float(result.params["loc"]) > 0.0


def test_a_step_with_one_non_finite_gradient_element_leaves_the_state_unchanged():
    # The objective is finite (sqrt(0) = 0) but its gradient in "s" is infinite; the
    # guide's "m" has a finite gradient: the step must keep every leaf, "m" and Adam's moments too.
    @gendsl.model
    def model():
        gendsl.sample("z", dist.Normal(0.0, 1.0))
        gendsl.factor("f", jnp.sqrt(gendsl.param("s", jnp.zeros(3))).sum())

    @gendsl.model
    def guide():
        gendsl.sample("z", dist.Normal(gendsl.param("m", 0.5), 1.0))

    svi = SVI(elbo(model, guide), optax.adam(0.1))
    state = svi.init(jax.random.key(0))
    new, info = jax.jit(svi.step)(state)
    assert np.isfinite(float(info.objective)) and not bool(info.finite)
    for before, after in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(new), strict=True):
        if jnp.issubdtype(before.dtype, jax.dtypes.prng_key):
            continue  # the key advances, so that the next step draws fresh noise
        np.testing.assert_array_equal(before, after)


def _posterior_normal():
    prec = 1 / 4 + len(X)
    return float(jnp.sum(X)) / prec, prec**-0.5


# The REINFORCE trainings are slow; fast: the REPARAM training here, SVI's one-step test with a
# leave-one-out REINFORCE guide, and the REINFORCE estimators' unbiasedness in test_gradients.py.
@pytest.mark.parametrize("strategy", [
    None,
    pytest.param(REINFORCE, marks=pytest.mark.slow),
    pytest.param(Reinforce(baseline="loo"), marks=pytest.mark.slow),
], ids=str)
def test_normal_normal_posterior(strategy):
    samples = 4 if strategy == Reinforce(baseline="loo") else 1
    lr = optax.exponential_decay(0.05, 3000, 0.01)
    svi = SVI(elbo(normal_model, normal_guide(strategy)), optax.adam(lr), samples=samples)
    result = svi.run(jax.random.key(1), 3000, X, progress=False)
    mean, sd = _posterior_normal()
    # With a decayed learning rate the final iterate's noise is far below these
    # tolerances: 5% of the posterior sd for the mean, 10% for the sd.
    tol = 0.05 if strategy is None else 0.15
    assert abs(float(result.params["loc"]) - mean) < tol * sd * (1 if strategy is None else 2)
    assert abs(float(result.params["scale"]) / sd - 1) < 2 * tol


@gendsl.model
def beta_bernoulli(x):
    p = gendsl.sample("p", dist.Beta(2.0, 2.0))
    with gendsl.plate("n", x.shape[0]):
        gendsl.sample("x", dist.Bernoulli(p), obs=x)


def beta_guide(strategy=None):
    @gendsl.model
    def guide(x):
        a = gendsl.param("a", 1.0, constraint=constraints.positive)
        b = gendsl.param("b", 1.0, constraint=constraints.positive)
        gendsl.sample("p", dist.Beta(a, b), strategy=strategy)

    return guide


@gendsl.model
def gamma_poisson(x):
    rate = gendsl.sample("rate", dist.Gamma(3.0, 1.0))
    with gendsl.plate("n", x.shape[0]):
        gendsl.sample("x", dist.Poisson(rate), obs=x)


def gamma_guide(strategy=None):
    # Parameterized by mean and sd: the (shape, rate) parameterization has a long,
    # flat ridge along constant shape/rate that Adam crosses slowly.
    @gendsl.model
    def guide(x):
        m = gendsl.param("m", 1.0, constraint=constraints.positive)
        s = gendsl.param("s", 1.0, constraint=constraints.positive)
        gendsl.sample("rate", dist.Gamma((m / s) ** 2, m / s**2), strategy=strategy)

    return guide


@pytest.mark.slow  # 4,000 steps each; the fast sibling is test_one_step_is_the_gradient_step_in_unconstrained_space
@pytest.mark.parametrize("strategy", [None, Reinforce("loo")], ids=["implicit-reparam", "reinforce-loo"])
@pytest.mark.parametrize("family", ["beta", "gamma"])
def test_conjugate_posteriors(family, strategy):
    # The guide family contains the exact posterior, so the optimum of the ELBO
    # is the posterior itself; we compare its mean and sd.
    if family == "beta":
        x = jnp.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1], jnp.float32)
        model, guide = beta_bernoulli, beta_guide(strategy)
        a_post, b_post = 2 + x.sum(), 2 + (1 - x).sum()
        mean = a_post / (a_post + b_post)
        sd = np.sqrt(a_post * b_post / ((a_post + b_post) ** 2 * (a_post + b_post + 1)))

        def moments(p):
            a, b = p["a"], p["b"]
            return a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    else:
        x = jnp.array([2, 4, 3, 5, 1, 3, 2, 4], jnp.float32)
        model, guide = gamma_poisson, gamma_guide(strategy)
        a_post, b_post = 3 + x.sum(), 1 + len(x)
        mean, sd = a_post / b_post, np.sqrt(a_post) / b_post

        def moments(p):
            return p["m"], p["s"]

    samples = 8 if strategy is not None else 1
    lr = optax.exponential_decay(0.05, 4000, 0.02)
    result = SVI(elbo(model, guide), optax.adam(lr), samples=samples).run(
        jax.random.key(2), 4000, x, progress=False
    )
    m, s = (float(v) for v in moments(result.params))
    assert abs(m - mean) < 0.1 * sd, (m, mean, sd)
    assert abs(s / sd - 1) < 0.15, (s, sd)


@pytest.mark.parametrize(("family", "strategy"), [("beta", None), ("gamma", Reinforce("loo"))],
                         ids=["beta-implicit-reparam", "gamma-reinforce-loo"])
def test_one_step_is_the_gradient_step_in_unconstrained_space(family, strategy):
    """What the conjugate-posterior trainings run, one step at a time, checked by hand.

    SVI moves the unconstrained parameters u = log(constrained) along the objective's gradient
    (chain rule: d/du = d/dp * p), with the step key split from the state's key, and averages
    ``samples`` replicates. With plain SGD one step is exactly u + lr * gradient.
    """
    if family == "beta":
        x, model, guide = jnp.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1], jnp.float32), beta_bernoulli, beta_guide(strategy)
    else:
        x, model, guide = jnp.array([2, 4, 3, 5, 1, 3, 2, 4], jnp.float32), gamma_poisson, gamma_guide(strategy)
    samples = 8 if strategy is not None else 1
    objective = elbo(model, guide)
    svi = SVI(objective, optax.sgd(0.1), samples=samples)
    state = svi.init(jax.random.key(2), x)
    params = svi.get_params(state)
    assert all(float(v) > 0 for v in params.values())
    np.testing.assert_allclose(np.log(params[sorted(params)[0]]), state.params[sorted(params)[0]], rtol=1e-6)

    @jax.jit
    def step_and_by_hand(state):
        new, info = svi.step(state, x)
        _, sub = jax.random.split(state.key)
        value, grads = objective.value_and_grad(sub, svi.get_params(state), x, samples=samples)
        return new, info, value, grads

    new, info, value, grads = step_and_by_hand(state)
    assert bool(info.finite) and int(new.step) == 1
    assert float(info.objective) == pytest.approx(float(value), rel=1e-5)
    for name in params:
        expected = state.params[name] + 0.1 * grads[name] * params[name]
        np.testing.assert_allclose(new.params[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)
    assert any(float(grads[name]) != 0.0 for name in params)


def test_arviz_export_with_log_likelihood():
    import arviz as az

    from gendsl.inference import to_inference_data

    params = {"loc": 1.0, "scale": 0.5}
    idata = to_inference_data(normal_guide(), params, X, key=jax.random.key(0), num_samples=4000, model=normal_model)
    mu = idata.posterior["mu"].values
    assert mu.shape == (1, 4000)
    # Draws follow the guide: mean 1.0, sd 0.5, within 4 standard errors.
    assert abs(mu.mean() - 1.0) < 4 * 0.5 / np.sqrt(4000)
    np.testing.assert_array_equal(idata.observed_data["x"].values, np.asarray(X))
    ll = idata.log_likelihood["x"].values
    assert ll.shape == (1, 4000, len(X))
    expected = -0.5 * np.log(2 * np.pi) - 0.5 * (np.asarray(X)[None, :] - mu[0][:, None]) ** 2
    np.testing.assert_allclose(ll[0], expected, rtol=1e-4, atol=1e-4)
    assert np.isfinite(az.loo(idata).elpd_loo)


def test_run_continued_from_a_state_matches_an_uninterrupted_run():
    data = jnp.linspace(-1.0, 3.0, 40)
    svi = SVI(elbo(normal_model, normal_guide()), optax.adam(0.05))
    whole = svi.run(jax.random.key(3), 250, data, batch_size=8, chunk_size=100, progress=False)
    first = svi.run(jax.random.key(3), 90, data, batch_size=8, chunk_size=100, progress=False)
    rest = svi.run(jax.random.key(3), 160, data, batch_size=8, chunk_size=100, progress=False, state=first.state)
    for k in whole.params:
        np.testing.assert_array_equal(np.asarray(whole.params[k]), np.asarray(rest.params[k]))
    np.testing.assert_array_equal(whole.objective[90:], rest.objective)


def test_init_and_step_are_pure():
    """Two SVI objects, or one used twice, give the same states: the object holds only configuration."""
    svi = SVI(elbo(normal_model, normal_guide()), optax.adam(0.05))
    a = svi.init(jax.random.key(0), X)
    b = SVI(elbo(normal_model, normal_guide()), optax.adam(0.05)).init(jax.random.key(0), X)
    sa, ia = svi.step(a, X)
    sb, ib = svi.step(b, X)
    assert float(ia.objective) == float(ib.objective)
    np.testing.assert_array_equal(sa.params["loc"], sb.params["loc"])
    assert svi.get_params(sa)["scale"] == pytest.approx(float(jnp.exp(sa.params["scale"])))


def test_run_callback_sees_aligned_chunks_and_can_stop():
    svi = SVI(elbo(normal_model, normal_guide()), optax.adam(0.05))
    seen = []

    def callback(info):
        seen.append((info.step, len(info.objective)))
        return info.step >= 70

    result = svi.run(jax.random.key(0), 200, X, chunk_size=30, align=25, progress=False, callback=callback)
    # Chunks end at multiples of 25 and after at most 30 steps; the callback stops the run at step 75.
    assert seen == [(25, 25), (50, 25), (75, 25)]
    assert result.stopped and int(result.state.step) == 75 and len(result.objective) == 75


def test_per_point_step_sums_per_point_gradients():
    """SVI(per_point=True): one gradient of the summed per-point surrogates = sum of per-point gradients."""
    from gendsl.inference import vimco

    @gendsl.model
    def p(x):
        with gendsl.plate("data", x.shape[0]):
            z = gendsl.sample("z", dist.Bernoulli(0.4))
            gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    @gendsl.model
    def q(x):
        t = gendsl.param("t", jnp.zeros(3))
        with gendsl.plate("data", x.shape[0]):
            gendsl.sample("z", dist.Bernoulli(logits=t), strategy=REINFORCE)

    x = jnp.array([0.1, 2.2, 1.0])
    objective = vimco(p, q, 3)
    svi = SVI(objective, optax.sgd(1.0), per_point=True)
    state = svi.init(jax.random.key(0), x)
    new, info = jax.jit(svi.step)(state, x)
    # The same keys by hand: split(step key, n), point i with key i (one compiled estimator for all three).
    _, sub = jax.random.split(state.key)
    keys = jax.random.split(sub, 3)
    per_point = jax.jit(objective.value_and_grad)
    values, grads = zip(*(per_point(keys[i], {"t": state.params["t"]}, x[i:i + 1]) for i in range(3)), strict=True)
    grads = [g["t"] for g in grads]
    np.testing.assert_allclose(new.params["t"] - state.params["t"], sum(grads), rtol=1e-5, atol=1e-6)
    assert float(info.objective) == pytest.approx(float(sum(values)), rel=1e-5)


@gendsl.model
def unknown_scale(x):
    scale = gendsl.sample("scale", dist.LogNormal(0.0, 0.1))  # a positive site: exp bijection
    mu = gendsl.sample("mu", dist.Normal(0.0, 2.0))
    with gendsl.plate("n", x.shape[0]):
        gendsl.sample("x", dist.Normal(mu, scale), obs=x)


def test_auto_normal_is_a_mean_field_normal_pushed_onto_each_support():
    """The fast sibling of the training below: AutoNormal's parameters and density, by hand."""
    from scipy import stats

    from gendsl.inference import AutoNormal

    guide = AutoNormal(unknown_scale)
    params = guide.init(jax.random.key(0), X)
    assert sorted(params) == ["auto_loc.mu", "auto_loc.scale", "auto_scale.mu", "auto_scale.scale"]
    assert all(float(params[f"auto_scale.{a}"]) == pytest.approx(0.1) for a in ("mu", "scale"))
    params = {"auto_loc.mu": 1.2, "auto_scale.mu": 0.4, "auto_loc.scale": -0.3, "auto_scale.scale": 0.2}
    tr = guide.bind(params).simulate(jax.random.key(1), X)
    mu, scale = float(tr.choices["mu"]), float(tr.choices["scale"])
    assert scale > 0
    # mu ~ Normal(loc, scale); scale = exp(Normal(loc, scale)), a log-normal.
    expected = stats.norm.logpdf(mu, 1.2, 0.4) + stats.lognorm.logpdf(scale, 0.2, scale=np.exp(-0.3))
    np.testing.assert_allclose(float(tr.score), expected, rtol=1e-5)

    @gendsl.model
    def discrete():
        gendsl.sample("k", dist.Bernoulli(0.5))

    with pytest.raises(gendsl.GendslError, match="AutoNormal: site 'k' is discrete"):
        AutoNormal(discrete).init(jax.random.key(0))


@pytest.mark.slow  # 3,000 steps; the fast sibling is the test above (and SVI's one-step test)
def test_auto_normal_recovers_a_conjugate_posterior():
    from gendsl.inference import AutoNormal

    guide = AutoNormal(unknown_scale)
    result = SVI(elbo(unknown_scale, guide), optax.adam(0.03)).run(jax.random.key(0), 3000, X, progress=False)
    draws = jax.jit(guide.bind(result.params).repeat(4000).simulate)(jax.random.key(1), X).choices
    assert bool(jnp.all(draws["scale"] > 0))
    # mu's posterior given scale ≈ 1: N(sum x / (n + 1/4), 1 / (n + 1/4)).
    n = X.shape[0]
    assert float(draws["mu"].mean()) == pytest.approx(float(X.sum()) / (n + 0.25), abs=0.1)
    assert sorted(result.params) == ["auto_loc.mu", "auto_loc.scale", "auto_scale.mu", "auto_scale.scale"]


def test_an_objective_that_never_uses_its_parameters_is_refused_at_init():
    """``sim(guide)`` instead of ``sim(guide.bind(params))``: the gradient is zero by construction."""
    from gendsl.inference import density, expectation, p_wake, sim

    guide = normal_guide()

    def unbound(params, x):
        z, log_q = sim(guide)(x)
        return density(normal_model)(z, x) - log_q

    with pytest.raises(gendsl.GendslError, match=r"never uses the parameters \['loc', 'scale'\]"):
        SVI(expectation(unbound, models=(normal_model, guide)), optax.adam(0.1)).init(jax.random.key(0), X)

    @gendsl.model
    def model_with_param(x):
        mu = gendsl.sample("mu", dist.Normal(gendsl.param("prior_loc", 0.0), 2.0))
        with gendsl.plate("n", x.shape[0]):
            gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)

    def half_bound(params, x):
        z, log_q = sim(guide)(x)
        return density(model_with_param.bind(params))(z, x) - log_q

    with pytest.raises(gendsl.GendslError, match=r"never uses the parameters \['loc', 'scale'\],"):
        SVI(expectation(half_bound, models=(model_with_param, guide)), optax.adam(0.1)).init(jax.random.key(0), X)
    # Parameters that are read but frozen (stop_gradient), as the guide's in the wake-phase
    # model update, are used: no error.
    SVI(p_wake(model_with_param, guide, 2), optax.adam(0.1)).init(jax.random.key(0), X)


def _diverging_stl_fit(divergence):
    """SGD on a stiff posterior: each step multiplies the guide's location by -2 (objective x4)."""

    @gendsl.model
    def stiff(x):
        gendsl.sample("mu", dist.Normal(0.0, 1e-3))

    @gendsl.model
    def guide(x):
        gendsl.sample("mu", dist.Normal(gendsl.param("loc", 1e-3), 1e-3))

    svi = SVI(elbo(stiff, guide, estimator="stl"), optax.sgd(3e-6))
    return svi.run(jax.random.key(0), 200, X, chunk_size=50, progress=False, divergence=divergence)


def test_the_divergence_guard_stops_a_finite_blow_up_before_it():
    with pytest.raises(gendsl.inference.DivergenceError, match=r"objective diverged at step \d+: .* more than 1e\+06 "
                       r"times its running scale") as err:
        _diverging_stl_fit(1e6)
    result = err.value.result
    first = abs(result.objective[0])
    # Every kept estimate is within the guard, and the kept state is the one before the step.
    assert np.all(np.abs(result.objective) <= 1e6 * max(1.0, first))
    assert int(result.state.step) == err.value.step - 1 == len(result.objective)
    assert abs(err.value.value) > 1e6 * max(1.0, first)
    # Without the guard the same fit runs on until the objective overflows.
    with pytest.raises(NonFiniteError, match="not finite") as unguarded:
        _diverging_stl_fit(None)
    assert not isinstance(unguarded.value, gendsl.inference.DivergenceError)
    assert unguarded.value.step > err.value.step


def test_nan_data_is_named_at_init_or_when_the_objective_stops():
    """The model checks observed values it can see: ``init`` traces with the data as constants.

    Minibatches are traced values inside the compiled steps, so a NaN outside the first
    minibatch (the one ``init`` sees) surfaces as a non-finite objective; ``run`` then looks at
    the concrete data on the host and names it.
    """
    svi = SVI(elbo(normal_model, normal_guide()), optax.adam(0.01))
    with pytest.raises(gendsl.ObservationError, match="observed site 'x': 1 of 8 values are NaN"):
        svi.run(jax.random.key(0), 10, X.at[0].set(jnp.nan), progress=False)
    with pytest.raises(NonFiniteError, match=r"not finite at step \d+; .*the data holds 1 NaN or infinite values of 8"):
        svi.run(jax.random.key(0), 200, X.at[7].set(jnp.nan), batch_size=2, progress=False)
