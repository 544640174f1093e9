"""Readers and builders for the data sets the examples and benchmarks use: MNIST files, multi-MNIST
canvases, scikit-learn's digits with the project's splits, and synthetic sprites with known factors.

Nothing here downloads: the MNIST files (IDX format, as distributed by LeCun et al.) are read
from a folder the user gives (``gendsl fit ... --data FOLDER``); the digits ship with scikit-learn
and the sprites are drawn from a seed.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["DIGITS_SPLITS", "SPRITE_FACTORS", "digits", "multi_mnist", "mnist_images", "read_idx_images", "sprites"]


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


# Two protocols share the 1,797 images, in scikit-learn's order. The diffusion benchmarks early-stop on a
# validation split; the digits-bin baselines (benchmarks and docs) train on the first 1,500 images and
# hold out the last 297. The "thick" attribute's median comes from the training split of each protocol.
DIGITS_SPLITS = {
    "train": slice(0, 1000),
    "validation": slice(1000, 1350),
    "test": slice(1350, None),
    "train1500": slice(0, 1500),
    "test1500": slice(1500, None),
}
_TRAINING_SPLIT = {"train": "train", "validation": "train", "test": "train",
                   "train1500": "train1500", "test1500": "train1500"}


def digits(split: str, *, binarize: bool = False) -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits with their labels and a stroke-thickness attribute.

    Args:
        split: ``"train"`` (images ``[:1000]``), ``"validation"`` (``[1000:1350]``) or ``"test"``
            (``[1350:]``), the split of the diffusion benchmarks; or ``"train1500"`` (``[:1500]``) and
            ``"test1500"`` (``[1500:]``, 297 images), the split of the digits-bin baselines
            (``examples/vae_digits.py``).
        binarize: threshold the 17 grey levels at half intensity (``> 0.5``; digits-bin) instead
            of scaling them to ``[0, 1]``.

    Returns:
        A dict of arrays with one row per image: ``"x"``, the pixels (float32, ``(n, 64)``);
        ``"y"``, the digit (int32, 0-9); ``"thick"``, 1 when the image's ink (its pixel sum, after
        binarizing if asked) exceeds the median ink of the protocol's training split, else 0
        (int32). Digit and thickness together take 20 values.

    Raises:
        ValueError: an unknown split.

    Example:
        >>> from gendsl.datasets import digits
        >>> test = digits("test1500", binarize=True)
        >>> test["x"].shape, sorted(set(test["x"].ravel().tolist())), test["y"][:5].tolist()
        ((297, 64), [0.0, 1.0], [1, 7, 4, 6, 3])
        >>> round(float(digits("train1500", binarize=True)["thick"].mean()), 2)  # ink counts tie at the median
        0.39
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits: split must be one of {', '.join(map(repr, DIGITS_SPLITS))}; got {split!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.data / 16.0
    pixels = (pixels > 0.5) if binarize else pixels
    pixels = pixels.astype(np.float32)
    ink = pixels.sum(axis=1)
    median = np.median(ink[DIGITS_SPLITS[_TRAINING_SPLIT[split]]])
    rows = DIGITS_SPLITS[split]
    return {"x": pixels[rows], "y": bunch.target[rows].astype(np.int32),
            "thick": (ink[rows] > median).astype(np.int32)}


# The sprites' factors and the values each index stands for: centres in pixels, half-sizes in pixels.
SPRITE_FACTORS = {
    "shape": ("square", "disc", "triangle"),
    "scale": (1.0, 2.0, 3.0, 4.0),
    "x": tuple(float(c) for c in range(4, 12)),
    "y": tuple(float(c) for c in range(4, 12)),
}


def sprites(repeats: int = 4, *, size: int = 16, jitter: float = 0.25,
            seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(images, factors)``: binary sprites in which every factor combination appears ``repeats`` times.

    A sprite is a square, a disc or an upward triangle (``shape``) of one of 4 half-sizes
    (``scale``) centred at one of 8 x- and 8 y-positions (``SPRITE_FACTORS`` gives the values): 768
    combinations. Each rendering shifts the centre by a uniform sub-pixel offset in
    ``[-jitter, jitter]`` on both axes, so repeats differ at the edges while the factors stay
    recoverable (positions are 1 pixel apart). A pixel is on when its centre lies inside the shape.
    The rows are shuffled; everything is determined by ``seed``.

    Args:
        repeats: renderings per combination (``768 * repeats`` images).
        size: the side of the square canvas; at least 16, so the largest sprite fits.
        jitter: the largest sub-pixel shift of the centre, below 0.5.
        seed: the random seed.

    Returns:
        ``images``: float32 in {0, 1}, shape ``(n, size, size)``; ``factors``: a dict of int32 arrays of
        shape ``(n,)`` with keys ``"shape"``, ``"scale"``, ``"x"``, ``"y"`` (indices into
        ``SPRITE_FACTORS``).

    Example:
        >>> from gendsl.datasets import sprites
        >>> images, factors = sprites(repeats=1, seed=0)
        >>> images.shape, sorted(factors), int(factors["x"].max())
        ((768, 16, 16), ['scale', 'shape', 'x', 'y'], 7)
    """
    if size < 16:
        raise ValueError(f"sprites: size must be at least 16 (the largest sprite spans up to pixel 15), got {size}")
    if not 0.0 <= jitter < 0.5:
        raise ValueError(f"sprites: jitter must be in [0, 0.5) pixels, got {jitter}")
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(len(v)) for v in SPRITE_FACTORS.values()), indexing="ij")
    index = np.repeat(np.stack([g.ravel() for g in grids], axis=1), repeats, axis=0)
    index = index[rng.permutation(len(index))].astype(np.int32)
    shape, scale, x, y = index.T
    half = np.asarray(SPRITE_FACTORS["scale"])[scale][:, None, None]
    cx = np.asarray(SPRITE_FACTORS["x"])[x][:, None, None] + rng.uniform(-jitter, jitter, (len(index), 1, 1))
    cy = np.asarray(SPRITE_FACTORS["y"])[y][:, None, None] + rng.uniform(-jitter, jitter, (len(index), 1, 1))
    rows, cols = np.mgrid[0:size, 0:size]
    dx, dy = cols[None] - cx, rows[None] - cy
    square = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    disc = dx**2 + dy**2 <= half**2
    # apex at the top row of the bounding box, widening to the full half-size at the bottom
    triangle = (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
    inside = np.where(shape[:, None, None] == 0, square, np.where(shape[:, None, None] == 1, disc, triangle))
    factors = {name: index[:, i] for i, name in enumerate(SPRITE_FACTORS)}
    return inside.astype(np.float32), factors
