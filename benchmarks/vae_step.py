"""Gradient step time of the ELBO and IWELBO(K) on the 784-200-10 VAE: gendsl vs hand-written JAX vs NumPyro.

The VAE: encoder 784-200-20 MLP (equinox, tanh or relu hidden) giving ``mu`` and
``softplus`` scale of a 10-dim diagonal Normal ``q(z | x)``; prior ``N(0, I_10)``;
decoder 10-200-784 MLP giving Bernoulli logits, ``Bernoulli(logits).to_event(1)``.
A plate over the batch of B images. The networks are created inside the guide and
the model with ``gendsl.module("encoder", ...)`` / ``gendsl.module("decoder", ...)``
(NumPyro: ``numpyro.contrib.module.eqx_module``); every implementation uses the
same parameter pytree ``{"encoder": ..., "decoder": ...}``.

What is timed: one jitted call returning the objective estimate and its gradient
in all parameters (no optimizer update).

* gendsl: ``elbo(model, guide)`` / ``iwelbo(model, guide, K)``, ``jax.jit`` of
  ``objective.value_and_grad(key, params, x)``.
* hand-written: the same estimator in pure JAX + equinox (reparameterized Normal
  draw, log densities written out), ``jax.jit(jax.value_and_grad(f))``. For the
  IWELBO the reference folds the K particles into the decoder's batch (z of shape
  (K, B, 10), one (K*B)-row matmul per layer); a second hand-written version
  ``jax.vmap``-s the per-particle log weight instead, the structure that NumPyro's
  vectorized particles produce, and gendsl's ``repeat`` before it folded the
  particles into the matmul batch (on XLA:CPU the nested vmap of equinox's
  ``weight @ x`` costs transposes of every (K, B, width) activation; ``--hlo``
  counts them).
* NumPyro: ``Trace_ELBO()`` / ``RenyiELBO(alpha=0, num_particles=K)`` (alpha = 0 is
  the IWAE bound), ``jax.jit(jax.value_and_grad(loss.loss))`` with the parameters
  from ``SVI(...).init`` replaced by the shared pytree.

Two IWELBO estimators exist here and are reported separately:

* joint: ``log (1/K) sum_k p(x_1:B, z_k) / q(z_k | x_1:B)``, the importance weight
  of the whole batch per particle; this is what ``gendsl.inference.iwelbo``
  computes for a model with a data plate (its ``repeat`` draws whole executions);
* per-datapoint (Burda et al.'s IWAE): ``sum_i log (1/K) sum_k w_ik``, what NumPyro's
  ``RenyiELBO`` computes (it keeps the plate dimensions common to all sites).

Both cost the same to compute; the joint bound is looser (its value is printed).

Protocol: (1) at identical parameters, data and noise (each library's key
derivation reproduced), the objective values agree with the hand-written ones,
and gendsl's gradient with the hand-written gradient; (2) with independent noise,
means over many keys agree within Monte Carlo error; (3) warm-up, then calls
interleaved (A B C, B C A, ...), ``block_until_ready`` on every call; median and
min-max per call, the ratio of medians to the hand-written step, and the median
of the per-round ratios (each round runs every implementation once, so this
ratio is less sensitive to load changes on a shared machine).

``--before`` adds gendsl's step as it was before the particle fold of issue 16
(``gendsl.inference._layout``): ``repeat``'s particles traced as a plain ``jax.vmap``, the
layout whose matmuls XLA:CPU transposes. ``--objectives`` also times the other
multi-particle objectives (DReG, Rényi, RWS, VIMCO) folded vs before, at the same noise
(values and gradients compared).

Run ``python benchmarks/vae_step.py --help`` for options.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import math
import os
import platform
import re
import time
import zlib
from pathlib import Path
from unittest import mock

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from _common import cpu_name
from numpyro.contrib.module import eqx_module
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO

import gendsl
import gendsl.distributions as dist
from gendsl.inference import _language, elbo, init_params, iwelbo, renyi, rws, vimco

Z_DIM, HIDDEN, X_DIM = 10, 200, 784
LOG_2PI = math.log(2 * math.pi)


# --- networks -------------------------------------------------------------------------------


def make_encoder(key, activation):
    return eqx.nn.MLP(X_DIM, 2 * Z_DIM, HIDDEN, 1, activation=activation, key=key)


def make_decoder(key, activation):
    return eqx.nn.MLP(Z_DIM, X_DIM, HIDDEN, 1, activation=activation, key=key)


def encode(encoder, x):
    out = jax.vmap(encoder)(x)
    return out[:, :Z_DIM], jax.nn.softplus(out[:, Z_DIM:])


# --- gendsl -----------------------------------------------------------------------------------


def make_gendsl(activation):
    @gendsl.model
    def model(x):
        decoder = gendsl.module("decoder", lambda k: make_decoder(k, activation))
        with gendsl.plate("batch", x.shape[0]):
            z = gendsl.sample("z", dist.Normal(jnp.zeros(Z_DIM), 1.0).to_event(1))
            gendsl.sample("x", dist.Bernoulli(logits=jax.vmap(decoder)(z)).to_event(1), obs=x)

    @gendsl.model
    def guide(x):
        encoder = gendsl.module("encoder", lambda k: make_encoder(k, activation))
        loc, scale = encode(encoder, x)
        with gendsl.plate("batch", x.shape[0]):
            gendsl.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


# --- NumPyro ----------------------------------------------------------------------------------


def make_numpyro(activation, key):
    k_enc, k_dec = jax.random.split(key)
    enc0, dec0 = make_encoder(k_enc, activation), make_decoder(k_dec, activation)

    def model(x):
        decoder = eqx_module("decoder", dec0)
        with numpyro.plate("batch", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(Z_DIM), 1.0).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=jax.vmap(decoder)(z)).to_event(1), obs=x)

    def guide(x):
        encoder = eqx_module("encoder", enc0)
        loc, scale = encode(encoder, x)
        with numpyro.plate("batch", x.shape[0]):
            numpyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


def to_numpyro(params):
    return {f"{k}$params": v for k, v in params.items()}


# --- hand-written -----------------------------------------------------------------------------


def normal_logpdf(v, loc, scale):
    return -0.5 * jnp.square((v - loc) / scale) - jnp.log(scale) - 0.5 * LOG_2PI


def bernoulli_logpmf(x, logits):
    """``log Bernoulli(x | logits)`` in the stable form (NumPyro's, without its guard for infinite logits)."""
    return x * logits - (jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def make_hand(statics):
    """Hand-written estimators of ``eps`` (standard normals): ``f(params, x, eps) -> scalar``.

    ELBO: ``eps`` (B, Z). IWELBO: ``eps`` (K, B, Z), the particles either folded
    into the decoder's batch (``*_fold``: z is (K, B, Z) and the decoder runs on its
    K*B rows, the usual hand-written IWAE) or ``jax.vmap``-ed over the ELBO's
    per-particle log weight (``joint_vmap``: the program structure of gendsl's
    ``repeat`` and NumPyro's vectorized particles).
    """
    enc_static, dec_static = statics

    def log_weights(params, x, eps):
        """Per-datapoint log weights ``log p(x_i, z_i) - log q(z_i | x_i)``, shape ``eps.shape[:-1]``."""
        encoder = eqx.combine(params["encoder"], enc_static)
        decoder = eqx.combine(params["decoder"], dec_static)
        loc, scale = encode(encoder, x)
        z = loc + scale * eps
        log_q = jnp.sum(normal_logpdf(z, loc, scale), -1)
        log_prior = jnp.sum(normal_logpdf(z, 0.0, 1.0), -1)
        logits = jax.vmap(decoder)(z.reshape(-1, Z_DIM)).reshape((*z.shape[:-1], X_DIM))
        log_lik = jnp.sum(bernoulli_logpmf(x, logits), -1)
        return log_lik + log_prior - log_q

    particles = jax.vmap(log_weights, in_axes=(None, None, 0))

    def elbo_eps(params, x, eps):
        return jnp.sum(log_weights(params, x, eps))

    def joint(lw):
        return jax.nn.logsumexp(jnp.sum(lw, 1)) - jnp.log(lw.shape[0])

    def point(lw):
        return jnp.sum(jax.nn.logsumexp(lw, 0) - jnp.log(lw.shape[0]))

    return {
        "elbo": elbo_eps,
        "joint_fold": lambda params, x, eps: joint(log_weights(params, x, eps)),
        "joint_vmap": lambda params, x, eps: joint(particles(params, x, eps)),
        "point_fold": lambda params, x, eps: point(log_weights(params, x, eps)),
    }


def unfolded(fn):
    """``fn`` traced with ``repeat``'s particles as a plain ``jax.vmap``: gendsl before the particle fold.

    The fold is switched off only while ``fn`` is traced (under ``jax.jit``, at every trace),
    so the compiled step is the one ``repeat`` compiled to before ``gendsl.inference._layout``.
    """

    def traced(*args):
        with mock.patch.object(_language, "fold_particle_products", lambda particles, **_: particles):
            return fn(*args)

    return traced


def hand_value_and_grad(f_eps, particles):
    """The timed hand-written step: draw the noise from ``key``, value and gradient."""

    def step(key, params, x):
        shape = (x.shape[0], Z_DIM) if particles is None else (particles, x.shape[0], Z_DIM)
        eps = jax.random.normal(key, shape)
        return jax.value_and_grad(f_eps)(params, x, eps)

    return step


# --- the noise each library draws for a key (for the identical-noise check) --------------------


def crc(address: str) -> int:
    return zlib.crc32(address.encode()) & 0x7FFFFFFF


def gendsl_eps(key, b, particles=None):
    """The standard normals gendsl's objective draws for ``z`` (address-based keys)."""
    k = jax.random.split(key, 1)[0]  # samples=1 replicate
    if particles is None:
        kz = jax.random.fold_in(jax.random.fold_in(k, crc("sim0")), crc("z"))
        return jax.random.normal(kz, (b, Z_DIM))
    base = jax.random.fold_in(k, crc("repeat0"))

    def one(i):
        kz = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, i), crc("repeat0/sim0")), crc("z"))
        return jax.random.normal(kz, (b, Z_DIM))

    return jax.vmap(one)(jnp.arange(particles))


def numpyro_eps(key, b, particles=None):
    """The standard normals NumPyro's ``Trace_ELBO`` / ``RenyiELBO`` draw for ``z``.

    Trace_ELBO: guide seed = split(key)[1], and the seed handler gives ``z`` the
    second half of its first split (the full-size plate takes no key).
    RenyiELBO: the same within each particle, particle keys = split(split(key)[1], K).
    """
    if particles is None:
        guide_seed = jax.random.split(key)[1]
        return jax.random.normal(jax.random.split(guide_seed)[1], (b, Z_DIM))
    keys = jax.random.split(jax.random.split(key)[1], particles)

    def one(k):
        guide_seed = jax.random.split(k)[1]
        return jax.random.normal(jax.random.split(guide_seed)[1], (b, Z_DIM))

    return jax.vmap(one)(keys)


# --- data ---------------------------------------------------------------------------------------


def load_batch(batch: int, data: str | None, key) -> jax.Array:
    if data is None:
        return jax.random.bernoulli(key, 0.13, (batch, X_DIM)).astype(jnp.float32)
    path = Path(data) / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, X_DIM)
    return jnp.asarray((raw[:batch] / 255.0 > 0.5).astype(np.float32))  # static binarization


# --- checks -------------------------------------------------------------------------------------


def max_rel_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    return max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-30)) for u, v in zip(la, lb, strict=True))


def mc_mean(value_fn, keys, params, x):
    """Mean and standard error of ``value_fn(key, params, x)`` over ``keys``."""
    # params and x are arguments, not closed-over constants, which XLA would constant-fold
    run = jax.jit(lambda ks, p_, x_: jax.lax.map(lambda k: value_fn(k, p_, x_), ks, batch_size=25))
    vals = np.asarray(run(keys, params, x), dtype=np.float64)
    return vals.mean(), vals.std(ddof=1) / math.sqrt(len(vals))


# --- timing ---------------------------------------------------------------------------------------


def interleaved(calls, warmup, fns, args):
    """Time each function ``calls`` times, rotating the order (A B C, B C A, ...)."""
    for _ in range(warmup):
        for f in fns:
            jax.block_until_ready(f(*args))
    times = [[] for _ in fns]
    for r in range(calls):
        for i in range(len(fns)):
            j = (i + r) % len(fns)
            t0 = time.perf_counter()
            jax.block_until_ready(fns[j](*args))
            times[j].append(time.perf_counter() - t0)
    return times


def hlo_big_ops(fn, args, min_size):
    """Instructions of the optimized HLO of ``jax.jit(fn)`` with an output of at least ``min_size`` elements.

    Counted by opcode, inside fusions too (each elementwise op of a fusion is one
    pass of the fused loop); parameters, constants and bitcasts are left out.
    Transposes and copies here are data movement the other implementations may not have.
    """
    text = jax.jit(fn).lower(*args).compile().as_text()
    counts = collections.Counter()
    for m in re.finditer(r"^\s*(?:ROOT )?%\S+ = \w+\[([\d,]*)\]\S* ([a-z][\w-]*)\(", text, re.M):
        size = math.prod(int(d) for d in m.group(1).split(",") if d)
        if size >= min_size and m.group(2) not in ("parameter", "constant", "bitcast"):
            counts[m.group(2)] += 1
    return counts


def num(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


LABELS = {
    "gendsl": "gendsl `value_and_grad`",
    "hand": "hand-written JAX",
    "hand_vmap": "hand-written JAX, `jax.vmap` over particles",
    "hand_point": "hand-written JAX, per-datapoint bound (NumPyro's)",
    "gendsl_before": "gendsl `value_and_grad`, before the particle fold (`jax.vmap` layout)",
    "numpyro": "NumPyro",
}


def objectives_rows(objectives, step_args, args, notes):
    """Table rows of each objective's step folded vs before the fold, interleaved; the same-noise check in ``notes``."""
    rows = []
    for label, obj in objectives.items():
        after = jax.jit(lambda k, p_, x_, obj=obj: obj.value_and_grad(k, p_, x_))
        before = jax.jit(unfolded(lambda k, p_, x_, obj=obj: obj.value_and_grad(k, p_, x_)))
        (v_a, g_a), (v_b, g_b) = after(*step_args), before(*step_args)
        np.testing.assert_allclose(float(v_a), float(v_b), rtol=1e-5)
        diff = max_rel_diff(g_a, g_b)
        assert diff < 1e-4, (label, diff)
        notes.append(
            f"{label}, same noise: folded {float(v_a):.3f} = before {float(v_b):.3f} (gradients: max relative "
            f"difference {diff:.1e})"
        )
        t_a, t_b = (np.asarray(t) * 1e3 for t in interleaved(args.calls, args.warmup, [after, before], step_args))
        for what, t in (("gendsl `value_and_grad`", t_a), (LABELS["gendsl_before"], t_b)):
            rows.append(
                f"| {label} | {what} | {num(np.median(t))} | {num(t.min())}-{num(t.max())} | "
                f"{np.median(t) / np.median(t_a):.3f} (to folded) | {np.median(t / t_a):.3f} (to folded) |"
            )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="images per batch (64..1024)")
    p.add_argument("--particles", type=int, default=5, help="K of IWELBO(K)")
    p.add_argument("--activation", choices=("tanh", "relu"), default="tanh", help="hidden-layer activation")
    p.add_argument("--calls", type=int, default=300, help="timed calls of each compiled step")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls of each step first")
    p.add_argument("--keys", type=int, default=400, help="keys for the Monte Carlo agreement check")
    p.add_argument("--data", default=None, help="folder with t10k-images-idx3-ubyte.gz (default: random)")
    p.add_argument("--hlo", action="store_true", help="also count the big ops of each compiled step")
    p.add_argument("--before", action="store_true", help="also time gendsl's IWELBO step before the particle fold")
    p.add_argument(
        "--objectives", action="store_true", help="also time DReG, Renyi, RWS and VIMCO, folded vs before the fold"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 64 <= args.batch <= 1024:
        p.error("--batch must be in 64..1024")
    n_part = args.particles
    activation = {"tanh": jnp.tanh, "relu": jax.nn.relu}[args.activation]
    started = datetime.datetime.now()

    key = jax.random.key(args.seed)
    k_init, k_x, k_noise, k_mc, k_np = jax.random.split(key, 5)
    x = load_batch(args.batch, args.data, k_x)
    b = x.shape[0]

    # the three implementations, one parameter pytree
    g_model, g_guide = make_gendsl(activation)
    g_obj = {"elbo": elbo(g_model, g_guide), "iwelbo": iwelbo(g_model, g_guide, n_part)}
    params = init_params(g_obj["elbo"], k_init, x)[0]
    statics = (
        eqx.partition(make_encoder(k_init, activation), eqx.is_inexact_array)[1],
        eqx.partition(make_decoder(k_init, activation), eqx.is_inexact_array)[1],
    )
    hand = make_hand(statics)
    n_model, n_guide = make_numpyro(activation, k_np)
    n_loss = {"elbo": Trace_ELBO(), "iwelbo": RenyiELBO(alpha=0.0, num_particles=n_part)}
    svi = SVI(n_model, n_guide, optax.adam(1e-3), n_loss["elbo"])
    n_init = svi.get_params(svi.init(k_init, x))
    assert jax.tree_util.tree_structure(n_init) == jax.tree_util.tree_structure(to_numpyro(params))
    # from here on NumPyro gets gendsl's arrays (under its own names, "encoder$params", ...)

    def gendsl_step(name):
        obj = g_obj[name]
        return jax.jit(lambda k, p_, x_: obj.value_and_grad(k, p_, x_))

    def numpyro_step(name):
        loss = n_loss[name]

        def step(k, p_, x_):
            neg, grads = jax.value_and_grad(lambda q: loss.loss(k, q, n_model, n_guide, x_))(to_numpyro(p_))
            return -neg, grads

        return jax.jit(step)

    steps = {
        "elbo": {
            "gendsl": gendsl_step("elbo"),
            "hand": jax.jit(hand_value_and_grad(hand["elbo"], None)),
            "numpyro": numpyro_step("elbo"),
        },
        "iwelbo": {
            "gendsl": gendsl_step("iwelbo"),
            "hand": jax.jit(hand_value_and_grad(hand["joint_fold"], n_part)),
            "hand_vmap": jax.jit(hand_value_and_grad(hand["joint_vmap"], n_part)),
            "hand_point": jax.jit(hand_value_and_grad(hand["point_fold"], n_part)),
            "numpyro": numpyro_step("iwelbo"),
        },
    }
    if args.before:
        steps["iwelbo"]["gendsl_before"] = jax.jit(
            unfolded(lambda k, p_, x_: g_obj["iwelbo"].value_and_grad(k, p_, x_))
        )

    # 1. identical parameters, data and noise: the same values (and gradients)
    notes = []
    for name, label, g_hand, n_hand, particles in (
        ("elbo", "ELBO", "elbo", "elbo", None),
        ("iwelbo", f"IWELBO({n_part})", "joint_fold", "point_fold", n_part),
    ):
        v_g, gr_g = steps[name]["gendsl"](k_noise, params, x)
        v_h, gr_h = jax.value_and_grad(hand[g_hand])(params, x, gendsl_eps(k_noise, b, particles))
        v_n = steps[name]["numpyro"](k_noise, params, x)[0]
        v_hn = hand[n_hand](params, x, numpyro_eps(k_noise, b, particles))
        grad_diff = max_rel_diff(gr_g, gr_h)
        np.testing.assert_allclose(float(v_g), float(v_h), rtol=1e-5)
        np.testing.assert_allclose(float(v_n), float(v_hn), rtol=1e-5)
        assert grad_diff < 1e-4, grad_diff
        extra = "" if particles is None else " (per-datapoint bound)"
        notes.append(
            f"{label}, same noise: gendsl {float(v_g):.3f} = hand-written {float(v_h):.3f} (gradients: max "
            f"relative difference {grad_diff:.1e}); NumPyro {float(v_n):.3f} = hand-written{extra} {float(v_hn):.3f}"
        )

    if args.before:
        v_b, gr_b = steps["iwelbo"]["gendsl_before"](k_noise, params, x)
        v_a, gr_a = steps["iwelbo"]["gendsl"](k_noise, params, x)
        notes.append(
            f"IWELBO({n_part}), same noise: gendsl folded {float(v_a):.3f} = before the fold {float(v_b):.3f} "
            f"(gradients: max relative difference {max_rel_diff(gr_a, gr_b):.1e})"
        )

    # 2. independent noise: means over many keys agree within Monte Carlo error
    def value_fn(impl, name, particles):
        if impl == "gendsl":
            return lambda k, p_, x_: g_obj[name].estimate(k, p_, x_)
        if impl == "numpyro":
            return lambda k, p_, x_: -n_loss[name].loss(k, to_numpyro(p_), n_model, n_guide, x_)
        shape = (b, Z_DIM) if particles is None else (particles, b, Z_DIM)
        return lambda k, p_, x_: hand[impl](p_, x_, jax.random.normal(k, shape))

    keys = jax.random.split(k_mc, args.keys)
    for name, label, particles, pairs in (
        ("elbo", "ELBO", None, (("gendsl", "elbo"), ("numpyro", "elbo"))),
        ("iwelbo", f"IWELBO({n_part})", n_part, (("gendsl", "joint_fold"), ("numpyro", "point_fold"))),
    ):
        means = {i: mc_mean(value_fn(i, name, particles), keys, params, x) for i in {j for ij in pairs for j in ij}}
        parts = []
        for impl, ref in pairs:
            (m_a, se_a), (m_b, se_b) = means[impl], means[ref]
            z = abs(m_a - m_b) / math.hypot(se_a, se_b)
            assert z < 5, f"{label}: {impl} and hand-written disagree by {z:.1f} standard errors"
            what = "" if particles is None else (" (joint)" if ref.startswith("joint") else " (per-datapoint)")
            who = {"gendsl": "gendsl", "numpyro": "NumPyro"}[impl]
            parts.append(f"{who} {m_a:.2f} ± {se_a:.2f} vs hand-written{what} {m_b:.2f} ± {se_b:.2f}")
        notes.append(f"{label}, mean ± s.e. over {args.keys} keys: " + "; ".join(parts))

    # 3. timing
    rows = []
    for name, label in (("elbo", "ELBO"), ("iwelbo", f"IWELBO({n_part})")):
        impls = list(steps[name])
        times = interleaved(args.calls, args.warmup, [steps[name][i] for i in impls], (k_noise, params, x))
        times = {i: np.asarray(t) * 1e3 for i, t in zip(impls, times, strict=True)}
        ref = times["hand"]
        for i in impls:
            t = times[i]
            what = LABELS[i]
            if i == "numpyro":
                what += " `Trace_ELBO`" if name == "elbo" else f" `RenyiELBO(alpha=0, num_particles={n_part})`"
            rows.append(
                f"| {label} | {what} | {num(np.median(t))} | {num(t.min())}-{num(t.max())} | "
                f"{np.median(t) / np.median(ref):.3f} | {np.median(t / ref):.3f} |"
            )

    if args.objectives:
        multi = {
            f"IWELBO({n_part}), DReG": iwelbo(g_model, g_guide, n_part, estimator="dreg"),
            f"Rényi(α=0.5, K={n_part})": renyi(g_model, g_guide, 0.5, n_part),
            f"RWS(K={n_part})": rws(g_model, g_guide, n_part),
            f"VIMCO(K={n_part})": vimco(g_model, g_guide, n_part),
        }
        rows += objectives_rows(multi, (k_noise, params, x), args, notes)

    dev = jax.devices()[0]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"VAE 784-200-10 gradient step (value and gradient of the objective), batch {b}, {args.activation} hidden, "
        f"data: {'MNIST t10k, binarized at 0.5' if args.data else 'random binary'}; {args.calls} interleaved "
        f"calls per step after {args.warmup} warm-up calls\n"
        f"{started:%Y-%m-%d %H:%M}; {cpu_name()}, {cpus} CPU cores, JAX backend {dev.platform} "
        f"({'CPU only' if dev.platform == 'cpu' else dev.device_kind}), load average {load:.1f} at the end "
        "(shared machine: noisy); "
        f"jax {jax.__version__}, numpyro {numpyro.__version__}, equinox {eqx.__version__}, gendsl "
        f"{gendsl.__version__}, Python {platform.python_version()}\n"
    )
    for line in notes:
        print(f"- {line}")
    print(
        "\n| objective | implementation | median ms | min-max ms | median / hand-written median "
        "| median of per-round ratios |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))

    if args.hlo:
        for name in ("elbo", "iwelbo"):
            counts = {i: hlo_big_ops(f, (k_noise, params, x), b * HIDDEN) for i, f in steps[name].items()}
            print(f"\nHLO ops on >= {b * HIDDEN} elements, {name} step (compiled):\n")
            print("| op | " + " | ".join(counts) + " |")
            print("|---" * (len(counts) + 1) + "|")
            for op in sorted(set().union(*counts.values())):
                print(f"| {op} | " + " | ".join(str(c[op]) for c in counts.values()) + " |")
            print("| total | " + " | ".join(str(sum(c.values())) for c in counts.values()) + " |")


if __name__ == "__main__":
    main()
