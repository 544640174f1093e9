"""The compiled estimator has the shape of the hand-written one (no stray batch axes)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp

import gendsl
import gendsl.distributions as dist
from gendsl.inference import elbo, init_params


@gendsl.model
def p(x):
    dec = gendsl.module("dec", lambda k: eqx.nn.Linear(10, 784, key=k))
    with gendsl.plate("b", x.shape[0]):
        z = gendsl.sample("z", dist.Normal(jnp.zeros(10), 1.0).to_event(1))
        gendsl.sample("x", dist.Bernoulli(logits=jax.vmap(dec)(z)).to_event(1), obs=x)


@gendsl.model
def q(x):
    with gendsl.plate("b", x.shape[0]):
        gendsl.sample("z", dist.Normal(gendsl.param("m", jnp.zeros((x.shape[0], 10))), 1.0).to_event(1))


def test_single_sample_estimator_has_no_size_one_batch_axis():
    # A vmap over one replicate once added a size-1 axis that made XLA:CPU
    # transpose every matmul output (10% slower VAE steps).
    x = jnp.zeros((128, 784))
    objective = elbo(p, q)
    params = init_params(objective, 0, x)[0]
    hlo = jax.jit(lambda k, pp: objective.value_and_grad(k, pp, x)).lower(jax.random.key(0), params).compile().as_text()
    assert not re.findall(r"= f32\[1,[\d,]+\]\S* transpose\(", hlo)
