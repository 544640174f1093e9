"""Data-parallel SVI step time on 1, 2, 4 and 8 devices at a fixed global batch, and the sharded step's overhead.

The Table 1 VAE of ``vae_step.py`` (784-200-10, tanh, ``Bernoulli(logits).to_event(1)``, a
plate over the batch, random binary images), ``SVI(elbo(model, guide), optax.adam(1e-3))``.
What is timed, with the global batch fixed (``--batch``, default 256):

* ``unsharded``: ``jax.jit(svi.step)``, the step ``SVI.run`` scans without a mesh;
* ``mesh n``: ``data_parallel_step(svi, data_mesh(n))``'s compiled step (the same step with the
  batch split over n devices, the state replicated, XLA's all-reduces), called with arguments
  already placed on the mesh, as in ``SVI.run(..., mesh=...)``'s loop;
* ``mesh 1, with placement``: the same through the public ``step(state, batch)`` wrapper, which
  checks the batch's placement (and moves it if needed; here it is placed already) and skips the
  state it returned last: its Python cost;
* ``hand-written``: the hand-written ELBO gradient of ``vae_step.py`` plus the same Adam update
  (the Table 1 reference), one device.

The devices are forced host devices (``--xla_force_host_platform_device_count``; the script
re-executes itself with ``XLA_FLAGS`` set, since it must be set before JAX starts). On a CPU they
all share the same cores, so more devices cannot be faster here: the table shows the overhead
of partitioning and of the collectives, not a speed-up. The goal is the first ratio: the sharded
step on one device against the unsharded one (<= 1.05).

Protocol: every step compiled and warmed up, then ``--rounds`` rounds, each calling every
configuration once in a rotating order, ``block_until_ready`` on every call; each configuration
carries its own state forward. Reported: median and min-max ms per step, examples per second,
the ratio of medians to ``unsharded`` and the median of the per-round ratios. Then the same for
the program ``SVI.run(..., batch_size=B, chunk_size=C, mesh=...)`` compiles: its chunk of C steps
in one ``lax.scan``, minibatches drawn inside from a 4096-image data set, built as ``run`` builds
it (``svi._make_chunk``; with a mesh, the batch constraint and replicated ``out_shardings``),
``--chunk-rounds`` interleaved rounds, ms per step.

    python benchmarks/scaling_devices.py --rounds 200              # 8 forced host devices
    python benchmarks/scaling_devices.py --rounds 300 --devices 1  # one device: the sharded step's overhead
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

from _common import cpu_name


def _forced(devices: int) -> bool:
    return f"--xla_force_host_platform_device_count={devices}" in os.environ.get("XLA_FLAGS", "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="global batch (a multiple of every mesh size)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--devices", type=int, default=8, help="forced host devices; meshes of 1, 2, 4, .. up to it")
    parser.add_argument("--chunk", type=int, default=50, help="steps per chunk of SVI.run's compiled program")
    parser.add_argument("--chunk-rounds", type=int, default=30)
    args = parser.parse_args(argv)
    if not _forced(args.devices):
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}".strip()
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], env)

    import jax

    sizes = [n for n in (1, 2, 4, 8, 16, 32) if n <= args.devices]
    steps = vae_steps(args.batch, sizes)
    times = interleaved(steps, args.rounds, args.warmup)
    chunk_times = interleaved(chunk_calls(args.batch, sizes, args.chunk), args.chunk_rounds, 2)

    print(f"# Data-parallel VAE step on forced host devices ({datetime.datetime.now():%Y-%m-%d %H:%M}, "
          f"{cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, jax {jax.__version__}, "
          f"Python {platform.python_version()})\n")
    shared = (f"The {args.devices} devices share {os.cpu_count()} CPU cores: this shows overhead, not speed-up."
              if args.devices > 1 else "One device (no forced host devices): the sharded step's own overhead.")
    print(f"Table 1 VAE (784-200-10, tanh, Bernoulli), ELBO + Adam, global batch {args.batch}, random binary images; "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up calls. {shared}\n")
    table(times, args.batch)
    print(f"\nThe compiled chunk of `SVI.run(key, n, data, batch_size={args.batch}, chunk_size={args.chunk}, "
          f"mesh=...)` on 4096 images, {args.chunk_rounds} interleaved rounds, per step:\n")
    table(chunk_times, args.batch, args.chunk)


def table(times: dict, batch: int, steps_per_call: int = 1) -> None:
    import numpy as np

    base = np.asarray(times["unsharded"]) / steps_per_call
    print("| step | median ms | min-max ms | examples/s | / unsharded (medians) | / unsharded (per-round median) |")
    print("|---|---|---|---|---|---|")
    for name, t in times.items():
        t = np.asarray(t) / steps_per_call
        med = float(np.median(t))
        print(f"| {name} | {med * 1e3:.3f} | {t.min() * 1e3:.3f}-{t.max() * 1e3:.3f} | {batch / med:,.0f} | "
              f"{med / float(np.median(base)):.3f} | {float(np.median(t / base)):.3f} |")


# --- the steps ----------------------------------------------------------------------------------


def vae_parts(batch: int):
    """``(svi, state, x, hand_step, hand_state)`` for the Table 1 VAE at this batch (one device)."""
    import equinox as eqx
    import jax
    import optax
    from vae_step import (  # this folder (sys.path[0])
        hand_value_and_grad,
        load_batch,
        make_decoder,
        make_encoder,
        make_gendsl,
        make_hand,
    )

    from gendsl.inference import SVI, elbo

    model, guide = make_gendsl(jax.numpy.tanh)
    svi = SVI(elbo(model, guide), optax.adam(1e-3))
    x = load_batch(batch, None, jax.random.key(1))
    state = svi.init(jax.random.key(0), x)
    params = svi.get_params(state)  # the networks' arrays; their static parts as vae_step.py takes them
    statics = (eqx.partition(make_encoder(jax.random.key(0), jax.numpy.tanh), eqx.is_inexact_array)[1],
               eqx.partition(make_decoder(jax.random.key(0), jax.numpy.tanh), eqx.is_inexact_array)[1])
    arrays = params
    hand = hand_value_and_grad(make_hand(statics)["elbo"], None)
    return svi, state, x, adam_step(hand, optax.adam(1e-3)), (arrays, optax.adam(1e-3).init(arrays), jax.random.key(2))


def adam_step(value_and_grad, optimizer):
    """A hand-written training step: ``(params, opt_state, key), x -> (new carry, value)``, ascent on the value."""
    import jax
    import optax

    @jax.jit
    def step(carry, x):
        params, opt_state, key = carry
        key, sub = jax.random.split(key)
        value, grads = value_and_grad(sub, params, x)
        updates, opt_state = optimizer.update(jax.tree_util.tree_map(lambda g: -g, grads), opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), value

    return step


def vae_steps(batch: int, sizes: list[int]) -> dict:
    """Callables that each take one step (advancing their own state) and return something to block on."""
    import jax

    from gendsl.inference import data_mesh, data_parallel_step

    svi, state, x, hand, hand_state = vae_parts(batch)
    calls = {}
    unsharded = jax.jit(svi.step)
    calls["unsharded"] = _stepper(lambda s: unsharded(s, x), state)
    for n in sizes:
        step = data_parallel_step(svi, data_mesh(n))
        placed_state, placed_x, rest = step.place(state, x)
        calls[f"mesh {n}"] = _stepper(lambda s, step=step, px=placed_x, r=rest: step.compiled(s, px, r), placed_state)
        if n == 1:
            calls["mesh 1, with placement"] = _stepper(lambda s, step=step, px=placed_x: step(s, px), placed_state)
    calls["hand-written"] = _stepper(lambda c: hand(c, x), hand_state)
    return calls


def _stepper(fn, state):
    box = [state]

    def call():
        box[0], out = fn(box[0])
        return out

    return call


def interleaved(calls: dict, rounds: int, warmup: int) -> dict:
    """Per-call seconds of each callable, in rounds of a rotating order, ``block_until_ready`` on each."""
    import jax

    names = list(calls)
    for _ in range(warmup):
        for name in names:
            jax.block_until_ready(calls[name]())
    times = {name: [] for name in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            t0 = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - t0)
    return times


def chunk_calls(batch: int, sizes: list[int], length: int) -> dict:
    """``SVI.run``'s compiled chunk of ``length`` steps, without a mesh and on each mesh, built as ``run`` builds it."""
    import jax
    from vae_step import load_batch

    from gendsl.inference import data_mesh
    from gendsl.inference._sharding import DataParallel

    svi, state, _, _, _ = vae_parts(batch)
    data = load_batch(4096, None, jax.random.key(3))
    n = data.shape[0]
    inputs = (jax.random.key(4), data, ())
    unsharded = jax.jit(svi._make_chunk(batch, n, length, {}, None))
    calls = {"unsharded": _chunk_stepper(unsharded, state, inputs, length)}
    for size in sizes:
        parallel = DataParallel(data_mesh(size))
        chunk = jax.jit(svi._make_chunk(batch, n, length, {}, None, parallel.constrain),
                        out_shardings=parallel.replicated)
        placed = (parallel.replicate(inputs[0]), parallel.place_data(data), ())
        calls[f"mesh {size}"] = _chunk_stepper(chunk, parallel.replicate(state), placed, length)
    return calls


def _chunk_stepper(chunk, state, inputs, length):
    return _stepper(lambda s: chunk(s, inputs, length, 1.0, 1e6)[:2], state)


if __name__ == "__main__":
    main()
