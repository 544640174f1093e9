"""The MNIST variational autoencoder of Kingma & Welling (2014): 784-200-10, Bernoulli pixels.

Encoder 784 -> 200 (tanh) -> a diagonal normal over 10 latent dimensions;
decoder 10 -> 200 (tanh) -> 784 Bernoulli logits; prior N(0, I).

Data: MNIST in the original IDX format, read from the folder given with
``--data``. With ``t10k-images-idx3-ubyte.gz`` alone (the 10,000-image test
set), the first 8,000 images train and the last 2,000 are held out (a smaller
file is split 80/20); if the
folder also has ``train-images-idx3-ubyte.gz``, its 60,000 images train and the
10,000 test images are held out. Uncompressed ``...-ubyte`` files work too.
Pixels are binarized **statically**, at half intensity (pixel >= 128 -> 1),
once, when the data is loaded. (Published IWAE numbers use the 60,000-image
training set and a different binarization, so they are not directly comparable.)

    gendsl fit examples/vae_mnist.py --data PATH                 # ELBO, 10,000 steps
    gendsl fit examples/vae_mnist.py --data PATH --objective iwelbo --particles 5 --out runs/vae_mnist_iwae
    gendsl eval examples/vae_mnist.py --run runs/vae_mnist --particles 1000
    gendsl sample examples/vae_mnist.py --run runs/vae_mnist -n 64

Running the file as a script is the same as ``gendsl fit`` on it:
``python examples/vae_mnist.py --data PATH``.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import gendsl
import gendsl.distributions as dist
from gendsl.datasets import mnist_images

LATENT, HIDDEN, PIXELS = 10, 200, 784


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


def data(path):
    """``(train, test)`` binary images of shape (n, 784) from the MNIST folder ``path``."""
    binary = lambda images: jnp.asarray(images.reshape(len(images), -1) >= 0.5, jnp.float32)  # noqa: E731
    test = binary(mnist_images(path, "test"))
    try:
        return binary(mnist_images(path, "train")), test
    except FileNotFoundError:
        split = min(8000, len(test) * 4 // 5)  # 8,000 / 2,000 for the 10,000 test images
        return test[:split], test[split:]


defaults = {"steps": 10000, "batch_size": 100, "lr": 1e-3, "checkpoint_every": 1000}
image_shape = (28, 28)


if __name__ == "__main__":
    import sys

    from gendsl.cli import main

    sys.exit(main(["fit", __file__, *sys.argv[1:]]))
