"""The ``Trainable`` protocol: every paper model trains through SVI, samples, and evaluates with its error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.stats import norm

from gendsl.inference import SVI
from gendsl.inference.diffusion import ode_log_likelihood
from gendsl.models import DDPM, EDM, PFGMPP, VDM, FlowMatching, Trainable

GAUSS = 0.5 * jax.random.normal(jax.random.key(0), (16, 2))
LEVELS = jax.random.randint(jax.random.key(0), (16, 4), 0, 17)

CASES = {
    "VDM": (lambda: VDM(4, hidden=16, depth=1, key=jax.random.key(1)), LEVELS, {"steps": 5}),
    "DDPM": (lambda: DDPM((2,), T=20, hidden=16, depth=1), GAUSS, {"method": "ddim", "steps": 5}),
    "EDM": (lambda: EDM(2, hidden=16, depth=1, key=jax.random.key(1)), GAUSS, {"steps": 4}),
    "FlowMatching": (lambda: FlowMatching(2, hidden=16, depth=1), GAUSS, {"steps": 4}),
    "PFGMPP": (lambda: PFGMPP(2, D=16, hidden=16, depth=1), GAUSS, {"steps": 4}),
}


# Compiling a model's objective, sampler and likelihood ODE costs 5-10 s each: two models in the
# fast suite (a discrete-data and a continuous-data one), all five in the slow one. The ground-truth
# checks of evaluate (below) are fast.
FAST = ("EDM", "VDM")


@pytest.mark.parametrize(
    "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(CASES)]
)
def test_model_trains_through_svi_samples_and_evaluates(name):
    make, data, options = CASES[name]
    model = make()
    assert isinstance(model, Trainable)
    assert set(options) <= set(model.sample_options)
    params = model.init_params(jax.random.key(2), data)
    svi = SVI(model.objective, optax.adam(1e-2))
    state = svi.init(jax.random.key(3), data, params=params)
    result = svi.run(jax.random.key(3), 3, data, state=state, progress=False, ema=0.9)
    assert np.all(np.isfinite(result.objective)) and int(result.state.step) == 3
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), svi.get_params(state), result.params)
    assert any(jax.tree_util.tree_leaves(moved))
    x = model.sample(result.ema_params, jax.random.key(4), 3, **options)
    assert x.shape == (3, *data.shape[1:])
    metrics = model.evaluate(result.params, data[:6], jax.random.key(5))
    assert metrics and all(isinstance(v, float) and isinstance(se, float) and se >= 0 for v, se in metrics.values())
    assert ("bits_per_dim" in metrics) and (("nll" in metrics) == (name not in ("VDM", "DDPM")))


def test_vdm_evaluate_is_the_library_bits_per_dim_with_the_same_key():
    vdm = VDM(4, hidden=16, depth=1, key=jax.random.key(1))
    key = jax.random.key(7)
    value, se = vdm.evaluate(vdm, LEVELS, key, samples=3)["bits_per_dim"]
    np.testing.assert_allclose(value, float(vdm.bits_per_dim(key, LEVELS, samples=3)), rtol=1e-5)
    assert 0 < se < abs(value)


def test_flow_exact_nll_of_gaussian_data_is_the_closed_form():
    # x_t = (1 + a t) x0 with x0 ~ N(0, I): velocity a x / (1 + a t), and the data at t = 1 are N(0, (1 + a)^2 I).
    a, fm = 0.7, FlowMatching(3, hidden=8, depth=1)
    fm.velocity = lambda x, t, params: a * x / (1 + a * t)
    x = (1 + a) * jax.random.normal(jax.random.key(0), (50, 3))
    nll, se = fm.evaluate(None, x, jax.random.key(1))["nll"]
    exact = -norm.logpdf(np.asarray(x, np.float64), scale=1 + a).sum(-1)
    assert abs(nll - exact.mean()) < 1e-3
    np.testing.assert_allclose(se, exact.std(ddof=1) / np.sqrt(50), rtol=1e-3)


def test_flow_evaluate_is_ode_log_likelihood_of_the_trained_velocity():
    fm = FlowMatching(2, hidden=16, depth=1)
    params = fm.init_params(jax.random.key(0), GAUSS)
    prior = lambda z: jnp.sum(norm.logpdf(z))  # noqa: E731
    direct = ode_log_likelihood(fm.velocity, GAUSS[:5], 1.0, 0.0, prior, args=params)
    metrics = fm.evaluate(params, GAUSS[:5], jax.random.key(1))
    np.testing.assert_allclose(metrics["nll"][0], -float(jnp.mean(direct)), rtol=1e-5)
    assert "mmd" in metrics  # 2-D data
