"""Every strategy gives an unbiased gradient, checked against exact gradients.

Exact values come from closed forms or exact enumeration; tolerances are four
standard errors of the estimator itself (fixed seeds, so the tests are
deterministic).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gendsl
import gendsl.distributions as dist
from gendsl.inference import (
    ENUM,
    MVD,
    REINFORCE,
    REPARAM,
    EstimatorError,
    Reinforce,
    density,
    elbo,
    expectation,
    iwelbo,
    repeat,
    sim,
)
from gendsl.testing._checks import assert_unbiased, draw_estimates, fast_jit

N = 4000
SETTINGS = settings(max_examples=4, deadline=None, derandomize=True, database=None)


def grads(objective, params, n=N, seed=0, samples=1):
    return draw_estimates(lambda k: objective.grad(k, params, samples=samples), jax.random.key(seed), n)


def grads_of(objectives, params, n=N, seed=0):
    """Draws of several estimators as one compiled program: ``{name: n gradient estimates}``.

    ``objectives`` maps a name to ``(objective, samples)``. Each estimator sees the keys it
    would see alone; one compilation replaces one per estimator (for these small programs
    XLA's fixed cost per program dominates).
    """
    def one(k):
        return {name: objective.grad(k, params, samples=samples) for name, (objective, samples) in objectives.items()}

    return draw_estimates(one, jax.random.key(seed), n)


# --- the NumPyro failure case -------------------------------------------------------------

@gendsl.model
def coin_model():
    z = gendsl.sample("z", dist.Bernoulli(0.3))
    gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=3.0)


@gendsl.model
def far_coin_model():
    z = gendsl.sample("z", dist.Bernoulli(0.3))
    gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=8.0)  # log p far from 0: a baseline matters


def coin_guide(strategy):
    @gendsl.model
    def guide():
        gendsl.sample("z", dist.Bernoulli(logits=gendsl.param("theta", 0.0)), strategy=strategy)

    return guide


@functools.partial(jax.jit, static_argnums=1)  # compiled once per k, not run op by op
def exact_coin(theta, k, obs=3.0):
    """d/dθ of the ELBO (k=1) or IWELBO_k by exact enumeration over k Bernoulli draws."""

    def bound(t):
        q1 = jax.nn.sigmoid(t)
        total = 0.0
        for zs in itertools.product([0.0, 1.0], repeat=k):
            zs = jnp.array(zs)
            log_q = jnp.where(zs == 1, jnp.log(q1), jnp.log1p(-q1))
            log_p = jnp.where(zs == 1, jnp.log(0.3), jnp.log(0.7)) + dist.Normal(2 * zs, 1.0).log_prob(obs)
            total = total + jnp.exp(log_q.sum()) * (jax.nn.logsumexp(log_p - log_q) - jnp.log(k))
        return total

    return jax.grad(bound)(theta)


def test_exact_reference_values():
    # The published numbers the issue quotes.
    assert abs(float(exact_coin(-1.0, 1)) - 0.8165) < 5e-4
    assert abs(float(exact_coin(-1.0, 2)) - 0.8801) < 5e-4


STRATEGIES = [None, ENUM, MVD, REINFORCE, Reinforce(baseline=None), Reinforce(baseline=0.5), Reinforce("loo")]


@pytest.fixture(scope="module")
def failure_case_grads():
    """Every (strategy, particles) estimator of the failure case, drawn by one compiled program."""
    objectives = {}
    for strategy in STRATEGIES:
        for particles in (1, 2):
            guide = coin_guide(strategy)
            objective = elbo(coin_model, guide) if particles == 1 else iwelbo(coin_model, guide, particles)
            samples = 2 if strategy == Reinforce("loo") else 1
            objectives[f"{strategy} k={particles}"] = (objective, samples)
    return grads_of(objectives, {"theta": -1.0})


@pytest.mark.parametrize("strategy", STRATEGIES, ids=str)
@pytest.mark.parametrize("particles", [1, 2])
def test_numpyro_failure_case(failure_case_grads, strategy, particles):
    name = f"{strategy} k={particles}"
    g = failure_case_grads[name]["theta"]
    _mean, se = assert_unbiased(g, exact_coin(-1.0, particles), name=name)
    if strategy == ENUM and particles == 1:
        assert se < 1e-6  # an unbatched ENUM site is summed exactly


def test_baselines_reduce_variance():
    """Same budget (4 replicates per estimate), plain averaging vs leave-one-out baselines."""
    g = grads_of({
        "plain": (elbo(far_coin_model, coin_guide(Reinforce(baseline=None))), 4),
        "loo": (elbo(far_coin_model, coin_guide(Reinforce("loo"))), 4),
    }, {"theta": -1.0})
    plain, loo = g["plain"], g["loo"]
    ratio = float(np.var(plain["theta"]) / np.var(loo["theta"]))
    print(f"variance reduction of LOO (4 replicates): {ratio:.1f}x")
    assert ratio > 2.0  # measured 7.6x; the variance estimates' sampling error is about 3%


# --- each strategy on each family ---------------------------------------------------------

def single_site(family, strategy):
    """Objective E[f(z)], z ~ family(params), with its exact expectation as a function."""
    if family == "Bernoulli":
        def make(p): return dist.Bernoulli(probs=p["a"])
        def f(z): return (z - 0.3) ** 2 + 2 * z
        def exact(p): return p["a"] * f(1.0) + (1 - p["a"]) * f(0.0)
    elif family == "Categorical":
        def make(p): return dist.Categorical(logits=p["a"])
        def f(z): return jnp.sin(1.0 + 2.0 * z)
        def exact(p): return jnp.sum(jax.nn.softmax(p["a"]) * f(jnp.arange(3.0)))
    elif family == "Poisson":
        def make(p): return dist.Poisson(p["a"])
        def f(z): return z**2 - 3 * z
        def exact(p): return p["a"] + p["a"] ** 2 - 3 * p["a"]
    elif family == "Geometric":
        def make(p): return dist.Geometric(probs=p["a"])
        def f(z): return z**2
        def exact(p): return (1 - p["a"]) * (2 - p["a"]) / p["a"] ** 2
    elif family == "Normal":
        def make(p): return dist.Normal(p["a"], p["b"])
        def f(z): return jnp.sin(z) + z**2
        def exact(p): return jnp.sin(p["a"]) * jnp.exp(-p["b"] ** 2 / 2) + p["a"] ** 2 + p["b"] ** 2
    elif family == "Gamma":
        def make(p): return dist.Gamma(p["a"], p["b"])
        def f(z): return z**2
        def exact(p): return p["a"] * (p["a"] + 1) / p["b"] ** 2
    elif family == "Beta":
        def make(p): return dist.Beta(p["a"], p["b"])
        def f(z): return z
        def exact(p): return p["a"] / (p["a"] + p["b"])
    else:
        raise ValueError(family)

    @gendsl.model
    def q(p):
        return gendsl.sample("z", make(p), strategy=strategy)

    return expectation(lambda p: f(sim(q)(p)[0]["z"])), exact


def params_for(family, u, v):
    if family == "Categorical":
        return {"a": jnp.array([u, -v, 0.5 * u * v])}
    if family in ("Bernoulli", "Geometric"):
        return {"a": jnp.float32(0.15 + 0.7 * abs(np.tanh(u)))}
    return {"a": jnp.float32(0.5 + abs(u)), "b": jnp.float32(0.5 + abs(v))}


CASES = [
    ("Bernoulli", ENUM), ("Bernoulli", MVD), ("Bernoulli", REINFORCE),
    ("Categorical", ENUM), ("Categorical", MVD), ("Categorical", REINFORCE),
    ("Poisson", MVD), ("Poisson", REINFORCE),
    ("Geometric", MVD), ("Geometric", REINFORCE),
    ("Normal", REPARAM), ("Normal", MVD), ("Normal", REINFORCE),
    ("Gamma", REPARAM), ("Gamma", REINFORCE),
    ("Beta", REPARAM), ("Beta", REINFORCE),
]


@functools.cache
def compiled_grads(family):
    """One compiled program per family, drawing every strategy's estimates at the given parameters.

    Hypothesis varies the parameters, not the program; the strategies of a family share
    the program (one compilation per family instead of one per case).
    """
    cases = {str(strategy): single_site(family, strategy) for f, strategy in CASES if f == family}
    keys = jax.random.split(jax.random.key(0), 3000)

    def one(k, p):
        return {name: objective.grad(k, p) for name, (objective, _) in cases.items()}

    draw = fast_jit(lambda p: jax.vmap(one, in_axes=(0, None))(keys, p))
    _, exact = next(iter(cases.values()))  # the exact expectation depends on the family only
    return draw, fast_jit(jax.grad(exact))


@pytest.mark.parametrize("family,strategy", CASES, ids=lambda c: str(c))
@SETTINGS
@given(u=st.floats(-1.5, 1.5), v=st.floats(-1.5, 1.5))
def test_strategy_unbiased_per_family(family, strategy, u, v):
    draw, exact_grad = compiled_grads(family)
    params = params_for(family, u, v)
    assert_unbiased(draw(params)[str(strategy)], exact_grad(params), name=f"{family}/{strategy}")


# --- composition: plates, particles, loops, mixed strategies ------------------------------

PLATE_STRATEGIES = [ENUM, MVD, REINFORCE]
PLATE_W = jnp.array([1.0, -2.0, 0.5])


def plate_f(z):
    return (z @ PLATE_W) ** 2 + jnp.sum(z)


def plate_objective(strategy):
    @gendsl.model
    def q(p):
        with gendsl.plate("n", 3):
            return gendsl.sample("z", dist.Bernoulli(probs=p), strategy=strategy)

    return expectation(lambda p: plate_f(sim(q)(p)[0]["z"]))


@pytest.fixture(scope="module")
def plate_grads():
    p = jnp.array([0.2, 0.6, 0.7])

    def exact(p):
        total = 0.0
        for zs in itertools.product([0.0, 1.0], repeat=3):
            zs = jnp.array(zs)
            total = total + jnp.prod(jnp.where(zs == 1, p, 1 - p)) * plate_f(zs)
        return total

    draws = grads_of({str(s): (plate_objective(s), 1) for s in PLATE_STRATEGIES}, p)
    return draws, fast_jit(jax.grad(exact))(p)


@pytest.mark.parametrize("strategy", PLATE_STRATEGIES, ids=str)
def test_batched_site_in_plate(plate_grads, strategy):
    draws, exact = plate_grads
    assert_unbiased(draws[str(strategy)], exact)


# Four strategies in one program under particles (4 s); each strategy under particles is checked fast in
# tests/inference/test_particle_layout.py and test_objectives.py.
@pytest.mark.slow
def test_mixed_strategies_under_particles():
    @gendsl.model
    def q(p):
        z1 = gendsl.sample("z1", dist.Bernoulli(probs=p["p"]), strategy=ENUM)
        z2 = gendsl.sample("z2", dist.Normal(p["mu"] + z1, 1.0), strategy=REPARAM)
        z3 = gendsl.sample("z3", dist.Bernoulli(logits=p["t"]), strategy=MVD)
        z4 = gendsl.sample("z4", dist.Poisson(jnp.exp(p["t"])), strategy=REINFORCE)
        return z1 * z2 + z3 * z2**2 + 0.1 * z4 * z1

    def exact(p):
        pr, mu, s = p["p"], p["mu"], jax.nn.sigmoid(p["t"])
        e_z2sq = pr * (1 + (mu + 1) ** 2) + (1 - pr) * (1 + mu**2)
        return pr * (mu + 1) + s * e_z2sq + 0.1 * jnp.exp(p["t"]) * pr

    params = {"p": 0.3, "mu": 0.4, "t": -0.2}
    one = expectation(lambda p: _value(q, p))
    three = expectation(lambda p: repeat(3, lambda: _value(q, p))().mean())
    target = fast_jit(jax.grad(exact))(params)
    g = grads_of({"single": (one, 1), "particles": (three, 1)}, params)
    assert_unbiased(g["single"], target, name="single")
    assert_unbiased(g["particles"], target, name="particles")
    jitted = fast_jit(three.grad)(jax.random.key(1), params)
    assert all(np.isfinite(v) for v in jax.tree_util.tree_leaves(jitted))


def _value(q, p):
    # The return value of the guide is the objective's integrand.
    choices, _ = sim(q)(p)
    z1, z2, z3, z4 = (choices[k] for k in ("z1", "z2", "z3", "z4"))
    return z1 * z2 + z3 * z2**2 + 0.1 * z4 * z1


DISCRETE_SCAN_STRATEGIES = [REINFORCE, Reinforce(baseline=None), ENUM, MVD]


def chain_f(zs):
    return jnp.sum(zs * jnp.array([1.0, -2.0, 3.0])) ** 2


def chain_objective(strategy):
    @gendsl.model
    def chain(theta):
        def step(prev, _):
            z = gendsl.sample("z", dist.Bernoulli(logits=theta + 2.0 * prev - 1.0), strategy=strategy)
            return z.astype(jnp.float32), z
        return gendsl.scan("c", step, 0.0, length=3)[1]

    return expectation(lambda t: chain_f(sim(chain)(t)[0]["c/z"]))


@pytest.fixture(scope="module")
def discrete_scan_grads():
    def exact(theta):
        total = 0.0
        for zs in itertools.product([0.0, 1.0], repeat=3):
            prev, lp = 0.0, 0.0
            for z in zs:
                lp = lp + dist.Bernoulli(logits=theta + 2.0 * prev - 1.0).log_prob(z)
                prev = z
            total = total + jnp.exp(lp) * chain_f(jnp.array(zs))
        return total

    draws = grads_of({str(s): (chain_objective(s), 1) for s in DISCRETE_SCAN_STRATEGIES}, 0.3)
    return draws, fast_jit(jax.grad(exact))(0.3)


@pytest.mark.parametrize("strategy", DISCRETE_SCAN_STRATEGIES, ids=str)
def test_discrete_sites_inside_scan(discrete_scan_grads, strategy):
    """A 3-step Markov chain of Bernoulli sites in a gendsl.scan, against enumeration."""
    draws, exact = discrete_scan_grads
    assert_unbiased(draws[str(strategy)], exact)


CONTINUOUS_SCAN_STRATEGIES = [REPARAM, REINFORCE, MVD]


def walk_objective(strategy):
    @gendsl.model
    def walk(mu):
        def step(x, _):
            x = gendsl.sample("x", dist.Normal(x + mu, 0.5), strategy=strategy)
            return x, x
        return gendsl.scan("w", step, 0.0, length=4)[0]

    return expectation(lambda mu: sim(walk)(mu)[0]["w/x"][-1] ** 2)


@pytest.fixture(scope="module")
def continuous_scan_grads():
    return grads_of({str(s): (walk_objective(s), 1) for s in CONTINUOUS_SCAN_STRATEGIES}, 0.7, n=8000)


@pytest.mark.parametrize("strategy", CONTINUOUS_SCAN_STRATEGIES, ids=str)
def test_continuous_sites_through_scan(continuous_scan_grads, strategy):
    # x_T ~ Normal(4 mu, 0.5^2 * 4): E[x_T^2] = 16 mu^2 + 1, gradient 32 mu.
    assert_unbiased(continuous_scan_grads[str(strategy)], 32 * 0.7)


def test_errors_name_the_site():
    @gendsl.model
    def q():
        gendsl.sample("z", dist.Bernoulli(0.5), strategy=REPARAM)

    with pytest.raises(EstimatorError, match=r"site 'sim0/z': REPARAM needs a reparameterizable.*ENUM"):
        expectation(lambda p: sim(q)()[0]["z"]).grad(jax.random.key(0), 0.0)

    @gendsl.model
    def q2():
        gendsl.sample("z", dist.Normal(0.0, 1.0), strategy=ENUM)

    with pytest.raises(EstimatorError, match=r"site 'sim0/z': ENUM needs a finite support"):
        expectation(lambda p: sim(q2)()[0]["z"]).grad(jax.random.key(0), 0.0)

    @gendsl.model
    def q3():
        gendsl.sample("z", dist.Exponential(1.0), strategy=MVD)

    with pytest.raises(EstimatorError, match=r"site 'sim0/z': MVD is implemented for.*not Exponential"):
        expectation(lambda p: sim(q3)()[0]["z"]).grad(jax.random.key(0), 0.0)

    with pytest.raises(gendsl.GendslError, match=r"sim\(model\) draws random choices.*expectation"):
        sim(q)()

    with pytest.raises(ValueError, match=r"objective must return a scalar, got shape \(2,\)"):
        expectation(lambda p: jnp.ones(2) * p).grad(jax.random.key(0), 1.0)


def test_density_is_differentiable_and_exact():
    @gendsl.model
    def p(mu):
        gendsl.sample("z", dist.Normal(mu, 2.0))

    g = jax.grad(lambda mu: density(p)({"z": 1.0}, mu))(0.5)
    np.testing.assert_allclose(float(g), (1.0 - 0.5) / 4.0, rtol=1e-6)


def _learned(params, *args):
    return params["b"]


@gendsl.model
def guide_with_learned_baseline():
    gendsl.param("b", 0.0)
    theta = gendsl.param("theta", -1.0)  # frozen at -1 while the baseline is fitted
    gendsl.sample("z", dist.Bernoulli(logits=theta), strategy=Reinforce(baseline=_learned))


def exact_far_coin_elbo(theta):
    """The ELBO of ``far_coin_model`` with the guide Bernoulli(logits=theta), by enumeration."""
    q1 = jax.nn.sigmoid(theta)
    total = 0.0
    for z, qz, pz in ((0.0, 1 - q1, 0.7), (1.0, q1, 0.3)):
        total = total + qz * (jnp.log(pz) + dist.Normal(2.0 * z, 1.0).log_prob(8.0) - jnp.log(qz))
    return total


def test_learned_baseline_is_unbiased_and_regresses_on_the_cost():
    """The fast sibling of the fit below: at an arbitrary baseline, both gradients by hand."""
    objective = elbo(far_coin_model, guide_with_learned_baseline)
    g = grads(objective, {"b": -2.0, "theta": -1.0})
    # Unbiased for theta at any baseline value ...
    assert_unbiased(g["theta"], exact_coin(-1.0, 1, obs=8.0), name="learned baseline")
    # ... and the baseline's own gradient is its least-squares regression on the paired cost,
    # d/db -(f - b)^2 / 2 = f - b, whose mean is ELBO - b: SGD on it fits b to E[f].
    assert_unbiased(g["b"], exact_far_coin_elbo(-1.0) + 2.0, name="baseline regression")


@pytest.mark.slow  # 1,500 SGD steps and 20,000-draw variances; fast sibling: the test above
def test_learned_baseline_fits_and_reduces_variance():
    import optax

    from gendsl.inference import SVI

    objective = elbo(far_coin_model, guide_with_learned_baseline)
    # One compiled program for every parameter value: the parameters are an argument.
    draw = fast_jit(jax.vmap(objective.grad, in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(0), 20000)
    # Fit the baseline alone (theta frozen), then compare variances at theta = -1.
    opt = optax.multi_transform({"b": optax.adam(0.1), "theta": optax.set_to_zero()}, {"b": "b", "theta": "theta"})
    fitted = SVI(objective, opt).run(jax.random.key(0), 1500, progress=False).params
    value = float(fast_jit(lambda k, p: objective.estimate(k, p, samples=20000))(jax.random.key(1), fitted))
    assert abs(float(fitted["b"]) - value) < 0.5  # it learned E[f] up to SGD noise
    assert float(fitted["theta"]) == -1.0
    learned = draw(keys, fitted)["theta"]
    plain = grads(elbo(far_coin_model, coin_guide(Reinforce(baseline=None))), {"theta": -1.0}, n=20000)["theta"]
    ratio = float(np.var(plain) / np.var(learned))
    print(f"variance reduction, learned baseline: {ratio:.1f}x")
    assert ratio > 5


def test_loo_baseline_reduces_variance_fivefold_with_eight_replicates():
    g = grads_of({
        "plain": (elbo(far_coin_model, coin_guide(Reinforce(baseline=None))), 8),
        "loo": (elbo(far_coin_model, coin_guide(Reinforce("loo"))), 8),
    }, {"theta": -1.0}, n=10000)
    plain, loo = g["plain"], g["loo"]
    ratio = float(np.var(plain["theta"]) / np.var(loo["theta"]))
    print(f"variance reduction, LOO over 8 replicates (same budget): {ratio:.1f}x")
    assert ratio > 5
