"""Checks the library makes so that bad programs fail loudly (issue 13, part 5)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist


def test_an_observation_larger_than_its_plate_is_an_error():
    @gendsl.model
    def m(x):
        mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
        with gendsl.plate("data", 5):
            gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)

    with pytest.raises(gendsl.ObservationError, match=r"site 'x': value of shape \(3, 5\) is larger than the "
                                                      r"site's shape \(5,\)"):
        m.simulate(jax.random.key(0), jnp.zeros((3, 5)))
    # The right shape, and a value that broadcasts up to the site's shape, are fine.
    assert m.simulate(jax.random.key(0), jnp.zeros(5)).log_probs["x"].shape == (5,)
    assert m.simulate(jax.random.key(0), jnp.zeros(())).log_probs["x"].shape == (5,)


def test_a_vector_observation_outside_any_plate_still_broadcasts():
    """NumPyro's convention without plates (one site of many i.i.d. values) keeps working."""

    @gendsl.model
    def m(x):
        gendsl.sample("x", dist.Normal(0.0, 1.0), obs=x)

    assert m.simulate(jax.random.key(0), jnp.zeros(4)).log_probs["x"].shape == (4,)


def test_a_param_redeclared_with_another_shape_or_value_is_an_error():
    @gendsl.model
    def shapes():
        gendsl.param("p", jnp.zeros(2))
        gendsl.param("p", jnp.zeros(3))

    with pytest.raises(gendsl.AddressError, match=r"param 'p' is declared twice with different shapes"):
        shapes.init(jax.random.key(0))

    @gendsl.model
    def values():
        gendsl.param("p", 1.0)
        gendsl.param("p", 2.0)

    with pytest.raises(gendsl.AddressError, match=r"param 'p' is declared twice with different initial values"):
        values.init(jax.random.key(0))

    @gendsl.model
    def shared():  # reading one parameter twice, with the same declaration, is fine
        return gendsl.param("p", 1.0) + gendsl.param("p", 1.0)

    assert float(shared.simulate(jax.random.key(0)).retval) == 2.0


def test_a_param_and_a_sample_may_not_share_a_name():
    @gendsl.model
    def param_first():
        gendsl.param("z", 0.0)
        gendsl.sample("z", dist.Normal(0.0, 1.0))

    @gendsl.model
    def sample_first():
        gendsl.sample("z", dist.Normal(0.0, 1.0))
        gendsl.param("z", 0.0)

    with pytest.raises(gendsl.AddressError, match=r"'z' is both a param and a sample"):
        param_first.simulate(jax.random.key(0))
    with pytest.raises(gendsl.AddressError, match=r"'z' is both a sample \(or deterministic\) site and a param"):
        sample_first.simulate(jax.random.key(0))


def test_init_runs_a_model_with_an_improper_prior_and_simulate_refuses_to_draw_it():
    @gendsl.model
    def flat(x):
        s = gendsl.sample("s", dist.ImproperUniform(dist.constraints.positive, (), ()))
        w = gendsl.param("w", jnp.ones(2))
        gendsl.sample("x", dist.Normal(w.sum(), s), obs=x)

    assert set(flat.init(jax.random.key(0), 1.0)) == {"w"}
    with pytest.raises(gendsl.GendslError, match="site 's' has an improper prior"):
        flat.simulate(jax.random.key(0), 1.0)
    expected = dist.Normal(2.0, 2.0).log_prob(1.0)  # the flat prior contributes 0
    np.testing.assert_allclose(flat.assess({"s": 2.0}, 1.0), expected, rtol=1e-6)


def test_module_with_integer_arrays_from_a_key_is_refused_and_a_built_one_keeps_them():
    class Permuted(eqx.Module):
        w: jax.Array
        perm: jax.Array

    def make(key):
        return Permuted(jax.random.normal(key, (3,)), jnp.array([2, 0, 1]))

    @gendsl.model
    def from_key():
        net = gendsl.module("net", make)
        return net.w[net.perm]

    with pytest.raises(TypeError, match=r"module 'net': the initializer makes non-floating arrays \(int32\[3\]\)"):
        from_key.init(jax.random.key(0))

    built = make(jax.random.key(1))

    @gendsl.model
    def from_module():
        net = gendsl.module("net", built)
        return net.w[net.perm]

    params = from_module.init(jax.random.key(0))
    np.testing.assert_array_equal(from_module.bind(params).simulate(jax.random.key(0)).retval, built.w[built.perm])
