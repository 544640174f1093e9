"""ENUM and MVD sites in the ELBO drop the zero-mean score term; other objectives keep it.

In ``elbo`` a re-executed site records ``log q`` without its gradient in the guide's
parameters at the drawn value (its expectation is zero and ``log q`` enters linearly). That
makes ENUM in a plate exact when each element's terms depend only on that element, and
MVD on a Bernoulli exact. In objectives where ``log q`` enters nonlinearly (IWELBO, a
user's) the term is part of the gradient: they keep it and stay unbiased, and the last test
shows that dropping it there would be biased. Ground truth: ``jax.grad`` of the enumerated
objective.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.inference import ENUM, MVD, density, elbo, expectation, iwelbo, sim
from gendsl.inference._language import simulate_in_objective
from gendsl.testing import assert_unbiased, draw_estimates

X = jnp.array([-1.7, 0.3, 2.2])
MEANS = jnp.array([-2.0, 0.0, 2.0])
PRIOR = jnp.array([0.3, 0.4, 0.3])


def mixture(strategy, family):
    """A plate of independent discrete latents: each element's ELBO terms are its own."""

    @gendsl.model
    def p(x):
        with gendsl.plate("data", x.shape[0]):
            if family == "Categorical":
                z = gendsl.sample("z", dist.Categorical(probs=PRIOR))
                loc = MEANS[z]
            else:
                z = gendsl.sample("z", dist.Bernoulli(0.4))
                loc = 2.0 * z - 1.0
            gendsl.sample("x", dist.Normal(loc, 1.0), obs=x)

    @gendsl.model
    def q(x):
        phi = gendsl.param("phi", jnp.zeros((x.shape[0], 3) if family == "Categorical" else x.shape))
        with gendsl.plate("data", x.shape[0]):
            d = dist.Categorical(logits=phi) if family == "Categorical" else dist.Bernoulli(logits=phi)
            gendsl.sample("z", d, strategy=strategy)

    return p, q


def exact_mixture_elbo(phi, family):
    """Sum over elements of the enumerated per-element ELBO."""
    if family == "Categorical":
        log_q = jax.nn.log_softmax(phi, axis=-1)
        log_joint = jnp.log(PRIOR) + dist.Normal(MEANS, 1.0).log_prob(X[:, None])
    else:
        log_q = jnp.stack([jax.nn.log_sigmoid(-phi), jax.nn.log_sigmoid(phi)], axis=-1)
        log_joint = jnp.log(jnp.array([0.6, 0.4])) + dist.Normal(jnp.array([-1.0, 1.0]), 1.0).log_prob(X[:, None])
    return jnp.sum(jnp.exp(log_q) * (log_joint - log_q))


def user_elbo(p, q):
    """The ELBO as a user writes it: ``sim`` keeps every site's score paths."""

    def f(params, *args):
        z, log_q = sim(q.bind(params))(*args)
        return density(p.bind(params))(z, *args) - log_q

    return expectation(f, models=(p, q))


@pytest.mark.parametrize(
    "strategy,family",
    [(ENUM, "Categorical"), (ENUM, "Bernoulli"), (MVD, "Categorical"), (MVD, "Bernoulli")],
    ids=lambda c: str(c),
)
def test_one_sample_is_the_exact_gradient_in_a_plate(strategy, family):
    with jax.enable_x64(True):
        p, q = mixture(strategy, family)
        phi = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3) if family == "Categorical" else (3,)))
        exact = jax.grad(exact_mixture_elbo)(phi, family)
        g = draw_estimates(lambda k: elbo(p, q).grad(k, {"phi": phi}, X), jax.random.key(0), 8)["phi"]
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, np.broadcast_to(exact, g.shape), rtol=0, atol=1e-6)
        # The user-written ELBO keeps the zero-mean term: unbiased, not exact.
        g_user = draw_estimates(lambda k: user_elbo(p, q).grad(k, {"phi": phi}, X), jax.random.key(0), 8)["phi"]
        assert np.max(np.abs(g_user - exact)) > 1e-2


@gendsl.model
def coin_model():
    z = gendsl.sample("z", dist.Bernoulli(0.3))
    gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=3.0)


@gendsl.model
def coin_guide():
    gendsl.sample("z", dist.Bernoulli(logits=gendsl.param("theta", 0.0)), strategy=MVD)


def test_mvd_on_a_single_bernoulli_has_zero_variance():
    # The README's coin at theta = -1: exact gradient 0.8165 (was 0.8165 ± 0.44, two values).
    g = draw_estimates(lambda k: elbo(coin_model, coin_guide).grad(k, {"theta": -1.0}), jax.random.key(0), 200)
    assert float(np.ptp(g["theta"])) < 1e-6  # one value: no variance left
    assert abs(float(g["theta"][0]) - 0.8165) < 5e-4
    g_user = draw_estimates(
        lambda k: user_elbo(coin_model, coin_guide).grad(k, {"theta": -1.0}), jax.random.key(0), 4000
    )
    assert 0.15 < float(np.var(g_user["theta"])) < 0.25  # the term the ELBO drops
    assert_unbiased(g_user, {"theta": g["theta"][0]})


@gendsl.model
def normal_model(x):
    z = gendsl.sample("z", dist.Normal(0.0, 1.0))
    gendsl.sample("x", dist.Normal(z, 1.0), obs=x)


@gendsl.model
def normal_guide(x):
    m, s = gendsl.param("m", 0.0), gendsl.param("s", 1.0)
    gendsl.sample("z", dist.Normal(m, s), strategy=MVD)


def exact_normal_elbo(params, x=1.5):
    m, s = params["m"], params["s"]
    expected_log_joint = -jnp.log(2 * jnp.pi) - 0.5 * (m**2 + s**2) - 0.5 * ((x - m) ** 2 + s**2)
    return expected_log_joint + 0.5 * jnp.log(2 * jnp.pi * jnp.e * s**2)


def test_mvd_on_a_normal_site_is_unbiased_with_lower_variance():
    params = {"m": 0.3, "s": 0.8}
    exact = jax.grad(exact_normal_elbo)(params)

    def both(k):
        return (elbo(normal_model, normal_guide).grad(k, params, 1.5),
                user_elbo(normal_model, normal_guide).grad(k, params, 1.5))

    g, g_user = draw_estimates(both, jax.random.key(0), 8000)
    assert_unbiased(g, exact, name="elbo")
    assert_unbiased(g_user, exact, name="user elbo")
    for name in ("m", "s"):
        assert np.var(g[name]) < 0.8 * np.var(g_user[name]), name


# --- objectives where log q enters nonlinearly keep the term -----------------------------

X2 = jnp.array([0.4, -1.2])


def bernoulli_pair(strategy):
    @gendsl.model
    def p(x):
        with gendsl.plate("data", 2):
            z = gendsl.sample("z", dist.Bernoulli(0.4))
            gendsl.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)

    @gendsl.model
    def q(x):
        phi = gendsl.param("phi", jnp.zeros(2))
        with gendsl.plate("data", 2):
            gendsl.sample("z", dist.Bernoulli(logits=phi), strategy=strategy)

    return p, q


def log_weights(phi, zs):
    """``log p(x, z) - log q(z)`` of each row of ``zs`` (rows: the two plate elements)."""
    log_q = jnp.sum(dist.Bernoulli(logits=phi).log_prob(zs), -1)
    log_p = jnp.sum(dist.Bernoulli(0.4).log_prob(zs) + dist.Normal(2.0 * zs - 1.0, 1.0).log_prob(X2), -1)
    return log_p - log_q, log_q


def enumerated(phi, reduce, particles):
    """``E[reduce(log weights of the particles)]`` summed over every joint value."""
    total = 0.0
    for flat in itertools.product([0.0, 1.0], repeat=2 * particles):
        zs = jnp.array(flat).reshape(particles, 2)
        lw, lq = log_weights(phi, zs)
        total = total + jnp.exp(jnp.sum(lq)) * reduce(lw)
    return total


def squared(log_w):
    return -((log_w[0] + 2.0) ** 2)  # log q enters quadratically


def iwae2(log_w):
    return jax.nn.logsumexp(log_w) - jnp.log(2.0)


def squared_objective(p, q, *, score_paths=True):
    def f(params, x):
        tr = simulate_in_objective(q.bind(params), None, (x,), {}, score_paths=score_paths)
        return squared((density(p.bind(params))(tr.latents, x) - tr.score)[None])

    return expectation(f, models=(p, q))


@pytest.fixture(scope="module")
def nonlinear_grads():
    """Every estimator of the nonlinear objectives, drawn by one compiled program."""
    phi = jnp.array([0.5, -0.3])
    objectives = {}
    for strategy in (ENUM, MVD):
        p, q = bernoulli_pair(strategy)
        objectives[f"iwelbo {strategy}"] = iwelbo(p, q, 2)
        objectives[f"squared {strategy}"] = squared_objective(p, q)
        objectives[f"squared {strategy} dropped"] = squared_objective(p, q, score_paths=False)

    def one(k):
        return {name: o.grad(k, {"phi": phi}, X2)["phi"] for name, o in objectives.items()}

    draws = draw_estimates(one, jax.random.key(0), 8000)
    exact = {
        "iwelbo": jax.grad(enumerated)(phi, iwae2, 2),
        "squared": jax.grad(enumerated)(phi, squared, 1),
    }
    return draws, exact


@pytest.mark.parametrize("objective", ["iwelbo", "squared"])
@pytest.mark.parametrize("strategy", [ENUM, MVD], ids=str)
def test_nonlinear_objectives_stay_unbiased(nonlinear_grads, objective, strategy):
    draws, exact = nonlinear_grads
    assert_unbiased(draws[f"{objective} {strategy}"], exact[objective], name=f"{objective} {strategy}")


@pytest.mark.parametrize("strategy", [ENUM, MVD], ids=str)
def test_dropping_the_term_where_log_q_is_nonlinear_would_be_biased(nonlinear_grads, strategy):
    # Why only the ELBO drops it: ∇ log q at the draw is zero-mean, but here it is multiplied
    # by a function of the same draw.
    draws, exact = nonlinear_grads
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(draws[f"squared {strategy} dropped"], exact["squared"], sigmas=8.0)


# --- a gendsl.scan loop: the stop is applied inside the loop -----------------------------

def chain_guide(strategy):
    @gendsl.model
    def q():
        theta = gendsl.param("theta", 0.0)

        def step(prev, _):
            z = gendsl.sample("z", dist.Bernoulli(logits=theta + 1.5 * prev - 0.5), strategy=strategy)
            return z.astype(jnp.float32), z

        gendsl.scan("c", step, 0.0, length=3)

    return q


@gendsl.model
def chain_model():
    def step(prev, _):
        z = gendsl.sample("z", dist.Bernoulli(logits=1.5 * prev - 1.5))
        gendsl.sample("x", dist.Normal(z, 1.0), obs=0.8)
        return z.astype(jnp.float32), z

    gendsl.scan("c", step, 0.0, length=3)


def exact_chain_elbo(theta):
    total = 0.0
    for zs in itertools.product([0.0, 1.0], repeat=3):
        prev, lq, lp = 0.0, 0.0, 0.0
        for z in zs:
            lq = lq + dist.Bernoulli(logits=theta + 1.5 * prev - 0.5).log_prob(z)
            lp = lp + dist.Bernoulli(logits=1.5 * prev - 1.5).log_prob(z) + dist.Normal(z, 1.0).log_prob(0.8)
            prev = z
        total = total + jnp.exp(lq) * (lp - lq)
    return total


def test_sites_inside_scan_stay_unbiased_with_lower_variance():
    objectives = {}
    for strategy in (ENUM, MVD):
        q = chain_guide(strategy)
        objectives[f"elbo {strategy}"] = elbo(chain_model, q)
        objectives[f"user {strategy}"] = user_elbo(chain_model, q)

    def one(k):
        return {name: o.grad(k, {"theta": 0.4})["theta"] for name, o in objectives.items()}

    draws = draw_estimates(one, jax.random.key(0), 8000)
    target = float(jax.grad(exact_chain_elbo)(0.4))
    for name, g in draws.items():
        assert_unbiased(g, target, name=name)
    for strategy in (ENUM, MVD):
        assert np.var(draws[f"elbo {strategy}"]) < np.var(draws[f"user {strategy}"]), str(strategy)
