"""The noisy-cone experiment (examples/noisy_cone.py, Table 4 of Becker et al., PLDI 2024).

At fixed, untrained parameters every objective's estimate (and gradient) agrees with the same
bound computed by brute-force Monte Carlo in plain JAX (fast: ELBO and DIWHVI(5,5); the other
three in the full suite). Slow: after a shortened training run the orderings the paper reports,
and that the theory guarantees, hold within the standard errors.
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from gendsl.testing._checks import fast_jit

_PATH = pathlib.Path(__file__).resolve().parents[2] / "examples" / "noisy_cone.py"
_SPEC = importlib.util.spec_from_file_location("noisy_cone", _PATH)
cone = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cone)

Z = 5.0
N = 8_000
# Fixed, untrained parameters near the ring (not an optimum of any objective). At the artifact's
# initial values the log weights have standard deviations in the hundreds, so a 4-SE tolerance
# would be tens of nats; here it is about 0.1 (0.05 for the hierarchical bounds), small enough that
# IWHVI(4) for IWHVI(5), or IWELBO(4) for IWELBO(5), fails.
MEAN_FIELD = {"mu1": 0.4, "mu2": 2.0, "log_sigma1": -1.6, "log_sigma2": -3.0}
EXPRESSIVE = {"log_sigma1": -3.3, "log_sigma2": -2.7}


# --- the same bounds, by hand ----------------------------------------------------------------

def log_joint(x, y):
    r = x**2 + y**2
    return norm.logpdf(x, 0.0, 10.0) + norm.logpdf(y, 0.0, 10.0) + norm.logpdf(Z, r, 0.1 + r / 100.0)


def mean_field_log_w(key, p):
    ex, ey = jax.random.normal(key, (2,))
    s1, s2 = jnp.exp(p["log_sigma1"]), jnp.exp(p["log_sigma2"])
    x, y = p["mu1"] + s1 * ex, p["mu2"] + s2 * ey
    return log_joint(x, y) - norm.logpdf(x, p["mu1"], s1) - norm.logpdf(y, p["mu2"], s2)


def iw_mean_field(key, p, k):
    log_w = jax.vmap(mean_field_log_w, in_axes=(0, None))(jax.random.split(key, k), p)
    return logsumexp(log_w) - jnp.log(k)


def log_q_given_u(x, y, u, p):
    theta = 2 * jnp.pi * u
    return (norm.logpdf(x, jnp.sqrt(Z) * jnp.cos(theta), jnp.exp(p["log_sigma1"]))
            + norm.logpdf(y, jnp.sqrt(Z) * jnp.sin(theta), jnp.exp(p["log_sigma2"])))


def hierarchical_log_w(key, p, inner):
    """``log p(x, y, z) - log q̂(x, y)``: ``u_0`` generated ``(x, y)``, ``u_1..u_{m-1}`` from the prior."""
    k_u, k_xy = jax.random.split(key)
    us = jax.random.uniform(k_u, (inner,))
    theta = 2 * jnp.pi * us[0]
    ex, ey = jax.random.normal(k_xy, (2,))
    x = jnp.sqrt(Z) * jnp.cos(theta) + jnp.exp(p["log_sigma1"]) * ex
    y = jnp.sqrt(Z) * jnp.sin(theta) + jnp.exp(p["log_sigma2"]) * ey
    log_q_hat = logsumexp(log_q_given_u(x, y, us, p)) - jnp.log(inner)
    return log_joint(x, y) - log_q_hat


def iw_hierarchical(key, p, outer, inner):
    keys = jax.random.split(key, outer)
    log_w = jax.vmap(hierarchical_log_w, in_axes=(0, None, None))(keys, p, inner)
    return logsumexp(log_w) - jnp.log(outer)


BY_HAND = {
    "ELBO": (lambda k, p: iw_mean_field(k, p, 1), MEAN_FIELD),
    "IWELBO(5)": (lambda k, p: iw_mean_field(k, p, 5), MEAN_FIELD),
    "HVI": (lambda k, p: iw_hierarchical(k, p, 1, 1), EXPRESSIVE),
    "IWHVI(5)": (lambda k, p: iw_hierarchical(k, p, 1, 5), EXPRESSIVE),
    "DIWHVI(5,5)": (lambda k, p: iw_hierarchical(k, p, 5, 5), EXPRESSIVE),
}


def mean_and_se(values):
    values = np.asarray(values, np.float64)
    return values.mean(0), values.std(0, ddof=1) / np.sqrt(values.shape[0])


def draws_for(names):
    """``N`` independent ``(value, gradient)`` estimates of the named objectives, gendsl's and by hand.

    Each side is one compiled program for all the names.
    """
    objectives = {name: spec[0] for name, spec in cone.experiments().items() if name in names}
    params = {name: {k: jnp.asarray(v) for k, v in BY_HAND[name][1].items()} for name in names}

    def ours(k):
        return {name: o.value_and_grad(k, params[name], jnp.asarray(Z)) for name, o in objectives.items()}

    # Both sides are reparameterized (u has no parameters), so jax.grad of the hand-written bound
    # is an unbiased estimate of the gradient the objective's estimator targets.
    def by_hand(k):
        return {name: jax.value_and_grad(BY_HAND[name][0], argnums=1)(k, params[name]) for name in names}

    ref = fast_jit(jax.vmap(by_hand))(jax.random.split(jax.random.key(1), N))  # each program runs once
    return fast_jit(jax.vmap(ours))(jax.random.split(jax.random.key(2), N)), ref


# The fast suite checks the simplest and the most composite objective (DIWHVI nests IWHVI's
# marginal inside IWELBO's particles); the other three bounds are checked against exact values on
# small models in test_objectives.py, and here in the full suite.
FAST = ("ELBO", "DIWHVI(5,5)")


@pytest.fixture(scope="module")
def fast_draws():
    return draws_for(FAST)


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in BY_HAND])
def test_objective_matches_brute_force_monte_carlo(request, name):
    ours_all, ref_all = request.getfixturevalue("fast_draws") if name in FAST else draws_for((name,))
    (ours_values, ours_grads), (ref_values, ref_grads) = ours_all[name], ref_all[name]
    for what, ours, ref in (("value", ours_values, ref_values), ("grad", ours_grads, ref_grads)):
        ours_leaves = dict(jax.tree_util.tree_flatten_with_path(ours)[0])
        for path, ref_leaf in jax.tree_util.tree_flatten_with_path(ref)[0]:
            # Independent draws on both sides: the difference of the means has both standard errors.
            (m1, s1), (m2, s2) = mean_and_se(ours_leaves[path]), mean_and_se(ref_leaf)
            tol = 4 * np.sqrt(s1**2 + s2**2) + 1e-6
            where = f"{name} {what}{jax.tree_util.keystr(path)}"
            assert abs(m1 - m2) <= tol, f"{where}: gendsl {m1:.4f} ± {s1:.4f}, brute force {m2:.4f} ± {s2:.4f}"


# --- the orderings, after a shortened training run --------------------------------------------

def at_least(a, b, what, sigmas=4.0):
    (ma, sa), (mb, sb) = a, b
    tol = sigmas * np.sqrt(sa**2 + sb**2)
    assert ma >= mb - tol, f"{what}: {ma:.3f} ± {sa:.3f} < {mb:.3f} ± {sb:.3f} (tolerance {tol:.3f})"


@pytest.mark.slow
def test_trained_objectives_are_ordered_as_in_the_paper():
    results = cone.run(steps=1000, seed=0, eval_samples=5000)
    value = {name: (r[0], r[1]) for name, r in results.items()}
    for name, (mean, _) in value.items():
        assert np.isfinite(mean), name
        assert abs(mean - cone.PAPER[name]) < 1.0, f"{name}: {mean:.2f} vs the paper's {cone.PAPER[name]}"

    # Each trained with its own objective (Table 4): the hierarchical bounds tighten with particles.
    at_least(value["DIWHVI(5,5)"], value["IWHVI(5)"], "trained DIWHVI(5,5) >= trained IWHVI(5)")
    at_least(value["IWHVI(5)"], value["HVI"], "trained IWHVI(5) >= trained HVI")
    # Not checked: trained IWELBO(5) >= trained ELBO. The paper's gap (0.3) is within the spread of
    # IWELBO(5) between training seeds (sd 0.26 at 5,000 steps: the artifact trains it with one
    # replicate per step), and some seeds reverse it. At the same parameters it is a theorem (below).

    # At the same parameters the orderings are theorems (Burda et al.; Sobolev & Vetrov).
    objectives = {name: spec[0] for name, spec in cone.experiments().items()}
    key = jax.random.key(7)
    same = {}
    for name, guide_of in (("ELBO", "ELBO"), ("IWELBO(5)", "ELBO"),
                           ("HVI", "IWHVI(5)"), ("IWHVI(5)", "IWHVI(5)"), ("DIWHVI(5,5)", "IWHVI(5)")):
        same[name] = cone.evaluate(objectives[name], key, results[guide_of][2], 5000)
    at_least(same["IWELBO(5)"], same["ELBO"], "IWELBO(5) >= ELBO at the ELBO's parameters")
    at_least(same["IWHVI(5)"], same["HVI"], "IWHVI(5) >= HVI at the same parameters")
    at_least(same["DIWHVI(5,5)"], same["IWHVI(5)"], "DIWHVI(5,5) >= IWHVI(5) at the same parameters")
