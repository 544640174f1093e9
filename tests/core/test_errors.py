"""Every error names the site and the fix."""

import jax
import jax.numpy as jnp
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl import handlers


@gendsl.model
def simple(x):
    z = gendsl.sample("z", dist.Normal(0.0, 1.0))
    with gendsl.plate("data", 3):
        gendsl.sample("x", dist.Normal(z, 1.0), obs=x)


def test_duplicate_address():
    @gendsl.model
    def dup():
        gendsl.sample("z", dist.Normal(0.0, 1.0))
        gendsl.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(gendsl.AddressError, match=r"address 'z' is used by two sites.*gendsl.scan"):
        dup.simulate(jax.random.key(0))


def test_duplicate_address_in_loop_body():
    @gendsl.model
    def dup():
        def body(c, _):
            gendsl.sample("z", dist.Normal(0.0, 1.0))
            gendsl.sample("z", dist.Normal(0.0, 1.0))
            return c, None

        gendsl.scan("loop", body, 0.0, length=3)

    with pytest.raises(gendsl.AddressError, match=r"'loop/z' is used by two sites"):
        dup.simulate(jax.random.key(0))


def test_sample_without_key():
    with pytest.raises(gendsl.NoKeyError, match=r"site 'z' needs a random key.*simulate\(key"):
        simple(jnp.zeros(3))


def test_sample_without_key_in_loop():
    @gendsl.model
    def loop():
        def body(c, _):
            return gendsl.sample("z", dist.Normal(c, 1.0)), None

        gendsl.scan("walk", body, 0.0, length=3)

    with pytest.raises(gendsl.NoKeyError, match=r"'walk/z' needs a random key"):
        handlers.trace(loop).get_trace()


def test_observation_shape_mismatch():
    with pytest.raises(gendsl.ObservationError, match=r"observed site 'x': value of shape \(4,\).*\(3,\)"):
        simple.simulate(jax.random.key(0), jnp.zeros(4))


def test_observation_not_finite():
    with pytest.raises(gendsl.ObservationError, match=r"observed site 'x': 1 of 3 values are NaN"):
        simple.simulate(jax.random.key(0), jnp.array([0.0, jnp.nan, 1.0]))


def test_unknown_constraint_address():
    with pytest.raises(gendsl.AddressError, match=r"\['w'\] is not the address of any sample site.*\['x', 'z'\]"):
        simple.generate(jax.random.key(0), {"w": 1.0}, jnp.zeros(3))


def test_assess_missing_and_unknown():
    with pytest.raises(gendsl.MissingChoiceError, match=r"no value for latent site 'z'; add choices\['z'\]"):
        simple.assess({}, jnp.zeros(3))
    with pytest.raises(gendsl.AddressError, match=r"\['zz'\] is not the address"):
        simple.assess({"z": 0.0, "zz": 1.0}, jnp.zeros(3))
    with pytest.raises(TypeError, match="expected a dict from address to value, got list"):
        simple.assess([0.0], jnp.zeros(3))


def test_param_inside_loop():
    @gendsl.model
    def bad():
        def body(c, _):
            return c + gendsl.param("w", 1.0), None

        gendsl.scan("loop", body, 0.0, length=2)

    with pytest.raises(gendsl.GendslError, match=r"param 'w' is created inside scan 'loop'"):
        bad.simulate(jax.random.key(0))


def test_bad_key_and_bad_distribution():
    with pytest.raises(TypeError, match="expected a PRNG key"):
        simple.simulate(jnp.zeros(3), jnp.zeros(3))

    @gendsl.model
    def not_a_dist():
        gendsl.sample("z", 3.0)

    with pytest.raises(TypeError, match=r"sample site 'z': expected a gendsl.distributions"):
        not_a_dist.simulate(jax.random.key(0))


def test_scan_needs_length():
    @gendsl.model
    def loop():
        gendsl.scan("l", lambda c, x: (c, x), 0.0)

    with pytest.raises(ValueError, match="scan 'l': give xs"):
        loop.simulate(jax.random.key(0))


def test_errors_leave_handler_stack_clean():
    from numpyro.primitives import _PYRO_STACK

    with pytest.raises(gendsl.ObservationError):
        simple.simulate(jax.random.key(0), jnp.zeros(4))
    assert _PYRO_STACK == []


def test_assess_with_subsampled_plate_needs_the_indices():
    @gendsl.model
    def m(data):
        mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
        with gendsl.plate("data", 50, subsample_size=5) as idx:
            gendsl.sample("x", dist.Normal(mu, 1.0), obs=data[idx])

    d = jnp.arange(50.0)
    tr = m.simulate(jax.random.key(0), d)
    with pytest.raises(gendsl.MissingChoiceError, match=r"plate 'data' draws 5 of 50 indices; pass them"):
        m.assess(tr.choices, d)
    rescored = m.assess({**tr.choices, **tr.subsamples}, d)
    assert jnp.allclose(rescored, tr.score)
    assert tr.subsamples["data"].shape == (5,)
