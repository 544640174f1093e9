"""A conditional VAE on scikit-learn's digits: images given their class (Sohn et al. 2015).

The data are digits-bin (8x8 images binarized at half intensity; ``gendsl.datasets.digits``) with
their labels, as a dict ``{"x": images, "y": labels}`` that ``gendsl fit`` minibatches together:
the first 1,500 images train, the last 297 are held out. The model draws ``z ~ p(z | y)`` from a
conditional prior and the pixels from ``Bernoulli(decoder(z, y))``; the guide is ``q(z | x, y)``
(``gendsl.models.CVAE``). The class is the program's conditioning input (``conditions``), so

    gendsl fit examples/cvae_digits.py                        # 3,000 steps, about a minute on 2 cores
    gendsl eval examples/cvae_digits.py --run runs/cvae_digits
    gendsl sample examples/cvae_digits.py --run runs/cvae_digits --cond y=3 -n 16   # sixteen threes

As a plain script it trains with the same defaults and reports the conditional test NLL,
``-log p(x | y)`` per image as an IWAE-100 bound; ``--alpha`` below 1 trains Sohn et al.'s hybrid
``α·ELBO + (1-α)·GSNN`` and ``--beta`` weighs the ELBO's KL:

    python examples/cvae_digits.py --steps 3000 --alpha 1.0 --beta 1.0
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from gendsl.datasets import digits
from gendsl.inference import SVI, iwelbo
from gendsl.models import CVAE

cvae = CVAE(x_dim=64, y_dim=10, latent=8, hidden=128)
model, guide = cvae.model, cvae.guide


def data():
    """``(train, test)``: dicts of binary images ``"x"`` (n, 64) and their classes ``"y"`` (n,)."""
    train, test = digits("train1500", binarize=True), digits("test1500", binarize=True)
    return (
        {"x": jnp.asarray(train["x"]), "y": jnp.asarray(train["y"])},
        {"x": jnp.asarray(test["x"]), "y": jnp.asarray(test["y"])},
    )


# The data's leaves that the model is conditioned on, not a distribution over: `gendsl sample --cond y=3`.
conditions = ("y",)
# Options for `gendsl fit` (the command line overrides them); the script below uses them too.
defaults = {"steps": 3000, "batch_size": 100, "lr": 3e-3, "checkpoint_every": 1000}
image_shape = (8, 8)


def conditional_nll(params, test, *, particles: int = 100, seed: int = 0) -> float:
    """``-log p(x | y)`` per test image, bounded by IWAE with ``particles`` importance samples."""
    bound = iwelbo(model, guide, particles, plate="data")
    keys = jax.random.split(jax.random.key(seed), 10)
    values = jax.jit(jax.vmap(lambda k: bound.estimate(k, params, test)))(keys)
    return -float(values.mean()) / test["y"].shape[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--alpha", type=float, default=1.0, help="the ELBO's weight in the hybrid (1: ELBO)")
    parser.add_argument("--beta", type=float, default=1.0, help="the KL weight of the ELBO")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train, test = data()
    objective = cvae.elbo(beta=args.beta) if args.alpha == 1.0 else cvae.hybrid(args.alpha, beta=args.beta)
    svi = SVI(objective, optax.adam(args.lr))
    start = time.perf_counter()
    result = svi.run(jax.random.key(args.seed), args.steps, train, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    print(f"trained {args.steps} steps in {seconds:.1f} s (alpha {args.alpha:g}, beta {args.beta:g})")
    print(
        f"test -log p(x | y), IWAE-100: {conditional_nll(result.params, test):.2f} nats per image "
        f"({test['y'].shape[0]} images)"
    )


if __name__ == "__main__":
    main()
