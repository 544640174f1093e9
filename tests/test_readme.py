"""The README's code runs as written, and its user-defined objective is unbiased."""


import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

import gendsl.distributions as dist
from gendsl.inference import ENUM, MVD, REINFORCE
from gendsl.testing._checks import assert_unbiased, draw_estimates

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_namespace():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def ns():
    return readme_namespace()


def test_quickstart_recovers_the_posterior(ns):
    x = ns["x"]
    prec = 1 / 100 + len(x)
    mean, sd = float(jnp.sum(x)) / prec, prec**-0.5
    params = ns["result"].params
    assert abs(float(params["loc"]) - mean) < 0.1 * sd * 3
    assert abs(float(params["scale"]) / sd - 1) < 0.2


def exact_cubo_grad(theta, n=2.0):
    def value(t):
        total = 0.0
        for z in (0.0, 1.0):
            log_q = dist.Bernoulli(logits=t).log_prob(z)
            log_p = dist.Bernoulli(0.3).log_prob(z) + dist.Normal(2.0 * z, 1.0).log_prob(3.0)
            total = total + jnp.exp(log_q) * jnp.exp(n * (log_p - log_q))
        return total

    return jax.grad(value)(theta)


@pytest.mark.parametrize("strategy", [ENUM, MVD, REINFORCE], ids=str)
def test_user_defined_cubo_gets_every_estimator(ns, strategy):
    guide_with, sim, density, expectation = ns["guide_with"], ns["sim"], ns["density"], ns["expectation"]
    p = ns["p"]

    def cubo_exp(theta, n=2.0):
        z, log_q = sim(guide_with(strategy))(theta)
        return jnp.exp(n * (density(p)(z) - log_q))

    g = draw_estimates(lambda k: expectation(cubo_exp).grad(k, -1.0), jax.random.key(3), 4000)
    assert_unbiased(g, exact_cubo_grad(-1.0))

