"""Checks the library makes so that bad programs fail loudly (issue 13, part 5)."""

import jax
import jax.numpy as jnp
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
