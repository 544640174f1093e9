"""Chains written with ``gendsl.scan``: recognized from the loop body, with the unrolled form's values.

Ground truth: the same programs written as Python loops (``form="unrolled"``), whose derivation the
tests in ``test_derivation.py`` check against closed forms and brute-force ELBOs. Same keys, same
parameters; values agree to float32 rounding: ``rtol=1e-5, atol=1e-6``, and gradients ``rtol=1e-4`` with
``atol`` 1e-5 times the leaf's largest gradient (sums of terms up to that size round at that scale), and
the implied predictions (the model's mean divided by a coefficient as small as 0.01) ``rtol=1e-4, atol=1e-5``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gendsl
import gendsl.distributions as dist
from gendsl.inference import init_params
from gendsl.inference.diffusion import DiffusionStructureError, diffusion_elbo
from gendsl.models import DDPM
from gendsl.models._nets import TimeMLP
from gendsl.models.ddpm import linear_alpha_bar, vp_forward, vp_reverse

TOL = dict(rtol=1e-5, atol=1e-6)


def _same_gradient(g, h):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(h))))


def _pair(schedule, form, T):
    if schedule == "ddpm":
        table = jnp.asarray(linear_alpha_bar(T, 0.01, 0.3), jnp.float32)

        def alpha_bar(t):
            return table[t]

        ts, options = np.arange(1, T + 1), dict(variance="beta", decoder_scale=0.1, time_scale=1.0 / T)
    else:  # discrete-time VDM: float times in [0, 1], gamma linear from -5 to 5

        def alpha_bar(t):
            return jax.nn.sigmoid(-(-5.0 + 10.0 * t))

        ts, options = np.linspace(0.0, 1.0, T + 1), dict(variance="posterior")
    model = vp_reverse(alpha_bar, lambda k: TimeMLP(2, hidden=8, depth=1, key=k), (2,), form=form, **options)
    return diffusion_elbo(model, vp_forward(alpha_bar, form=form), ts)


# ~10 s of compilation (both forms' terms, predictions, objectives and gradients): slow, for the fast suite's
# budget; the fast suite keeps the trace-count and error tests below.
@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["ddpm", "vdm"])
def test_scan_form_derives_the_unrolled_forms_chain_terms_and_objectives(schedule):
    scan, unrolled = _pair(schedule, "scan", 6), _pair(schedule, "unrolled", 6)
    xs = jax.random.normal(jax.random.key(0), (4, 2))
    params, _ = init_params(unrolled.objective(), jax.random.key(1), xs)

    c_scan, c_unrolled = scan.chain({}, xs[0]), unrolled.chain({}, xs[0])
    assert c_scan.names[:2] == ("chain/z[0]", "chain/z[1]") and c_scan.names[-1] == "zT"
    for field in ("a", "b", "s", "A", "B", "S", "table"):
        np.testing.assert_allclose(getattr(c_scan, field), getattr(c_unrolled, field), **TOL, err_msg=field)

    def everything(d, key):
        steps = jnp.arange(1, d.n)
        terms = jax.vmap(lambda k: d.terms(params, key, xs[0], step=k))(steps)
        z = jax.random.normal(key, (d.n - 1, 2))
        predictions = jax.vmap(lambda k, z_k: d.predictions(params, key, xs[0], k, z_k))(steps, z)  # x0, eps, v
        values = [o.value_and_grad(key, params, xs) for o in (d.objective(), d.simple_objective())]
        return {**terms, **predictions}, values, d.weights(params, xs[0], parameterization="eps")

    compiled = [jax.jit(lambda key, d=d: everything(d, key)) for d in (scan, unrolled)]  # once per form
    for key in jax.random.split(jax.random.key(2), 2):
        (t_scan, v_scan, w_scan), (t_unrolled, v_unrolled, w_unrolled) = (f(key) for f in compiled)
        for name in ("reconstruction", "prior_kl", "step_kl", "loc", "scale"):
            np.testing.assert_allclose(t_scan[name], t_unrolled[name], **TOL, err_msg=name)
        for name in ("x0", "eps", "v"):  # the mean divided by c_x (0.01 at the first step): rounding x 100
            np.testing.assert_allclose(t_scan[name], t_unrolled[name], rtol=1e-4, atol=1e-5, err_msg=name)
        for (value, grads), (value_u, grads_u) in zip(v_scan, v_unrolled, strict=True):
            np.testing.assert_allclose(value, value_u, **TOL)
            jax.tree_util.tree_map(_same_gradient, grads, grads_u)
        np.testing.assert_allclose(w_scan, w_unrolled, **TOL)


@pytest.mark.slow
def test_ddpm_forms_evaluate_and_train_alike():
    """``DDPM(form=...)``: the same objective value and gradient and the same bits/dim (its own decoder)."""
    ddpms = [DDPM((2,), T=8, hidden=8, depth=1, levels=256, form=form) for form in ("scan", "unrolled")]
    xs = jnp.round(jax.random.uniform(jax.random.key(0), (6, 2), minval=-1.0, maxval=1.0) * 127.5) / 127.5
    params = ddpms[1].init_params(jax.random.key(1), xs)
    (v, g), (vu, gu) = (jax.jit(d.objective.value_and_grad)(jax.random.key(2), params, xs) for d in ddpms)
    np.testing.assert_allclose(v, vu, **TOL)
    jax.tree_util.tree_map(_same_gradient, g, gu)
    (b, se), (bu, seu) = (d.evaluate(params, xs, jax.random.key(3))["bits_per_dim"] for d in ddpms)
    np.testing.assert_allclose([b, se], [bu, seu], rtol=1e-5)


def _scan_guide(body_calls=None, *, mean=None, family=dist.Normal, reverse=False):
    @gendsl.model
    def guide(x, ts):
        def step(z, k):
            if body_calls is not None:
                body_calls.append(1)
            loc = 0.9 * z if mean is None else mean(k, z)
            return gendsl.sample("z", family(loc, 0.3)), None

        z, _ = gendsl.scan("chain", step, x, jnp.arange(len(ts) - 1), reverse=reverse)
        gendsl.sample("zT", dist.Normal(0.9 * z, 0.3))

    return guide


@gendsl.model
def _scan_model(x, ts):
    z = gendsl.sample("zT", dist.Normal(0.0, 1.0))

    def step(z, _):
        return gendsl.sample("z", dist.Normal(0.5 * z, 0.5)), None

    z, _ = gendsl.scan("chain", step, z, length=len(ts) - 1, reverse=True)
    gendsl.sample("x", dist.Normal(z, 0.3), obs=x)


def test_recognition_traces_the_loop_body_a_fixed_number_of_times():
    counts = []
    for n in (4, 400):
        calls = []
        chain = diffusion_elbo(_scan_model, _scan_guide(calls), jnp.arange(1, n + 1)).chain({}, 0.0)
        counts.append(len(calls))
        np.testing.assert_allclose(np.asarray(chain.A)[[0, -1]], [0.9, 0.9**n], rtol=1e-4)  # q(z_k | x) = N(0.9^k x, .)
    assert counts[0] == counts[1] <= 2, counts


@pytest.mark.parametrize(
    "guide, message",
    [
        (_scan_guide(family=dist.Laplace), "guide site 'chain/z' is Laplace"),
        (_scan_guide(mean=lambda k, z: jnp.where(k == 2, jnp.tanh(z), 0.9 * z)), "'chain/z\\[2\\]': its mean is not"),
        (_scan_guide(reverse=True), "reverse=True"),
    ],
)
def test_scan_form_guide_errors_name_the_site_and_step(guide, message):
    with pytest.raises(DiffusionStructureError, match=message):
        diffusion_elbo(_scan_model, guide, jnp.arange(1, 5)).chain({}, 1.0)


def test_scan_form_model_must_run_its_loop_backward_and_draw_the_prior_first():
    @gendsl.model
    def forward_loop(x, ts):
        z = gendsl.sample("zT", dist.Normal(0.0, 1.0))
        z, _ = gendsl.scan("chain", lambda z, _: (gendsl.sample("z", dist.Normal(0.5 * z, 0.5)), None), z,
                           length=len(ts) - 1)
        gendsl.sample("x", dist.Normal(z, 0.3), obs=x)

    diffusion_elbo(_scan_model, _scan_guide(), jnp.arange(1, 5)).check({}, 1.0)
    with pytest.raises(DiffusionStructureError, match="reverse order"):
        diffusion_elbo(forward_loop, _scan_guide(), jnp.arange(1, 5)).check({}, 1.0)

    @gendsl.model
    def prior_in_loop(x, ts):
        def step(z, _):
            return gendsl.sample("z", dist.Normal(0.5 * z, 0.5)), None

        z, _ = gendsl.scan("chain", step, 0.0, length=len(ts), reverse=True)
        gendsl.sample("x", dist.Normal(z, 0.3), obs=x)

    with pytest.raises(DiffusionStructureError, match="draw the prior"):
        jax.jit(diffusion_elbo(prior_in_loop, _scan_guide(), jnp.arange(1, 5)).elbo)({}, jax.random.key(0), 1.0)
