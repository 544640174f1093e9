"""Dependency tracking for REINFORCE sites (Rao-Blackwellized score terms).

Each estimator is checked against an exact gradient (closed form or a forward
recursion) within four of its own standard errors, with tracking on and off;
the variance claims are tested with margins far outside the sampling noise of
the variance estimates (about 3% relative at 4,000 draws). The relation
analysis itself is tested on small jaxprs against the dependence it must find.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl import handlers
from gendsl.inference import SVI, Reinforce, elbo, iwelbo
from gendsl.inference._provenance import analyze, pair, score_site
from gendsl.testing._checks import draw_estimates, fast_jit

N = 4000


def reinforce(track, baseline=None):
    return Reinforce(baseline=baseline, track_dependencies=track)


def within_4_se(draws, exact):
    draws, exact = np.asarray(draws, np.float64), np.asarray(exact, np.float64)
    se = draws.std(0, ddof=1) / np.sqrt(draws.shape[0])
    z = np.abs(draws.mean(0) - exact) / se
    assert z.max() < 4.0, f"max |mean - exact| / SE = {z.max():.2f}"


def grads(objective, params, *args, n=N, seed=0):
    return draw_estimates(lambda k: objective.grad(k, params, *args), jax.random.key(seed), n)


# --- per-point Bernoulli latents: closed-form ELBO --------------------------------------------

PRIOR = 0.3


def point_elbo(logit, x):
    """The exact ELBO of one point: z ~ Bernoulli(σ(logit)) in the guide, x ~ N(2z - 1, 1)."""
    q1 = jax.nn.sigmoid(logit)
    total = 0.0
    for z, qz in ((0.0, 1 - q1), (1.0, q1)):
        lp = jnp.log(jnp.where(z == 1, PRIOR, 1 - PRIOR)) + dist.Normal(2 * z - 1, 1.0).log_prob(x)
        total = total + qz * (lp - jnp.log(qz))
    return total


@fast_jit
def exact_plate_grad(params, x):
    """The exact gradient of the summed per-point ELBOs in ``params["logits"]`` (compiled once per shape)."""
    return jax.grad(lambda p: jax.vmap(point_elbo)(p["logits"], x).sum())(params)


def plate_pair(track, baseline=None):
    @gendsl.model
    def model(x):
        with gendsl.plate("data", x.shape[0]):
            z = gendsl.sample("z", dist.Bernoulli(PRIOR))
            gendsl.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)

    @gendsl.model
    def guide(x):
        logits = gendsl.param("logits", jnp.zeros(x.shape[0]))
        with gendsl.plate("data", x.shape[0]):
            gendsl.sample("z", dist.Bernoulli(logits=logits), strategy=reinforce(track, baseline))

    return model, guide


def ten_sites(track):
    @gendsl.model
    def model(x):
        for i in range(10):
            z = gendsl.sample(f"z{i}", dist.Bernoulli(PRIOR))
            gendsl.sample(f"x{i}", dist.Normal(2.0 * z - 1.0, 1.0), obs=x[i])

    @gendsl.model
    def guide(x):
        logits = gendsl.param("logits", jnp.zeros(10))
        for i in range(10):
            gendsl.sample(f"z{i}", dist.Bernoulli(logits=logits[i]), strategy=reinforce(track))

    return elbo(model, guide)


def test_ten_independent_sites_lower_variance_and_unbiased():
    x = jnp.linspace(-1.5, 1.5, 10)
    params = {"logits": jnp.linspace(-1.0, 1.0, 10)}
    exact = exact_plate_grad(params, x)["logits"]
    on, off = (grads(ten_sites(track), params, x)["logits"] for track in (True, False))
    within_4_se(on, exact)
    within_4_se(off, exact)
    ratio = float(np.var(off, 0).mean() / np.var(on, 0).mean())
    # Each site sees only its own two terms instead of all twenty: measured ratio about 70.
    assert ratio > 3.0, ratio


@pytest.mark.parametrize("n_points", [16])
def test_plate_tracked_gradient_unbiased(n_points):
    x = jnp.linspace(-2.0, 2.0, n_points)
    params = {"logits": jnp.linspace(-1.0, 1.0, n_points)}
    exact = exact_plate_grad(params, x)["logits"]
    within_4_se(grads(elbo(*plate_pair(True)), params, x)["logits"], exact)


def test_per_point_variance_does_not_grow_with_the_plate():
    """The gradient of point 0's logit: same data and parameter for every plate size."""
    variances = {}
    for n_points in (1, 128):  # the two ends of the benchmark's range (1, 16, 128)
        x = jnp.concatenate([jnp.array([0.7]), jnp.linspace(-2.0, 2.0, n_points - 1)])
        params = {"logits": jnp.full(n_points, 0.4)}
        for track in (True, False):
            g = grads(elbo(*plate_pair(track)), params, x, seed=n_points)["logits"][:, 0]
            variances[track, n_points] = float(np.var(g))
    assert variances[True, 128] / variances[True, 1] < 2.0, variances
    # Without tracking, point 0's score is multiplied by every point's cost.
    assert variances[False, 128] / variances[False, 1] > 10.0, variances


def test_minibatches_stay_unbiased():
    """A random minibatch with scale N/B in model and guide: unbiased for the full-data gradient."""
    n_data, batch = 12, 3
    x = jnp.linspace(-2.0, 2.0, n_data)
    model, _ = plate_pair(True)

    @gendsl.model
    def local_guide(xb, idx):
        logits = gendsl.param("logits", jnp.zeros(n_data))[idx]
        with gendsl.plate("data", xb.shape[0]):
            gendsl.sample("z", dist.Bernoulli(logits=logits), strategy=reinforce(True))

    scale = n_data / batch
    obj = elbo(
        gendsl.model(handlers.scale(lambda xb, idx: model.fn(xb), scale=scale)),
        gendsl.model(handlers.scale(local_guide.fn, scale=scale)),
    )
    params = {"logits": jnp.linspace(-1.0, 1.0, n_data)}

    def one(key):
        k1, k2 = jax.random.split(key)
        idx = jax.random.choice(k1, n_data, (batch,), replace=False)
        return obj.grad(k2, params, x[idx], idx)

    exact = exact_plate_grad(params, x)["logits"]
    within_4_se(draw_estimates(one, jax.random.key(5), N)["logits"], exact)


def test_cross_point_dependence_is_kept():
    """x_n depends on the mean of all z: every point's score must see every cost."""

    @gendsl.model
    def model(x):
        with gendsl.plate("data", 3):
            z = gendsl.sample("z", dist.Bernoulli(PRIOR))
        with gendsl.plate("data", 3):
            gendsl.sample("x", dist.Normal(3.0 * jnp.mean(z), 1.0), obs=x)

    @gendsl.model
    def guide(x):
        logits = gendsl.param("logits", jnp.zeros(3))
        with gendsl.plate("data", 3):
            gendsl.sample("z", dist.Bernoulli(logits=logits), strategy=reinforce(True))

    x = jnp.array([0.5, 1.5, 2.5])

    def exact(p):
        total = 0.0
        q1 = jax.nn.sigmoid(p["logits"])
        for bits in range(8):
            z = jnp.array([(bits >> i) & 1 for i in range(3)], jnp.float32)
            qz = jnp.prod(jnp.where(z == 1, q1, 1 - q1))
            lp = jnp.sum(jnp.log(jnp.where(z == 1, PRIOR, 1 - PRIOR))) + jnp.sum(
                dist.Normal(3.0 * z.mean(), 1.0).log_prob(x)
            )
            total = total + qz * (lp - jnp.log(qz))
        return total

    params = {"logits": jnp.array([-0.5, 0.2, 0.9])}
    within_4_se(grads(elbo(model, guide), params, x)["logits"], fast_jit(jax.grad(exact))(params)["logits"])


def test_mixture_assignments_indexing_cluster_centres():
    """z_i indexes the centres (a gather): each point's score pairs with its own likelihood term."""
    locs, x = jnp.array([-2.0, 0.5, 3.0]), jnp.array([-1.5, 0.0, 2.0, 2.5])

    @gendsl.model
    def model(x):
        with gendsl.plate("data", 4):
            z = gendsl.sample("z", dist.Categorical(probs=jnp.array([0.2, 0.5, 0.3])))
            gendsl.sample("x", dist.Normal(locs[z], 1.0), obs=x)

    @gendsl.model
    def guide(x):
        logits = gendsl.param("logits", jnp.zeros((4, 3)))
        with gendsl.plate("data", 4):
            gendsl.sample("z", dist.Categorical(logits=logits), strategy=reinforce(True))

    def exact(p):
        log_q = jax.nn.log_softmax(p["logits"], axis=-1)  # (4, 3)
        log_p = jnp.log(jnp.array([0.2, 0.5, 0.3])) + dist.Normal(locs, 1.0).log_prob(x[:, None])
        return jnp.sum(jnp.exp(log_q) * (log_p - log_q))

    params = {"logits": jnp.array([[0.3, -0.2, 0.1], [0.0, 0.4, -0.5], [1.0, 0.2, -0.3], [-0.4, 0.1, 0.6]])}
    g = grads(elbo(model, guide), params, x)["logits"]
    within_4_se(g.reshape(N, -1), fast_jit(jax.grad(exact))(params)["logits"].reshape(-1))


def test_iwelbo_per_point_with_reinforce_sites():
    """Per-point IWELBO(2): each point's score pairs with its own log-mean-exp."""
    model, guide = plate_pair(True)
    x = jnp.array([-1.0, 0.3, 1.8])
    params = {"logits": jnp.array([0.4, -0.3, 0.1])}

    def point_iwelbo(logit, xn):
        q1 = jax.nn.sigmoid(logit)
        total = 0.0
        for a in (0.0, 1.0):
            for b in (0.0, 1.0):
                def logw(z):
                    qz = jnp.where(z == 1, q1, 1 - q1)
                    lp = jnp.log(jnp.where(z == 1, PRIOR, 1 - PRIOR)) + dist.Normal(2 * z - 1, 1.0).log_prob(xn)
                    return lp - jnp.log(qz), qz

                (wa, qa), (wb, qb) = logw(a), logw(b)
                total = total + qa * qb * (jnp.logaddexp(wa, wb) - jnp.log(2.0))
        return total

    exact = fast_jit(jax.grad(lambda p: jax.vmap(point_iwelbo)(p["logits"], x).sum()))(params)["logits"]
    within_4_se(grads(iwelbo(model, guide, 2, plate="data"), params, x)["logits"], exact)


# --- an HMM in a gendsl.scan loop: exact gradient by forward recursion --------------------------

T, STAY = 20, 0.8
HMM_X = jnp.sin(jnp.arange(T) * 0.7) * 1.5 + 0.5


def hmm_pair(track):
    @gendsl.model
    def model(x):
        def step(prev, xt):
            z = gendsl.sample("z", dist.Bernoulli(jnp.where(prev == 1, STAY, 1 - STAY)))
            gendsl.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=xt)
            return z, None

        gendsl.scan("hmm", step, jnp.array(0), xs=x)

    @gendsl.model
    def guide(x):
        a = gendsl.param("a", jnp.zeros(T))
        c = gendsl.param("c", jnp.array(0.5))

        def step(prev, inputs):
            at, xt = inputs
            z = gendsl.sample("z", dist.Bernoulli(logits=at + c * prev + xt), strategy=reinforce(track))
            return z, None

        gendsl.scan("hmm", step, jnp.array(0), xs=(a, x))

    return elbo(model, guide)


def hmm_exact_elbo(params, x):
    """Σ_t E_q[log p(z_t | z_t-1) + log p(x_t | z_t) - log q(z_t | z_t-1)] by a forward recursion."""

    def step(m_prev, inputs):  # m_prev = q(z_{t-1} = 1)
        at, xt = inputs
        total, m_new = 0.0, 0.0
        for prev, w_prev in ((0.0, 1 - m_prev), (1.0, m_prev)):
            q1 = jax.nn.sigmoid(at + params["c"] * prev + xt)
            p1 = jnp.where(prev == 1, STAY, 1 - STAY)
            for z, qz, pz in ((0.0, 1 - q1, 1 - p1), (1.0, q1, p1)):
                lp = jnp.log(pz) + dist.Normal(2 * z - 1, 1.0).log_prob(xt)
                total = total + w_prev * qz * (lp - jnp.log(qz))
                m_new = m_new + w_prev * qz * z
        return m_new, total

    return jax.lax.scan(step, jnp.array(0.0), (params["a"], x))[1].sum()


def test_hmm_in_a_loop_unbiased_with_and_without_tracking():
    params = {"a": jnp.linspace(-1.0, 1.0, T), "c": jnp.array(0.5)}
    exact = fast_jit(jax.grad(hmm_exact_elbo))(params, HMM_X)
    variance = {}
    for track in (True, False):
        g = grads(hmm_pair(track), params, HMM_X, seed=3)
        within_4_se(g["a"], exact["a"])
        within_4_se(g["c"][:, None], exact["c"][None])
        variance[track] = float(np.var(g["a"], 0).sum())
    # Step s sees only the costs of steps >= s: measured about 2.8x lower.
    assert variance[False] / variance[True] > 1.5, variance


def test_ema_baselines_are_per_element_and_track_each_points_cost():
    model, guide = plate_pair(True, baseline="ema")
    objective = elbo(model, guide)
    x = jnp.linspace(-2.0, 2.0, 7)
    params = {"logits": jnp.linspace(-1.0, 1.0, 7)}
    state = SVI(objective, optax.adam(0.05)).init(jax.random.key(0), x)
    assert state.baselines["sim0/z"].shape == (7,)
    old = jnp.linspace(-3.0, 0.0, 7)

    def one(key):
        _, g, new = objective.value_and_grad_with_baselines(key, params, x, baselines={"sim0/z": old})
        return g["logits"], new["sim0/z"]

    g, new = draw_estimates(one, jax.random.key(2), N)
    exact_grad = exact_plate_grad(params, x)["logits"]
    within_4_se(g, exact_grad)
    # Each element's EMA moves towards its own point's cost, whose mean is that point's ELBO.
    within_4_se(new, 0.9 * old + 0.1 * jax.vmap(point_elbo)(params["logits"], x))


def test_learned_per_point_baseline_is_unbiased():
    x = jnp.linspace(-2.0, 2.0, 5)

    def per_point_baseline(params, x):
        return params["b0"] + params["b1"] * x  # one baseline per data point, shape (5,)

    model, guide = plate_pair(True, baseline=per_point_baseline)
    params = {"logits": jnp.linspace(-1.0, 1.0, 5), "b0": jnp.array(-2.0), "b1": jnp.array(0.3)}
    exact = exact_plate_grad(params, x)["logits"]
    g = grads(elbo(model, guide), params, x)
    within_4_se(g["logits"], exact)
    # The baseline's own gradient is the least-squares fit to the per-point costs.
    assert np.isfinite(np.asarray(g["b0"])).all()


# --- the relation analysis on small programs ----------------------------------------------------


def relations(fn, *args):
    terms, untracked, _ = analyze(jax.make_jaxpr(fn)(*args))
    return [rel.get("z") for _, _, rel in terms], untracked


def tagged(z):
    return score_site(z, address="z", loops=0, batch_ndim=1)


def test_rowwise_network_keeps_the_plate_axis():
    w = jnp.ones((3, 4))

    def f(z):
        h = jnp.tanh(tagged(z)[:, None] * jnp.ones(3)) @ w  # row n uses z[n] only
        return jnp.sum(h**2)

    assert relations(f, jnp.zeros(5)) == ([((0, "eq"),)], set())


def test_indexing_by_a_latent_keeps_the_plate_axis():
    locs = jnp.array([-1.0, 0.0, 2.0])

    def f(z):
        z = score_site(z, address="z", loops=0, batch_ndim=1)
        per_row = jax.vmap(lambda row, zi: row[zi])(jnp.ones((5, 3)) * locs, z)  # a batched gather
        return jnp.sum((locs[z] - 1.0) ** 2) + jnp.sum(per_row)

    assert relations(f, jnp.zeros(5, jnp.int32)) == ([((0, "eq"),), ((0, "eq"),)], set())


def test_mixing_across_the_plate_loses_the_alignment():
    def f(z):
        return jnp.sum((tagged(z) - jnp.mean(tagged(z))) ** 2) + jnp.sum(jnp.ones((5, 5)) @ tagged(z))

    rels, _ = relations(f, jnp.zeros(5))
    assert rels and all(r == (None,) for r in rels)


def test_cumsum_and_loop_carries_are_causal():
    def f(z):
        c = jnp.cumsum(tagged(z))

        def step(carry, zt):
            return carry + zt, carry * zt

        _, ys = jax.lax.scan(step, 0.0, tagged(z))
        return jnp.sum(c) + jnp.sum(ys)

    rels, _ = relations(f, jnp.zeros(5))
    assert rels == [((0, "le"),), ((0, "le"),)]


def test_reversed_loop_forgets_the_order():
    def f(z):
        _, ys = jax.lax.scan(lambda c, zt: (c + zt, c), 0.0, tagged(z), reverse=True)
        return jnp.sum(ys)

    assert relations(f, jnp.zeros(5))[0] == [(None,)]


def test_tag_inside_unknown_control_flow_is_untracked():
    def f(z):
        out = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, tagged(c[1])), (0, z))[1]
        return jnp.sum(out)

    assert relations(f, jnp.zeros(5))[1] == {"z"}


@pytest.mark.parametrize("kinds", [("eq", "eq"), ("le", "eq"), ("eq", None), (None, "le")])
def test_pair_matches_the_relation_by_brute_force(kinds):
    rng = np.random.default_rng(0)
    cost = jnp.asarray(rng.normal(size=(4, 3, 2)), jnp.float32)  # axes: (site axis 1, site axis 0, other)
    score_shape = (3, 4)
    rel = tuple(None if k is None else (t, k) for t, k in zip((1, 0), kinds, strict=True))
    got = np.broadcast_to(np.asarray(pair(cost, rel, score_shape)), score_shape)

    def related(c_index, s_index):
        for i, (t, k) in enumerate(zip((1, 0), kinds, strict=True)):
            if k == "eq" and c_index[t] != s_index[i]:
                return False
            if k == "le" and c_index[t] < s_index[i]:
                return False
        return True

    want = np.zeros(score_shape)
    for s in np.ndindex(*score_shape):
        want[s] = sum(float(cost[c]) for c in np.ndindex(*cost.shape) if related(c, s))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
