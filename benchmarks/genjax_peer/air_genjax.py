"""Table 2 peer: AIR in genjax 0.10.3 with REINFORCE (learned baseline) and ENUM at the ``z_pres`` sites.

Runs in the benchmark-only environment ``/work/venvs/genjax``. The model, guide, sizes, data and
initial parameters are gendsl's (``gendsl.models.air``, ``benchmarks/air.py``): ``air_gendsl.py`` (run first,
in gendsl's environment) writes the parameters, check canvases, guide choices and gendsl's log densities
to an ``.npz`` that this script reads.

The programs, as genjax static generative functions unrolled over the 3 steps (static addresses
``z_pres_t``, ``z_where_t``, ``z_what_t``, ``image``):

* ``z_pres_t``: genjax's ADEV primitives: ``baseline(flip_reinforce)`` (REINFORCE whose cost is the
  returned ELBO minus a baseline ``b``) or ``flip_enum`` (exact sum of both branches), wrapped as
  distributions with ``vi.adev_distribution``; the model's ``z_pres_t ~ flip(0.5)``.
* ``z_where_t``, ``z_what_t``: a masked diagonal Normal (``genjax.exact_density``): sampled as
  ``loc + scale * N(0, I)`` in JAX code (ADEV differentiates it as ordinary code: the reparameterization
  gradient), log density counted only while every step so far drew an object, as gendsl's
  ``handlers.mask``. ADEV's own ``normal_reparam`` / ``mv_normal_diag_reparam`` cannot be used: in one
  expectation they all receive the same key (correction 2 of RESULTS_genjax.md), so the six continuous
  sites would share their noise.
* The objective is ``vi.ELBO``'s body (``Importance(target, guide)``'s log normalizing-constant
  estimate, returned as the ELBO) with the guide as ``ScoredMarginal`` (correction 1).
* Minibatch: each canvas is one ADEV expectation with its own key, ``jax.vmap``-ed over canvases
  (ADEV's sample primitive has no batching rule *inside* an expectation, correction 3; batching whole
  expectations works), and ``jax.value_and_grad`` of the mean of the per-canvas estimates
  (``adev.core.invoke_closed_over``, the function ``Expectation.grad_estimate`` differentiates): one
  backward pass for the batch, as gendsl's ``batch_value_and_grad``.
* The learned baseline (gendsl's ``air.baseline``: an MLP on the canvas, same parameters) is fitted by
  least squares to the sampled ELBO, one term per ``z_pres`` site (genjax has no fitting of baselines;
  this is added next to ADEV's gradient, as gendsl adds it inside its surrogate). genjax's REINFORCE
  pairs each site's score with the whole returned ELBO; gendsl pairs it with the terms that depend on
  the site (its dependency tracking), so the two REINFORCE estimators are both unbiased with different
  variances.

Checks before timing (printed): the model's and the guide's log densities at gendsl's guide choices
equal gendsl's; the mean ELBO estimate and the means of a few gradient coordinates over independent keys
agree with gendsl's within Monte Carlo error. Timing: as ``air_gendsl.py`` (step = batch gradient + Adam
update, jitted, ``block_until_ready``; estimators and the plain-JAX anchor of ``air_common`` interleaved).

    python benchmarks/genjax_peer/air_gendsl.py --npz /tmp/air_peer.npz > /tmp/air_gendsl.md
    /work/venvs/genjax/bin/python benchmarks/genjax_peer/air_genjax.py --npz /tmp/air_peer.npz \\
        --gendsl /tmp/air_gendsl.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

import genjax
import jax
import jax.numpy as jnp
import numpy as np
from genjax import ChoiceMap
from genjax import ChoiceMapBuilder as C
from genjax._src.adev.core import invoke_closed_over
from genjax._src.adev.primitives import baseline as adev_baseline
from genjax._src.adev.primitives import flip_reinforce as flip_reinforce_prim
from genjax.adev import expectation
from genjax.inference import Target
from genjax.inference.smc import Importance
from genjax.inference.vi import adev_distribution, flip_enum
from tensorflow_probability.substrates import jax as tfp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import air_common

# this directory's vae_step.py (air_common puts benchmarks/, with gendsl's vae_step.py, first on the path)
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("genjax_vae_step", os.path.join(_here, "vae_step.py"))
_vae_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_vae_step)
ScoredMarginal, normal_logpdf = _vae_step.ScoredMarginal, _vae_step.normal_logpdf

tfd = tfp.distributions
NAMES = ["REINFORCE+baseline", "ENUM"]

# gendsl.models.air.AIRConfig() defaults
CANVAS, WINDOW, STEPS, WHAT = 50, 20, 3, 10
PRES_PRIOR, SCALE_PRIOR, SHIFT_PRIOR, PIXEL_NOISE = 0.5, (1.8, 0.25), 1.0, 0.3


# --- networks and the spatial transformer (plain JAX on gendsl's parameter names) -------------------


def linear(P, name, x):
    return P[f"{name}.weight"] @ x + P[f"{name}.bias"]


# ADEV's interpreter fails on jax.nn.relu (a custom_jvp function) anywhere in an expectation, before or
# after a sampling site ("TypeError: zeros_like requires ndarray or scalar arguments, got WrappedFun"), so
# relu is written with jnp.maximum (same values); softplus is written out too (jax.nn.softplus runs)
def relu(x):
    return jnp.maximum(x, 0.0)


def softplus(x):
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def mlp(P, name, x):  # equinox.nn.MLP(depth=1, activation=relu)
    return linear(P, f"{name}.layers.1", relu(linear(P, f"{name}.layers.0", x)))


def gru(P, x, h):  # equinox.nn.GRUCell
    i = jnp.split(P["guide.rnn.weight_ih"] @ x + P["guide.rnn.bias"], 3)
    g = jnp.split(P["guide.rnn.weight_hh"] @ h, 3)
    reset = jax.nn.sigmoid(i[0] + g[0])
    update = jax.nn.sigmoid(i[1] + g[1])
    new = jnp.tanh(i[2] + reset * (g[2] + P["guide.rnn.bias_n"]))
    return new + update * (h - new)


def baseline_net(P, image):
    return mlp(P, "baseline", image.reshape(-1))[0]


def _hat(centres, size):  # bilinear sampling with zero padding, one axis
    return jnp.maximum(0.0, 1.0 - jnp.abs(centres[:, None] - jnp.arange(size)[None, :]))


def _pixel(u, size):
    return ((u + 1.0) * size - 1.0) / 2.0


def _centres(size):
    return (2.0 * jnp.arange(size) + 1.0) / size - 1.0


def window_to_image(window, z_where):
    s, x, y = z_where[0], z_where[1], z_where[2]
    u = _centres(CANVAS)
    return _hat(_pixel(s * (u - y), WINDOW), WINDOW) @ window @ _hat(_pixel(s * (u - x), WINDOW), WINDOW).T


def image_to_window(image, z_where):
    s, x, y = z_where[0], z_where[1], z_where[2]
    w = _centres(WINDOW)
    return _hat(_pixel(y + w / s, CANVAS), CANVAS) @ image @ _hat(_pixel(x + w / s, CANVAS), CANVAS).T


# --- distributions and programs -------------------------------------------------------------------


def _masked_sample(key, flag, loc, scale):
    return loc + scale * jax.random.normal(key, jnp.shape(loc))


def _masked_logpdf(v, flag, loc, scale):
    return jnp.where(flag, jnp.sum(normal_logpdf(v, loc, scale)), 0.0)


masked_normal = genjax.exact_density(_masked_sample, _masked_logpdf, "masked_normal")
flip_reinforce_baseline = adev_distribution(
    adev_baseline(flip_reinforce_prim),
    lambda v, b, p: tfd.Bernoulli(probs=p).log_prob(v),
    "flip_reinforce_baseline",
)

WHERE_LOC = jnp.array([SCALE_PRIOR[0], 0.0, 0.0])
WHERE_SD = jnp.array([SCALE_PRIOR[1], SHIFT_PRIOR, SHIFT_PRIOR])


@genjax.gen
def model(P, image):
    canvas = jnp.zeros((CANVAS, CANVAS))
    present = jnp.array(1.0)
    for t in range(STEPS):
        z_pres = genjax.flip(PRES_PRIOR) @ f"z_pres_{t}"
        present = present * z_pres
        on = present > 0.5
        z_where = masked_normal(on, WHERE_LOC, WHERE_SD) @ f"z_where_{t}"
        z_what = masked_normal(on, jnp.zeros(WHAT), jnp.ones(WHAT)) @ f"z_what_{t}"
        window = jax.nn.sigmoid(mlp(P, "decoder", z_what)).reshape(WINDOW, WINDOW)
        canvas = canvas + present * window_to_image(window, z_where)
    genjax.normal(canvas, PIXEL_NOISE) @ "image"
    return canvas


def make_guide(strategy: str):
    """The recurrent guide of gendsl's AIR; ``strategy``: ``"reinforce"`` (with the learned baseline) or ``"enum"``."""

    @genjax.gen
    def guide(target):
        P, image = target.args
        # the baseline's own gradient cancels inside genjax's Baseline primitive (it subtracts b in the
        # continuation and adds it back); it is fitted separately (batch_value_and_grad). Not stop_gradient:
        # the primitive's jvp fails on a symbolic-zero tangent of b ("primal and tangent arguments to
        # jax.jvp must have the same tree structure")
        b = baseline_net(P, image)
        features = jnp.tanh(linear(P, "guide.embed", image.reshape(-1)))
        h = jnp.zeros(P["guide.rnn.weight_hh"].shape[1])
        z_where, z_what = jnp.zeros(3), jnp.zeros(WHAT)
        present = jnp.array(1.0)
        for t in range(STEPS):
            h = gru(P, jnp.concatenate([features, present[None], z_where, z_what]), h)
            out = linear(P, "guide.predict", h)
            p = jax.nn.sigmoid(out[0])
            if strategy == "reinforce":
                z_pres = flip_reinforce_baseline(b, p) @ f"z_pres_{t}"
            else:
                z_pres = flip_enum(p) @ f"z_pres_{t}"
            present = present * z_pres
            on = present > 0.5
            loc = out[1:4] + WHERE_LOC
            scale = softplus(out[4:7]) * jnp.array([0.1, 0.2, 0.2]) + 1e-3
            z_where = masked_normal(on, loc, scale) @ f"z_where_{t}"
            enc = mlp(P, "guide.encoder", image_to_window(image, z_where).reshape(-1))
            z_what = masked_normal(on, enc[:WHAT], softplus(enc[WHAT:]) + 1e-3) @ f"z_what_{t}"

    return guide


def elbo_expectation(guide, names, key, image, particles=1):
    """The per-canvas ELBO as an ADEV expectation of the parameter leaves (``vi.ELBO``'s body, sign +).

    ``particles = K > 1``: IWELBO(K), ``log mean_k w_k`` of ``K`` importance weights drawn one after the
    other in the same expectation (unrolled: ``vi.IWELBO`` ``vmap``s the guide, which ADEV's sample
    primitive cannot batch, correction 3). Each REINFORCE site's score is paired with the whole bound.
    """

    @expectation
    def elbo(*leaves):
        target = Target(model, (dict(zip(names, leaves, strict=True)), image), C["image"].set(image))
        if particles == 1:
            return Importance(target, ScoredMarginal(guide)).estimate_normalizing_constant(key, target)
        log_w = jnp.stack([Importance(target, ScoredMarginal(guide)).estimate_normalizing_constant(k, target)
                           for k in jax.random.split(key, particles)])
        return jax.nn.logsumexp(log_w) - jnp.log(particles)

    return elbo


def batch_value_and_grad(guide, fit_baseline, P, key, images, particles=1):
    """Mean ELBO estimate over ``images`` (one expectation per canvas) and its gradient in ``P``."""
    names = sorted(P)
    keys = jax.random.split(key, images.shape[0])

    def objective(leaves):
        def one(k, x):
            return invoke_closed_over(elbo_expectation(guide, names, k, x, particles), k, tuple(leaves))

        f = jax.vmap(one)(keys, images)
        total = jnp.mean(f)
        if fit_baseline:
            b = jax.vmap(lambda x: baseline_net(dict(zip(names, leaves, strict=True)), x))(images)
            # least squares to the sampled ELBO, once per z_pres site (gendsl: per site, to the site's cost)
            total = total - STEPS * 0.5 * jnp.mean(jnp.square(jax.lax.stop_gradient(f) - b))
        return total, jnp.mean(f)

    (_, value), grads = jax.value_and_grad(objective, has_aux=True)([P[n] for n in names])
    return value, dict(zip(names, grads, strict=True))


# estimator -> (guide, fit the learned baseline, particles)
GUIDES = {
    "REINFORCE+baseline": (make_guide("reinforce"), True, 1),
    "ENUM": (make_guide("enum"), False, 1),
    "IWAE(2)+REINFORCE": (make_guide("reinforce"), True, 2),
}


# --- checks, timing, report ---------------------------------------------------------------------------


def choicemap(npz, i, **extra):
    d = dict(extra)
    for name in npz.files:
        if name.startswith("choice/"):
            v = jnp.asarray(npz[name][i])
            d[name[len("choice/") :]] = v > 0.5 if name.startswith("choice/z_pres") else v
    return ChoiceMap.d(d)


def gendsl_figures(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("JSON: "):
                    runs.append(json.loads(line[len("JSON: ") :]))
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npz", required=True, help="written by air_gendsl.py")
    p.add_argument("--gendsl", nargs="*", default=[], help="air_gendsl.py outputs (for the comparison)")
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keys", type=int, default=200)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--estimators", default=",".join(NAMES), help=f"comma-separated, from {list(GUIDES)}")
    args = p.parse_args(argv)
    names = args.estimators.split(",")
    npz = np.load(args.npz)
    P = {k[len("param/") :]: jnp.asarray(npz[k]) for k in npz.files if k.startswith("param/")}
    images = jnp.asarray(npz["images"])
    gendsl_runs = gendsl_figures(args.gendsl)
    notes, out = [], {}

    if not args.skip_checks:
        # 1. log densities at gendsl's guide choices
        rows = []
        for i, img in enumerate(images):
            chm = choicemap(npz, i)
            target = Target(model, (P, img), C["image"].set(img))
            logp = float(jax.jit(lambda c, t: model.assess(c, t.args)[0])(choicemap(npz, i, image=img), target))
            guides = [GUIDES[k][0] for k in ("REINFORCE+baseline", "ENUM")]
            logqs = [float(jax.jit(lambda c, t, g=g: g.assess(c, (t,))[0])(chm, target)) for g in guides]
            rows.append((logp, float(npz["logp"][i]), logqs, float(npz["logq"][i])))
            np.testing.assert_allclose(logp, npz["logp"][i], rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(logqs, [npz["logq"][i]] * 2, rtol=1e-4, atol=1e-3)
        n_obj = [int(np.prod([npz[f"choice/z_pres_{t}"][i] for t in range(u + 1)]))
                 for i in range(len(images)) for u in range(STEPS)]
        n_obj = [sum(n_obj[i * STEPS : (i + 1) * STEPS]) for i in range(len(images))]
        notes.append(
            f"log densities at gendsl's guide choices ({len(images)} canvases, objects drawn {n_obj}): log p(x, z) "
            "genjax / gendsl " + ", ".join(f"{a:.3f} / {b:.3f}" for a, b, _, _ in rows[:4])
            + "; log q(z | x) (REINFORCE and ENUM guides) / gendsl "
            + ", ".join(f"{c[0]:.3f}, {c[1]:.3f} / {d:.3f}" for _, _, c, d in rows[:4])
        )
        # 2. Monte Carlo: mean ELBO and gradient coordinates vs gendsl's
        keys = jax.random.split(jax.random.key(11), args.keys)
        for name in names:
            guide, fit, particles = GUIDES[name]

            def one(k, guide=guide, fit=fit, particles=particles):
                value, grads = batch_value_and_grad(guide, fit, P, k, images, particles)
                return value, jnp.stack(air_common.probe_values(grads))

            t0 = time.perf_counter()
            values, probes = jax.jit(lambda ks, f=one: jax.lax.map(f, ks))(keys)
            dt = time.perf_counter() - t0
            m, se = air_common.mean_se(values)
            pm = np.asarray(probes, np.float64)
            pr = [[float(c.mean()), float(c.std(ddof=1) / math.sqrt(len(c)))] for c in pm.T]
            out[name] = {"value": [m, se], "probes": pr}
            ref_m, ref_se = npz[f"mc/{name}/values"].mean(), air_common.mean_se(npz[f"mc/{name}/values"])[1]
            z = abs(m - ref_m) / math.hypot(se, ref_se)
            ref_p = npz[f"mc/{name}/probes"]
            parts = []
            zs = [z]
            for j, (lab_n, lab_i) in enumerate(air_common.PROBES):
                rm, rse = air_common.mean_se(ref_p[:, j])
                zj = abs(pr[j][0] - rm) / math.hypot(pr[j][1], rse)
                zs.append(zj)
                label = air_common.probe_label(lab_n, lab_i)
                parts.append(f"{label} {pr[j][0]:.1f} ± {pr[j][1]:.1f} vs {rm:.1f} ± {rse:.1f}")
            notes.append(
                f"{name}, mean ± s.e. over {args.keys} keys (genjax) and {len(ref_p)} keys (gendsl), {len(images)} "
                f"canvases: ELBO genjax {m:.2f} ± {se:.2f} vs gendsl {ref_m:.2f} ± {ref_se:.2f}; gradient "
                + "; ".join(parts) + f"; largest gap {max(zs):.1f} s.e. ({dt:.0f} s)"
            )
            out[name]["max_z"] = max(zs)
            assert max(zs) < 5, f"{name}: genjax and gendsl disagree by {max(zs):.1f} standard errors"

    # 3. step time
    _, minibatch = air_common.problem(args.data, args.n, args.seed)
    ref_fn, ref_args = air_common.reference_step()
    runners = {}
    for name in names:
        guide, fit, particles = GUIDES[name]

        def step(params, state, key, batch, guide=guide, fit=fit, particles=particles):
            value, grads = batch_value_and_grad(guide, fit, params, key, batch, particles)
            params, state = air_common.adam_ascent(params, grads, state, args.lr)
            return params, state, value

        runners[name] = [jax.jit(step), P, air_common.adam_init(P), 0]

    def call(name, batch):
        if name == "anchor":
            jax.block_until_ready(ref_fn(*ref_args))
            return
        r = runners[name]
        r[3] += 1
        r[1], r[2], value = r[0](r[1], r[2], jax.random.fold_in(jax.random.key(1), r[3]), batch)
        v = float(jax.block_until_ready(value))
        assert math.isfinite(v), f"{name}: non-finite ELBO {v}"

    order = ["anchor", *names]
    first = {}
    warm = jnp.asarray(minibatch(args.batch))
    for name in order:
        t0 = time.perf_counter()
        call(name, warm)
        first[name] = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            call(name, warm)
    times = {name: [] for name in order}
    for r in range(args.rounds):
        batch = jnp.asarray(minibatch(args.batch))
        for name in order[r % len(order) :] + order[: r % len(order)]:
            t0 = time.perf_counter()
            call(name, batch)
            times[name].append(time.perf_counter() - t0)
    steps_per_epoch = math.ceil(args.n / args.batch)
    timing = {}
    for name in order:
        t = np.asarray(times[name])
        timing[name] = {"median_ms": float(np.median(t) * 1e3), "min_ms": float(t.min() * 1e3),
                        "max_ms": float(t.max() * 1e3), "first_s": first[name],
                        "ratio_anchor": float(np.median(t / np.asarray(times["anchor"])))}
    out["timing"] = timing
    out["steps_per_epoch"] = steps_per_epoch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"genjax {genjax.__version__} AIR (jax {jax.__version__}), batch {args.batch}, {args.rounds} interleaved "
          f"rounds after {args.warmup} warm-up calls, load average {load:.1f} at the end\n")
    for line in notes:
        print(f"- {line}")
    print("\n| step | median ms [min-max] | s/epoch | median per-round ratio to the anchor | first call s |")
    print("|---|---|---|---|---|")
    for name, d in timing.items():
        per_epoch = f"{d['median_ms'] * steps_per_epoch / 1e3:.1f}" if name != "anchor" else "-"
        print(f"| {name} | {d['median_ms']:.0f} [{d['min_ms']:.0f}-{d['max_ms']:.0f}] | {per_epoch} | "
              f"{d['ratio_anchor']:.2f} | {d['first_s']:.1f} |")
    if gendsl_runs:
        print(f"\nSide by side with gendsl ({len(gendsl_runs)} `air_gendsl.py` runs alternating with genjax runs; "
              "gendsl figures: median over its runs)\n")
        print("| estimator | gendsl ms/step | genjax ms/step | genjax / gendsl (ms) | gendsl / anchor "
              "| genjax / anchor | genjax / gendsl (anchor-normalized) | gendsl s/epoch | genjax s/epoch |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in names:
            runs = [r["timing"][name] for r in gendsl_runs if name in r["timing"]]
            if not runs:
                continue
            g_ms = float(np.median([r["median_ms"] for r in runs]))
            g_ra = float(np.median([r["ratio_anchor"] for r in runs]))
            j_ms, j_ra = timing[name]["median_ms"], timing[name]["ratio_anchor"]
            print(f"| {name} | {g_ms:.0f} | {j_ms:.0f} | {j_ms / g_ms:.2f} | {g_ra:.1f} | {j_ra:.1f} | "
                  f"{j_ra / g_ra:.2f} | {g_ms * steps_per_epoch / 1e3:.1f} | {j_ms * steps_per_epoch / 1e3:.1f} |")
    print("JSON: " + json.dumps(out))


if __name__ == "__main__":
    main()
