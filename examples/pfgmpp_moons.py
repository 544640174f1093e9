"""PFGM++ on scikit-learn's two moons, for several numbers of augmented dimensions D.

A ``gendsl fit`` program (a ``gendsl.models`` Trainable, D = 128), a minute or two on two CPU cores:

    gendsl fit examples/pfgmpp_moons.py                   # -> runs/pfgmpp_moons/
    gendsl eval examples/pfgmpp_moons.py --run runs/pfgmpp_moons --limit 200
    gendsl sample examples/pfgmpp_moons.py --run runs/pfgmpp_moons -n 2000 --sampling-steps 32

The data are standardized and scaled by EDM's sigma_data = 0.5. The script compares several D:

    python examples/pfgmpp_moons.py --steps 4000                 # D = 128
    python examples/pfgmpp_moons.py --steps 4000 --D 8 128 inf   # inf: EDM's Gaussian kernel

For each D it trains the EDM-preconditioned denoiser on the PFGM++ objective (derived
from the kernel program ``gendsl.inference.diffusion.pfgmpp_kernel(D)``), samples 5,000 points
from the PFGM++ prior at sigma_max = 80 with Heun steps on EDM's grid, and prints the
energy distance to 5,000 held-out points next to sklearn's GaussianMixture(8).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from gendsl.metrics import energy_distance
from gendsl.models import PFGMPP

# -- the `gendsl fit` program: a Trainable, the data, and option defaults

trainable = PFGMPP(2, D=128.0)


def data():
    """10,000 training and 2,000 held-out points of the two moons, standardized, times sigma_data = 0.5."""
    from sklearn.datasets import make_moons

    train, test = make_moons(10000, noise=0.05, random_state=0)[0], make_moons(2000, noise=0.05, random_state=1)[0]
    mean, std = train.mean(0), train.std(0)
    return (0.5 * jnp.asarray((train - mean) / std, jnp.float32), 0.5 * jnp.asarray((test - mean) / std, jnp.float32))


defaults = {"steps": 3000, "batch_size": 512, "lr": 3e-3, "schedule": "cosine", "warmup": 100, "ema": 0.999,
            "chunk_size": 100, "checkpoint_every": 500}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--D", nargs="+", default=["128"], help="augmented dimensions; 'inf' for EDM")
    parser.add_argument("--sample-steps", type=int, default=64)
    args = parser.parse_args()

    from sklearn.datasets import make_moons
    from sklearn.mixture import GaussianMixture

    train, test = make_moons(10000, noise=0.05, random_state=0)[0], make_moons(5000, noise=0.05, random_state=1)[0]
    mean, std = train.mean(0), train.std(0)
    z = 0.5 * jnp.asarray((train - mean) / std, jnp.float32)  # EDM's sigma_data = 0.5
    gmm = GaussianMixture(8, random_state=0).fit(train)
    print(f"GMM-8: energy distance {energy_distance(gmm.sample(5000)[0], test):.5f}")
    for d in args.D:
        D = None if d == "inf" else float(d)
        model = PFGMPP(2, D=D)
        t0 = time.perf_counter()
        params = model.fit(jax.random.key(0), z, args.steps, batch_size=args.batch_size, lr=args.lr, progress=True)
        fit_s = time.perf_counter() - t0
        x = np.asarray(model.sample(params, jax.random.key(1), 5000, steps=args.sample_steps)) / 0.5 * std + mean
        print(f"PFGM++ D={d}: energy distance {energy_distance(x, test):.5f} ({args.steps} steps, {fit_s:.1f} s)")


if __name__ == "__main__":
    main()
