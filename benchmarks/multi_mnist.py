"""Multi-MNIST canvases for Attend-Infer-Repeat: 0-3 MNIST digits on a 50x50 canvas, counts as labels.

Each canvas draws its number of digits uniformly from ``0..max_digits``, then for
each digit a random MNIST image (28x28, intensities in [0, 1]) and a random
top-left corner with the whole digit inside the canvas; overlapping digits
combine by pixel-wise maximum. Everything is deterministic from ``seed``.

    python benchmarks/multi_mnist.py --data ../shared/data/mnist -n 10000   # prints count histogram

Reads ``train-images-idx3-ubyte.gz`` if the folder has it, else ``t10k-images-idx3-ubyte.gz``.
"""

from __future__ import annotations

import argparse
import gzip
import os

import numpy as np


def read_idx_images(path: str) -> np.ndarray:
    """An IDX image file (gzipped or not) as a uint8 array of shape (n, rows, cols)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051:
        raise ValueError(f"{path}: not an IDX image file (magic number {magic}, expected 2051)")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)


def mnist_digits(folder: str) -> np.ndarray:
    """MNIST digit images in ``[0, 1]`` (float32, (n, 28, 28)) from an IDX folder."""
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        for name in (stem + ".gz", stem):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return read_idx_images(path).astype(np.float32) / 255.0
    raise FileNotFoundError(
        f"{folder} has neither train- nor t10k-images-idx3-ubyte(.gz) (MNIST in IDX format); "
        "pass the MNIST folder with --data"
    )


def make_canvases(digits: np.ndarray, n: int, *, canvas: int = 50, max_digits: int = 3, seed: int = 0):
    """``(images, counts)``: ``n`` canvases of shape (canvas, canvas) with 0..max_digits digits each.

    Example:
        >>> import numpy as np
        >>> digits = np.ones((5, 28, 28), np.float32)
        >>> images, counts = make_canvases(digits, 4, seed=1)
        >>> images.shape, counts.dtype, bool(((images.sum((1, 2)) > 0) == (counts > 0)).all())
        ((4, 50, 50), dtype('int32'), True)
    """
    size = digits.shape[1]
    if canvas < size:
        raise ValueError(f"make_canvases: canvas {canvas} is smaller than the digits ({size} px)")
    rng = np.random.default_rng(seed)
    images = np.zeros((n, canvas, canvas), np.float32)
    counts = rng.integers(0, max_digits + 1, size=n).astype(np.int32)
    for i, k in enumerate(counts):
        for _ in range(k):
            digit = digits[rng.integers(len(digits))]
            r, c = rng.integers(0, canvas - size + 1, size=2)
            images[i, r : r + size, c : c + size] = np.maximum(images[i, r : r + size, c : c + size], digit)
    return images, counts


def load(folder: str, n: int, *, seed: int = 0, canvas: int = 50, max_digits: int = 3):
    """Build ``n`` canvases from the MNIST folder ``folder`` (see ``make_canvases``)."""
    return make_canvases(mnist_digits(folder), n, canvas=canvas, max_digits=max_digits, seed=seed)


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
