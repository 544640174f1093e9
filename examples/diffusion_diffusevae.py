"""DiffuseVAE on scikit-learn's digits: a VAE (gendsl program pair, SVI), then a DDPM conditioned on its
reconstructions.

Pixels are scaled to [-1, 1]. Prints the energy distance to held-out images of
(a) the VAE's decoded means of prior draws and (b) DiffuseVAE's refined samples,
and writes a PNG grid of both next to the script's output folder.

    python examples/diffusion_diffusevae.py --vae-steps 3000 --steps 5000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gendsl.models import DiffuseVAE, energy_distance


def data():
    from sklearn.datasets import load_digits

    x = np.asarray(load_digits().data, np.float32) / 8.0 - 1.0
    return jnp.asarray(x[:1500]), x[1500:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--out", default="runs/diffusevae")
    args = parser.parse_args()
    xs, held = data()
    model = DiffuseVAE(64, latent=8, hidden=256, T=500)
    start = time.perf_counter()
    vae = model.fit_vae(jax.random.key(0), xs, steps=args.vae_steps, batch_size=128)
    params = model.ddpm.init(jax.random.key(1), jnp.zeros(64))
    opt = optax.adam(1e-3)

    @jax.jit
    def chunk(params, state, key):
        def body(carry, k):
            p, s = carry
            k_b, k_l, k_z = jax.random.split(k, 3)
            idx = jax.random.choice(k_b, xs.shape[0], (128,))
            recon = model.reconstruct(vae, xs[idx], k_z)  # z ~ q(z | x): distributed like sampling-time z
            value, grads = model.ddpm.objective.value_and_grad(k_l, p, xs[idx], recon)
            updates, s = opt.update(jax.tree_util.tree_map(jnp.negative, grads), s, p)  # optax minimizes
            return (optax.apply_updates(p, updates), s), -value

        return jax.lax.scan(body, (params, state), jax.random.split(key, 500))

    state = opt.init(params)
    for i in range(max(args.steps // 500, 1)):
        (params, state), _ = chunk(params, state, jax.random.key(100 + i))
    print(f"trained VAE ({args.vae_steps} steps) and DDPM ({args.steps} steps) in {time.perf_counter() - start:.0f} s")
    decoder = eqx.combine(vae["decoder"], model._decoder_static)
    decoded = np.asarray(jax.vmap(decoder)(jax.random.normal(jax.random.key(2), (297, 8))))
    refined = np.asarray(model.sample(vae, params, jax.random.key(2), 297, steps=100))
    print(f"energy distance to the 297 held-out images: VAE decoded means {energy_distance(decoded, held):.3f}, "
          f"DiffuseVAE samples {energy_distance(refined, held):.3f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 8, figsize=(8, 2))
        for j in range(8):
            axes[0, j].imshow(decoded[j].reshape(8, 8), cmap="gray_r")
            axes[1, j].imshow(refined[j].reshape(8, 8), cmap="gray_r")
        for ax in axes.flat:
            ax.axis("off")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(args.out) / "samples.png", dpi=100)
        print(f"wrote {Path(args.out) / 'samples.png'} (top: VAE, bottom: DiffuseVAE)")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
