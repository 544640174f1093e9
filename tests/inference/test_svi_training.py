"""SVI.run's training features: the EMA of the parameters, validation-based early stopping, module parameters."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.distributions import constraints
from gendsl.inference import SVI, elbo, expectation


@gendsl.model
def model(x):
    mu = gendsl.sample("mu", dist.Normal(0.0, 2.0))
    with gendsl.plate("n", x.shape[0]):
        gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)


@gendsl.model
def guide(x):
    scale = gendsl.param("scale", 1.0, constraint=constraints.positive)
    gendsl.sample("mu", dist.Normal(gendsl.param("loc", 0.0), scale))


X = jnp.array([0.3, 1.2, 0.8, 1.9, 1.1, 0.4, 1.5, 0.9])


def _linear():
    """An objective whose parameter ``w`` moves by exactly 1 per SGD step (gradient 1, learning rate 1)."""
    return SVI(expectation(lambda p: p["w"], init=lambda key: ({"w": jnp.float32(0.0)}, {})), optax.sgd(1.0))


def test_ema_equals_hand_computed_average_of_the_parameter_sequence():
    svi, decay = SVI(elbo(model, guide), optax.adam(0.05)), 0.9
    state = svi.init(jax.random.key(0), X)
    seen = [state.params]
    result = svi.run(jax.random.key(1), 12, X, state=state, chunk_size=1, progress=False, ema=decay,
                     callback=lambda info: seen.append(info.state.params))
    assert len(seen) == 13
    expected = seen[0]
    for p in seen[1:]:
        expected = jax.tree_util.tree_map(lambda e, q: decay * e + (1 - decay) * q, expected, p)
    for name in ("loc", "scale"):  # averaged in unconstrained space: log(scale)
        np.testing.assert_allclose(result.state.ema[name], expected[name], rtol=1e-6)
    np.testing.assert_allclose(result.ema_params["scale"], np.exp(expected["scale"]), rtol=1e-6)
    assert not np.allclose(result.ema_params["loc"], result.params["loc"])


def test_ema_is_chunking_invariant_and_resumes():
    svi = SVI(elbo(model, guide), optax.adam(0.05))
    whole = svi.run(jax.random.key(1), 30, X, chunk_size=30, progress=False, ema=0.95)
    half = svi.run(jax.random.key(1), 15, X, chunk_size=7, progress=False, ema=0.95)
    rest = svi.run(jax.random.key(1), 15, X, state=half.state, chunk_size=4, progress=False, ema=0.95)
    for name in ("loc", "scale"):
        np.testing.assert_allclose(rest.state.ema[name], whole.state.ema[name], rtol=1e-6)


def test_without_ema_the_state_has_the_same_leaves_as_before():
    svi = SVI(elbo(model, guide), optax.adam(0.05))
    result = svi.run(jax.random.key(1), 5, X, progress=False)
    s = result.state
    assert s.ema is None and result.ema_params is None
    old = (s.params, s.opt_state, s.baselines, s.key, s.step)
    assert len(jax.tree_util.tree_leaves(s)) == len(jax.tree_util.tree_leaves(old))
    with pytest.raises(ValueError, match="carries an EMA"):
        svi.run(jax.random.key(1), 5, X, progress=False, state=dataclasses.replace(s, ema=s.params))
    with pytest.raises(ValueError, match=r"ema must be a decay in \[0, 1\)"):
        svi.run(jax.random.key(1), 5, X, progress=False, ema=1.5)


def test_early_stopping_returns_the_best_state_of_a_turning_validation_curve():
    svi = _linear()
    seen = []
    result = svi.run(jax.random.key(0), 200, progress=False, chunk_size=64,
                     validate=lambda p: -float((p["w"] - 30.0) ** 2), validate_every=5, patience=3,
                     callback=lambda info: seen.append((info.step, info.validation)))
    # Validations at 5, 10, ..., 30 (the best), then 35, 40, 45 without improvement: stop.
    assert result.stopped and result.best_step == 30
    assert int(result.state.step) == 30 and float(result.params["w"]) == 30.0
    assert [s for s, _ in result.validation] == list(range(5, 50, 5))
    assert len(result.objective) == 45
    assert [v for _, v in seen if v is not None] == [v for _, v in result.validation]


def test_validation_without_patience_tracks_the_best_step_and_runs_to_the_end():
    result = _linear().run(jax.random.key(0), 50, progress=False, validate=lambda p: -abs(float(p["w"]) - 12.0),
                           validate_every=4)
    assert not result.stopped and result.best_step == 12 and int(result.state.step) == 50
    # Every multiple of 4, and the last step (50, not a multiple).
    assert [s for s, _ in result.validation] == [*range(4, 50, 4), 50]
    assert result.validation[-1][1] == -38.0


def test_fit_many_validates_each_fit_like_run():
    from gendsl.inference import fit_many

    seen = []
    svi = _linear()
    results = fit_many(svi, [0, 1], 50, progress=False, chunk_size=64, validate=lambda p: -abs(float(p["w"]) - 12.0),
                       validate_every=4, callback=lambda infos: seen.append([i.validation for i in infos]))
    single = _linear().run(jax.random.key(0), 50, progress=False, validate=lambda p: -abs(float(p["w"]) - 12.0),
                           validate_every=4)
    for r in results:
        assert r.validation == single.validation and r.best_step == 12 and int(r.state.step) == 50
    assert [v[0] for v in seen] == [v for _, v in single.validation]


def test_init_can_start_the_ema():
    svi = SVI(elbo(model, guide), optax.adam(0.05))
    state = svi.init(jax.random.key(0), X, ema=True)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), state.ema,
                                                         state.params))
    assert svi.init(jax.random.key(0), X).ema is None


def test_validation_sees_the_ema_parameters():
    got = []
    _linear().run(jax.random.key(0), 4, progress=False, ema=0.5, validate=lambda p: got.append(float(p["w"])) or 0.0,
                  validate_every=4)
    # w_t = t; ema = 0.5 ema + 0.5 w from ema_0 = 0: 0.5, 1.25, 2.125, 3.0625
    assert got == [3.0625]


@pytest.mark.parametrize("bad, match", [
    (dict(validate=lambda p: 0.0), "go together"),
    (dict(validate=lambda p: 0.0, validate_every=0), "validate_every must be"),
    (dict(patience=2), "patience must be"),
])
def test_validation_options_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        _linear().run(jax.random.key(0), 5, progress=False, **bad)


class Line(eqx.Module):
    w: jax.Array
    name: str = "line"  # a non-array field: held static


def test_an_equinox_module_is_its_own_parameters():
    objective = expectation(lambda m, x: -jnp.mean((m.w * x - 2.0 * x) ** 2))
    svi = SVI(objective, optax.adam(0.1))
    state = svi.init(jax.random.key(0), X, params=Line(jnp.array(0.5)))
    result = svi.run(jax.random.key(0), 300, X, state=state, progress=False, ema=0.9)
    assert isinstance(result.params, Line) and result.params.name == "line"
    assert abs(float(result.params.w) - 2.0) < 0.05
    assert isinstance(result.ema_params, Line)


def test_held_out_estimate_of_a_one_point_objective_is_the_mean_over_points():
    from gendsl.inference import held_out_estimate, sim

    @gendsl.model
    def noise(x):
        return gendsl.sample("e", dist.Normal(0.0, 1.0))

    # E[-(x - mu + e)^2] = -(x - mu)^2 - 1 per point; the mean over points of the one-point estimates with
    # 2,000 samples each has a standard error of about sqrt(Var[(x - mu + e)^2] / (2000 n)) < 0.02 here.
    obj = expectation(lambda p, x: -((x - p["mu"] + sim(noise)(x)[1]) ** 2))
    f = held_out_estimate(obj, jax.random.key(0), X, samples=2000, pointwise=True)
    exact = float(-jnp.mean((X - 0.5) ** 2) - 1.0)
    assert abs(f({"mu": 0.5}) - exact) < 0.08
    with pytest.raises(ValueError, match="leading data-point axis"):
        held_out_estimate(obj, jax.random.key(0), 1.0, pointwise=True)
