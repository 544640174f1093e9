"""DiffuseVAE on scikit-learn's digits: a VAE (a gendsl program pair) and a DDPM conditioned on its reconstructions.

Pixels are scaled to [-1, 1]. A ``gendsl fit`` program (``gendsl.models.DiffuseVAE``, a
Trainable): one run trains both stages, the VAE on its ELBO and the DDPM on its derived simple
objective given the VAE's reconstructions (the DDPM term does not reach the VAE's parameters).
A few minutes on two CPU cores with the ``defaults`` below:

    gendsl fit examples/diffusion_diffusevae.py                   # -> runs/diffusion_diffusevae/
    gendsl eval examples/diffusion_diffusevae.py --run runs/diffusion_diffusevae
    gendsl sample examples/diffusion_diffusevae.py --run runs/diffusion_diffusevae -n 64 --sampling-steps 100

The script form prints the energy distance to held-out images of (a) the VAE's decoded means of
prior draws and (b) DiffuseVAE's refined samples:

    python examples/diffusion_diffusevae.py --steps 6000
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
from gendsl.models import DiffuseVAE

# -- the `gendsl fit` program: a Trainable, the data, and option defaults

trainable = DiffuseVAE(64, latent=8, hidden=256, T=200)
image_shape = (8, 8)


def data():
    """Images [:1500] for training and [1500:] (297) held out, scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    x = np.asarray(load_digits().data, np.float32) / 8.0 - 1.0
    return jnp.asarray(x[:1500]), jnp.asarray(x[1500:])


defaults = {"steps": 6000, "batch_size": 128, "lr": 1e-3, "schedule": "cosine", "warmup": 200, "ema": 0.999,
            "chunk_size": 100, "checkpoint_every": 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, held = data()
    optimizer = optax.adam(optax.cosine_decay_schedule(defaults["lr"], args.steps))
    start = time.perf_counter()
    params = SVI(trainable.objective, optimizer).run(jax.random.key(args.seed), args.steps, train,
                                                     batch_size=defaults["batch_size"]).params
    print(f"trained both stages ({args.steps} steps) in {time.perf_counter() - start:.0f} s")
    decoded = np.asarray(trainable.decode(params["vae"], jax.random.normal(jax.random.key(2),
                                                                          (len(held), trainable.latent))))
    refined = np.asarray(trainable.sample(params, jax.random.key(2), len(held), steps=100))
    held = np.asarray(held)
    print(f"energy distance to the {len(held)} held-out images: VAE decoded means "
          f"{energy_distance(decoded, held):.3f}, DiffuseVAE samples {energy_distance(refined, held):.3f}")


if __name__ == "__main__":
    main()
