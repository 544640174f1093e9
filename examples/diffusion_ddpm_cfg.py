"""Class-conditional DDPM with classifier-free guidance on scikit-learn's two moons.

The label is the moon (0 upper, 1 lower). The network is trained on the simple
objective derived from the DDPM program pair (``gendsl.models.DDPM``, an
``Expectation`` to maximize), labels dropped with probability 0.2; sampling uses
DDIM (50 steps) with guidance weight ``w``. Prints, per guidance weight, the
energy distance between samples of class 0 and held-out points of class 0, and
the fraction of samples closer to moon 0 than to moon 1.

    python examples/diffusion_ddpm_cfg.py --steps 5000
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gendsl.models import DDPM, energy_distance


def data(n=6000, seed=0):
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.05, random_state=seed)
    x = (x - x.mean(0)) / x.std(0)
    return jnp.asarray(x[: n // 2], jnp.float32), jnp.asarray(y[: n // 2]), x[n // 2 :], y[n // 2 :]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    xs, labels, held_x, held_y = data()
    ddpm = DDPM((2,), T=500, num_classes=2, hidden=128, depth=3, p_uncond=0.2)
    params = ddpm.init(jax.random.key(args.seed))
    opt = optax.adam(2e-3)

    @jax.jit
    def chunk(params, state, key):
        def body(carry, k):
            p, s = carry
            k_b, k_l = jax.random.split(k)
            idx = jax.random.choice(k_b, xs.shape[0], (256,))
            # The labels are minibatched with the data, hence this loop rather than SVI (which batches one argument).
            value, grads = ddpm.objective.value_and_grad(k_l, p, xs[idx], labels[idx])
            updates, s = opt.update(jax.tree_util.tree_map(jnp.negative, grads), s, p)  # optax minimizes
            return (optax.apply_updates(p, updates), s), -value

        return jax.lax.scan(body, (params, state), jax.random.split(key, 500))

    state, start = opt.init(params), time.perf_counter()
    for i in range(max(args.steps // 500, 1)):
        (params, state), values = chunk(params, state, jax.random.key(1000 + i))
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s, final loss {float(values.mean()):.3f}")
    moon0, moon1 = held_x[held_y == 0], held_x[held_y == 1]
    for w in [0.0, 1.0, 3.0]:
        s = np.asarray(ddpm.sample(params, jax.random.key(7), 2000, method="ddim", steps=50, labels=0, guidance=w))
        d0 = np.min(np.linalg.norm(s[:, None] - moon0[None, :500], axis=-1), axis=1)
        d1 = np.min(np.linalg.norm(s[:, None] - moon1[None, :500], axis=-1), axis=1)
        print(f"w = {w}: energy distance to held-out class 0 {energy_distance(s, moon0):.4f}, "
              f"closer to moon 0: {(d0 < d1).mean():.3f}")


if __name__ == "__main__":
    main()
