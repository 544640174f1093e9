"""GPU check: the Table 1 VAE step and the derived DDPM step, one device vs all devices, against hand-written JAX.

For each model and batch size (``--batches``, the global batch), four training steps (gradient +
Adam), each carrying its own state, timed interleaved:

* ``hand, 1``: the hand-written step (``scaling_devices.vae_parts`` / ``diffusion_step.make``'s
  hand loss) jitted on the first device;
* ``gendsl, 1``: ``jax.jit(svi.step)`` of ``SVI(elbo(model, guide), adam)`` (VAE) or
  ``SVI(DDPM(...).objective, adam)``, on the first device;
* ``hand, all`` and ``gendsl, all``: the same steps with the batch split over every device and
  the parameters replicated (the hand step jitted at sharded inputs, GSPMD; gendsl's
  ``data_parallel_step(svi, data_mesh())``).

Printed: median ms per step, examples per second, gendsl / hand-written at the same device count,
and all / 1 devices. A batch that does not divide over the devices is skipped for "all".
Run it through ``benchmarks/gpu_check.sh`` on a machine with GPUs; on a CPU (forced host devices)
it runs too, as a check of the script, not for numbers.

    python benchmarks/gpu_check.py --batches 128,1024,8192 --rounds 50
"""

from __future__ import annotations

import argparse
import datetime
import os

import jax
import numpy as np
import optax
from diffusion_step import make as make_ddpm  # this folder (sys.path[0])
from scaling_devices import _stepper, adam_step, cpu_name, interleaved, vae_parts

from gendsl.inference import SVI, data_mesh, data_parallel_step


def vae_calls(batch: int, mesh) -> dict:
    svi, state, x, hand, hand_state = vae_parts(batch)
    return _calls(svi, state, x, hand, hand_state, mesh)


def ddpm_calls(batch: int, mesh) -> dict:
    from gendsl.models import DDPM

    params, _, xs, _, _, _, hand_loss, _ = make_ddpm(batch, 256)  # diffusion_step.py's DDPM and hand loss
    hand = adam_step(lambda k, p, x: _negated(jax.value_and_grad(hand_loss)(p, k, x)), optax.adam(1e-3))
    svi = SVI(DDPM((xs.shape[1],), T=1000, hidden=256, depth=3).objective, optax.adam(1e-3))
    state = svi.init(jax.random.key(0), xs, params=params)
    return _calls(svi, state, xs, hand, (params, optax.adam(1e-3).init(params), jax.random.key(2)), mesh)


def _negated(value_and_grad):
    value, grads = value_and_grad
    return -value, jax.tree_util.tree_map(lambda g: -g, grads)


def _calls(svi, state, x, hand, hand_state, mesh) -> dict:
    one = jax.devices()[0]
    x1, state1, hand_state1 = jax.device_put((x, state, hand_state), one)
    unsharded = jax.jit(svi.step)
    calls = {
        "hand, 1": _stepper(lambda c: hand(c, x1), hand_state1),
        "gendsl, 1": _stepper(lambda s: unsharded(s, x1), state1),
    }
    if mesh is not None:
        step = data_parallel_step(svi, mesh)
        placed_state, placed_x, rest = step.place(state, x)
        placed_hand = step.placement.replicate(hand_state)
        calls["hand, all"] = _stepper(lambda c: hand(c, placed_x), placed_hand)
        calls["gendsl, all"] = _stepper(lambda s: step.compiled(s, placed_x, rest), placed_state)
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="128,1024,8192")
    parser.add_argument("--models", default="vae,ddpm")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    devices = jax.devices()
    print(f"# gendsl GPU check ({datetime.datetime.now():%Y-%m-%d %H:%M}, jax {jax.__version__}, "
          f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), host {cpu_name()}, "
          f"{os.cpu_count()} cores)\n")
    if devices[0].platform != "gpu":
        print(f"(no GPU: {devices[0].platform} devices; this run checks the script, its numbers mean little)\n")
    print(f"{args.rounds} interleaved rounds after {args.warmup} warm-up calls; gradient + Adam per step\n")
    print("| model | batch | devices | hand-written ms | gendsl ms | gendsl / hand | gendsl examples/s | "
          "gendsl speed-up all / 1 |")
    print("|---|---|---|---|---|---|---|---|")
    makers = {"vae": vae_calls, "ddpm": ddpm_calls}
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            mesh = data_mesh() if len(devices) > 1 and batch % len(devices) == 0 else None
            times = interleaved(makers[model](batch, mesh), args.rounds, args.warmup)
            med = {name: float(np.median(t)) for name, t in times.items()}
            for n, label in (("1", "1"), ("all", str(len(devices)))):
                if f"gendsl, {n}" not in med:
                    continue
                g, h = med[f"gendsl, {n}"], med[f"hand, {n}"]
                speedup = med["gendsl, 1"] / g
                print(f"| {model} | {batch} | {label} | {h * 1e3:.3f} | {g * 1e3:.3f} | {g / h:.3f} | "
                      f"{batch / g:,.0f} | {speedup:.2f} |", flush=True)


if __name__ == "__main__":
    main()
