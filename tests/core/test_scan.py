"""gendsl.scan: indexed addresses, one compiled loop, exact log density, handlers."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import gendsl
import gendsl.distributions as dist
from gendsl import handlers


@gendsl.model
def chain(n, sigma=0.5):
    x0 = gendsl.sample("x0", dist.Normal(0.0, 1.0))

    def step(x, _):
        x = gendsl.sample("x", dist.Normal(0.9 * x, sigma))
        gendsl.sample("y", dist.Normal(x, 1.0))
        return x, x

    return gendsl.scan("chain", step, x0, length=n)


def unrolled_log_density(choices, sigma=0.5):
    x0 = float(choices["x0"])
    xs = np.asarray(choices["chain/x"], np.float64)
    ys = np.asarray(choices["chain/y"], np.float64)
    prev = np.concatenate([[x0], xs[:-1]])
    return (
        stats.norm.logpdf(x0, 0, 1)
        + stats.norm.logpdf(xs, 0.9 * prev, sigma).sum()
        + stats.norm.logpdf(ys, xs, 1.0).sum()
    )


def test_sites_are_indexed_and_stacked():
    tr = chain.simulate(jax.random.key(0), 7)
    assert set(tr.choices) == {"x0", "chain/x", "chain/y"}
    assert tr.choices["chain/x"].shape == (7,)
    assert tr.log_probs["chain/y"].shape == (7,)
    np.testing.assert_allclose(tr.retval[0], tr.choices["chain/x"][-1])


@pytest.mark.parametrize("n", [10, 1000])
def test_log_density_matches_unrolled(n):
    tr = chain.simulate(jax.random.key(1), n)
    np.testing.assert_allclose(float(tr.score), unrolled_log_density(tr.choices), rtol=1e-4)
    np.testing.assert_allclose(float(chain.assess(tr.choices, n)), float(tr.score), rtol=1e-6)


def _compile_seconds(n):
    # A new function each time: traced, lowered and compiled afresh, with no cache hit. (Not
    # jax.clear_caches(), which would make every later test in the process recompile too.)
    f = jax.jit(lambda key: chain.simulate(key, n))
    start = time.perf_counter()
    f.lower(jax.random.key(0)).compile()
    return time.perf_counter() - start


def test_long_chain_compiles_like_a_short_one():
    # A 1,000-step chain must be one lax.scan, not 1,000 unrolled sites. Take the
    # best of three to damp the noise of a shared machine.
    short = min(_compile_seconds(10) for _ in range(3))
    long = min(_compile_seconds(1000) for _ in range(3))
    print(f"compile 10 steps: {short * 1e3:.1f} ms, 1000 steps: {long * 1e3:.1f} ms")
    assert long < 2 * short
    jaxpr = jax.make_jaxpr(chain.simulate, static_argnums=1)(jax.random.key(0), 1000)
    assert "scan" in str(jaxpr) and len(jaxpr.jaxpr.eqns) < 200


def test_randomness_depends_on_step_and_address():
    tr = chain.simulate(jax.random.key(2), 50)
    x = np.asarray(tr.choices["chain/x"])
    assert len(np.unique(x)) == 50
    # Re-running with y substituted reproduces every x draw: keys are per address.
    sub = chain.generate(jax.random.key(2), {"chain/y": jnp.zeros(50)}, 50)[0]
    np.testing.assert_array_equal(np.asarray(sub.choices["chain/x"]), x)


def test_condition_inside_loop_by_address():
    ys = jnp.linspace(-1.0, 1.0, 12)
    conditioned = gendsl.model(handlers.condition(chain, data={"chain/y": ys}))
    tr = conditioned.simulate(jax.random.key(3), 12)
    np.testing.assert_array_equal(np.asarray(tr.choices["chain/y"]), np.asarray(ys))
    assert "chain/y" in tr.observed and "chain/x" not in tr.observed
    np.testing.assert_allclose(float(tr.score), unrolled_log_density(tr.choices), rtol=1e-4)


def test_assess_requires_every_loop_site():
    tr = chain.simulate(jax.random.key(4), 5)
    choices = dict(tr.choices)
    del choices["chain/y"]
    with pytest.raises(gendsl.MissingChoiceError, match="'chain/y'"):
        chain.assess(choices, 5)


def test_nested_loops_and_plates_inside_body():
    @gendsl.model
    def grid():
        def outer(c, _):
            def inner(c2, _):
                with gendsl.plate("p", 3):
                    z = gendsl.sample("z", dist.Normal(c2, 1.0))
                return c2 + 1.0, z
            _, zs = gendsl.scan("inner", inner, c, length=4)
            return c + 10.0, zs

        return gendsl.scan("outer", outer, 0.0, length=2)

    tr = grid.simulate(jax.random.key(5))
    z = np.asarray(tr.choices["outer/inner/z"], np.float64)
    assert z.shape == (2, 4, 3)
    loc = (10.0 * np.arange(2))[:, None, None] + np.arange(4)[None, :, None]
    np.testing.assert_allclose(float(tr.score), stats.norm.logpdf(z, loc, 1.0).sum(), rtol=1e-5)
    # Nested data is sliced step by step.
    fixed = jnp.ones((2, 4, 3))
    tr2 = grid.generate(jax.random.key(6), {"outer/inner/z": fixed})[0]
    np.testing.assert_array_equal(np.asarray(tr2.choices["outer/inner/z"]), np.asarray(fixed))
    np.testing.assert_allclose(float(grid.assess({"outer/inner/z": fixed})),
                               stats.norm.logpdf(np.ones((2, 4, 3)), loc, 1.0).sum(), rtol=1e-5)


def test_scale_and_strategy_reach_loop_sites():
    scaled = gendsl.model(handlers.scale(chain, scale=2.0))
    tr = chain.simulate(jax.random.key(7), 6)
    tr2 = scaled.simulate(jax.random.key(7), 6)
    np.testing.assert_allclose(float(tr2.score), 2.0 * float(tr.score), rtol=1e-6)

    annotated = handlers.strategy(chain, rules={"chain/*": "enum"})
    seen = {}

    def body_probe(msg):
        seen[msg["name"]] = msg["infer"].get("strategy")
        return {}

    spy = handlers.infer_config(annotated, config_fn=body_probe)
    handlers.seed(spy, key=0)(6)
    assert seen["chain/x"] == "enum" and seen["x0"] is None


def test_reverse_loop_stacks_by_position_and_scores_the_reverse_chain():
    """``reverse=True``: step t reads xs[t] and its value is stacked at position t, steps run n-1 .. 0."""

    @gendsl.model
    def backward(xs):
        def step(x, loc):
            x = gendsl.sample("x", dist.Normal(0.5 * x + loc, 1.0))
            return x, x

        return gendsl.scan("chain", step, 3.0, xs, reverse=True)

    xs = jnp.arange(6.0)
    tr = backward.simulate(jax.random.key(8), xs)
    x = np.asarray(tr.choices["chain/x"], np.float64)
    np.testing.assert_array_equal(x, np.asarray(tr.retval[1]))  # values at the positions of their xs
    np.testing.assert_allclose(float(tr.retval[0]), x[0])  # the last step run is position 0
    parent = np.concatenate([x[1:], [3.0]])  # position t follows position t + 1
    np.testing.assert_allclose(float(tr.score), stats.norm.logpdf(x, 0.5 * parent + np.arange(6.0), 1.0).sum(),
                               rtol=1e-5)
    fixed = jnp.linspace(-1.0, 1.0, 6)
    tr2 = backward.generate(jax.random.key(9), {"chain/x": fixed}, xs)[0]
    np.testing.assert_array_equal(np.asarray(tr2.choices["chain/x"]), np.asarray(fixed))
    np.testing.assert_allclose(float(backward.assess({"chain/x": fixed}, xs)), float(tr2.score), rtol=1e-6)
