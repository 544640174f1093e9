"""Readers and builders for the data sets the examples and benchmarks use: MNIST files and multi-MNIST canvases.

Nothing here downloads: the MNIST files (IDX format, as distributed by LeCun et al.) are read
from a folder the user gives (``gendsl fit ... --data FOLDER``).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["multi_mnist", "mnist_images", "read_idx_images"]


def read_idx_images(path: str) -> np.ndarray:
    """An IDX image file (gzipped or not) as a uint8 array of shape ``(n, rows, cols)``.

    Raises:
        ValueError: not an IDX image file, or truncated.

    Example:
        >>> import gzip, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx3-ubyte.gz")
        >>> header = b"".join(v.to_bytes(4, "big") for v in (2051, 2, 3, 3))
        >>> with gzip.open(path, "wb") as f:
        ...     _ = f.write(header + bytes(range(18)))
        >>> read_idx_images(path)[1, 0]
        array([ 9, 10, 11], dtype=uint8)
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 16:
        raise ValueError(f"{path}: not an IDX image file ({len(raw)} bytes, shorter than the 16-byte header)")
    magic, n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in range(0, 16, 4))
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


def mnist_images(folder: str, split: str = "any") -> np.ndarray:
    """MNIST images in ``[0, 1]`` (float32, ``(n, 28, 28)``) from the IDX files in ``folder``.

    Args:
        folder: a folder with ``train-images-idx3-ubyte(.gz)`` and/or ``t10k-images-idx3-ubyte(.gz)``.
        split: ``"train"``, ``"test"`` (``t10k``), or ``"any"``: the training images if the
            folder has them, else the test images.

    Raises:
        FileNotFoundError: no such folder, or no file of that split.
    """
    if split not in ("train", "test", "any"):
        raise ValueError(f"mnist_images: split must be 'train', 'test' or 'any', got {split!r}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder; give the folder that holds MNIST's IDX files "
                                "(t10k-images-idx3-ubyte.gz, train-images-idx3-ubyte.gz)")
    stems = {"train": ["train-images-idx3-ubyte"], "test": ["t10k-images-idx3-ubyte"],
             "any": ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]}[split]
    for stem in stems:
        path = _find(folder, stem)
        if path is not None:
            return read_idx_images(path).astype(np.float32) / 255.0
    raise FileNotFoundError(f"{folder} has no {' or '.join(s + '.gz' for s in stems)} (MNIST images, IDX format)")


def multi_mnist(digits: np.ndarray, n: int, *, canvas: int = 50, max_digits: int = 3,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(images, counts)``: ``n`` canvases of shape ``(canvas, canvas)`` with 0..``max_digits`` digits each.

    Each canvas draws its number of digits uniformly from ``0..max_digits``, then for each
    digit a random image of ``digits`` and a random top-left corner with the whole digit
    inside the canvas; overlapping digits combine by pixel-wise maximum (Eslami et al.
    2016's multi-MNIST). Deterministic given ``seed``.

    Example:
        >>> import numpy as np
        >>> images, counts = multi_mnist(np.ones((5, 28, 28), np.float32), 4, seed=1)
        >>> images.shape, counts.dtype, bool(((images.sum((1, 2)) > 0) == (counts > 0)).all())
        ((4, 50, 50), dtype('int32'), True)
    """
    size = digits.shape[1]
    if canvas < size:
        raise ValueError(f"multi_mnist: canvas {canvas} is smaller than the digits ({size} px)")
    rng = np.random.default_rng(seed)
    images = np.zeros((n, canvas, canvas), np.float32)
    counts = rng.integers(0, max_digits + 1, size=n).astype(np.int32)
    for i, k in enumerate(counts):
        for _ in range(k):
            digit = digits[rng.integers(len(digits))]
            r, c = rng.integers(0, canvas - size + 1, size=2)
            images[i, r : r + size, c : c + size] = np.maximum(images[i, r : r + size, c : c + size], digit)
    return images, counts
