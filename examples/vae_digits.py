"""A variational autoencoder on scikit-learn's handwritten digits (ships with scikit-learn).

The 1,797 8x8 images (17 grey levels) are binarized at half intensity (static
binarization). The first 1,500 images train the model; the last 297 are held out.

This file follows the program convention of ``gendsl fit`` (``model``, ``guide``,
``data()``, ``defaults``, ``image_shape``), so the command-line workflow is

    gendsl fit examples/vae_digits.py                 # 3,000 steps, writes runs/vae_digits/
    gendsl eval examples/vae_digits.py --run runs/vae_digits
    gendsl sample examples/vae_digits.py --run runs/vae_digits -n 64

It also runs as a plain script, which trains with the same defaults and prints
the held-out ELBO before and after training and the IWAE-50 bound:

    python examples/vae_digits.py --steps 3000

With 1,500 training images the held-out ELBO is best after about 2,000-5,000
steps (about -18.6 nats per image); longer training overfits (-20.1 after
20,000 steps).
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import gendsl
import gendsl.distributions as dist
from gendsl.inference import SVI, elbo, iwelbo

LATENT, HIDDEN, PIXELS = 8, 128, 64


@gendsl.model
def model(x):
    decoder = gendsl.module("decoder", lambda k: eqx.nn.MLP(LATENT, PIXELS, HIDDEN, 1, activation=jnp.tanh, key=k))
    with gendsl.plate("data", x.shape[0]):
        z = gendsl.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        gendsl.sample("x", dist.Bernoulli(logits=jax.vmap(decoder)(z)).to_event(1), obs=x)


@gendsl.model
def guide(x):
    encoder = gendsl.module("encoder", lambda k: eqx.nn.MLP(PIXELS, 2 * LATENT, HIDDEN, 1, activation=jnp.tanh, key=k))
    with gendsl.plate("data", x.shape[0]):
        out = jax.vmap(encoder)(x)
        loc, scale = out[..., :LATENT], jax.nn.softplus(out[..., LATENT:]) + 1e-3
        gendsl.sample("z", dist.Normal(loc, scale).to_event(1))


def data():
    """``(train, test)`` binary images, shape (n, 64)."""
    from sklearn.datasets import load_digits

    images = load_digits().data / 16.0
    binary = jnp.asarray(images > 0.5, jnp.float32)
    return binary[:1500], binary[1500:]


# Options for `gendsl fit` (the command line overrides them); the script below uses them too.
defaults = {"steps": 3000, "batch_size": 100, "lr": 3e-3, "checkpoint_every": 500}
image_shape = (8, 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train, test = data()
    n_train, n_test = train.shape[0], test.shape[0]
    svi = SVI(elbo(model, guide), optax.adam(args.lr))
    key = jax.random.key(args.seed)

    held_out = iwelbo(model, guide, 50)
    bound = jax.jit(lambda k, p, x: elbo(model, guide).estimate(k, p, x, samples=10) / x.shape[0])

    def iw_bound(k, p, x):
        """IWAE-50 per image: each image's own importance-weighted bound, averaged."""
        keys = jax.random.split(k, x.shape[0])
        return jax.jit(jax.vmap(lambda kk, xi: held_out.estimate(kk, p, xi[None])))(keys, x).mean()

    state = svi.init(key, train[: args.batch_size])
    before = float(bound(key, svi.get_params(state), test))
    start = time.perf_counter()
    result = svi.run(key, args.steps, train, batch_size=args.batch_size, state=state)
    seconds = time.perf_counter() - start
    after = float(bound(key, result.params, test))
    after_iw = float(iw_bound(key, result.params, test))
    print(f"trained {args.steps} steps in {seconds:.1f} s ({result.steps_per_second:.0f} steps/s after compiling)")
    print(f"held-out ELBO per image ({n_test} images): {before:.2f} nats before, {after:.2f} nats after")
    print(f"held-out IWAE-50 bound per image: {after_iw:.2f} nats  (train images: {n_train})")


if __name__ == "__main__":
    main()
