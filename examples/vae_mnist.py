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

import gzip
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import gendsl
import gendsl.distributions as dist

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


def read_idx(path: str) -> np.ndarray:
    """An IDX image file (gzipped or not) as a uint8 array of shape (n, rows, cols)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051:
        raise ValueError(f"{path}: not an IDX image file (magic number {magic}, expected 2051)")
    if len(raw) != 16 + n * rows * cols:
        raise ValueError(f"{path}: {len(raw) - 16} bytes of pixels, expected {n} x {rows} x {cols}")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)


def _find(folder: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def data(path):
    """``(train, test)`` binary images of shape (n, 784) from the MNIST folder ``path``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path}: no such folder; give the folder that holds t10k-images-idx3-ubyte.gz "
                                "(MNIST's test images, IDX format)")
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    test_file = _find(folder, "t10k-images-idx3-ubyte")
    if test_file is None:
        raise FileNotFoundError(f"{folder} has no t10k-images-idx3-ubyte.gz (the MNIST test images, IDX format)")
    binary = lambda images: jnp.asarray(images.reshape(len(images), -1) >= 128, jnp.float32)  # noqa: E731
    test = binary(read_idx(test_file))
    train_file = _find(folder, "train-images-idx3-ubyte")
    if train_file is not None:
        return binary(read_idx(train_file)), test
    split = min(8000, len(test) * 4 // 5)  # 8,000 / 2,000 for the 10,000 test images
    return test[:split], test[split:]


defaults = {"steps": 10000, "batch_size": 100, "lr": 1e-3, "checkpoint_every": 1000}
image_shape = (28, 28)


if __name__ == "__main__":
    import sys

    from gendsl.cli import main

    sys.exit(main(["fit", __file__, *sys.argv[1:]]))
