"""Table 1 peer: the VAE ELBO gradient step in genjax.vi (genjax 0.10.3) vs hand-written JAX, same process.

Runs in the benchmark-only virtual environment ``/work/venvs/genjax`` (``pip install genjax``: genjax
0.10.3 on jax 0.5.3), never in gendsl's. Because that JAX is not gendsl's, the figure to compare across
environments is the ratio to the hand-written step *measured in the same process*: ``vae_step.py``
(one directory up) gives gendsl / hand-written and NumPyro / hand-written on gendsl's JAX; this script
gives genjax / hand-written on genjax's JAX.

The VAE is the one of ``benchmarks/vae_step.py``: encoder 784-200-20 MLP (tanh hidden) giving ``mu``
and ``softplus`` scale of a 10-dim diagonal Normal ``q(z | x)``; prior ``N(0, I)``; decoder 10-200-784
MLP giving Bernoulli logits. The networks are written as plain JAX functions of a parameter dict
(equinox is not in this environment), initialized like ``equinox.nn.Linear``.

genjax programs (what is timed, ``jax.jit`` of ``jax.value_and_grad`` of the ADEV expectation; genjax's
own ``grad_estimate`` is ``jax.grad`` of the same function):

* ``genjax, batched``: one program over the whole minibatch (array-valued ``z`` and ``x`` sites, the
  genjax analogue of a plate), ``vi.ELBO(guide, make_target)`` with the guide's ``z`` drawn by ADEV's
  ``mv_normal_diag_reparam``;
* ``genjax, per-example``: the programs for one image, ``jax.vmap`` of the per-example gradient over
  the batch (keys and images), summed; this is how genjax.vi's VAE example computes minibatch gradients.

Hand-written baselines (same estimator, reparameterized Normal draw, log densities written out):
``hand`` differentiates the batch sum (the baseline of ``vae_step.py``), ``hand, per-example`` is
``jax.vmap`` of the per-example gradient, summed.

Correction to genjax (documented in RESULTS_genjax.md): in genjax 0.10.3 a guide wrapped with
``marginal()`` (selection = all addresses, no algorithm) reports the log density
``trace.project(key, ~selection)`` of its sample, i.e. the density of the *empty* selection, 0. The
stock ``vi.ELBO`` therefore estimates ``E_q[log p(x, z)]`` instead of ``E_q[log p(x, z) - log q(z)]``
(its value is printed as "stock"). ``ScoredMarginal`` returns the guide trace's score instead; all timed
genjax steps use it.

Protocol: (1) at identical parameters, data and noise (the ``z`` genjax drew is recorded with
``jax.debug.callback``), genjax's ELBO equals the hand-written one, and its gradient the hand-written
gradient; means over many keys agree within Monte Carlo error; (2) warm-up, then calls interleaved
with a rotating order (A B C D, B C D A, ...), ``block_until_ready`` on every call; median and min-max
per call, the ratio of medians to the hand-written step and the median of the per-round ratios.

    /work/venvs/genjax/bin/python benchmarks/genjax_peer/vae_step.py --batch 128
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import os
import platform
import time
from pathlib import Path

import genjax
import jax
import jax.numpy as jnp
import numpy as np
from genjax import ChoiceMapBuilder as C
from genjax import Pytree, adev
from genjax._src.adev.primitives import MvNormalDiagREPARAM
from genjax.adev import Dual
from genjax.inference import Marginal, Target, vi
from genjax.inference.smc import Importance

Z_DIM, HIDDEN, X_DIM = 10, 200, 784
LOG_2PI = math.log(2 * math.pi)


# --- networks (plain JAX, initialized like equinox.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))) -------


def linear_init(key, n_in, n_out):
    kw, kb = jax.random.split(key)
    lim = 1.0 / math.sqrt(n_in)
    return {
        "w": jax.random.uniform(kw, (n_out, n_in), minval=-lim, maxval=lim),
        "b": jax.random.uniform(kb, (n_out,), minval=-lim, maxval=lim),
    }


def mlp_init(key, n_in, n_out):
    k1, k2 = jax.random.split(key)
    return [linear_init(k1, n_in, HIDDEN), linear_init(k2, HIDDEN, n_out)]


def mlp(layers, x):
    """``x`` (..., n_in) -> (..., n_out); tanh hidden layer. Rows are the batch (one matmul per layer)."""
    h = jnp.tanh(x @ layers[0]["w"].T + layers[0]["b"])
    return h @ layers[1]["w"].T + layers[1]["b"]


def init_params(key):
    k_enc, k_dec = jax.random.split(key)
    return {"encoder": mlp_init(k_enc, X_DIM, 2 * Z_DIM), "decoder": mlp_init(k_dec, Z_DIM, X_DIM)}


def encode(params, x):
    out = mlp(params["encoder"], x)
    return out[..., :Z_DIM], jax.nn.softplus(out[..., Z_DIM:])


# --- hand-written ---------------------------------------------------------------------------------


def normal_logpdf(v, loc, scale):
    return -0.5 * jnp.square((v - loc) / scale) - jnp.log(scale) - 0.5 * LOG_2PI


def bernoulli_logpmf(x, logits):
    return x * logits - (jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def hand_log_weight_z(params, x, z):
    """``log p(x, z) - log q(z | x)`` summed over the batch, for given ``z`` (B, Z) or (Z,)."""
    loc, scale = encode(params, x)
    log_q = jnp.sum(normal_logpdf(z, loc, scale))
    log_prior = jnp.sum(normal_logpdf(z, 0.0, 1.0))
    log_lik = jnp.sum(bernoulli_logpmf(x, mlp(params["decoder"], z)))
    return log_lik + log_prior - log_q


def hand_elbo_eps(params, x, eps):
    loc, scale = encode(params, x)
    return hand_log_weight_z(params, x, loc + scale * eps)


def hand_grad(key, params, x):
    """The timed hand-written step: draw the noise from ``key``, gradient of the ELBO."""
    eps = jax.random.normal(key, (*x.shape[:-1], Z_DIM))
    return jax.grad(hand_elbo_eps)(params, x, eps)


def hand_value(key, params, x):
    return hand_elbo_eps(params, x, jax.random.normal(key, (*x.shape[:-1], Z_DIM)))


# --- genjax ---------------------------------------------------------------------------------------


@Pytree.dataclass(has_implicitly_inherited_fields=True)
class ScoredMarginal(Marginal):
    """``marginal()`` over all addresses whose ``random_weighted`` returns the guide's log density.

    genjax 0.10.3's ``Marginal.random_weighted`` without an algorithm returns
    ``tr.project(key, ~selection)``; for the default selection (all addresses) that projects onto
    nothing and is 0, so ``vi.ELBO`` drops ``-log q``. With every address kept the exact density is
    the trace's score.
    """

    def random_weighted(self, key, *args):
        _, sub_key = jax.random.split(key)  # the same key path as Marginal.random_weighted
        tr = self.gen_fn.simulate(sub_key, args)
        return tr.get_score(), tr.get_choices().filter(self.selection)


def make_genjax(record=None):
    """``(model, guide)`` genjax programs for a batch (or one image: ``x`` of shape (784,)).

    ``record``: a callback that receives every ``z`` ADEV draws (the identical-noise check only).
    """
    reparam = MvNormalDiagREPARAM()
    if record is not None:

        @Pytree.dataclass
        class Recording(MvNormalDiagREPARAM):
            def before_tail_call(self, key, dual_tree):
                out = super().before_tail_call(key, dual_tree)
                jax.debug.callback(record, Dual.tree_primal(out))
                return out

        reparam = Recording()
    # genjax's own construction of its mv_normal_diag_reparam distribution, with the primitive above
    mvn_reparam = vi.adev_distribution(
        reparam,
        lambda v, loc, scale: jnp.sum(normal_logpdf(v, loc, scale)),
        "mv_normal_diag_reparam",
    )

    @genjax.gen
    def model(params, x):
        z = genjax.normal(jnp.zeros((*x.shape[:-1], Z_DIM)), 1.0) @ "z"
        genjax.bernoulli(logits=mlp(params["decoder"], z)) @ "x"

    @genjax.gen
    def guide(target):
        params, x = target.args
        loc, scale = encode(params, x)
        mvn_reparam(loc, scale) @ "z"

    return model, guide


def genjax_elbo(model, guide, *, stock=False):
    """``(grad_fn, value_fn)`` of the ELBO through ``vi.ELBO``, both ``(key, params, x) -> ...``.

    ``grad_fn`` is genjax's own ``vi.ELBO(guide, make_target)(key, (params,))`` (ADEV's gradient
    estimate of the loss ``-ELBO``), negated to the ELBO's gradient. genjax's VI API returns only the
    gradient; ``value_fn`` is the same ADEV expectation (vi.ELBO's body: ``Importance(target, guide)``
    and its normalizing-constant estimate) evaluated with ``estimate``; the check confirms that its
    gradient is ``grad_fn``'s.
    """
    q = genjax.marginal()(guide) if stock else ScoredMarginal(guide)

    # ADEV stages its program on the flat list of argument arrays (``stage(f)(*leaves)``), so the
    # parameter pytree goes in as its leaves and is rebuilt inside
    def make_target_for(x, treedef):
        return lambda *leaves: Target(model, (jax.tree_util.tree_unflatten(treedef, leaves), x), C["x"].set(x))

    def grad_fn(key, params, x):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        g = vi.ELBO(q, make_target_for(x, treedef))(key, tuple(leaves))
        return jax.tree_util.tree_unflatten(treedef, [-v for v in g])

    def expectation_for(key, x, treedef):
        make_target = make_target_for(x, treedef)

        @adev.expectation
        def neg_elbo(*leaves):
            target = make_target(*leaves)
            return -Importance(target, q).estimate_normalizing_constant(key, target)

        return neg_elbo

    def value_fn(key, params, x):
        # Expectation.estimate in genjax 0.10.3 passes plain zeros where its type check wants Dual
        # numbers (it raises); the forward-mode estimate with zero tangents is the same value
        leaves, treedef = jax.tree_util.tree_flatten(params)
        duals = Dual.dual_tree(tuple(leaves), tuple(jnp.zeros_like(v) for v in leaves))
        return -Dual.tree_primal(expectation_for(key, x, treedef).jvp_estimate(key, duals))

    def own_grad_fn(key, params, x):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        g = expectation_for(key, x, treedef).grad_estimate(key, tuple(leaves))
        return jax.tree_util.tree_unflatten(treedef, [-v for v in g])

    return grad_fn, value_fn, own_grad_fn


def per_example(step, reduce=True):
    """``jax.vmap`` of a per-image ``step(key, params, x_i)`` over the batch, outputs summed over it."""

    def batch_step(key, params, x):
        keys = jax.random.split(key, x.shape[0])
        out = jax.vmap(step, in_axes=(0, None, 0))(keys, params, x)
        return jax.tree_util.tree_map(lambda g: jnp.sum(g, 0), out) if reduce else out

    return batch_step


# --- data, checks, timing ---------------------------------------------------------------------------


def load_batch(batch: int, data: str | None, key) -> jax.Array:
    """``benchmarks/vae_step.py``'s data: random binary images, or MNIST t10k binarized at 0.5."""
    if data is None:
        return jax.random.bernoulli(key, 0.13, (batch, X_DIM)).astype(jnp.float32)
    with gzip.open(Path(data) / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, X_DIM)
    return jnp.asarray((raw[:batch] / 255.0 > 0.5).astype(np.float32))


def max_rel_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-30)) for u, v in zip(la, lb, strict=True))


def mc_mean(value_fn, keys, params, x):
    """Mean and standard error of ``value_fn(key, params, x)`` over ``keys``."""
    run = jax.jit(lambda ks, p_, x_: jax.lax.map(lambda k: value_fn(k, p_, x_), ks))
    vals = np.asarray(run(keys, params, x), dtype=np.float64)
    return vals.mean(), vals.std(ddof=1) / math.sqrt(len(vals))


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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def num(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


LABELS = {
    "hand": "hand-written JAX (gradient of the batch sum)",
    "hand_pe": "hand-written JAX, per-example (`jax.vmap`, summed)",
    "genjax": "genjax `vi.ELBO`, batched program",
    "genjax_pe": "genjax `vi.ELBO`, per-example (`jax.vmap`, summed)",
}


def checks(params, x, k_noise, k_mc, n_keys):
    """Identical-noise and Monte Carlo agreement of genjax's ELBO with the hand-written one; returns notes."""
    notes = []
    recorded = []
    model, guide = make_genjax(record=lambda z: recorded.append(np.asarray(z)))
    grad_g, value_g, own_grad_g = genjax_elbo(model, guide)
    _, value_stock, _ = genjax_elbo(model, guide, stock=True)

    # batched program: the z that ADEV drew, then the hand-written ELBO and its gradient at that noise
    v_g = float(value_g(k_noise, params, x))
    z = jnp.asarray(recorded[-1])
    recorded.clear()
    g_g = grad_g(k_noise, params, x)
    assert np.array_equal(recorded[-1], np.asarray(z)), "vi.ELBO's gradient drew other noise than its value"
    loc, scale = encode(params, x)
    v_h, g_h = jax.value_and_grad(hand_elbo_eps)(params, x, (z - loc) / scale)
    grad_diff = max_rel_diff(g_g, g_h)
    own_diff = max_rel_diff(own_grad_g(k_noise, params, x), g_g)
    np.testing.assert_allclose(v_g, float(v_h), rtol=1e-5)
    assert grad_diff < 1e-4, grad_diff
    assert own_diff < 1e-6, own_diff
    notes.append(
        f"ELBO, batched genjax program, same noise: genjax {v_g:.3f} = hand-written {float(v_h):.3f} (gradient "
        f"of `vi.ELBO`: max relative difference {grad_diff:.1e} to the hand-written gradient)"
    )

    # the stock marginal(): the value is log p(x, z), the -log q(z) term is missing
    recorded.clear()
    v_s = float(value_stock(k_noise, params, x))
    z_s = jnp.asarray(recorded[-1])
    log_q = float(jnp.sum(normal_logpdf(z_s, loc, scale)))
    log_p = float(hand_log_weight_z(params, x, z_s)) + log_q
    np.testing.assert_allclose(v_s, log_p, rtol=1e-5)
    notes.append(
        f"stock `genjax.marginal()` guide, same key: `vi.ELBO`'s objective is {v_s:.3f} = log p(x, z) "
        f"{log_p:.3f}, not the ELBO log p(x, z) - log q(z) = {log_p - log_q:.3f}: the guide reports log q = 0; "
        "corrected with `ScoredMarginal` (the trace's score)"
    )

    # per-example programs under jax.vmap
    recorded.clear()
    v_pe = float(per_example(value_g)(k_noise, params, x))
    # under jax.vmap, jax.debug.callback is called once per example, in order
    z_pe = jnp.asarray(np.stack(recorded[-x.shape[0] :])) if recorded[-1].ndim == 1 else jnp.asarray(recorded[-1])
    v_hpe = float(hand_log_weight_z(params, x, z_pe))
    np.testing.assert_allclose(v_pe, v_hpe, rtol=1e-5)
    notes.append(f"ELBO, per-example genjax programs, same noise: genjax {v_pe:.3f} = hand-written {v_hpe:.3f}")

    # independent noise: means over many keys
    model, guide = make_genjax()
    _, value_g, _ = genjax_elbo(model, guide)
    keys = jax.random.split(k_mc, n_keys)
    m_g, se_g = mc_mean(value_g, keys, params, x)
    m_pe, se_pe = mc_mean(per_example(value_g), keys, params, x)
    m_h, se_h = mc_mean(hand_value, keys, params, x)
    for m, se in ((m_g, se_g), (m_pe, se_pe)):
        zscore = abs(m - m_h) / math.hypot(se, se_h)
        assert zscore < 5, f"genjax and hand-written ELBO means disagree by {zscore:.1f} standard errors"
    notes.append(
        f"ELBO, mean ± s.e. over {n_keys} keys: genjax batched {m_g:.2f} ± {se_g:.2f}, per-example "
        f"{m_pe:.2f} ± {se_pe:.2f}, hand-written {m_h:.2f} ± {se_h:.2f}"
    )
    return notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="images per batch (64..1024)")
    p.add_argument("--calls", type=int, default=100, help="timed calls of each compiled step")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls of each step first")
    p.add_argument("--keys", type=int, default=100, help="keys for the Monte Carlo agreement check")
    p.add_argument("--data", default=None, help="folder with t10k-images-idx3-ubyte.gz (default: random)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 64 <= args.batch <= 1024:
        p.error("--batch must be in 64..1024")
    started = datetime.datetime.now()
    k_init, k_x, k_noise, k_mc = jax.random.split(jax.random.key(args.seed), 4)
    x = load_batch(args.batch, args.data, k_x)
    params = init_params(k_init)

    notes = checks(params, x, k_noise, k_mc, args.keys)

    model, guide = make_genjax()
    grad_g, _, _ = genjax_elbo(model, guide)
    steps = {
        "hand": jax.jit(hand_grad),
        "hand_pe": jax.jit(per_example(hand_grad)),
        "genjax": jax.jit(grad_g),
        "genjax_pe": jax.jit(per_example(grad_g)),
    }
    impls = list(steps)
    times = interleaved(args.calls, args.warmup, [steps[i] for i in impls], (k_noise, params, x))
    times = {i: np.asarray(t) * 1e3 for i, t in zip(impls, times, strict=True)}
    ref, ref_pe = times["hand"], times["hand_pe"]
    rows, summary = [], {}
    for i in impls:
        t = times[i]
        summary[i] = {
            "median_ms": float(np.median(t)),
            "ratio_medians": float(np.median(t) / np.median(ref)),
            "ratio_rounds": float(np.median(t / ref)),
            "ratio_rounds_pe": float(np.median(t / ref_pe)),
        }
        rows.append(
            f"| {LABELS[i]} | {num(np.median(t))} | {num(t.min())}-{num(t.max())} | "
            f"{np.median(t) / np.median(ref):.3f} | {np.median(t / ref):.3f} | {np.median(t / ref_pe):.3f} |"
        )

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"VAE 784-200-10 ELBO gradient step, genjax vs hand-written JAX in one process, batch {args.batch}, tanh "
        f"hidden, data: {'MNIST t10k, binarized at 0.5' if args.data else 'random binary'}; {args.calls} "
        f"interleaved calls per step after {args.warmup} warm-up calls\n"
        f"{started:%Y-%m-%d %H:%M}; {cpu_name()}, {cpus} CPU cores, CPU only, load average {load:.1f} at the end "
        f"(shared machine: noisy); genjax {genjax.__version__}, jax {jax.__version__}, "
        f"Python {platform.python_version()}\n"
    )
    for line in notes:
        print(f"- {line}")
    print(
        "\n| implementation | median ms | min-max ms | median / hand-written median | median of per-round ratios "
        "| per-round ratio to hand-written per-example |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("JSON: " + json.dumps({"batch": args.batch, "steps": summary}))


if __name__ == "__main__":
    main()
