"""Multi-MNIST canvases for Attend-Infer-Repeat: 0-3 MNIST digits on a 50x50 canvas, counts as labels.

Each canvas draws its number of digits uniformly from ``0..max_digits``, then for
each digit a random MNIST image (28x28, intensities in [0, 1]) and a random
top-left corner with the whole digit inside the canvas; overlapping digits
combine by pixel-wise maximum. Everything is deterministic from ``seed``. The builder and the
reader are the library's, ``gendsl.datasets.multi_mnist`` and ``mnist_images``.

    python benchmarks/multi_mnist.py --data ../shared/data/mnist -n 10000   # prints count histogram

Reads ``train-images-idx3-ubyte.gz`` if the folder has it, else ``t10k-images-idx3-ubyte.gz``.
"""

from __future__ import annotations

import argparse

import numpy as np

from gendsl.datasets import mnist_images, multi_mnist


def load(folder: str, n: int, *, seed: int = 0, canvas: int = 50, max_digits: int = 3):
    """Build ``n`` canvases from the MNIST folder ``folder`` (``gendsl.datasets.multi_mnist``)."""
    return multi_mnist(mnist_images(folder), n, canvas=canvas, max_digits=max_digits, seed=seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist", help="MNIST folder (IDX files)")
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, counts = load(args.data, args.n, seed=args.seed)
    print(f"{len(images)} canvases {images.shape[1:]}, counts {np.bincount(counts).tolist()}, mean {images.mean():.3f}")


if __name__ == "__main__":
    main()
