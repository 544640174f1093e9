"""gendsl.models.FlowMatching and PFGMPP: trained on Gaussian data, checked against its exact density."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from gendsl.inference import init_params
from gendsl.inference.diffusion import path_velocity
from gendsl.metrics import energy_distance
from gendsl.models import PFGMPP, FlowMatching, coupling_path, edm_sigmas

MU = jnp.array([1.0, -0.5])
S = jnp.array([0.5, 1.0])


def gaussian(key, n):
    return MU + S * jax.random.normal(jax.random.key(key), (n, 2))


def test_coupling_path_velocity_is_the_difference_of_the_pair():
    z, x = jnp.array([0.1, 0.2]), jnp.array([1.0, -1.0])
    x_t, v = path_velocity(coupling_path)(jax.random.key(0), 0.25, (z, x))
    np.testing.assert_allclose(v, x - z, rtol=1e-6)
    np.testing.assert_allclose(x_t, 0.75 * z + 0.25 * x, rtol=1e-6)


def test_edm_sigmas_are_decreasing_and_hit_the_ends():
    s = edm_sigmas(10, 0.002, 80.0)
    assert s.shape == (11,) and bool(jnp.all(jnp.diff(s) < 0))
    np.testing.assert_allclose([s[0], s[-1]], [80.0, 0.002], rtol=1e-5)


def test_energy_distance_detects_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(800, 2)), rng.normal(size=(800, 2))
    assert energy_distance(a, b) < 0.02 < energy_distance(a, b + 0.5)


@pytest.mark.slow
def test_flow_matching_learns_a_gaussian_and_its_exact_likelihood():
    fm = FlowMatching(2, hidden=64, depth=2)
    params = fm.fit(jax.random.key(0), gaussian(0, 4096), 1500, batch_size=256, lr=3e-3)
    x = fm.sample(params, jax.random.key(1), 4000, steps=50)
    np.testing.assert_allclose(x.mean(0), MU, atol=0.06)
    np.testing.assert_allclose(x.std(0), S, rtol=0.06)
    held_out = gaussian(2, 300)
    lp = fm.log_prob(params, held_out)
    exact = norm.logpdf(held_out, MU, S).sum(-1)
    assert abs(float(jnp.mean(lp - exact))) < 0.05  # KL-sized gap between the learned and true densities


@pytest.mark.slow
def test_reflow_straightens_the_paths():
    """Two-moons-like bimodal data: after one reflow step the paths are straighter (Liu et al. 2023)."""
    key = jax.random.key(3)
    sign = jnp.where(jax.random.bernoulli(key, 0.5, (4096, 1)), 1.0, -1.0)
    data = jnp.concatenate([2.0 * sign, 0.3 * jax.random.normal(key, (4096, 1))], -1) + 0.2 * jax.random.normal(
        jax.random.key(4), (4096, 2)
    )
    fm = FlowMatching(2, hidden=64, depth=2)
    params = fm.fit(jax.random.key(0), data, 1500, batch_size=256, lr=3e-3)
    before = fm.straightness(params, jax.random.key(5))
    rectified, new_params = fm.reflow(params, jax.random.key(6), 4096, 1500, lr=1e-3)
    after = rectified.straightness(new_params, jax.random.key(5))
    assert after < 0.5 * before, (before, after)
    # one Euler step of the rectified flow is a far better sampler than one step of the original
    one_step = lambda m, p: np.asarray(m.sample(p, jax.random.key(7), 2000, steps=1))  # noqa: E731
    target = np.asarray(data[:2000])
    assert energy_distance(one_step(rectified, new_params), target) < energy_distance(one_step(fm, params), target)


@pytest.mark.slow
@pytest.mark.parametrize("D", [16.0, None])
def test_pfgmpp_learns_a_gaussian(D):
    model = PFGMPP(2, D=D, hidden=64, depth=2)
    data = gaussian(0, 4096)
    params = model.fit(jax.random.key(0), 0.5 * data, 1500, batch_size=256, lr=3e-3)
    x = model.sample(params, jax.random.key(1), 4000, steps=32) / 0.5
    np.testing.assert_allclose(x.mean(0), MU, atol=0.06)
    np.testing.assert_allclose(x.std(0), S, rtol=0.08)


def test_sampling_and_likelihood_compile_once():
    traces = []

    class Counted(FlowMatching):
        def velocity(self, x, t, params):
            traces.append(1)  # runs only while tracing
            return super().velocity(x, t, params)

    fm = Counted(2, hidden=8, depth=1)
    p0 = init_params(fm.objective, jax.random.key(0), jnp.zeros((4, 2)))[0]
    p1 = jax.tree_util.tree_map(lambda a: a + 0.1, p0)
    fm.sample(p0, jax.random.key(1), 16, steps=5)
    n = len(traces)
    fm.sample(p1, jax.random.key(2), 16, steps=5)
    fm.transport(p0, jnp.ones((16, 2)), steps=5)
    assert len(traces) == n
