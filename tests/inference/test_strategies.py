"""Strategies carry their behaviour: a new one plugs in from one class; Relaxed is opt-in and correct."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.inference import REPARAM, EstimatorError, Relaxed, Strategy, elbo, expectation, sim
from gendsl.testing._checks import assert_unbiased, draw_estimates


class ByHand(Strategy, name="by-hand"):
    """Pathwise gradient of a Normal site, rebuilt by hand: ``loc + scale * eps`` with ``eps`` fixed.

    Defined here, in the test, to show that a strategy is one class: nothing else is edited.
    """

    def check(self, fn, address):
        if not isinstance(fn, dist.Normal):
            raise EstimatorError(f"site '{address}': ByHand needs a Normal")

    def sample_site(self, site, msg):
        fn = msg["fn"]
        eps = jax.lax.stop_gradient((msg["value"] - fn.loc) / fn.scale)
        msg["value"] = fn.loc + fn.scale * eps


@gendsl.model
def p(x):
    z = gendsl.sample("z", dist.Normal(0.0, 1.0))
    gendsl.sample("x", dist.Normal(z, 1.0), obs=x)


def q_with(strategy):
    @gendsl.model
    def q(x):
        loc, scale = gendsl.param("m", 0.3), gendsl.param("s", 0.8)
        gendsl.sample("z", dist.Normal(loc, scale), strategy=strategy)

    return q


def test_a_strategy_defined_outside_the_library_plugs_in():
    params, key = {"m": 0.3, "s": 0.8}, jax.random.key(3)
    reference = elbo(p, q_with(REPARAM)).grad(key, params, 1.0)
    for strategy in (ByHand(), "by-hand"):  # the object, or its registered name
        g = elbo(p, q_with(strategy)).grad(key, params, 1.0)
        np.testing.assert_allclose([g["m"], g["s"]], [reference["m"], reference["s"]], rtol=1e-5)
    # ... from outside the model too, and its own check runs.
    ruled = gendsl.handlers.strategy(q_with(None), rules={"z": "by-hand"})
    g = elbo(p, ruled).grad(key, params, 1.0)
    np.testing.assert_allclose([g["m"], g["s"]], [reference["m"], reference["s"]], rtol=1e-5)

    @gendsl.model
    def bad():
        gendsl.sample("b", dist.Bernoulli(0.5), strategy="by-hand")

    with pytest.raises(EstimatorError, match="site 'sim0/b': ByHand needs a Normal"):
        expectation(lambda _: sim(bad)()[0]["b"]).estimate(jax.random.key(0), None)


def relaxed_model(strategy):
    @gendsl.model
    def q(logit):
        gendsl.sample("b", dist.Bernoulli(logits=logit), strategy=strategy)

    return q


def test_relaxed_is_refused_unless_the_bias_is_accepted():
    objective = expectation(lambda logit_: sim(relaxed_model(Relaxed(0.5)))(logit_)[0]["b"])
    message = r"site 'sim0/b': the Gumbel-softmax relaxation is biased.*allow_bias=True"
    with pytest.raises(EstimatorError, match=message):
        objective.grad(jax.random.key(0), 0.0)

    @gendsl.model
    def normal():
        gendsl.sample("z", dist.Normal(0.0, 1.0), strategy=Relaxed(allow_bias=True))

    with pytest.raises(EstimatorError, match="site 'sim0/z': Relaxed covers Bernoulli sites, not Normal"):
        expectation(lambda _: sim(normal)()[0]["z"]).estimate(jax.random.key(0), None)


def test_relaxed_gradient_is_the_gradient_of_the_relaxed_objective():
    """E[f(y)] with y = sigmoid((l + L)/τ), L logistic: its exact gradient by quadrature over L's quantiles."""
    tau, logit = 0.7, 0.4

    def f(y):
        return (y - 0.3) ** 2

    def exact(logit_, n=20_000):
        u = (jnp.arange(n) + 0.5) / n  # midpoint rule in the quantile of L
        return jnp.mean(f(jax.nn.sigmoid((logit_ + jnp.log(u) - jnp.log1p(-u)) / tau)))

    objective = expectation(
        lambda logit_: f(sim(relaxed_model(Relaxed(tau, straight_through=False, allow_bias=True)))(logit_)[0]["b"])
    )
    grads = draw_estimates(lambda k: objective.grad(k, logit), jax.random.key(1), 4000)
    assert_unbiased(grads, jax.grad(exact)(logit))
    values = draw_estimates(lambda k: objective.estimate(k, logit), jax.random.key(2), 4000)
    assert_unbiased(values, exact(logit))


def test_straight_through_keeps_hard_values_with_the_relaxed_gradient():
    strategy = Relaxed(0.5, allow_bias=True)
    objective = expectation(lambda logit_: sim(relaxed_model(strategy))(logit_)[0]["b"])
    values = draw_estimates(lambda k: objective.estimate(k, 0.0), jax.random.key(0), 200)
    assert set(np.unique(np.asarray(values)).tolist()) <= {0.0, 1.0}
    grads = draw_estimates(lambda k: objective.grad(k, 0.0), jax.random.key(0), 200)
    assert np.all(np.asarray(grads) > 0.0)  # d sigmoid((l + L)/τ)/dl > 0 at every draw
