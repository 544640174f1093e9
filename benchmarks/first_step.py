"""Time to first step on the 784-200-10 VAE: gendsl vs NumPyro vs hand-written JAX, each in a fresh process.

The VAE is the one of ``vae_step.py`` (encoder 784-200-(mu, softplus sigma) of dim 10,
decoder 10-200-784, ``Bernoulli(logits).to_event(1)``, tanh hidden layers, a plate over
a batch of 128 random binary images, equinox MLPs, optax Adam 1e-3). Its definitions are
repeated here rather than imported from ``vae_step.py`` because that module imports all
three libraries at the top, and the import time of each system is one of the figures.

Per system, one fresh Python process (``python benchmarks/first_step.py --one SYSTEM``)
measures, with ``time.perf_counter``:

* import: importing the system's libraries (``jax`` included; every process starts cold);
* init: data, model/guide, optimizer, the initial state (``block_until_ready``):
  gendsl ``SVI(elbo(model, guide), optax.adam).init(key, x)``; NumPyro
  ``SVI(model, guide, optax.adam, Trace_ELBO()).init(key, x)``; hand-written
  ``eqx.partition`` of the two MLPs + ``optax.adam(...).init``;
* first step: ``jax.jit`` of the step (gendsl ``svi.step``, NumPyro ``svi.update``,
  hand-written ELBO gradient + Adam update), first call with ``block_until_ready``
  (tracing + XLA compilation + one run);
* total: import + init + first step; "process" is the parent's wall time of the whole
  subprocess (interpreter start-up and exit included).

The driver runs the systems interleaved (A B C, A B C, ...) ``--reps`` times and prints a
markdown table of medians, min-max and ratios to NumPyro's medians. ``--before REV`` adds a
fourth system, gendsl at commit ``REV`` (imported from a ``git archive`` of it), interleaved with
the others: a before/after comparison in one sitting.

    python benchmarks/first_step.py --reps 5 [--before REV]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from _common import checkout, cpu_name

SYSTEMS = ("gendsl", "numpyro", "hand")
LABELS = {
    "gendsl": "gendsl `SVI(elbo)`",
    "before": "gendsl `SVI(elbo)` at --before",
    "numpyro": "NumPyro `SVI(Trace_ELBO)`",
    "hand": "hand-written JAX + equinox + optax",
}
PHASES = ("import", "init", "first_step", "total", "process")
BATCH, Z_DIM, HIDDEN, X_DIM = 128, 10, 200, 784


def one(system: str, root: str | None = None) -> dict:
    """Measure one system in this (fresh) process; returns seconds per phase.

    ``root``: a checkout whose gendsl is imported instead of the installed one ("before").
    """
    if root is not None:
        sys.path.insert(0, root)
    t0 = time.perf_counter()
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    if system == "gendsl":
        import gendsl
        import gendsl.distributions as dist
        from gendsl.inference import SVI, elbo

        if root is not None and not os.path.realpath(gendsl.__file__).startswith(os.path.realpath(root)):
            raise RuntimeError(f"imported {gendsl.__file__}, expected the tree at {root}")
    elif system == "numpyro":
        import numpyro
        import numpyro.distributions as dist
        from numpyro.contrib.module import eqx_module
        from numpyro.infer import SVI, Trace_ELBO
    t1 = time.perf_counter()

    def make_encoder(key):
        return eqx.nn.MLP(X_DIM, 2 * Z_DIM, HIDDEN, 1, activation=jnp.tanh, key=key)

    def make_decoder(key):
        return eqx.nn.MLP(Z_DIM, X_DIM, HIDDEN, 1, activation=jnp.tanh, key=key)

    def encode(encoder, x):
        out = jax.vmap(encoder)(x)
        return out[:, :Z_DIM], jax.nn.softplus(out[:, Z_DIM:])

    x = jnp.asarray((np.random.default_rng(0).random((BATCH, X_DIM)) < 0.13).astype(np.float32))
    key = jax.random.key(0)
    opt = optax.adam(1e-3)

    if system == "gendsl":

        @gendsl.model
        def model(x):
            decoder = gendsl.module("decoder", make_decoder)
            with gendsl.plate("batch", x.shape[0]):
                z = gendsl.sample("z", dist.Normal(jnp.zeros(Z_DIM), 1.0).to_event(1))
                gendsl.sample("x", dist.Bernoulli(logits=jax.vmap(decoder)(z)).to_event(1), obs=x)

        @gendsl.model
        def guide(x):
            encoder = gendsl.module("encoder", make_encoder)
            loc, scale = encode(encoder, x)
            with gendsl.plate("batch", x.shape[0]):
                gendsl.sample("z", dist.Normal(loc, scale).to_event(1))

        svi = SVI(elbo(model, guide), opt)
        state = jax.block_until_ready(svi.init(key, x))
        t2 = time.perf_counter()
        step = jax.jit(svi.step)
        state, info = jax.block_until_ready(step(state, x))
        loss = -float(info.objective)

    elif system == "numpyro":
        k_enc, k_dec = jax.random.split(key)
        enc0, dec0 = make_encoder(k_enc), make_decoder(k_dec)

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

        svi = SVI(model, guide, opt, Trace_ELBO())
        state = jax.block_until_ready(svi.init(key, x))
        t2 = time.perf_counter()
        step = jax.jit(svi.update)
        state, loss = jax.block_until_ready(step(state, x))
        loss = float(loss)

    else:  # hand-written
        k_enc, k_dec, k_run = jax.random.split(key, 3)
        p_enc, s_enc = eqx.partition(make_encoder(k_enc), eqx.is_inexact_array)
        p_dec, s_dec = eqx.partition(make_decoder(k_dec), eqx.is_inexact_array)
        params = {"encoder": p_enc, "decoder": p_dec}
        opt_state = opt.init(params)
        state = jax.block_until_ready((params, opt_state, k_run))
        t2 = time.perf_counter()
        log_2pi = float(np.log(2 * np.pi))

        def normal_logpdf(v, loc, scale):
            return -0.5 * jnp.square((v - loc) / scale) - jnp.log(scale) - 0.5 * log_2pi

        def neg_elbo(params, x, eps):
            loc, scale = encode(eqx.combine(params["encoder"], s_enc), x)
            z = loc + scale * eps
            logits = jax.vmap(eqx.combine(params["decoder"], s_dec))(z)
            log_lik = jnp.sum(x * logits - (jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits)))), -1)
            log_w = log_lik + jnp.sum(normal_logpdf(z, 0.0, 1.0) - normal_logpdf(z, loc, scale), -1)
            return -jnp.sum(log_w)

        @jax.jit
        def step(state, x):
            params, opt_state, key = state
            key, sub = jax.random.split(key)
            loss, grads = jax.value_and_grad(neg_elbo)(params, x, jax.random.normal(sub, (x.shape[0], Z_DIM)))
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, key), loss

        state, loss = jax.block_until_ready(step(state, x))
        loss = float(loss)

    t3 = time.perf_counter()
    return {"import": t1 - t0, "init": t2 - t1, "first_step": t3 - t2, "total": t3 - t0, "loss": loss}


def run_one(system: str, root: str | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", "gendsl" if system == "before" else system]
    if system == "before":
        cmd += ["--root", root]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{system} failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process"] = wall
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="fresh processes per system (interleaved)")
    p.add_argument("--one", choices=SYSTEMS, help="internal: measure one system in this process, print JSON")
    p.add_argument("--root", help="internal: with --one gendsl, import gendsl from this checkout")
    p.add_argument("--before", metavar="REV", help="also measure gendsl at this commit, interleaved")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.root)))
        return
    started = datetime.datetime.now()
    systems = SYSTEMS + (("before",) if args.before else ())
    root = checkout(args.before) if args.before else None
    if args.before:
        LABELS["before"] = f"gendsl `SVI(elbo)` at {args.before}"
    results = {s: [] for s in systems}
    for _ in range(args.reps):
        for s in systems:
            results[s].append(run_one(s, root))
    med = {s: {ph: statistics.median(r[ph] for r in results[s]) for ph in PHASES} for s in systems}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import jax  # only for the versions line, after all measurements

    print(
        f"Time to first step, 784-200-10 VAE, ELBO + Adam, batch {BATCH}, random binary data; each measurement "
        f"in a fresh process, systems interleaved, {args.reps} processes per system\n"
        f"{started:%Y-%m-%d %H:%M}; {cpu_name()}, {cpus} CPU cores, CPU only (shared machine: noisy); "
        f"jax {jax.__version__}, Python {platform.python_version()}\n"
    )
    print("Seconds: median (min-max); ratio = median / NumPyro's median.\n")
    print("| system | " + " | ".join(PHASES) + " | total / NumPyro |")
    print("|---" * (len(PHASES) + 2) + "|")
    for s in systems:
        cells = []
        for ph in PHASES:
            v = [r[ph] for r in results[s]]
            cells.append(f"{med[s][ph]:.2f} ({min(v):.2f}-{max(v):.2f})")
        print(f"| {LABELS[s]} | " + " | ".join(cells) + f" | {med[s]['total'] / med['numpyro']['total']:.2f} |")
    print("\n| phase | gendsl / NumPyro | hand-written / NumPyro |")
    print("|---|---|---|")
    for ph in PHASES:
        print(f"| {ph} | {med['gendsl'][ph] / med['numpyro'][ph]:.2f} | {med['hand'][ph] / med['numpyro'][ph]:.2f} |")
    before_column = " gendsl at --before - hand-written (s) |" if args.before else ""
    print("\n| phase | gendsl - hand-written (s) |" + before_column)
    print("|---|---|" + ("---|" if args.before else ""))
    for ph in PHASES:
        extra = f" {med['before'][ph] - med['hand'][ph]:+.2f} |" if args.before else ""
        print(f"| {ph} | {med['gendsl'][ph] - med['hand'][ph]:+.2f} |" + extra)
    print("\nFirst-step losses (sanity): " + ", ".join(f"{s} {results[s][0]['loss']:.1f}" for s in systems))
    print("JSON: " + json.dumps({"median": med}))


if __name__ == "__main__":
    main()
