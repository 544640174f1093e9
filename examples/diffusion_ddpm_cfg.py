"""Class-conditional DDPM with classifier-free guidance on scikit-learn's two moons.

The label is the moon (0 upper, 1 lower). The network is trained on the simple objective
derived from the DDPM program pair (``gendsl.models.DDPM``, an ``Expectation`` to maximize),
labels dropped with probability 0.2 so that the same network also predicts without a label.
A ``gendsl fit`` program: the data are ``(points, labels)`` pairs, minibatched together. About
a minute on two CPU cores with the ``defaults`` below:

    gendsl fit examples/diffusion_ddpm_cfg.py                 # -> runs/diffusion_ddpm_cfg/
    gendsl eval examples/diffusion_ddpm_cfg.py --run runs/diffusion_ddpm_cfg --limit 500   # bits/dim (ELBO)
    gendsl sample examples/diffusion_ddpm_cfg.py --run runs/diffusion_ddpm_cfg -n 1000 --class 0 \\
        --sampler ddim --sampling-steps 50 --guidance-scale 3

The script form prints, per guidance weight ``w``, the energy distance between samples of
class 0 and held-out points of class 0, and the fraction of samples closer to moon 0 than to
moon 1 (guidance trades diversity for that fraction):

    python examples/diffusion_ddpm_cfg.py --steps 5000
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gendsl.inference import SVI
from gendsl.metrics import energy_distance
from gendsl.models import DDPM


def moons(n: int, seed: int):
    from sklearn.datasets import make_moons

    return make_moons(n, noise=0.05, random_state=seed)


# -- the `gendsl fit` program: a Trainable, the data, and option defaults

trainable = DDPM((2,), T=200, num_classes=2, hidden=128, depth=3, p_uncond=0.2)


def data():
    """``((points, labels), (held-out points, labels))``: 3,000 of each, standardized by the training points."""
    (x, y), (x_test, y_test) = moons(3000, 0), moons(3000, 1)
    mean, std = x.mean(0), x.std(0)
    return ((jnp.asarray((x - mean) / std, jnp.float32), jnp.asarray(y, jnp.int32)),
            (jnp.asarray((x_test - mean) / std, jnp.float32), jnp.asarray(y_test, jnp.int32)))


defaults = {"steps": 5000, "batch_size": 256, "lr": 2e-3, "schedule": "cosine", "warmup": 100, "ema": 0.999,
            "chunk_size": 100, "checkpoint_every": 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, (held_x, held_y) = data()
    optimizer = optax.adam(optax.cosine_decay_schedule(defaults["lr"], args.steps))
    start = time.perf_counter()
    params = SVI(trainable.objective, optimizer).run(jax.random.key(args.seed), args.steps, train,
                                                     batch_size=defaults["batch_size"]).params
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s")
    held_x, held_y = np.asarray(held_x), np.asarray(held_y)
    moon0, moon1 = held_x[held_y == 0], held_x[held_y == 1]
    for w in [0.0, 1.0, 3.0]:
        s = np.asarray(trainable.sample(params, jax.random.key(7), 2000, method="ddim", steps=50, labels=0,
                                        guidance=w))
        d0 = np.min(np.linalg.norm(s[:, None] - moon0[None, :500], axis=-1), axis=1)
        d1 = np.min(np.linalg.norm(s[:, None] - moon1[None, :500], axis=-1), axis=1)
        print(f"w = {w}: energy distance to held-out class 0 {energy_distance(s, moon0):.4f}, "
              f"closer to moon 0: {(d0 < d1).mean():.3f}")


if __name__ == "__main__":
    main()
