"""The objectives library against exact objectives (enumeration, quadrature, closed forms)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.inference import (
    ENUM,
    MVD,
    REINFORCE,
    Reinforce,
    diwhvi,
    elbo,
    hvi,
    iwelbo,
    iwhvi,
    p_wake,
    q_wake,
    renyi,
    sleep,
    vimco,
)
from gendsl.testing._checks import assert_unbiased, draw_estimates, fast_jit

N = 3000


def draws(objective, params, *args, n=N, seed=0):
    """``n`` independent ``(value, gradient)`` estimates, from one compiled program."""
    return draw_estimates(lambda k: objective.value_and_grad(k, params, *args), jax.random.key(seed), n)


def grad_draws(objective, params, *args, n=N, seed=0):
    return draw_estimates(lambda k: objective.grad(k, params, *args), jax.random.key(seed), n)


# --- the coin model: discrete, exact by enumeration --------------------------------------

@gendsl.model
def coin():
    z = gendsl.sample("z", dist.Bernoulli(jax.nn.sigmoid(gendsl.param("prior", -0.8))))
    gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=3.0)


def coin_guide(strategy):
    @gendsl.model
    def guide():
        gendsl.sample("z", dist.Bernoulli(logits=gendsl.param("theta", 0.0)), strategy=strategy)

    return guide


PARAMS = {"prior": -0.8, "theta": -1.0}


def log_joint(z, prior):
    return dist.Bernoulli(jax.nn.sigmoid(prior)).log_prob(z) + dist.Normal(2.0 * z, 1.0).log_prob(3.0)


def configurations(k):
    """All 2^k binary configurations, one per row."""
    return jnp.array(list(itertools.product([0.0, 1.0], repeat=k)))


def exact_bound(params, k, combine):
    """sum over the 2^k particle configurations of q(config) * combine(log weights)."""
    zs = configurations(k)  # (2^k, k), vectorized: one traced program, not 2^k eager ones
    log_q = dist.Bernoulli(logits=params["theta"]).log_prob(zs)
    log_w = log_joint(zs, params["prior"]) - log_q
    return jnp.sum(jnp.exp(log_q.sum(-1)) * jax.vmap(combine)(log_w))


def iw(log_w):
    return jax.nn.logsumexp(log_w) - jnp.log(log_w.shape[0])


VIMCO_STRATEGIES = [REINFORCE, ENUM, MVD]
exact_iwelbo3_grad = fast_jit(jax.grad(lambda p: exact_bound(p, 3, iw)))  # compiled once for the module


@pytest.fixture(scope="module")
def vimco_grads():
    """Each strategy's VIMCO gradients, drawn by one compiled program (one compilation, not three)."""
    objectives = {str(s): vimco(coin, coin_guide(s), 3) for s in VIMCO_STRATEGIES}
    return draw_estimates(lambda k: {name: o.grad(k, PARAMS) for name, o in objectives.items()}, jax.random.key(0), N)


@pytest.mark.parametrize("strategy", VIMCO_STRATEGIES, ids=str)
def test_vimco_is_unbiased_for_the_iwelbo_gradient(vimco_grads, strategy):
    exact = exact_iwelbo3_grad(PARAMS)
    assert_unbiased(vimco_grads[str(strategy)], exact)


def test_vimco_reduces_variance_against_plain_reinforce():
    plain = grad_draws(iwelbo(coin, coin_guide(Reinforce(baseline=None)), 4), PARAMS)["theta"]
    loo = grad_draws(vimco(coin, coin_guide(REINFORCE), 4), PARAMS)["theta"]
    ratio = float(np.var(plain) / np.var(loo))
    print(f"VIMCO variance reduction over plain REINFORCE (IWELBO-4): {ratio:.1f}x")
    assert ratio > 2


RENYI_ALPHAS = [0.0, 0.5, -1.0]


@pytest.fixture(scope="module")
def renyi_draws():
    """Each alpha's (value, gradient) estimates, drawn by one compiled program."""
    objectives = {alpha: renyi(coin, coin_guide(ENUM), alpha, 2) for alpha in RENYI_ALPHAS}
    return draw_estimates(
        lambda k: {str(a): o.value_and_grad(k, PARAMS) for a, o in objectives.items()}, jax.random.key(0), N
    )


@pytest.mark.parametrize("alpha", RENYI_ALPHAS)
def test_renyi_value_and_gradient(renyi_draws, alpha):
    def combine(log_w):
        return (jax.nn.logsumexp((1 - alpha) * log_w) - jnp.log(2)) / (1 - alpha)

    exact_value, exact_grad = fast_jit(jax.value_and_grad(lambda p: exact_bound(p, 2, combine)))(PARAMS)
    values, grads = renyi_draws[str(alpha)]
    assert_unbiased(values, exact_value)
    assert_unbiased(grads, exact_grad)


def test_p_wake_and_q_wake_gradients():
    k = 3

    def expected_grad(loss):
        """sum_config q(config) * ∇ loss(config) with the sampling distribution held fixed."""
        zs = configurations(k)
        prob = jnp.exp(dist.Bernoulli(logits=PARAMS["theta"]).log_prob(zs).sum(-1))
        g = fast_jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(PARAMS, zs)
        return jax.tree_util.tree_map(lambda gi: jnp.sum(prob * gi), g)

    def weights(p, zs):
        log_w = log_joint(zs, p["prior"]) - dist.Bernoulli(logits=p["theta"]).log_prob(zs)
        return log_w

    def p_loss(p, zs):
        q_fixed = jax.lax.stop_gradient(p["theta"])
        log_w = log_joint(zs, p["prior"]) - dist.Bernoulli(logits=q_fixed).log_prob(zs)
        return iw(log_w)

    def q_loss(p, zs):
        w = jax.nn.softmax(jax.lax.stop_gradient(weights(p, zs)))
        return jnp.sum(w * dist.Bernoulli(logits=p["theta"]).log_prob(zs))

    g_p = grad_draws(p_wake(coin, coin_guide(REINFORCE), k), PARAMS)
    g_q = grad_draws(q_wake(coin, coin_guide(REINFORCE), k), PARAMS)
    assert_unbiased(g_p, expected_grad(p_loss))
    assert_unbiased(g_q, expected_grad(q_loss))
    # p-wake leaves the guide alone, q-wake the model: exactly zero in every draw.
    assert float(jnp.abs(g_p["theta"]).max()) == 0
    assert float(jnp.abs(g_q["prior"]).max()) == 0


def test_sleep_gradient():
    @gendsl.model
    def p(x):
        z = gendsl.sample("z", dist.Bernoulli(0.4))
        gendsl.sample("x", dist.Bernoulli(jax.nn.sigmoid(2.0 * z - 1.0)), obs=x)

    @gendsl.model
    def q(x):
        t = gendsl.param("t", jnp.array([0.2, -0.5]))
        gendsl.sample("z", dist.Bernoulli(logits=t[0] + t[1] * x))

    def exact(params):
        total = 0.0
        for z, x in itertools.product([0.0, 1.0], repeat=2):
            prob = jnp.exp(dist.Bernoulli(0.4).log_prob(z) + dist.Bernoulli(jax.nn.sigmoid(2 * z - 1)).log_prob(x))
            t = params["t"]
            total = total + prob * dist.Bernoulli(logits=t[0] + t[1] * x).log_prob(z)
        return total

    params = {"t": jnp.array([0.2, -0.5])}
    objective = sleep(p, q, observed="x")
    assert_unbiased(grad_draws(objective, params, 1.0), fast_jit(jax.grad(exact))(params))


# --- Gaussian model: DReG and STL against quadrature / closed forms -----------------------

@gendsl.model
def gauss(x):
    z = gendsl.sample("z", dist.Normal(gendsl.param("mu0", 0.0), 1.0))
    gendsl.sample("x", dist.Normal(z, 1.0), obs=x)


@gendsl.model
def gauss_guide(x):
    m = gendsl.param("m", 0.0)
    s = gendsl.param("s", 1.0, constraint=dist.constraints.positive)
    gendsl.sample("z", dist.Normal(m, s))


GP = {"mu0": 0.2, "m": 0.3, "s": 0.9}


def quadrature_iwelbo2(params, x=1.0, order=60):
    nodes, wts = np.polynomial.hermite_e.hermegauss(order)
    wts = wts / wts.sum()
    z = params["m"] + params["s"] * jnp.asarray(nodes)
    log_w = (dist.Normal(params["mu0"], 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x)
             - dist.Normal(params["m"], params["s"]).log_prob(z))
    pair = jax.nn.logsumexp(jnp.stack(jnp.broadcast_arrays(log_w[:, None], log_w[None, :])), axis=0) - jnp.log(2)
    return jnp.sum(jnp.asarray(wts)[:, None] * jnp.asarray(wts)[None, :] * pair)


@pytest.mark.parametrize("estimator", ["score", "dreg"])
def test_iwelbo_gradients_against_quadrature(estimator):
    objective = iwelbo(gauss, gauss_guide, 2, estimator=estimator)
    exact_value, exact_grad = fast_jit(jax.value_and_grad(quadrature_iwelbo2))(GP)
    values, grads = draws(objective, GP, 1.0)
    assert_unbiased(grads, exact_grad)
    assert_unbiased(values, exact_value)


def test_stl_elbo_is_unbiased_and_has_lower_variance_near_the_optimum():
    def exact_elbo(p, x=1.0):
        m, s, mu0 = p["m"], p["s"], p["mu0"]
        e_prior = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((m - mu0) ** 2 + s**2)
        e_lik = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((x - m) ** 2 + s**2)
        entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s**2)
        return e_prior + e_lik + entropy

    exact = fast_jit(jax.grad(exact_elbo))(GP)
    stl = elbo(gauss, gauss_guide, estimator="stl")
    # One compiled program for both parameter values: the parameters are an argument.
    stl_grads = fast_jit(jax.vmap(lambda k, p: stl.grad(k, p, 1.0), in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(0), N)
    assert_unbiased(stl_grads(keys, GP), exact)
    assert_unbiased(grad_draws(elbo(gauss, gauss_guide), GP, 1.0), exact)
    # At the exact posterior (m = (1 + mu0) / 2, s = 1/sqrt 2) STL's guide gradient is exactly zero.
    opt = {"mu0": 0.2, "m": 0.6, "s": 0.5**0.5}
    np.testing.assert_allclose(np.asarray(stl_grads(keys, opt)["m"]), 0.0, atol=1e-5)


def test_beta_elbo():
    def exact(p, beta=0.5, x=1.0):
        m, s, mu0 = p["m"], p["s"], p["mu0"]
        e_lik = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((x - m) ** 2 + s**2)
        kl = jnp.log(1 / s) + (s**2 + (m - mu0) ** 2) / 2 - 0.5
        return e_lik - beta * kl

    objective = elbo(gauss, gauss_guide, beta=0.5)
    values, grads = draws(objective, GP, 1.0)
    exact_value, exact_grad = fast_jit(jax.value_and_grad(exact))(GP)
    assert_unbiased(values, exact_value)
    assert_unbiased(grads, exact_grad)


# --- hierarchical bounds on a discrete guide with an auxiliary site -----------------------

@gendsl.model
def hmodel():
    z = gendsl.sample("z", dist.Bernoulli(0.35))
    gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=1.5)


def hguide(strategy):
    @gendsl.model
    def guide():
        a, b, c = gendsl.param("a", 0.3), gendsl.param("b", -0.4), gendsl.param("c", 1.2)
        u = gendsl.sample("u", dist.Bernoulli(logits=a), strategy=strategy)
        gendsl.sample("z", dist.Bernoulli(logits=b + c * u), strategy=strategy)

    return guide


HP = {"a": 0.3, "b": -0.4, "c": 1.2}


def exact_hierarchical(p, outer, inner):
    """DIWHVI(outer, inner) by enumerating every binary choice (HVI: 1, 1; IWHVI: 1, m)."""
    def log_q_u(u):
        return dist.Bernoulli(logits=p["a"]).log_prob(u)

    def log_q_z(z, u):
        return dist.Bernoulli(logits=p["b"] + p["c"] * u).log_prob(z)

    def log_p(z):
        return dist.Bernoulli(0.35).log_prob(z) + dist.Normal(2.0 * z, 1.0).log_prob(1.5)

    per = 2 + (inner - 1)  # u0, z, and the extra proposal draws u_1.. from the prior
    bits = configurations(outer * per).reshape(-1, outer, per)  # every configuration at once
    u0, z, extra = bits[..., 0], bits[..., 1], bits[..., 2:]
    prob = log_q_u(u0) + log_q_z(z, u0) + jnp.sum(log_q_u(extra), axis=-1)
    us = jnp.concatenate([u0[..., None], extra], axis=-1)
    log_qhat = jax.nn.logsumexp(log_q_z(z[..., None], us), axis=-1) - jnp.log(inner)
    log_w = log_p(z) - log_qhat
    return jnp.sum(jnp.exp(prob.sum(-1)) * (jax.nn.logsumexp(log_w, axis=-1) - jnp.log(outer)))


exact_hierarchical_value_and_grad = fast_jit(jax.value_and_grad(exact_hierarchical), static_argnums=(1, 2))
SLOW = pytest.mark.slow
FAST_HIERARCHICAL = [("hvi", REINFORCE), ("hvi", ENUM), ("hvi", MVD), ("iwhvi", MVD), ("diwhvi", MVD)]
HIERARCHICAL = [
    *FAST_HIERARCHICAL,
    pytest.param("iwhvi", REINFORCE, marks=SLOW), pytest.param("iwhvi", ENUM, marks=SLOW),
    pytest.param("diwhvi", REINFORCE, marks=SLOW), pytest.param("diwhvi", ENUM, marks=SLOW),
]
SIZES = {"hvi": (1, 1), "iwhvi": (1, 3), "diwhvi": (2, 2)}  # (outer, inner)


def hierarchical_objective(bound, strategy):
    guide = hguide(strategy)
    outer, inner = SIZES[bound]
    return {
        "hvi": lambda: hvi(hmodel, guide, ["z"]),
        "iwhvi": lambda: iwhvi(hmodel, guide, ["z"], inner),
        "diwhvi": lambda: diwhvi(hmodel, guide, ["z"], outer, inner),
    }[bound]()


@pytest.fixture(scope="module")
def fast_hierarchical_draws():
    """The fast cases' (value, gradient) estimates, drawn by one compiled program."""
    objectives = {f"{b}-{s}": hierarchical_objective(b, s) for b, s in FAST_HIERARCHICAL}
    return draw_estimates(
        lambda k: {name: o.value_and_grad(k, HP) for name, o in objectives.items()}, jax.random.key(0), N
    )


@pytest.mark.parametrize("bound,strategy", HIERARCHICAL, ids=str)
def test_hierarchical_bounds(request, bound, strategy):
    outer, inner = SIZES[bound]
    exact_value, exact_grad = exact_hierarchical_value_and_grad(HP, outer, inner)
    if (bound, strategy) in FAST_HIERARCHICAL:
        values, grads = request.getfixturevalue("fast_hierarchical_draws")[f"{bound}-{strategy}"]
    else:
        values, grads = draws(hierarchical_objective(bound, strategy), HP)
    assert_unbiased(values, exact_value, name=f"{bound} value")
    assert_unbiased(grads, exact_grad, name=f"{bound} gradient")


def test_objective_argument_errors():
    with pytest.raises(ValueError, match="vimco: the leave-one-out baselines need particles >= 2"):
        vimco(coin, coin_guide(REINFORCE), 1)
    with pytest.raises(ValueError, match="iwelbo: particles must be a positive int, got 0"):
        iwelbo(coin, coin_guide(REINFORCE), 0)
    with pytest.raises(ValueError, match="estimator must be 'score' or 'dreg'"):
        iwelbo(gauss, gauss_guide, 2, estimator="stl")
    from gendsl.inference import EstimatorError

    with pytest.raises(EstimatorError, match=r"site 'repeat0/sim0/z': REPARAM needs"):
        iwelbo(coin, coin_guide(REINFORCE), 2, estimator="dreg").grad(jax.random.key(0), PARAMS)


def test_per_datapoint_iwelbo_matches_the_iwae_bound():
    """iwelbo(plate=...) = sum_i E[log mean_k w_ik], checked per point against quadrature."""
    x = jnp.array([0.5, -1.0, 2.0])

    @gendsl.model
    def p(x):
        with gendsl.plate("data", x.shape[0]):
            z = gendsl.sample("z", dist.Normal(0.0, 1.0))
            gendsl.sample("x", dist.Normal(z, 1.0), obs=x)

    @gendsl.model
    def q(x):
        m = gendsl.param("m", jnp.zeros(3))
        with gendsl.plate("data", x.shape[0]):
            gendsl.sample("z", dist.Normal(m, 0.9))

    params = {"m": jnp.array([0.2, -0.3, 0.8])}

    def exact(params):
        total = 0.0
        for i in range(3):
            point = {"mu0": 0.0, "m": params["m"][i], "s": 0.9}
            total = total + quadrature_iwelbo2(point, x=x[i])
        return total

    objective = iwelbo(p, q, 2, plate="data")
    exact_value, exact_grad = fast_jit(jax.value_and_grad(exact))(params)
    values, grads = draws(objective, params, x)
    assert_unbiased(values, exact_value)
    assert_unbiased(grads, exact_grad)
    # Tighter than the whole-batch bound.
    whole = fast_jit(lambda k: iwelbo(p, q, 2).estimate(k, params, x, samples=4000))(jax.random.key(0))
    assert float(exact_value) > float(whole)

    @gendsl.model
    def global_latent(x):
        mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
        p(x + mu)

    @gendsl.model
    def q2(x):
        gendsl.sample("mu", dist.Normal(0.0, 1.0))
        q(x)

    with pytest.raises(gendsl.AddressError, match=r"site 'mu' is not inside plate 'data'"):
        iwelbo(global_latent, q2, 2, plate="data").estimate(jax.random.key(0), params, x)


def test_rws_combines_p_wake_and_q_wake():
    from gendsl.inference import rws

    guide = coin_guide(REINFORCE)

    @fast_jit  # one compiled program: the three objectives side by side, on the same key
    def run(key):
        return [objective(coin, guide, 3).value_and_grad(key, PARAMS) for objective in (rws, p_wake, q_wake)]

    (value, g), (value_p, g_p), (_, g_q) = run(jax.random.key(4))
    np.testing.assert_allclose(float(g["prior"]), float(g_p["prior"]), rtol=1e-6)
    np.testing.assert_allclose(float(g["theta"]), float(g_q["theta"]), rtol=1e-6)
    np.testing.assert_allclose(float(value), float(value_p))
