"""Model interface: jit/vmap equal eager, parameters, modules, generate weights."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import gendsl
import gendsl.distributions as dist
from gendsl.distributions import constraints


@gendsl.model
def regression(x, y):
    w = gendsl.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    s = gendsl.sample("s", dist.HalfNormal(1.0))
    with gendsl.plate("data", x.shape[0]):
        gendsl.sample("y", dist.Normal(x @ w, s), obs=y)
    return w


X = jnp.array([[1.0, 0.5], [0.3, -1.0], [2.0, 0.1], [-0.4, 0.7]])
Y = jnp.array([0.2, -1.0, 1.5, 0.3])


def expected_log_density(w, s):
    w, s = np.asarray(w, np.float64), float(s)
    return (
        stats.norm.logpdf(w, 0, 1).sum()
        + stats.halfnorm.logpdf(s, scale=1.0)
        + stats.norm.logpdf(np.asarray(Y), np.asarray(X) @ w, s).sum()
    )


def test_trace_contents_match_scipy():
    tr = regression.simulate(jax.random.key(0), X, Y)
    assert tr.observed == ("y",)
    assert set(tr.latents) == {"w", "s"}
    np.testing.assert_allclose(float(tr.score), expected_log_density(tr.choices["w"], tr.choices["s"]), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(tr.retval), np.asarray(tr.choices["w"]))


def test_jit_and_vmap_equal_eager():
    key = jax.random.key(1)
    eager = regression.simulate(key, X, Y)
    jitted = jax.jit(regression.simulate)(key, X, Y)
    for a in eager.choices:
        np.testing.assert_allclose(np.asarray(jitted.choices[a]), np.asarray(eager.choices[a]), rtol=1e-6)
    np.testing.assert_allclose(float(jitted.score), float(eager.score), rtol=1e-6)

    keys = jax.random.split(key, 5)
    batched = jax.jit(jax.vmap(regression.simulate, in_axes=(0, None, None)))(keys, X, Y)
    scores = jax.jit(jax.vmap(regression.assess, in_axes=(0, None, None)))(batched.latents, X, Y)
    for i in range(5):
        one = regression.simulate(keys[i], X, Y)
        np.testing.assert_allclose(np.asarray(batched.choices["w"][i]), np.asarray(one.choices["w"]), rtol=1e-6)
        np.testing.assert_allclose(float(scores[i]), float(regression.assess(one.latents, X, Y)), rtol=1e-5)


def test_repeat_and_vmap_models():
    # Compiled (eager execution of the batched models is covered by the doctests of _model.py).
    particles = jax.jit(regression.repeat(7).simulate)(jax.random.key(2), X, Y)
    assert particles.choices["w"].shape == (7, 2)
    scores = jax.jit(regression.repeat(7).assess)(particles.latents, X, Y)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(particles.score), rtol=1e-5)

    xs, ys = jnp.stack([X, 2 * X]), jnp.stack([Y, -Y])
    batch = jax.jit(regression.vmap(in_axes=(0, 0)).simulate)(jax.random.key(3), xs, ys)
    np.testing.assert_array_equal(np.asarray(batch.choices["y"]), np.asarray(ys))
    traces, weights = jax.jit(regression.vmap(in_axes=(0, 0)).generate)(
        jax.random.key(3), {"s": 0.7}, xs, ys
    )
    np.testing.assert_allclose(np.asarray(traces.choices["s"]), 0.7)
    expected = np.asarray(traces.log_probs["s"]) + np.asarray(traces.log_probs["y"]).sum(-1)
    np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-5)


def test_generate_weight_is_constrained_plus_observed():
    tr, w = regression.generate(jax.random.key(4), {"w": jnp.array([0.5, -0.5])}, X, Y)
    np.testing.assert_allclose(float(w), float(tr.site_score("w") + tr.site_score("y")), rtol=1e-6)
    _tr_all, w_all = regression.generate(jax.random.key(4), tr.latents, X, Y)
    np.testing.assert_allclose(float(w_all), float(regression.assess(tr.latents, X, Y)), rtol=1e-6)


def test_params_and_modules():
    @gendsl.model
    def decoder_model(x):
        net = gendsl.module("decoder", lambda k: eqx.nn.MLP(2, 3, 8, 1, key=k))
        scale = gendsl.param("scale", jnp.ones(3), constraint=constraints.positive)
        z = gendsl.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        gendsl.sample("x", dist.Normal(net(z), scale).to_event(1), obs=x)
        return net(z)

    x = jnp.zeros(3)
    params = decoder_model.init(jax.random.key(0), x)
    assert set(params) == {"decoder", "scale"}
    leaves = jax.tree_util.tree_leaves(params["decoder"])
    assert all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves)
    # init is a function of the key: same key, same parameters; other key, other ones.
    again = decoder_model.init(jax.random.key(0), x)
    other = decoder_model.init(jax.random.key(1), x)
    np.testing.assert_array_equal(params["decoder"].layers[0].weight, again["decoder"].layers[0].weight)
    assert not np.allclose(params["decoder"].layers[0].weight, other["decoder"].layers[0].weight)

    # bind substitutes parameters; gradients flow to them through assess.
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, params)
    zeroed["scale"] = jnp.full(3, 2.0)
    tr = decoder_model.bind(zeroed).simulate(jax.random.key(5), x)
    np.testing.assert_allclose(np.asarray(tr.retval), 0.0)
    np.testing.assert_allclose(float(tr.site_score("x")), stats.norm.logpdf(0.0, 0.0, 2.0) * 3, rtol=1e-5)

    def loss(p):
        return decoder_model.bind(p).assess({"z": jnp.ones(2)}, x)

    g = jax.grad(loss)(params)
    mean = decoder_model.bind(params).generate(jax.random.key(0), {"z": jnp.ones(2)}, x)[0].retval
    expected = jax.grad(lambda s: dist.Normal(mean, s).to_event(1).log_prob(x))(params["scale"])
    np.testing.assert_allclose(np.asarray(g["scale"]), np.asarray(expected), rtol=1e-5)


def test_deterministic_and_factor():
    @gendsl.model
    def m():
        z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        gendsl.deterministic("z2", z**2)
        gendsl.factor("penalty", -(z**2))

    tr = m.simulate(jax.random.key(0))
    z = float(tr.choices["z"])
    np.testing.assert_allclose(float(tr.deterministics["z2"]), z**2, rtol=1e-6)
    np.testing.assert_allclose(float(tr.score), stats.norm.logpdf(z) - z**2, rtol=1e-5)


def test_trace_is_a_pytree_through_scan():
    def body(carry, key):
        tr = regression.simulate(key, X, Y)
        return carry + tr.score, tr

    total, traces = jax.lax.scan(body, 0.0, jax.random.split(jax.random.key(0), 4))
    assert traces.choices["w"].shape == (4, 2) and traces.observed == ("y",)
    assert traces.score.shape == (4,)
    per_key = [regression.assess({k: v[i] for k, v in traces.latents.items()}, X, Y) for i in range(4)]
    np.testing.assert_allclose(float(total), float(sum(per_key)), rtol=1e-5)


@pytest.mark.parametrize("key", [jax.random.PRNGKey(0), 0])
def test_key_forms_give_the_same_draws(key):
    # A raw uint32 key and an int seed are the same key as jax.random.key(0).
    reference = regression.simulate(jax.random.key(0), X, Y)
    tr = regression.simulate(key, X, Y)
    np.testing.assert_array_equal(np.asarray(tr.choices["w"]), np.asarray(reference.choices["w"]))
