"""gendsl.models.air: the spatial transformer, the model's density, and unbiased gradients per strategy.

Ground truth: a direct per-pixel bilinear interpolation, a log density written out
by hand, and the exact gradient of an ELBO whose only random choices are the
``z_pres`` sites (the guide's continuous sites are conditioned on fixed values), by
enumerating all ``2^steps`` presence patterns and differentiating with ``jax.grad``.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import gendsl
import gendsl.distributions as dist
from gendsl import handlers
from gendsl.inference import AUTO, ENUM, MVD, REINFORCE, SVI, Reinforce, density, elbo, expectation, sim
from gendsl.models.air import (
    AIRConfig,
    ObjectsNormal,
    batch_value_and_grad,
    count_objects,
    image_to_window,
    make_air,
    window_to_image,
    with_strategy,
)
from gendsl.testing import assert_unbiased, draw_estimates
from gendsl.testing._checks import fast_jit

TINY = AIRConfig(canvas=6, window=3, steps=2, what=2, hidden=4, mlp=4, pres_prior=0.4)


def bilinear_direct(img, r, c):
    """Bilinear read of ``img`` at pixel position (r, c), zero outside: the textbook four-neighbour formula."""
    r0, c0 = int(np.floor(r)), int(np.floor(c))
    fr, fc = r - r0, c - c0
    total = 0.0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            i, j = r0 + dr, c0 + dc
            if 0 <= i < img.shape[0] and 0 <= j < img.shape[1]:
                total += wr * wc * img[i, j]
    return total


def to_pixel(u, size):
    return ((u + 1.0) * size - 1.0) / 2.0


def centres(size):
    return (2.0 * np.arange(size) + 1.0) / size - 1.0


# --- the spatial transformer ---------------------------------------------------------------


def test_identity_transform_is_identity():
    img = jax.random.uniform(jax.random.key(0), (7, 7))
    one = jnp.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(window_to_image(img, one, 7), img, atol=1e-6)
    np.testing.assert_allclose(image_to_window(img, one, 7), img, atol=1e-6)


@pytest.mark.parametrize(("dx", "dy"), [(1, 0), (0, 2), (-2, 1), (3, -3)])
def test_integer_shift_moves_pixels(dx, dy):
    n = 8
    img = np.asarray(jax.random.uniform(jax.random.key(1), (n, n)))
    out = np.asarray(window_to_image(jnp.asarray(img), jnp.array([1.0, 2.0 * dx / n, 2.0 * dy / n]), n))
    expected = np.zeros_like(img)
    for i, j in itertools.product(range(n), range(n)):
        if 0 <= i - dy < n and 0 <= j - dx < n:
            expected[i, j] = img[i - dy, j - dx]
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("z_where", [(1.7, 0.13, -0.31), (0.8, -0.4, 0.25), (2.5, 0.6, 0.05)])
def test_transformer_matches_direct_bilinear(z_where):
    s, x, y = z_where
    window = np.asarray(jax.random.normal(jax.random.key(2), (4, 5)))[:, :4]
    canvas = np.asarray(jax.random.normal(jax.random.key(3), (9, 9)))
    out = np.asarray(window_to_image(jnp.asarray(window), jnp.array(z_where), 9))
    cut = np.asarray(image_to_window(jnp.asarray(canvas), jnp.array(z_where), 4))
    u, w = centres(9), centres(4)
    for i, j in itertools.product(range(9), range(9)):  # canvas (i, j) reads the window at s (u - t)
        want = bilinear_direct(window, to_pixel(s * (u[i] - y), 4), to_pixel(s * (u[j] - x), 4))
        assert out[i, j] == pytest.approx(want, abs=1e-5)
    for i, j in itertools.product(range(4), range(4)):  # window (i, j) reads the canvas at t + w / s
        want = bilinear_direct(canvas, to_pixel(y + w[i] / s, 9), to_pixel(x + w[j] / s, 9))
        assert cut[i, j] == pytest.approx(want, abs=1e-5)


def test_transformer_gradient_matches_finite_differences():
    window = jax.random.uniform(jax.random.key(4), (4, 4))

    def f(z):
        return jnp.sum(window_to_image(window, z, 9) ** 2)

    z = jnp.array([1.3, 0.11, -0.17])
    g = jax.grad(f)(z)
    eps = 1e-3
    for k in range(3):
        e = jnp.zeros(3).at[k].set(eps)
        assert float(g[k]) == pytest.approx(float((f(z + e) - f(z - e)) / (2 * eps)), rel=2e-2, abs=2e-3)


# --- the model ----------------------------------------------------------------------------


@functools.cache
def tiny_params(config=TINY, seed=0):
    air = make_air(config)
    image = jnp.zeros((config.canvas, config.canvas))
    params = {**air.model.init(jax.random.key(seed), image), **air.guide.init(jax.random.key(seed + 1), image)}
    return air, params


def test_model_log_density_by_hand():
    air, params = tiny_params()
    c = TINY
    image = jax.random.uniform(jax.random.key(5), (c.canvas, c.canvas))
    choices = {
        "z_pres_0": jnp.array(1.0),
        "z_where_0": jnp.array([1.5, 0.2, -0.1]),
        "z_what_0": jnp.array([0.3, -0.7]),
        "z_pres_1": jnp.array(0.0),
        "z_where_1": jnp.array([9.0, 9.0, 9.0]),  # absent object: masked, must not count
        "z_what_1": jnp.array([5.0, 5.0]),
    }
    logp = float(fast_jit(air.model.bind(params).assess)(choices, image))

    decoder = params["decoder"]
    h = np.maximum(0.0, np.asarray(decoder.layers[0].weight) @ np.array([0.3, -0.7]) + decoder.layers[0].bias)
    window = 1.0 / (1.0 + np.exp(-(np.asarray(decoder.layers[1].weight) @ h + decoder.layers[1].bias)))
    canvas = np.zeros((c.canvas, c.canvas))
    u, w = centres(c.canvas), centres(c.window)
    s, x, y = 1.5, 0.2, -0.1
    win = window.reshape(c.window, c.window)
    for i, j in itertools.product(range(c.canvas), range(c.canvas)):
        canvas[i, j] = bilinear_direct(win, to_pixel(s * (u[i] - y), c.window), to_pixel(s * (u[j] - x), c.window))
    assert w.shape == (c.window,)
    expected = (
        np.log(c.pres_prior)
        + np.log(1 - c.pres_prior)
        + stats.norm(c.scale_prior[0], c.scale_prior[1]).logpdf(1.5)
        + stats.norm(0, c.shift_prior).logpdf([0.2, -0.1]).sum()
        + stats.norm(0, 1).logpdf([0.3, -0.7]).sum()
        + stats.norm(canvas, c.pixel_noise).logpdf(np.asarray(image)).sum()
    )
    assert logp == pytest.approx(expected, rel=1e-5, abs=1e-3)


def test_wrong_image_shape_is_a_clear_error():
    air, params = tiny_params()
    with pytest.raises(ValueError, match=r"expected one image of shape \(6, 6\), got \(2, 6, 6\)"):
        air.model.bind(params).simulate(jax.random.key(0), jnp.zeros((2, 6, 6)))


def test_learned_baseline_is_a_scalar_of_the_image_and_its_parameters():
    air, params = tiny_params()
    images = jax.random.uniform(jax.random.key(9), (2, TINY.canvas, TINY.canvas))
    b = [air.baseline(params, image) for image in images]
    assert all(v.shape == () and np.isfinite(float(v)) for v in b) and float(b[0]) != float(b[1])
    # Its parameters are the guide's "baseline" module: it is what Reinforce(baseline=...) learns.
    g = jax.grad(lambda p: air.baseline(p, images[0]))(params)
    assert any(float(jnp.abs(leaf).sum()) > 0 for leaf in jax.tree_util.tree_leaves(g["baseline"]))


def test_count_objects_counts_leading_ones():
    for pattern in itertools.product([0.0, 1.0], repeat=3):
        choices = {f"z_pres_{t}": jnp.array(v) for t, v in enumerate(pattern)}
        expected = next((t for t, v in enumerate(pattern) if v == 0.0), 3)
        assert int(count_objects(choices, 3)) == expected


# --- gradients of every strategy against exact enumeration of z_pres ----------------------

FIXED = {  # the guide's continuous choices, held fixed so that z_pres are the only random choices
    "z_where_0": jnp.array([1.6, 0.1, -0.2]),
    "z_what_0": jnp.array([0.5, -0.4]),
    "z_where_1": jnp.array([2.0, -0.3, 0.3]),
    "z_what_1": jnp.array([-0.2, 0.8]),
}


def fixed_objective(air, strategy, fixed=FIXED):
    guide = with_strategy(handlers.condition(air.guide, data=fixed), strategy)

    def f(params, image):
        z, log_q = sim(guide.bind(params))(image)  # log_q includes the conditioned sites
        return density(air.model.bind(params))({**z, **fixed}, image) - log_q

    return expectation(f)


def patterns(air, params, image, fixed=FIXED):
    """Each z_pres pattern with its guide probability (z_pres sites only) and the integrand ``log p - log q``."""
    steps = air.config.steps
    for pattern in itertools.product([0.0, 1.0], repeat=steps):
        choices = {**fixed, **{f"z_pres_{t}": jnp.array(v) for t, v in enumerate(pattern)}}
        tr = gendsl.model(handlers.condition(air.guide, data=choices)).bind(params).simulate(jax.random.key(0), image)
        mass = jnp.exp(sum(tr.log_probs[f"z_pres_{t}"] for t in range(steps)))
        yield mass, air.model.bind(params).assess(choices, image) - tr.score


def exact_objective(air, params, image, fixed=FIXED):
    return sum(mass * f for mass, f in patterns(air, params, image, fixed))


def exact_masses(air, params, image):
    """Sanity check of the enumeration: the guide's masses of the z_pres patterns sum to one."""
    return sum(mass for mass, _ in patterns(air, params, image))


@pytest.fixture(scope="module")
def tiny():
    air, params = tiny_params(seed=3)
    image = jax.random.uniform(jax.random.key(6), (TINY.canvas, TINY.canvas))
    exact = jax.value_and_grad(lambda p, x: exact_objective(air, p, x))
    exact_value, exact_grad = fast_jit(exact)(params, image)
    return air, params, image, exact_value, exact_grad


def test_enumeration_masses_sum_to_one(tiny):
    air, params, image, _, _ = tiny
    masses = fast_jit(lambda p, x: exact_masses(air, p, x))
    assert masses(params, image) == pytest.approx(1.0, abs=1e-5)


def test_enum_is_exact(tiny):
    air, params, image, exact_value, exact_grad = tiny
    enum = fixed_objective(air, ENUM)
    # A few keys: ENUM sums the z_pres patterns exactly, whatever the key.
    values, grads = draw_estimates(lambda k: enum.value_and_grad(k, params, image), jax.random.key(0), 4)
    np.testing.assert_allclose(values, float(exact_value), rtol=1e-5)
    for g, e in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(exact_grad), strict=True):
        np.testing.assert_allclose(g, np.broadcast_to(e, g.shape), rtol=1e-4, atol=1e-4)


# Three nested levels of enumeration through AIR's whole program (10 s to compile); the fast suite has
# test_enum_is_exact (two levels) and tests/inference/test_enum_nested.py (three chained sites).
@pytest.mark.slow
def test_enum_is_exact_over_three_presence_sites():
    """Three nested sums (8 patterns; 2 canvases of pixels per pattern were the costly part) against brute force."""
    config = AIRConfig(canvas=5, window=3, steps=3, what=2, hidden=4, mlp=4, pres_prior=0.6)
    air, params = tiny_params(config, seed=4)
    fixed = {**FIXED, "z_where_2": jnp.array([1.8, 0.4, 0.2]), "z_what_2": jnp.array([0.1, -0.6])}
    image = jax.random.uniform(jax.random.key(11), (config.canvas, config.canvas))
    exact_value, exact_grad = fast_jit(jax.value_and_grad(lambda p, x: exact_objective(air, p, x, fixed)))(
        params, image
    )
    enum = fixed_objective(air, ENUM, fixed)
    values, grads = draw_estimates(lambda k: enum.value_and_grad(k, params, image), jax.random.key(1), 3)
    np.testing.assert_allclose(values, float(exact_value), rtol=1e-5)
    for g, e in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(exact_grad), strict=True):
        np.testing.assert_allclose(g, np.broadcast_to(e, g.shape), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def strategy_grads(tiny):
    """Each sampling strategy's gradient estimates at the tiny AIR, drawn by one compiled program."""
    air, params, image, _, _ = tiny
    # A learned baseline at arbitrary (untrained) parameters: still unbiased.
    strategies = {"reinforce": REINFORCE, "reinforce+baseline": Reinforce(baseline=air.baseline), "mvd": MVD}
    objectives = {name: fixed_objective(air, chosen) for name, chosen in strategies.items()}
    return draw_estimates(
        lambda k: {name: o.grad(k, params, image) for name, o in objectives.items()}, jax.random.key(7), 3000
    )


# Slow: three AIR estimators, one large compilation. Each strategy is checked against exact
# gradients on small models in tests/inference/test_gradients.py (learned baselines in
# test_learned_baseline_is_unbiased); the fast check of AIR itself is test_enum_is_exact.
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["reinforce", "reinforce+baseline", "mvd"])
def test_strategy_gradient_is_unbiased(tiny, strategy_grads, strategy):
    _, _, _, _, exact_grad = tiny
    grads = strategy_grads[strategy]
    if strategy == "reinforce+baseline":
        # The baseline's own parameters get the least-squares fit gradient, not an ELBO gradient.
        grads, exact_grad = (
            {k: grads[k] for k in grads if k != "baseline"},
            {k: exact_grad[k] for k in exact_grad if k != "baseline"},
        )
    assert_unbiased(grads, exact_grad, name=f"AIR {strategy} gradient")


def test_objects_normal_is_the_normal_of_the_canvas():
    """The likelihood's inner-product form has the density and gradient of Normal(canvas, noise) per pixel."""
    keys = jax.random.split(jax.random.key(12), 4)
    objects = jax.random.uniform(keys[0], (3, 7, 7))
    present = jnp.array([1.0, 1.0, 0.0])
    image = jax.random.uniform(keys[1], (7, 7))

    def both(objects):
        pairs = list(zip(present, objects, strict=True))
        canvas = jnp.einsum("t,tij->ij", present, objects)
        return ObjectsNormal(pairs, 0.3).log_prob(image), dist.Normal(canvas, 0.3).to_event(2).log_prob(image)

    ours, reference = both(objects)
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    g_ours = jax.grad(lambda o: both(o)[0])(objects)
    g_reference = jax.grad(lambda o: both(o)[1])(objects)
    np.testing.assert_allclose(g_ours, g_reference, rtol=1e-4, atol=1e-4)
    d = ObjectsNormal(list(zip(present, objects, strict=True)), 0.3)
    np.testing.assert_allclose(d.mean, objects[0] + objects[1], rtol=1e-6)
    assert d.sample(keys[2]).shape == (7, 7)


@pytest.mark.parametrize(
    "strategy",
    [ENUM, pytest.param(AUTO, marks=pytest.mark.slow)],
    ids=["ENUM", "AUTO"],  # AUTO measures: ~30 s
)
def test_svi_per_point_trains_a_strategy_without_the_learned_baseline(strategy):
    """Regression: make_air(strategy=ENUM or AUTO) created the baseline network, which no site then
    read, and SVI.init refused the unused parameters (``gendsl fit`` of examples/air_multi_mnist.py)."""
    config = AIRConfig(canvas=5, window=3, steps=2, what=2, hidden=4, mlp=4)
    air = make_air(config, strategy=strategy)
    images = jax.random.uniform(jax.random.key(13), (3, config.canvas, config.canvas))
    svi = SVI(air.objective, optax.adam(1e-3), per_point=True)
    state = svi.init(jax.random.key(14), images)  # raised here (the step itself is tested elsewhere)
    assert sorted(svi.get_params(state)) == ["decoder", "guide"]
    with pytest.raises(KeyError, match="only for its default strategy"):
        air.baseline(svi.get_params(state), images[0])
    # The default strategy still creates the network and trains it.
    default = make_air(config)
    assert "baseline" in default.init_params(jax.random.key(15), images)


def test_batch_value_and_grad_averages_per_image_estimates_of_a_small_program():
    """The fast sibling of the AIR test below: the same batching, on a two-site program of an image."""

    @gendsl.model
    def model(image):
        z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        gendsl.sample("image", dist.Normal(z, 1.0).expand(image.shape).to_event(2), obs=image)

    @gendsl.model
    def guide(image):
        gendsl.sample("z", dist.Normal(gendsl.param("m", 0.0), 1.0), strategy=REINFORCE)

    objective = elbo(model, guide)
    images = jax.random.normal(jax.random.key(8), (3, 2, 2))
    params, key = {"m": jnp.float32(0.3)}, jax.random.key(9)
    value, grad = fast_jit(lambda k, p, x: batch_value_and_grad(objective, k, p, x))(key, params, images)
    keys = jax.random.split(key, 3)
    single = fast_jit(objective.value_and_grad)
    one = [single(keys[i], params, images[i]) for i in range(3)]
    assert float(value) == pytest.approx(float(np.mean([float(v) for v, _ in one])), rel=1e-5)
    np.testing.assert_allclose(grad["m"], np.mean([float(g["m"]) for _, g in one]), rtol=1e-5)
    assert len({float(g["m"]) for _, g in one}) == 3  # one independent estimate per image


@pytest.mark.slow  # two compilations of the tiny AIR gradient: ~30 s on 2 shared cores
def test_batch_value_and_grad_is_the_mean_of_per_image_estimates():
    air, params = tiny_params()
    images = jax.random.uniform(jax.random.key(8), (3, TINY.canvas, TINY.canvas))
    objective = elbo(air.model, with_strategy(air.guide, REINFORCE))  # any strategy: this checks the batching
    key = jax.random.key(9)
    value, grad = fast_jit(lambda k, p, x: batch_value_and_grad(objective, k, p, x))(key, params, images)
    keys = jax.random.split(key, 3)
    single = fast_jit(objective.value_and_grad)
    one = [single(keys[i], params, images[i]) for i in range(3)]
    assert float(value) == pytest.approx(float(np.mean([float(v) for v, _ in one])), rel=1e-5)
    mean_grad = jax.tree_util.tree_map(lambda *g: sum(g) / 3, *[g for _, g in one])
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(mean_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
