"""The ``Trainable`` protocol: every paper model trains through SVI, samples, and evaluates with its error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.stats import norm

from gendsl.inference import ENUM, SVI, Reinforce, elbo, expectation
from gendsl.inference.diffusion import objective_key, ode_log_likelihood
from gendsl.models import DDPM, EDM, PFGMPP, VDM, AIRConfig, DiffuseVAE, FlowMatching, Trainable, make_air
from gendsl.models.air import with_strategy

GAUSS = 0.5 * jax.random.normal(jax.random.key(0), (16, 2))
LEVELS = jax.random.randint(jax.random.key(0), (16, 4), 0, 17)

CASES = {
    "VDM": (lambda: VDM(4, hidden=16, depth=1, key=jax.random.key(1)), LEVELS, {"steps": 5}),
    "DDPM": (lambda: DDPM((2,), T=20, hidden=16, depth=1), GAUSS, {"method": "ddim", "steps": 5}),
    "EDM": (lambda: EDM(2, hidden=16, depth=1, key=jax.random.key(1)), GAUSS, {"steps": 4}),
    "FlowMatching": (lambda: FlowMatching(2, hidden=16, depth=1), GAUSS, {"steps": 4}),
    "PFGMPP": (lambda: PFGMPP(2, D=16, hidden=16, depth=1), GAUSS, {"steps": 4}),
}


# Compiling a model's objective, sampler and likelihood ODE costs 5-10 s each: all five in the slow
# suite. The fast suite trains VDM and FlowMatching through the same protocol by `gendsl fit`
# (tests/cli/test_example_programs.py), and checks evaluate against ground truth below.
FAST = ()


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


# tests/cli/test_example_programs.py checks the same identity, through `gendsl eval`, fast.
@pytest.mark.slow
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


# --- DiffuseVAE and AIR: Trainables with a structured objective ---------------------------------
# Their objectives, samplers and bounds take 5-15 s each to compile on two cores: the checks of
# values (against ground truth) are slow tests; the fast ones check the structure by tracing.

TINY_AIR = AIRConfig(canvas=6, window=3, steps=2, what=2, hidden=4, mlp=4, pres_prior=0.4)


@pytest.fixture(scope="module")
def air_setup():
    air = make_air(TINY_AIR)
    images = jax.random.uniform(jax.random.key(0), (4, TINY_AIR.canvas, TINY_AIR.canvas))
    return air, air.init_params(jax.random.key(1), images), images


def test_diffusevae_and_air_are_trainables():
    vae, air = DiffuseVAE(2, latent=1, hidden=4, T=4), make_air(TINY_AIR)
    assert isinstance(vae, Trainable) and isinstance(air, Trainable)
    assert vae.sample_options == ("steps",) and air.sample_options == ()
    assert air.per_point is True and getattr(vae, "per_point", False) is False
    assert isinstance(air.strategy, Reinforce) and air.strategy.baseline is air.baseline  # the paper's default
    assert make_air(TINY_AIR, strategy=ENUM).strategy is ENUM


@pytest.mark.slow  # ~10 s: three gradients of a VAE and a conditional DDPM compiled on two cores
def test_diffusevae_objective_trains_the_vae_by_its_elbo_and_the_ddpm_on_stopped_reconstructions():
    model = DiffuseVAE(2, latent=1, hidden=4, T=4)
    xs = GAUSS[:8]
    params = model.init_params(jax.random.key(0), xs)
    key = jax.random.key(1)

    def stage_two(ddpm, vae, xs):  # the DDPM's objective on reconstructions drawn at the same address
        x_hat = model.reconstruct(vae, xs, objective_key("diffusevae_reconstruction"))
        return model.ddpm.objective.fn(ddpm, (xs, x_hat))

    @jax.jit
    def grads(key, params):
        joint = model.objective.value_and_grad(key, params, xs)
        vae_alone = model.vae_elbo.value_and_grad(key, params["vae"], xs)
        ddpm_alone = expectation(stage_two).value_and_grad(key, params["ddpm"], params["vae"], xs)
        return joint, vae_alone, ddpm_alone

    (value, g), (vae_value, g_vae), (ddpm_value, g_ddpm) = grads(key, params)
    # The VAE's gradient is its ELBO's (per point) alone: the DDPM term does not reach it.
    for a, b in zip(jax.tree_util.tree_leaves(g["vae"]), jax.tree_util.tree_leaves(g_vae), strict=True):
        np.testing.assert_allclose(a, b / len(xs), rtol=1e-5, atol=1e-7)
    # The DDPM's gradient is stage 2's, and the value is the sum of the two stages' objectives.
    for a, b in zip(jax.tree_util.tree_leaves(g["ddpm"]), jax.tree_util.tree_leaves(g_ddpm), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(value) == pytest.approx(float(vae_value) / len(xs) + float(ddpm_value), rel=1e-5)
    assert any(float(jnp.abs(leaf).max()) > 0 for leaf in jax.tree_util.tree_leaves(g["ddpm"]))


@pytest.mark.slow  # ~10 s: the AIR ELBO and guide compiled twice (evaluate's and the reference's)
def test_air_evaluate_is_the_per_image_elbo_and_the_hand_counted_accuracy(air_setup):
    air, params, images = air_setup
    key = jax.random.key(2)
    k_elbo, k_count = jax.random.split(key)
    per_image = elbo(air.model, with_strategy(air.guide, air.strategy))
    reference = jax.jit(jax.vmap(per_image.estimate, in_axes=(0, None, 0)))(jax.random.split(k_elbo, 4), params, images)
    guide_draws = jax.jit(jax.vmap(lambda k, x: air.guide.bind(params).simulate(k, x).choices))
    choices = guide_draws(jax.random.split(k_count, 4), images)
    inferred = []
    for i in range(4):  # the number of objects: the leading z_pres = 1
        pres = [float(choices[f"z_pres_{t}"][i]) for t in range(TINY_AIR.steps)] + [0.0]
        inferred.append(pres.index(0.0))
    counts = np.array(inferred)
    counts[::2] = (counts[::2] + 1) % (TINY_AIR.steps + 1)  # two of four right
    metrics = air.evaluate(params, (images, jnp.asarray(counts)), key)
    np.testing.assert_allclose(metrics["elbo"][0], float(np.mean(reference)), rtol=1e-5)
    np.testing.assert_allclose(metrics["elbo"][1], np.std(reference, ddof=1) / 2, rtol=1e-4)
    assert metrics["count_accuracy"] == (0.5, 0.25)
    assert set(air.evaluate(params, images, key)) == {"elbo"}  # no counts, no accuracy


def test_air_objective_is_of_one_image_and_ignores_its_count():
    air = make_air(TINY_AIR)
    images = jnp.zeros((4, TINY_AIR.canvas, TINY_AIR.canvas))
    params = jax.eval_shape(air.init_params, jax.random.key(0), images)  # traced, not computed
    trace = jax.make_jaxpr(air.objective.estimate)
    # A batch of one (what SVI(per_point=True) passes) with a count beside it: the count is never read.
    with_count = trace(jax.random.key(3), params, (images[:1], jnp.array([2])))
    count = with_count.jaxpr.invars[-1]
    assert all(count not in eqn.invars for eqn in with_count.jaxpr.eqns)
    with pytest.raises(ValueError, match=r"one image of shape \(6, 6\).*per_point=True"):
        trace(jax.random.key(3), params, images)


def fit_sample_evaluate(model, data, svi, eval_data, **options):
    """Three SVI steps from init_params, then sample and evaluate: the front end's whole use of a Trainable."""
    params = model.init_params(jax.random.key(2), data)
    state = svi.init(jax.random.key(3), data, params=params)
    result = svi.run(jax.random.key(3), 3, data, batch_size=2, state=state, progress=False)
    assert np.all(np.isfinite(result.objective)) and int(result.state.step) == 3
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), svi.get_params(state), result.params)
    assert any(jax.tree_util.tree_leaves(moved))
    metrics = model.evaluate(result.params, eval_data, jax.random.key(5), **options)
    assert all(np.isfinite(v) and np.isfinite(se) and se >= 0 for v, se in metrics.values())
    return result.params, metrics


@pytest.mark.slow  # compiles the joint objective's gradient, the VAE bound and the DDIM sampler
def test_diffusevae_trains_through_svi_samples_and_evaluates():
    model = DiffuseVAE(2, latent=1, hidden=8, T=10)
    svi = SVI(model.objective, optax.adam(1e-2))
    params, metrics = fit_sample_evaluate(model, GAUSS, svi, GAUSS, steps=4)
    assert set(metrics) == {"nll_bound", "vae_nll_bound", "mmd"}
    assert model.sample(params, jax.random.key(4), 3, steps=4).shape == (3, 2)
    legacy = model.sample(params["vae"], params["ddpm"], jax.random.key(4), 3, steps=4)  # the two-stage call
    np.testing.assert_array_equal(legacy, model.sample(params, jax.random.key(4), 3, steps=4))


@pytest.mark.slow  # compiles the AIR ELBO's REINFORCE gradient (~15 s)
def test_air_trains_per_point_on_images_with_counts_samples_and_evaluates(air_setup):
    air, _, images = air_setup
    counts = jnp.array([0, 1, 2, 1])
    svi = SVI(air.objective, optax.adam(1e-3), per_point=True)
    params, metrics = fit_sample_evaluate(air, (images, counts), svi, (images, counts))
    assert set(metrics) == {"elbo", "count_accuracy"} and 0 <= metrics["count_accuracy"][0] <= 1
    canvases = air.sample(params, jax.random.key(4), 3)
    assert canvases.shape == (3, TINY_AIR.canvas, TINY_AIR.canvas) and bool(jnp.all(canvases >= 0))
