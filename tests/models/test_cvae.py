"""``gendsl.models.CVAE`` against closed forms.

With ``depth=0`` and a Normal likelihood the CVAE is linear-Gaussian, ``x = W z + V y + c + σ ε`` with
``z ~ N(A y + a, diag(s²))``, so ``log p(x | y)``, the ELBO of a Gaussian guide and the GSNN objective
are known exactly; the tests set the networks' weights to known matrices and compare.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal, norm

from gendsl.inference import init_params, iwelbo
from gendsl.models import CVAE

X, Y, L, SIGMA, N = 3, 2, 2, 0.5, 6
LINEAR = CVAE(x_dim=X, y_dim=Y, latent=L, depth=0, labels=False, likelihood="normal", noise_scale=SIGMA)


def _softplus_inverse(v):
    return np.log(np.expm1(v))


def _set(params, name, weight, bias):
    layer = params[name].layers[0]
    params[name] = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias),
        params[name],
        (jnp.asarray(weight, layer.weight.dtype), jnp.asarray(bias, layer.bias.dtype)),
    )


@pytest.fixture(scope="module")
def linear():
    """Known weights, the batch, and the exact posterior's moments (the guide is near it, not at it)."""
    rng = np.random.default_rng(0)
    W, V, c = rng.normal(size=(X, L)), rng.normal(size=(X, Y)), rng.normal(size=X)
    A, a, s = rng.normal(size=(L, Y)), rng.normal(size=L), np.array([0.8, 1.3])
    batch = {
        "x": jnp.asarray(rng.normal(size=(N, X)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(N, Y)), jnp.float32),
    }
    params, _ = init_params(LINEAR.elbo(), jax.random.key(0), batch)
    _set(params, "decoder", np.concatenate([W, V], axis=1), c)
    _set(params, "prior_net", np.concatenate([A, np.zeros((L, Y))]), np.concatenate([a, _softplus_inverse(s - 1e-3)]))
    precision = np.diag(1 / s**2) + W.T @ W / SIGMA**2
    post = np.linalg.inv(precision)
    loc_x, loc_y = post @ W.T / SIGMA**2, post @ (A / s[:, None] ** 2 - W.T @ V / SIGMA**2)
    loc_b = post @ (a / s**2 - W.T @ c / SIGMA**2)
    scale = 1.2 * np.sqrt(np.diag(post))  # wider than the posterior's marginals, and mean-field
    weight = np.concatenate([np.concatenate([loc_x, loc_y], axis=1), np.zeros((L, X + Y))])
    _set(params, "encoder", weight, np.concatenate([loc_b, _softplus_inverse(scale - 1e-3)]))
    return {
        "params": params,
        "batch": batch,
        "W": W,
        "V": V,
        "c": c,
        "A": A,
        "a": a,
        "s": s,
        "scale": scale,
        "post_loc": lambda x, y: x @ loc_x.T + y @ loc_y.T + loc_b,
    }


def _closed_forms(t):
    x, y = np.asarray(t["batch"]["x"], np.float64), np.asarray(t["batch"]["y"], np.float64)
    W, V, c, s, sq = t["W"], t["V"], t["c"], t["s"], t["scale"]
    mu = y @ t["A"].T + t["a"]
    log_marginal = sum(
        multivariate_normal.logpdf(x[i], W @ mu[i] + V @ y[i] + c, W @ np.diag(s**2) @ W.T + SIGMA**2 * np.eye(X))
        for i in range(N)
    )
    mq = t["post_loc"](x, y)

    def expected_log_lik(loc, sd):  # E_{z ~ N(loc, diag(sd²))} log N(x; W z + V y + c, σ² I)
        return norm.logpdf(x, loc @ W.T + y @ V.T + c, SIGMA).sum() - N * np.trace(W @ np.diag(sd**2) @ W.T) / (
            2 * SIGMA**2
        )

    kl = (np.log(s / sq) + (sq**2 + (mq - mu) ** 2) / (2 * s**2) - 0.5).sum()
    return float(log_marginal), float(expected_log_lik(mq, sq) - kl), float(expected_log_lik(mu, s))


def _mean_and_se(objective, params, batch, repeats, samples=1):
    keys = jax.random.split(jax.random.key(1), repeats)
    values = jax.jit(jax.vmap(lambda k: objective.estimate(k, params, batch, samples=samples)))(keys)
    return float(values.mean()), float(values.std() / np.sqrt(repeats))


def test_iwae_matches_the_closed_form_conditional_likelihood(linear):
    exact, exact_elbo, _ = _closed_forms(linear)
    mean, se = _mean_and_se(
        iwelbo(LINEAR.model, LINEAR.guide, 1000, plate="data"), linear["params"], linear["batch"], repeats=16
    )
    assert abs(mean - exact) < 4 * se + 1e-3 and abs(mean - exact) / N < 0.05, (mean, se, exact)
    assert exact - exact_elbo > 0.05 * N  # the guide is not the posterior: IWAE has a gap to close


def test_elbo_and_its_kl_term_equal_the_closed_forms(linear):
    _, exact_elbo, _ = _closed_forms(linear)
    for kl in ("mc", "analytic"):
        mean, se = _mean_and_se(LINEAR.elbo(kl=kl), linear["params"], linear["batch"], repeats=4000)
        assert abs(mean - exact_elbo) < 4 * se, (kl, mean, se, exact_elbo)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_hybrid_objective_is_alpha_elbo_plus_gsnn(linear, alpha):
    _, exact_elbo, exact_gsnn = _closed_forms(linear)
    objective = LINEAR.gsnn() if alpha == 0.0 else LINEAR.hybrid(alpha)
    mean, se = _mean_and_se(objective, linear["params"], linear["batch"], repeats=4000)
    expected = alpha * exact_elbo + (1 - alpha) * exact_gsnn
    assert abs(mean - expected) < 4 * se, (mean, se, expected)


def test_conditional_prior_kl_in_the_estimator_is_the_gaussian_kl():
    """``elbo(beta=1) - elbo(beta=0)`` with one key is ``-KL(q(z|x,y) ‖ p(z|y))`` summed over points."""
    cvae = CVAE(x_dim=5, y_dim=3, latent=2, hidden=8)
    rng = np.random.default_rng(1)
    batch = {"x": jnp.asarray(rng.integers(0, 2, (7, 5)), jnp.float32), "y": jnp.asarray(rng.integers(0, 3, 7))}
    params, _ = init_params(cvae.elbo(), jax.random.key(2), batch)
    y = jax.nn.one_hot(batch["y"], 3)
    # the parameters hold the networks' arrays; their activations come from a skeleton of the same shape
    encoder = eqx.combine(params["encoder"], eqx.nn.MLP(8, 4, 8, 1, activation=jnp.tanh, key=jax.random.key(0)))
    prior_net = eqx.combine(params["prior_net"], eqx.nn.MLP(3, 4, 8, 1, activation=jnp.tanh, key=jax.random.key(0)))
    q = jax.vmap(encoder)(jnp.concatenate([batch["x"], y], axis=1))
    p = jax.vmap(prior_net)(y)
    mq, sq = q[:, :2], jax.nn.softplus(q[:, 2:]) + 1e-3
    mp, sp = p[:, :2], jax.nn.softplus(p[:, 2:]) + 1e-3
    kl = float((jnp.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum())

    def kl_term(key, kl):  # one key: the same z in both estimates, so only the KL term differs
        return cvae.elbo(beta=1.0, kl=kl).estimate(key, params, batch) - cvae.elbo(beta=0.0, kl=kl).estimate(
            key, params, batch
        )

    keys = jax.random.split(jax.random.key(3), 1000)
    analytic, diff = jax.jit(lambda ks: (kl_term(ks[0], "analytic"), jax.vmap(lambda k: kl_term(k, "mc"))(ks)))(keys)
    np.testing.assert_allclose(float(analytic), -kl, rtol=1e-5)
    # the sampled log-ratio averages to the same KL
    assert abs(float(diff.mean()) + kl) < 4 * float(diff.std()) / np.sqrt(1000)


def test_standard_normal_prior_has_no_prior_net():
    cvae = CVAE(x_dim=4, y_dim=3, latent=2, hidden=8, conditional_prior=False)
    batch = {"x": jnp.zeros((2, 4)), "y": jnp.array([0, 2])}
    params, _ = init_params(cvae.hybrid(0.5), jax.random.key(0), batch)
    assert sorted(params) == ["decoder", "encoder"]
    assert np.isfinite(float(jax.jit(cvae.gsnn().estimate)(jax.random.key(1), params, batch)))


def test_cvae_rejects_bad_options():
    with pytest.raises(ValueError, match="likelihood must be 'bernoulli' or 'normal'"):
        CVAE(x_dim=2, y_dim=2, likelihood="poisson")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        CVAE(x_dim=2, y_dim=2).hybrid(1.5)


def _expected_hybrid(params, batch, alpha):
    """The hybrid objective's expectation in closed form, as a function of the linear networks' weights."""
    x, y = batch["x"], batch["y"]

    def linear(name, inputs):
        layer = params[name].layers[0]
        return inputs @ layer.weight.T + layer.bias

    def gaussian(out):
        return out[:, :L], jax.nn.softplus(out[:, L:]) + 1e-3

    weight = params["decoder"].layers[0].weight
    mq, sq = gaussian(linear("encoder", jnp.concatenate([x, y], axis=1)))
    mp, sp = gaussian(linear("prior_net", y))

    def expected_log_lik(loc, sd):
        mean = linear("decoder", jnp.concatenate([loc, y], axis=1))
        spread = (sd**2) @ (weight[:, :L] ** 2).T  # Var of (W z)_d under a diagonal Normal z
        return (jax.scipy.stats.norm.logpdf(x, mean, SIGMA) - spread / (2 * SIGMA**2)).sum()

    kl = (jnp.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum()
    return alpha * (expected_log_lik(mq, sq) - kl) + (1 - alpha) * expected_log_lik(mp, sp)


def test_hybrid_gradient_is_unbiased(linear):
    """The user objective's estimator (REPARAM through ``sim`` of the guide and of the prior) is unbiased."""
    params, batch, alpha, repeats = linear["params"], linear["batch"], 0.3, 2000
    _, exact_elbo, exact_gsnn = _closed_forms(linear)
    np.testing.assert_allclose(  # the closed form above agrees with the one in numpy
        float(_expected_hybrid(params, batch, alpha)), alpha * exact_elbo + (1 - alpha) * exact_gsnn, rtol=1e-5
    )
    exact = jax.jit(jax.grad(_expected_hybrid), static_argnums=2)(params, batch, alpha)
    objective = LINEAR.hybrid(alpha)
    keys = jax.random.split(jax.random.key(4), repeats)
    grads = jax.jit(jax.vmap(lambda k: objective.grad(k, params, batch)))(keys)
    for name in ("decoder", "encoder", "prior_net"):
        for g, e in zip(jax.tree_util.tree_leaves(grads[name]), jax.tree_util.tree_leaves(exact[name]), strict=True):
            mean, se = np.asarray(g.mean(0)), np.asarray(g.std(0)) / np.sqrt(repeats)
            assert np.all(np.abs(mean - np.asarray(e)) <= 4 * se + 1e-4), (name, mean, np.asarray(e), se)
