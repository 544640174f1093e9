"""Evaluation metrics: two-sample distances, classifier tests, memorization, disentanglement, active units.

Every function is a pure function of arrays. Points are the rows of an array ``(n, ...)``: anything after
the first axis is flattened, so images and vectors are handled alike. The computations that need no
training run in NumPy in float64 (no compilation, exact enough to see differences of 1e-4); the two that
fit a classifier (``c2st`` and InfoE in ``info_mec``) train it with optax under ``jax.jit``.

Return conventions: the distances (``mmd``, ``energy_distance``, ``sliced_wasserstein``,
``frechet_distance``) return a float; the proportions measured on points the score did not fit
(``c2st``, ``memorization_ratio``) return ``(value, standard_error)``, as ``gendsl.models``'s
``evaluate`` does. The standard errors are binomial, conditional on the reference sets.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "active_units",
    "c2st",
    "energy_distance",
    "frechet_distance",
    "info_mec",
    "knn_precision_recall",
    "memorization_ratio",
    "mmd",
    "pca_features",
    "sliced_wasserstein",
]

# Rows of a pairwise-distance block are chosen so that a block holds about this many float64 entries.
_BLOCK = 2**21


def _points(x, name: str, *, at_least: int = 2) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 0 or len(x) < at_least:
        raise ValueError(f"{name}: expected an array of at least {at_least} points (n, ...), got shape {x.shape}")
    return x.reshape(len(x), -1)


def _pair(x, y, names: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _points(x, names[0]), _points(y, names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must hold points of one shape: got {names[0]} {np.shape(x)} "
            f"and {names[1]} {np.shape(y)}"
        )
    return a, b


# --- kernel two-sample statistics -------------------------------------------------------------------


def _pair_sums(x, y, kernel, chunk: int):
    total = 0.0
    for i in range(0, len(x), chunk):
        d = x[i : i + chunk, None, :] - y[None, :, :]
        total += kernel(np.sqrt((d**2).sum(-1))).sum()
    return total


def _two_sample(x, y, kernel, chunk: int) -> float:
    """``E k(X, X') + E k(Y, Y') - 2 E k(X, Y)`` with unbiased (U-statistic) within-sample means."""
    x, y = _pair(x, y)
    n, m = len(x), len(y)
    diag = float(kernel(np.zeros(())))
    xx = (_pair_sums(x, x, kernel, chunk) - n * diag) / (n * (n - 1))
    yy = (_pair_sums(y, y, kernel, chunk) - m * diag) / (m * (m - 1))
    return float(xx + yy - 2 * _pair_sums(x, y, kernel, chunk) / (n * m))


def energy_distance(x, y, *, chunk: int = 1000) -> float:
    """The energy distance ``2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` of two samples (unbiased, float64).

    The within-sample means leave out the zero diagonal (U-statistics), so the estimate is unbiased: it
    fluctuates around 0 for two samples of one distribution (and may be negative). It is dominated by
    large scales: use it for the overall placement and spread of the mass, ``mmd`` with a small
    bandwidth for fine structure.

    Args:
        x: points ``(n, ...)``.
        y: points ``(m, ...)`` of the same shape.
        chunk: rows of ``x`` per block of pairwise distances (memory only).

    Example:
        >>> import numpy as np
        >>> from gendsl.metrics import energy_distance
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
        >>> abs(energy_distance(a, b)) < 0.01 < energy_distance(a, b + 0.3)
        True
    """
    return -_two_sample(x, y, lambda d: d, chunk)


def mmd(x, y, *, bandwidth: float, chunk: int = 1000) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel ``exp(-d^2 / (2 bandwidth^2))`` (unbiased).

    A small bandwidth makes it sensitive to fine structure (thin manifolds) that the energy distance,
    dominated by large scales, hardly sees. ``gendsl.models.mmd_with_error`` picks the bandwidth from the
    data and adds a standard error.

    Args:
        x: points ``(n, ...)``.
        y: points ``(m, ...)`` of the same shape.
        bandwidth: the kernel's length scale, in the units of the points.
        chunk: rows of ``x`` per block of pairwise distances (memory only).

    Example:
        >>> import numpy as np
        >>> from gendsl.metrics import mmd
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
        >>> abs(mmd(a, b, bandwidth=0.5)) < 0.005 < mmd(a, b + 0.3, bandwidth=0.5)
        True
    """
    if not bandwidth > 0:
        raise ValueError(f"mmd: bandwidth must be positive, got {bandwidth}")
    return _two_sample(x, y, lambda d: np.exp(-0.5 * (d / bandwidth) ** 2), chunk)


# --- sliced Wasserstein -----------------------------------------------------------------------------


def _wasserstein_1d_pow(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    """``W_p^p`` between the empirical laws of the rows of ``a`` (k, n) and ``b`` (k, m), exactly.

    The quantile functions are step functions with steps at ``i/n`` and ``j/m``; on each piece of the
    merged grid both are constant, so the integral of ``|F^-1 - G^-1|^p`` is a weighted sum.
    """
    n, m = a.shape[1], b.shape[1]
    a, b = np.sort(a, axis=1), np.sort(b, axis=1)
    if n == m:
        return (np.abs(a - b) ** p).mean(axis=1)
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    w = np.diff(u, prepend=0.0)
    mid = u - w / 2
    ia = np.minimum((mid * n).astype(int), n - 1)
    ib = np.minimum((mid * m).astype(int), m - 1)
    return (np.abs(a[:, ia] - b[:, ib]) ** p) @ w


def sliced_wasserstein(x, y, *, key: jax.Array, projections: int = 128, p: float = 2.0) -> float:
    """The sliced Wasserstein distance ``(E_theta W_p^p(theta'X, theta'Y))^(1/p)`` of two samples.

    ``theta`` is uniform on the unit sphere; the expectation is a Monte Carlo mean over ``projections``
    directions drawn with ``key``, and each one-dimensional ``W_p`` between the projected empirical laws
    is exact (sorting; samples of different sizes are allowed). For one-dimensional points the directions
    are ``+-1`` and the result is the exact ``W_p``. Like every plug-in Wasserstein estimate it is biased
    upwards: two samples of one law give a small positive value that shrinks as the samples grow. For
    ``N(0, I)`` against ``N(delta, I)`` in ``d`` dimensions, ``SW_2 = |delta| / sqrt(d)``.

    Args:
        x: points ``(n, ...)``.
        y: points ``(m, ...)`` of the same shape.
        key: a JAX PRNG key for the directions.
        projections: how many directions.
        p: the order, ``p >= 1``.

    Example:
        >>> import jax, numpy as np
        >>> from gendsl.metrics import sliced_wasserstein
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2000, 1))
        >>> round(sliced_wasserstein(x, x + 1.5, key=jax.random.key(0)), 6)  # a shift: W_2 = 1.5 exactly
        1.5
    """
    a, b = _pair(x, y)
    if not p >= 1:
        raise ValueError(f"sliced_wasserstein: p must be at least 1, got {p}")
    if projections < 1:
        raise ValueError(f"sliced_wasserstein: projections must be at least 1, got {projections}")
    theta = np.asarray(jax.random.normal(key, (projections, a.shape[1])), np.float64)
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    return float(_wasserstein_1d_pow(theta @ a.T, theta @ b.T, p).mean() ** (1 / p))


# --- Frechet distance in a feature map --------------------------------------------------------------


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _gaussian_frechet(mu1, cov1, mu2, cov2) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)``: the squared W_2 between two Gaussians."""
    s1 = _sqrtm_psd(cov1)
    cross = np.linalg.eigvalsh(s1 @ cov2 @ s1)  # symmetric, so its square root's trace is sum sqrt(eig)
    value = ((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(value, 0.0))


def frechet_distance(x, y, *, features: Callable | None = None) -> float:
    """The Fréchet distance of Gaussians fitted to two samples in a fixed feature map (FID's formula).

    Each sample's features get a mean ``mu`` and covariance ``C`` (unbiased), and the result is the
    squared 2-Wasserstein distance between ``N(mu_x, C_x)`` and ``N(mu_y, C_y)``:
    ``|mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x^1/2 C_y C_x^1/2)^1/2)``. It sees only the first two moments of
    the features, so the feature map decides what it measures; the map must be the same for every model
    compared (``pca_features`` of the training data is one such map). The plug-in estimate is biased
    upwards by about ``(tr C_x + tr C_y) / n``: compare models at one sample size.

    Args:
        x: points ``(n, ...)``, or features if ``features`` is None.
        y: points ``(m, ...)`` of the same shape.
        features: a function from a batch of points to a batch of feature vectors ``(n, k)``; None
            when ``x`` and ``y`` are features already.

    Example:
        >>> import numpy as np
        >>> from gendsl.metrics import frechet_distance
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(20000, 2)), 2.0 * rng.normal(size=(20000, 2)) + 1.0
        >>> abs(frechet_distance(x, y) - 4.0) < 0.2  # |mu_x - mu_y|^2 + 2 (1 - 2)^2 = 2 + 2
        True
    """
    if features is not None:
        x, y = features(x), features(y)
    a, b = _pair(x, y)
    return _gaussian_frechet(
        a.mean(0),
        np.cov(a, rowvar=False).reshape(a.shape[1], -1),
        b.mean(0),
        np.cov(b, rowvar=False).reshape(b.shape[1], -1),
    )


def pca_features(data, dims: int = 16) -> Callable[[np.ndarray], np.ndarray]:
    """A fixed feature map: projection onto the top ``dims`` principal components of ``data``.

    Fit it once on reference data (the training images, say) and pass it as ``features=`` to
    ``frechet_distance`` for every model compared.

    Args:
        data: points ``(n, ...)``.
        dims: how many components, at most the points' dimension.

    Example:
        >>> import numpy as np
        >>> from gendsl.metrics import pca_features
        >>> data = np.random.default_rng(0).normal(size=(500, 10)) * np.arange(1, 11)
        >>> pca_features(data, dims=3)(data).shape
        (500, 3)
    """
    x = _points(data, "data")
    if not 1 <= dims <= x.shape[1]:
        raise ValueError(f"pca_features: dims must be between 1 and the points' dimension {x.shape[1]}, got {dims}")
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:dims]

    def project(points) -> np.ndarray:
        return (np.asarray(points, np.float64).reshape(len(points), -1) - mean) @ components.T

    return project


# --- nearest neighbours: precision/recall and memorization ------------------------------------------


def _nearest_sq(a: np.ndarray, b: np.ndarray, k: int, *, skip_self: bool = False) -> np.ndarray:
    """Squared distance from each row of ``a`` to its ``k``-th nearest row of ``b`` (1-based), in blocks."""
    out = np.empty(len(a))
    b2 = (b**2).sum(1)
    rows = max(1, _BLOCK // len(b))
    kk = k if skip_self else k - 1  # with a == b, column 0 of the sorted row is the point itself
    for i in range(0, len(a), rows):
        block = a[i : i + rows]
        d = np.maximum((block**2).sum(1)[:, None] + b2[None, :] - 2 * block @ b.T, 0.0)
        out[i : i + rows] = np.partition(d, kk, axis=1)[:, kk]
    return out


def _coverage(points: np.ndarray, centres: np.ndarray, radius_sq: np.ndarray) -> float:
    """The fraction of ``points`` inside at least one ball ``|p - centre_j|^2 <= radius_sq_j``."""
    inside = np.zeros(len(points), bool)
    c2 = (centres**2).sum(1)
    rows = max(1, _BLOCK // len(centres))
    for i in range(0, len(points), rows):
        block = points[i : i + rows]
        d = np.maximum((block**2).sum(1)[:, None] + c2[None, :] - 2 * block @ centres.T, 0.0)
        inside[i : i + rows] = (d <= radius_sq[None, :] * (1 + 1e-9)).any(1)
    return float(inside.mean())


def knn_precision_recall(real, fake, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls as estimates of each support.

    Each real point gets a ball reaching its ``k``-th nearest real neighbour; their union estimates the
    real data's support. Precision is the fraction of generated points inside it (quality: samples look
    like data), recall the fraction of real points inside the same construction on the generated points
    (coverage: the data's modes are reproduced). Two samples of one law and one size have equal expected
    precision and recall, below 1 (a larger ``k`` brings both closer to 1); dropping a mode lowers
    recall, samples off the data lower precision. Use the same ``k`` and sample sizes for every model
    compared, and meaningful features for high-dimensional points (the paper used a classifier's).

    Args:
        real: points ``(n, ...)``.
        fake: generated points ``(m, ...)`` of the same shape.
        k: the neighbour that sets each ball's radius.

    Returns:
        ``(precision, recall)``.

    Example:
        >>> import numpy as np
        >>> from gendsl.metrics import knn_precision_recall
        >>> rng = np.random.default_rng(0)
        >>> real = rng.normal(size=(1000, 2))
        >>> precision, recall = knn_precision_recall(real, 0.2 * rng.normal(size=(1000, 2)))  # one narrow mode
        >>> precision > 0.95 and recall < 0.3
        True
    """
    a, b = _pair(real, fake, ("real", "fake"))
    if not 1 <= k < min(len(a), len(b)):
        raise ValueError(f"knn_precision_recall: k must be between 1 and the smaller sample size - 1, got {k}")
    real_radius = _nearest_sq(a, a, k, skip_self=True)
    fake_radius = _nearest_sq(b, b, k, skip_self=True)
    return _coverage(b, a, real_radius), _coverage(a, b, fake_radius)


def memorization_ratio(samples, train, held_out, *, threshold: float = 1.0) -> tuple[float, float]:
    """The fraction of samples nearer to a training point than ``threshold`` times their nearest held-out one.

    Each generated point gets the ratio ``d(nearest training point) / d(nearest held-out point)``; a model
    that copies its training data puts the ratio near 0. With ``threshold = 1`` and a model that samples
    the data's law, the nearest point of the union of both sets is a training point with probability
    ``n_train / (n_train + n_held_out)`` (exchangeability), whatever the law and the dimension: 0.5 for
    sets of equal size. That is the null to compare with; a fraction well above it is memorization that
    sample-quality metrics miss. A smaller threshold (1/3, say) counts near-copies only.

    Args:
        samples: generated points ``(s, ...)``.
        train: the model's training points ``(n_train, ...)``.
        held_out: points of the same law the model did not see ``(n_held_out, ...)``.
        threshold: the ratio below which a sample counts.

    Returns:
        ``(fraction, standard_error)``; the error is binomial over the samples, given the two sets.

    Example:
        >>> import numpy as np
        >>> from gendsl.metrics import memorization_ratio
        >>> rng = np.random.default_rng(0)
        >>> train, held_out = rng.normal(size=(500, 4)), rng.normal(size=(500, 4))
        >>> copies = train[:200] + 0.01 * rng.normal(size=(200, 4))
        >>> memorization_ratio(copies, train, held_out)[0]
        1.0
    """
    s, tr = _pair(samples, train, ("samples", "train"))
    _, te = _pair(samples, held_out, ("samples", "held_out"))
    if not threshold > 0:
        raise ValueError(f"memorization_ratio: threshold must be positive, got {threshold}")
    closer = np.sqrt(_nearest_sq(s, tr, 1)) < threshold * np.sqrt(_nearest_sq(s, te, 1))
    fraction = float(closer.mean())
    return fraction, math.sqrt(fraction * (1 - fraction) / len(s))


# --- classifiers: C2ST and InfoE --------------------------------------------------------------------


def _logits(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


@functools.partial(jax.jit, static_argnames=("classes", "hidden", "steps"))
def _fit_classifier(key, x, labels, learning_rate, *, classes: int, hidden: int, steps: int):
    """Full-batch Adam on the mean softmax cross-entropy; ``hidden = 0`` is multinomial logistic regression.

    Logistic regression starts at zero (its loss is convex, so no key is needed); the hidden layer starts
    at ``N(0, 1/fan_in)`` so that tanh units start in their linear range.
    """
    d = x.shape[1]
    if hidden:
        w1 = jax.random.normal(key, (d, hidden)) / jnp.sqrt(d)
        params = [(w1, jnp.zeros(hidden)), (jnp.zeros((hidden, classes)), jnp.zeros(classes))]
    else:
        params = [(jnp.zeros((d, classes)), jnp.zeros(classes))]
    optimizer = optax.adam(learning_rate)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(_logits(p, x), labels).mean()

    def step(carry, _):
        p, state = carry
        value, grad = jax.value_and_grad(loss)(p)
        updates, state = optimizer.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params, loss(params)


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, scale = train.mean(0), train.std(0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant feature carries nothing; leave it at 0
    return [((a - mean) / scale).astype(np.float32) for a in (train, *others)]


def c2st(
    x,
    y,
    *,
    key: jax.Array,
    hidden: int = 32,
    steps: int = 500,
    learning_rate: float = 0.01,
    train_fraction: float = 0.5,
) -> tuple[float, float]:
    """The classifier two-sample test (Lopez-Paz & Oquab 2017): held-out accuracy at telling ``x`` from ``y``.

    The two samples (of equal size, so that chance is 0.5) are labelled, shuffled and split; a small
    network (one tanh layer of ``hidden`` units, or logistic regression with ``hidden = 0``) is trained
    on ``train_fraction`` of the points with full-batch Adam and scored on the rest. For two samples of
    one law the accuracy is a binomial proportion around 0.5, so ``(accuracy - 0.5) / standard_error``
    is the test statistic; an accuracy near 1 means the samples are easily told apart. The accuracy
    is a lower bound on the best classifier's, so it is only as sensitive as the network is able.

    Args:
        x: points ``(n, ...)``.
        y: points ``(n, ...)`` of the same shape and number.
        key: a JAX PRNG key for the split and the network's initialization.
        hidden: hidden units; 0 for logistic regression.
        steps: Adam steps.
        learning_rate: Adam's step size (the inputs are standardized).
        train_fraction: the share of the points the classifier is trained on.

    Returns:
        ``(accuracy, standard_error)`` on the held-out points.

    Example:
        >>> import jax, numpy as np
        >>> from gendsl.metrics import c2st
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
        >>> accuracy, se = c2st(x, y + 1.0, key=jax.random.key(0))  # the Bayes accuracy is Phi(1/sqrt(2)) = 0.76
        >>> accuracy > 0.5 + 4 * se
        True
    """
    a, b = _pair(x, y)
    if len(a) != len(b):
        raise ValueError(
            f"c2st: x and y must have the same number of points (chance is then 0.5), "
            f"got {len(a)} and {len(b)}; subsample the larger"
        )
    if not 0 < train_fraction < 1:
        raise ValueError(f"c2st: train_fraction must be in (0, 1), got {train_fraction}")
    points = np.concatenate([a, b])
    labels = np.repeat(np.array([0, 1], np.int32), len(a))
    k_split, k_init = jax.random.split(key)
    order = np.asarray(jax.random.permutation(k_split, len(points)))
    cut = round(train_fraction * len(points))
    if not 2 <= cut <= len(points) - 2:
        raise ValueError(f"c2st: {len(points)} points leave too few on one side of the split at {train_fraction}")
    train, test = order[:cut], order[cut:]
    xtr, xte = _standardize(points[train], points[test])
    params, _ = _fit_classifier(k_init, xtr, labels[train], learning_rate, classes=2, hidden=hidden, steps=steps)
    predicted = np.asarray(jnp.argmax(_logits(params, xte), axis=-1))
    accuracy = float((predicted == labels[test]).mean())
    return accuracy, math.sqrt(accuracy * (1 - accuracy) / len(test))


# --- disentanglement: InfoMEC -----------------------------------------------------------------------


def _codes(column: np.ndarray) -> np.ndarray:
    return np.unique(column, return_inverse=True)[1].ravel()


def _entropy_of_counts(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _entropy(codes: np.ndarray) -> float:
    return _entropy_of_counts(np.bincount(codes))


def _mutual_information(u: np.ndarray, v: np.ndarray) -> float:
    """Plug-in ``I(U; V) = H(U) + H(V) - H(U, V)`` of two integer codes, in nats."""
    joint = np.bincount(u * (v.max() + 1) + v)
    return _entropy(u) + _entropy(v) - _entropy_of_counts(joint)


def _binned(column: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = column.min(), column.max()
    if hi == lo:
        return np.zeros(len(column), int)
    return np.minimum(((column - lo) / (hi - lo) * bins).astype(int), bins - 1)


def info_mec(latents, factors, *, bins: int = 20, steps: int = 2000, learning_rate: float = 0.1) -> dict:
    """InfoM, InfoE and InfoC (Hsu et al. 2023): modularity, explicitness and compactness of a representation.

    ``nmi[i, j] = I(factor_i; latent_j) / H(factor_i)``, with each latent cut into ``bins`` equal-width
    bins over its range (a plug-in estimate; it is biased upwards by about ``(levels - 1)(bins - 1) /
    (2 n)`` nats before normalization, so use many more points than bins times levels). Latents whose
    range is below 1/20 of the largest range are inactive and left out of InfoM and InfoC (the paper's
    rule). Then, with ``F`` factors and ``L`` active latents:

    - InfoM, modularity: each latent informs about one factor. The mean over latents of
      ``max_i nmi / sum_i nmi``, rescaled so that ``1/F`` maps to 0 and 1 to 1.
    - InfoC, compactness: each factor is captured by one latent. The same over factors, with ``1/L``.
    - InfoE, explicitness: the factors are linearly decodable from all latents together. For each
      factor, ``1 - CE / H``, where ``CE`` is the training cross-entropy of a multinomial logistic
      regression from the standardized latents (full-batch Adam, ``steps`` steps) and ``H`` the factor's
      entropy (the cross-entropy of the best constant prediction); the mean over factors. An unpenalized
      fit on separable data only approaches ``CE = 0``, so InfoE approaches 1 from below.

    A latent that carries no information about any factor counts as chance (0) in InfoM.

    Args:
        latents: ``(n, L)`` continuous (or discrete) codes, one row per data point.
        factors: ``(n, F)`` discrete ground-truth factors (any values; each column's distinct values
            are its levels).
        bins: equal-width bins per latent for the mutual information.
        steps: Adam steps of each logistic regression for InfoE.
        learning_rate: Adam's step size for InfoE.

    Returns:
        ``{"infom", "infoe", "infoc"}`` as floats, plus ``"nmi"`` ``(F, L)`` and the boolean ``"active"`` ``(L,)``.

    Example:
        >>> import numpy as np
        >>> from gendsl.metrics import info_mec
        >>> grid = np.stack(np.meshgrid(np.arange(4), np.arange(5), indexing="ij"), -1).reshape(-1, 2)
        >>> factors = np.tile(grid, (10, 1))  # every combination 10 times
        >>> scores = info_mec(factors.astype(float), factors)
        >>> round(scores["infom"], 6), round(scores["infoc"], 6), scores["infoe"] > 0.9
        (1.0, 1.0, True)
    """
    z = _points(latents, "latents")
    s = np.asarray(factors)
    if s.ndim != 2 or len(s) != len(z):
        raise ValueError(f"info_mec: factors must be (n, F) with the latents' n = {len(z)}, got shape {s.shape}")
    if s.shape[1] < 2:
        raise ValueError(f"info_mec: need at least 2 factors (modularity is trivial with one), got {s.shape[1]}")
    if bins < 2:
        raise ValueError(f"info_mec: bins must be at least 2, got {bins}")
    codes = [_codes(s[:, i]) for i in range(s.shape[1])]
    entropies = np.array([_entropy(c) for c in codes])
    if np.any(entropies == 0):
        raise ValueError(f"info_mec: factor(s) {np.nonzero(entropies == 0)[0].tolist()} take one value only")
    binned = [_binned(z[:, j], bins) for j in range(z.shape[1])]
    nmi = np.array([[_mutual_information(c, b) for b in binned] for c in codes]) / entropies[:, None]

    ranges = z.max(0) - z.min(0)
    active = ranges > ranges.max() / 20
    if active.sum() < 2:
        raise ValueError(
            f"info_mec: need at least 2 active latents (range above 1/20 of the largest), "
            f"got {int(active.sum())} of {z.shape[1]}"
        )
    pruned = nmi[:, active]

    def concentration(m: np.ndarray, axis: int) -> float:
        total = m.sum(axis)
        count = m.shape[axis]
        share = np.where(total > 0, m.max(axis) / np.where(total > 0, total, 1.0), 1 / count)
        return float((share.mean() - 1 / count) / (1 - 1 / count))

    (xz,) = _standardize(z)
    infoe = []
    for c, h in zip(codes, entropies, strict=True):
        _, ce = _fit_classifier(
            jax.random.key(0), xz, c.astype(np.int32), learning_rate, classes=int(c.max()) + 1, hidden=0, steps=steps
        )
        infoe.append(1 - float(ce) / h)
    return {
        "infom": concentration(pruned, 0),
        "infoe": float(np.mean(infoe)),
        "infoc": concentration(pruned, 1),
        "nmi": nmi,
        "active": active,
    }


# --- active units -----------------------------------------------------------------------------------


def active_units(means, *, threshold: float = 0.01) -> np.ndarray:
    """Which latent dimensions are active (Burda et al. 2016): ``Var_x(E_q[z_j | x]) > threshold``.

    A dimension whose posterior mean hardly moves across the data is not used by the model: the decoder
    receives (nearly) the prior there. Pass the encoder's posterior means of many data points, one row
    per point; the variance across them is the unbiased sample variance.

    Args:
        means: ``(n, L)`` posterior means ``E_q[z | x_i]``.
        threshold: the variance above which a dimension counts as active (the paper's 0.01).

    Returns:
        a boolean array ``(L,)``; its sum is the number of active units.

    Example:
        >>> import numpy as np
        >>> from gendsl.metrics import active_units
        >>> rng = np.random.default_rng(0)
        >>> means = rng.normal(size=(1000, 4)) * np.array([1.0, 0.5, 0.01, 0.0])
        >>> active_units(means)
        array([ True,  True, False, False])
    """
    m = np.asarray(means, np.float64)
    if m.ndim != 2 or len(m) < 2:
        raise ValueError(f"active_units: means must be (n, L) with n >= 2 data points, got shape {m.shape}")
    return m.var(axis=0, ddof=1) > threshold
