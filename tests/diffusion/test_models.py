"""The diffusion paper models in gendsl.models: DDPM/DDIM with CFG, VDM, EDM, DiffuseVAE."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gendsl.inference.diffusion import vdm_terms
from gendsl.models.ddpm import DDPM
from gendsl.models.diffusevae import DiffuseVAE
from gendsl.models.edm import EDM
from gendsl.models.vdm import VDM, from_levels


def _mean_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(), v.std(ddof=1) / np.sqrt(v.size)


def test_vdm_discrete_pair_equals_vdm_discrete_time_loss():
    """The ELBO derived from VDM's discrete-time program pair has the diffusion term of VDM's eq. for finite T,
    T/2 E[(exp(gamma_t - gamma_s) - 1) ||eps - eps_hat||^2], and VDM's prior term (both in expectation)."""
    T = 10
    vdm = VDM(3, levels=17, hidden=16, depth=1, gamma_min=-6.0, gamma_max=4.0, key=jax.random.key(0))
    derived_elbo, params = vdm.discrete_pair(T)
    x = from_levels(jnp.array([2, 9, 15]), 17)

    def derived(k):
        t = derived_elbo.terms(params, k, x)
        return jnp.stack([T * t["step_kl"], t["prior_kl"]])

    def direct(k):
        t = vdm_terms(vdm.eps, vdm.schedule, k, x, T=T)
        return jnp.stack([t["diffusion"], t["prior_kl"]])

    keys = jax.random.split(jax.random.key(1), 20_000)
    a = np.asarray(jax.jit(jax.vmap(derived))(keys))
    b = np.asarray(jax.jit(jax.vmap(direct))(jax.random.split(jax.random.key(2), 20_000)))
    (ma, sa), (mb, sb) = _mean_se(a[:, 0]), _mean_se(b[:, 0])
    assert abs(ma - mb) < 4 * np.hypot(sa, sb), (ma, sa, mb, sb)
    np.testing.assert_allclose(a[0, 1], b[0, 1], rtol=1e-4)


def test_vdm_bits_per_dim_is_minus_the_elbo_objective_rescaled():
    vdm = VDM(4, levels=17, hidden=16, depth=1, key=jax.random.key(0))
    x = jnp.array([[0, 5, 16, 8], [1, 1, 2, 3]])
    key = jax.random.key(1)
    nats = eqx.filter_jit(lambda v: -v.objective.estimate(key, v, x, samples=3))(vdm)
    bpd = eqx.filter_jit(lambda v: v.bits_per_dim(key, x, samples=3))(vdm)
    assert float(bpd) == pytest.approx(float(nats) / (4 * np.log(2)), rel=1e-5)


def test_vdm_objective_is_the_mean_per_point_elbo():
    """The objective (stratified times over the batch) estimates the mean of the per-point ELBO of
    vdm_terms at uniform times: the same expectation, within 4 standard errors."""
    vdm = VDM(4, levels=17, hidden=16, depth=1, gamma_min=-6.0, gamma_max=4.0, key=jax.random.key(0))
    x = jnp.array([[0, 5, 16, 8], [1, 1, 2, 3]])
    keys = jax.random.split(jax.random.key(1), 4000)
    objective = np.asarray(eqx.filter_jit(lambda v: jax.vmap(lambda k: v.objective.estimate(k, v, x))(keys))(vdm))

    def per_point(v, k):
        terms = jax.vmap(lambda kk, xi: v.terms(kk, xi))(jax.random.split(k, 2), x)
        return jnp.mean(terms["reconstruction"] - terms["prior_kl"] - terms["diffusion"])

    direct = np.asarray(eqx.filter_jit(lambda v: jax.vmap(lambda k: per_point(v, k))(keys))(vdm))
    (ma, sa), (mb, sb) = _mean_se(objective), _mean_se(direct)
    assert abs(ma - mb) < 4 * np.hypot(sa, sb), (ma, sa, mb, sb)


# The limits p_uncond = 0 and 1; test_cfg_drops_each_label_with_probability_p_uncond (fast) checks every
# execution at p_uncond = 0.3 against both of them.
@pytest.mark.slow
def test_cfg_condition_dropout():
    """p_uncond = 1 trains the unconditional model (every label replaced by the null token); p_uncond = 0 the
    conditional one. The dropout draws from its own address, so the simple objective's draws are unchanged."""
    ddpm = DDPM((2,), T=5, num_classes=3, hidden=16, depth=1)
    params = ddpm.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (16, 2))
    labels = jnp.arange(16) % 3
    key = jax.random.key(2)
    null = jnp.full_like(labels, 3)

    def cfg(p_uncond):
        objective = DDPM((2,), T=5, num_classes=3, hidden=16, depth=1, p_uncond=p_uncond).objective
        return float(jax.jit(objective.estimate)(key, params, xs, labels))

    simple = ddpm.elbo.simple_objective()
    plain = jax.jit(lambda p, y: simple.estimate(key, p, xs, y))
    assert cfg(1.0) == pytest.approx(float(plain(params, null)), rel=1e-6)
    assert cfg(0.0) == pytest.approx(float(plain(params, labels)), rel=1e-6)
    assert float(plain(params, null)) != pytest.approx(float(plain(params, labels)), rel=1e-6)


def test_cfg_drops_each_label_with_probability_p_uncond():
    """Each execution of the objective at p_uncond = 0.3 equals the conditional objective or, in a fraction
    0.3 of them (within 4 SE), the unconditional one, at the same draws of the simple objective."""
    ddpm = DDPM((2,), T=5, num_classes=3, hidden=16, depth=1, p_uncond=0.3)
    params = ddpm.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (1, 2))
    keys = jax.random.split(jax.random.key(2), 4000)
    simple = ddpm.elbo.simple_objective()

    def values(objective, label):
        return np.asarray(jax.jit(jax.vmap(lambda k: objective.estimate(k, params, xs, label)))(keys))

    mixed, cond, uncond = values(ddpm.objective, jnp.array([1])), values(simple, jnp.array([1])), values(
        simple, jnp.array([3])
    )
    is_cond = np.isclose(mixed, cond, rtol=1e-6, atol=0.0)
    is_uncond = np.isclose(mixed, uncond, rtol=1e-6, atol=0.0)
    assert np.all(is_cond | is_uncond)
    assert abs((~is_cond).mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / keys.shape[0])


def _train(loss, params, steps, lr=3e-3):
    # Cosine decay: the final iterate of constant-rate Adam is noisy enough to move a trained model's samples by
    # 0.1-0.3 from one training key to the next (measured on the CFG test), more than the tolerances below.
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))

    @eqx.filter_jit
    def run(params, state, key):
        def body(carry, k):
            p, s = carry
            value, grads = eqx.filter_value_and_grad(loss)(p, k)
            updates, s = opt.update(grads, s, p)
            return (eqx.apply_updates(p, updates), s), value

        (params, state), values = jax.lax.scan(body, (params, state), jax.random.split(key, steps))
        return params, values

    return run(params, opt.init(eqx.filter(params, eqx.is_inexact_array)), jax.random.key(7))


def _blobs(key, n):
    """Two classes: N((2, 0), 0.3^2 I) and N((-2, 0), 0.3^2 I)."""
    k1, k2 = jax.random.split(key)
    labels = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
    centers = jnp.where(labels[:, None] == 0, jnp.array([2.0, 0.0]), jnp.array([-2.0, 0.0]))
    return centers + 0.3 * jax.random.normal(k2, (n, 2)), labels


@pytest.mark.slow
def test_ddpm_with_cfg_learns_two_classes():
    """Trained with condition dropout, guided DDIM samples of class 0 sit at class 0's centre (2, 0) and the
    unconditional model covers both blobs."""
    xs, labels = _blobs(jax.random.key(0), 4096)
    ddpm = DDPM((2,), T=200, num_classes=2, hidden=64, depth=2, p_uncond=0.2)

    def loss(p, k):
        k_b, k_l = jax.random.split(k)
        idx = jax.random.choice(k_b, xs.shape[0], (256,))
        return -ddpm.objective.surrogate(k_l, p, xs[idx], labels[idx])[0]

    params, values = _train(loss, ddpm.init(jax.random.key(1)), 3000)
    assert float(values[-200:].mean()) < float(values[:50].mean())
    class0 = np.asarray(ddpm.sample(params, jax.random.key(2), 1000, method="ddim", steps=50, labels=0, guidance=1.0))
    assert np.abs(class0.mean(0) - [2.0, 0.0]).max() < 0.2
    assert (class0[:, 0] > 0).mean() > 0.97
    uncond = np.asarray(ddpm.sample(params, jax.random.key(3), 1000, method="ddim", steps=50, labels=2, guidance=0.0))
    assert 0.35 < (uncond[:, 0] > 0).mean() < 0.65


@pytest.mark.slow
def test_edm_learns_a_gaussian():
    """EDM on N(m, C): Heun samples' mean within 0.1 and covariance within 0.1 of the data's."""
    m, c = jnp.array([0.5, -0.3]), jnp.array([[0.25, 0.1], [0.1, 0.16]])
    xs = m + jax.random.normal(jax.random.key(0), (8192, 2)) @ jnp.linalg.cholesky(c).T
    edm = EDM(2, hidden=64, depth=2, key=jax.random.key(1))

    def loss(model, k):
        k_b, k_l = jax.random.split(k)
        return -model.objective.surrogate(k_l, model, xs[jax.random.choice(k_b, xs.shape[0], (256,))])[0]

    edm, _ = _train(loss, edm, 3000)
    samples = np.asarray(edm.sample(jax.random.key(2), 4000, steps=18))
    assert np.abs(samples.mean(0) - np.asarray(m)).max() < 0.1
    assert np.abs(np.cov(samples.T) - np.asarray(c)).max() < 0.1


@pytest.mark.slow
def test_diffusevae_refines_the_vae():
    """Stage 2 conditioned on the VAE reconstruction: samples match the data's mean and covariance better
    than the VAE's decoded means (which are too concentrated)."""
    m, c = jnp.array([0.5, -0.3, 0.2, 0.0]), 0.2 * jnp.eye(4) + 0.05
    xs = m + jax.random.normal(jax.random.key(0), (4096, 4)) @ jnp.linalg.cholesky(c).T
    model = DiffuseVAE(4, latent=1, hidden=64, T=200)
    vae = model.fit_vae(jax.random.key(1), xs, steps=1500)

    def loss(p, k):
        k_b, k_l, k_z = jax.random.split(k, 3)
        idx = jax.random.choice(k_b, xs.shape[0], (256,))
        return -model.ddpm.objective.surrogate(k_l, p, xs[idx], model.reconstruct(vae, xs[idx], k_z))[0]

    ddpm, _ = _train(loss, model.ddpm.init(jax.random.key(2), jnp.zeros(4)), 3000)
    samples = np.asarray(model.sample(vae, ddpm, jax.random.key(3), 4000, steps=50))
    decoder = eqx.combine(vae["decoder"], model._decoder_static)
    decoded = np.asarray(jax.vmap(decoder)(jax.random.normal(jax.random.key(4), (4000, 1))))
    err_vae = np.abs(np.cov(decoded.T) - np.asarray(c)).max()
    err_diffuse = np.abs(np.cov(samples.T) - np.asarray(c)).max()
    assert err_diffuse < err_vae and err_diffuse < 0.08, (err_diffuse, err_vae)
