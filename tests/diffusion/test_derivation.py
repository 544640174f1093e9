"""The diffusion ELBO derived from a (reverse chain, forward chain) program pair.

Ground truth: DDPM's and VDM's closed-form per-step weights, and gendsl's own
naive ``elbo(model, guide)`` of the same two programs (a brute-force Monte-Carlo
ELBO over all sites).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.inference import elbo, init_params
from gendsl.inference.diffusion import DiffusionStructureError, diffusion_elbo
from gendsl.models._nets import TimeMLP, static_part
from gendsl.models.ddpm import vp_forward, vp_reverse


def _ddpm_pair(T, beta_1, beta_T, variance, parameterization="eps", hidden=16):
    betas = np.linspace(beta_1, beta_T, T)
    ab = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    table = jnp.asarray(ab)
    guide = vp_forward(lambda t: table[t])
    model = vp_reverse(
        lambda t: table[t], lambda k: TimeMLP(2, hidden=hidden, depth=2, key=k), (2,),
        parameterization=parameterization, variance=variance, decoder_scale=0.1, time_scale=1.0 / T,
    )
    return model, guide, np.arange(1, T + 1), betas, ab


def _vdm_pair(T, gamma_min=-5.0, gamma_max=5.0):
    def gamma(t):
        return gamma_min + (gamma_max - gamma_min) * t

    def alpha_bar(t):
        return jax.nn.sigmoid(-gamma(t))

    guide = vp_forward(alpha_bar)
    model = vp_reverse(alpha_bar, lambda k: TimeMLP(2, hidden=8, depth=1, key=k), (2,), variance="posterior")
    ts = np.linspace(0.0, 1.0, T + 1)
    return model, guide, ts, gamma


def _weights(d, params, x, parameterization):
    """``d.weights`` compiled once (op-by-op execution of a vmapped program is slow)."""
    return jax.jit(lambda p: d.weights(p, x, parameterization=parameterization))(params)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_weights_match_ho_et_al(variance):
    """(a) eps-form weights: beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) (Ho et al. 2020, eq. 12)."""
    with jax.enable_x64(True):
        T = 10
        model, guide, ts, betas, ab = _ddpm_pair(T, 0.01, 0.3, variance)
        d = diffusion_elbo(model, guide, ts)
        x = jnp.zeros(2)
        params = model.init(jax.random.key(0), x, ts[:1])
        derived = np.asarray(_weights(d, params, x, "eps"))[:, 0]
        t = np.arange(2, T + 1)
        beta, alpha = betas[t - 1], 1.0 - betas[t - 1]
        sigma2 = beta if variance == "beta" else (1 - ab[t - 1]) / (1 - ab[t]) * beta
        closed = beta**2 / (2 * sigma2 * alpha * (1 - ab[t]))
        np.testing.assert_allclose(derived, closed, rtol=1e-6, atol=1e-6)
        # x0 form: the VDM weight 1/2 (SNR(t-1) - SNR(t)) when sigma_t^2 is the posterior variance.
        if variance == "posterior":
            snr = np.concatenate([[np.inf], ab[1:] / (1 - ab[1:])])
            x0w = np.asarray(_weights(d, params, x, "x0"))[:, 0]
            np.testing.assert_allclose(x0w, 0.5 * (snr[t - 1] - snr[t]), rtol=1e-6, atol=1e-6)


def test_vdm_weights_match_half_snr_difference():
    """(a) VDM (Kingma et al. 2021, eq. 13): x0-form weight 1/2 (SNR(s) - SNR(t)), SNR = exp(-gamma)."""
    with jax.enable_x64(True):
        model, guide, ts, gamma = _vdm_pair(T=8)
        d = diffusion_elbo(model, guide, ts)
        x = jnp.zeros(2)
        params = model.init(jax.random.key(0), x, ts[:1])
        snr = np.exp(-gamma(ts))
        np.testing.assert_allclose(
            np.asarray(_weights(d, params, x, "x0"))[:, 0], 0.5 * (snr[:-1] - snr[1:]), rtol=1e-6
        )
        # eps form: 1/2 (SNR(s)/SNR(t) - 1); v form: x0 weight * (S_t / (A_t^2 + S_t^2))^2 = * sigma_t^2 (VP).
        np.testing.assert_allclose(
            np.asarray(_weights(d, params, x, "eps"))[:, 0], 0.5 * (snr[:-1] / snr[1:] - 1), rtol=1e-6
        )
        sigma2 = 1 / (1 + snr[1:])
        np.testing.assert_allclose(
            np.asarray(_weights(d, params, x, "v"))[:, 0],
            0.5 * (snr[:-1] - snr[1:]) * sigma2,
            rtol=1e-6,
        )


def test_recognized_chain_is_the_collapsed_marginal():
    model, guide, ts, betas, ab = _ddpm_pair(10, 0.01, 0.3, "beta")
    chain = diffusion_elbo(model, guide, ts).chain({}, jnp.zeros(2))
    assert chain.A.shape == (10,)  # one schedule for both elements: recognized as scalars per step
    np.testing.assert_allclose(chain.A, np.sqrt(ab[1:]), rtol=1e-5)
    np.testing.assert_allclose(chain.S, np.sqrt(1 - ab[1:]), rtol=1e-5)
    np.testing.assert_allclose(chain.a**2, 1 - betas, rtol=1e-5)


def _mean_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(), v.std(ddof=1) / np.sqrt(v.size)


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_derived_estimator_matches_brute_force_elbo(parameterization):
    """(b) the derived estimator's mean equals gendsl's naive elbo(model, guide) of the same programs (4 SE)."""
    T = 6
    model, guide, ts, *_ = _ddpm_pair(T, 0.05, 0.4, "beta", parameterization)
    d = diffusion_elbo(model, guide, ts)
    x = jnp.array([0.7, -0.4])
    params = model.init(jax.random.key(3), x, ts[:1])
    keys = jax.random.split(jax.random.key(4), 10_000)
    naive = elbo(model, guide)
    brute = jax.jit(jax.vmap(lambda k: naive.estimate(k, params, x, ts)))(keys)
    derived = jax.jit(jax.vmap(lambda k: d.elbo(params, k, x)))(keys)
    (mb, sb), (md, sd) = _mean_se(brute), _mean_se(derived)
    assert abs(mb - md) < 4 * np.hypot(sb, sd), (mb, sb, md, sd)


def test_exact_step_sum_matches_brute_force():
    """Summing every step's KL (no sampled index) estimates the same ELBO."""
    T = 5
    model, guide, ts, *_ = _ddpm_pair(T, 0.05, 0.4, "posterior")
    d = diffusion_elbo(model, guide, ts)
    x = jnp.array([0.3, 0.2])
    params = model.init(jax.random.key(5), x, ts[:1])

    def full(k):
        parts = [d.terms(params, jax.random.fold_in(k, j), x, step=j) for j in range(1, T)]
        return parts[0]["reconstruction"] - parts[0]["prior_kl"] - sum(p["step_kl"] for p in parts)

    keys = jax.random.split(jax.random.key(6), 10_000)
    derived = jax.jit(jax.vmap(full))(keys)
    brute = jax.jit(jax.vmap(lambda k: elbo(model, guide).estimate(k, params, x, ts)))(keys)
    (mb, sb), (md, sd) = _mean_se(brute), _mean_se(derived)
    assert abs(mb - md) < 4 * np.hypot(sb, sd), (mb, sb, md, sd)


def test_implied_eps_is_the_network_prediction():
    """The implied eps of an eps-parameterized model is the network's output (inversion is exact)."""
    T = 10
    model, guide, ts, *_ = _ddpm_pair(T, 0.01, 0.3, "beta", "eps")
    d = diffusion_elbo(model, guide, ts)
    x = jnp.array([0.5, -1.0])
    params = model.init(jax.random.key(0), x, ts[:1])
    z = jnp.array([0.2, 0.1])
    k = 4
    pred = jax.jit(lambda p: d.predictions(p, jax.random.key(1), x, k, z))(params)
    module = eqx.combine(params["net"], static_part(lambda kk: TimeMLP(2, hidden=16, depth=2, key=kk)))
    np.testing.assert_allclose(pred["eps"], module(z, ts[k] / T), rtol=1e-4, atol=1e-5)


def test_elbo_objective_is_the_mean_brute_force_elbo_of_the_batch():
    """The ELBO objective (an Expectation of the batch's mean per-point ELBO) against gendsl's naive
    elbo(model, guide) of each point, averaged over the batch (4 SE)."""
    T = 6
    model, guide, ts, *_ = _ddpm_pair(T, 0.05, 0.4, "beta")
    d = diffusion_elbo(model, guide, ts)
    xs = jnp.array([[0.7, -0.4], [0.1, 0.3], [-1.0, 0.5]])
    objective = d.objective()
    params, _ = init_params(objective, jax.random.key(3), xs)
    keys = jax.random.split(jax.random.key(4), 10_000)
    derived = jax.jit(jax.vmap(lambda k: objective.estimate(k, params, xs)))(keys)
    naive = elbo(model, guide)
    brute = jax.jit(jax.vmap(lambda k: jnp.mean(jax.vmap(lambda x: naive.estimate(k, params, x, ts))(xs))))(keys)
    (mb, sb), (md, sd) = _mean_se(brute), _mean_se(derived)
    assert abs(mb - md) < 4 * np.hypot(sb, sd), (mb, sb, md, sd)


def test_simple_objective_is_minus_the_hand_written_simple_loss():
    """Ho et al.'s L_simple by hand: t ~ U{2..T}, z = sqrt(ab_t) x + sqrt(1 - ab_t) eps, mean (net(z, t/T) - eps)^2;
    minus the derived simple objective has the same mean over keys (4 SE)."""
    T = 10
    model, guide, ts, _, ab = _ddpm_pair(T, 0.01, 0.3, "beta", "eps")
    d = diffusion_elbo(model, guide, ts)
    xs = jax.random.normal(jax.random.key(0), (8, 2))
    objective = d.simple_objective(parameterization="eps")
    params, _ = init_params(objective, jax.random.key(1), xs)
    net = eqx.combine(params["net"], static_part(lambda kk: TimeMLP(2, hidden=16, depth=2, key=kk)))
    ab = jnp.asarray(ab, jnp.float32)

    def hand(k):
        def one(kk, x):
            k_t, k_e = jax.random.split(kk)
            t = jax.random.randint(k_t, (), 2, T + 1)
            eps = jax.random.normal(k_e, x.shape)
            z = jnp.sqrt(ab[t]) * x + jnp.sqrt(1.0 - ab[t]) * eps
            return jnp.mean((net(z, t / T) - eps) ** 2)

        return jnp.mean(jax.vmap(one)(jax.random.split(k, xs.shape[0]), xs))

    keys = jax.random.split(jax.random.key(2), 4000)
    derived = jax.jit(jax.vmap(lambda k: -objective.estimate(k, params, xs)))(keys)
    by_hand = jax.jit(jax.vmap(hand))(jax.random.split(jax.random.key(3), 4000))
    (ma, sa), (mb, sb) = _mean_se(derived), _mean_se(by_hand)
    assert abs(ma - mb) < 4 * np.hypot(sa, sb), (ma, sa, mb, sb)


def test_learned_guide_schedule_is_initialized_and_trained_by_the_objective():
    """A guide with a parameter (a learned step scale): init_params includes it, and the objective's gradient
    in it matches the gradient of the naive elbo(model, guide) in expectation (4 SE)."""

    @gendsl.model
    def guide(x, ts):
        s = gendsl.param("guide_scale", 0.3, constraint=dist.constraints.positive)
        z = x
        for k in range(len(ts)):
            z = gendsl.sample(f"z{k + 1}", dist.Normal(0.9 * z, s))

    ts = jnp.arange(1, 5)
    d = diffusion_elbo(_model, guide, ts)
    xs = jnp.array([0.5, -1.0, 1.5])
    objective = d.objective()
    params, constraints = init_params(objective, jax.random.key(0), xs)
    assert sorted(params) == ["guide_scale"] and constraints["guide_scale"] is dist.constraints.positive
    d.check(params, xs[0])
    keys = jax.random.split(jax.random.key(1), 10_000)
    derived = jax.jit(jax.vmap(lambda k: objective.grad(k, params, xs)["guide_scale"]))(keys)
    naive = elbo(_model, guide)
    brute = jax.jit(
        jax.vmap(lambda k: jnp.mean(jax.vmap(lambda x: naive.grad(k, params, x, ts)["guide_scale"])(xs)))
    )(keys)
    (mb, sb), (md, sd) = _mean_se(brute), _mean_se(derived)
    assert abs(mb - md) < 4 * np.hypot(sb, sd), (mb, sb, md, sd)


# ---------------------------------------------------------------- errors that name the site


def _guide_with(step):
    @gendsl.model
    def guide(x, ts):
        z = x
        for k in range(len(ts)):
            z = gendsl.sample(f"z{k + 1}", step(k, z))

    return guide


@gendsl.model
def _model(x, ts):
    z = gendsl.sample(f"z{len(ts)}", dist.Normal(0.0, 1.0))
    for k in range(len(ts) - 1, 0, -1):
        z = gendsl.sample(f"z{k}", dist.Normal(0.5 * z, 0.5))
    gendsl.sample("x", dist.Normal(z, 0.3), obs=x)


@pytest.mark.parametrize(
    "step, message",
    [
        (lambda k, z: dist.Laplace(0.9 * z, 0.3) if k == 1 else dist.Normal(0.9 * z, 0.3), "'z2' is Laplace"),
        (lambda k, z: dist.Normal(jnp.tanh(z) if k == 2 else 0.9 * z, 0.3), "'z3': its mean is not"),
        (lambda k, z: dist.Normal(0.9 * z, 0.3 + 0.1 * z**2 if k == 1 else 0.3), "'z2': its scale depends"),
    ],
)
def test_unsupported_guides_are_errors_that_name_the_site(step, message):
    d = diffusion_elbo(_model, _guide_with(step), jnp.arange(1, 5))
    with pytest.raises(DiffusionStructureError, match=message):
        jax.jit(lambda k: d.elbo({}, k, 1.0))(jax.random.key(0))


def test_a_non_markov_guide_is_an_error():
    @gendsl.model
    def guide(x, ts):
        zs = [x]
        for k in range(len(ts)):
            zs.append(gendsl.sample(f"z{k + 1}", dist.Normal(0.9 * zs[-1] + 0.1 * zs[0], 0.3)))

    with pytest.raises(DiffusionStructureError, match="'z2': its mean is not"):
        diffusion_elbo(_model, guide, jnp.arange(1, 4)).chain({}, 1.0)


def test_non_normal_model_step_and_mismatched_sites_are_errors():
    good = _guide_with(lambda k, z: dist.Normal(0.9 * z, 0.3))

    @gendsl.model
    def student(x, ts):
        z = gendsl.sample(f"z{len(ts)}", dist.Normal(0.0, 1.0))
        for k in range(len(ts) - 1, 0, -1):
            z = gendsl.sample(f"z{k}", dist.StudentT(3.0, 0.5 * z, 0.5))
        gendsl.sample("x", dist.Normal(z, 0.3), obs=x)

    with pytest.raises(DiffusionStructureError, match="model site 'z1' is StudentT"):
        jax.jit(diffusion_elbo(student, good, jnp.arange(1, 4)).elbo)({}, jax.random.key(0), 1.0)

    @gendsl.model
    def renamed(x, ts):
        z = gendsl.sample(f"y{len(ts)}", dist.Normal(0.0, 1.0))
        for k in range(len(ts) - 1, 0, -1):
            z = gendsl.sample(f"y{k}", dist.Normal(0.5 * z, 0.5))
        gendsl.sample("x", dist.Normal(z, 0.3), obs=x)

    with pytest.raises(DiffusionStructureError, match="same addresses"):
        diffusion_elbo(renamed, good, jnp.arange(1, 4)).check({}, 1.0)


def test_elementwise_schedule_keeps_per_element_coefficients():
    @gendsl.model
    def guide(x, ts):
        z = x
        for k in range(len(ts)):
            z = gendsl.sample(f"z{k + 1}", dist.Normal(jnp.array([0.9, 0.6]) * z + 0.1, jnp.array([0.3, 0.5])))

    chain = diffusion_elbo(_model, guide, jnp.arange(1, 4)).chain({}, jnp.zeros(2))
    assert chain.A.shape == (3, 2)
    np.testing.assert_allclose(chain.A[-1], [0.9**3, 0.6**3], rtol=1e-6)
    np.testing.assert_allclose(chain.B[-1], [0.1 * (1 + 0.9 + 0.81), 0.1 * (1 + 0.6 + 0.36)], rtol=1e-6)
    np.testing.assert_allclose(chain.S[-1] ** 2, [0.09 * (1 + 0.81 + 0.6561), 0.25 * (1 + 0.36 + 0.1296)], rtol=1e-5)
