"""A variational autoencoder on scikit-learn's handwritten digits (ships with scikit-learn).

The 1,797 8x8 images (17 grey levels) are binarized at half intensity. The
first 1,500 images train the model; the last 297 are held out.

Run it as a script:

    python examples/vae_digits.py --steps 20000

This file also follows the program convention of ``gendsl fit``: it defines
``model``, ``guide`` and ``data()``.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train, test = data()
    n_train, n_test = train.shape[0], test.shape[0]
    svi = SVI(elbo(model, guide), optax.adam(args.lr))
    key = jax.random.key(args.seed)

    held_out = iwelbo(model, guide, 50)
    bound = jax.jit(lambda k, p, x: elbo(model, guide).estimate(k, p, x, samples=10) / x.shape[0])
    iw_bound = jax.jit(lambda k, p, x: held_out.estimate(k, p, x) / x.shape[0])

    state = svi.init(key, train[: args.batch_size])
    before = float(bound(key, svi.constrain(state.params), test))
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
