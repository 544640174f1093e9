"""``Trainable``: the one protocol through which a front end trains, samples and evaluates any paper model.

A paper model knows its training objective, how its parameters start, how to draw from it
and how to score it on held-out data. ``gendsl fit/eval/sample`` need nothing else:

    svi = SVI(model.objective, optax.adam(1e-3))
    state = svi.init(key, data[:256], params=model.init_params(key, data))
    params = svi.run(key, steps, data, batch_size=256, state=state).params
    model.sample(params, key, 64, steps=50)
    model.evaluate(params, held_out, key)      # {"bits_per_dim": (value, standard_error)}

A model whose objective is of one data point (``AIR``: the ELBO of one image, so that each
image's discrete choices get their own estimator) says so with ``per_point = True``; train it
with ``SVI(model.objective, optimizer, per_point=True)``, which applies it to each point of a
minibatch and sums.

The parameters are whatever ``init_params`` returns and ``objective`` takes: a dict for the
program-based models (``DDPM``, ``DiffuseVAE``, ``AIR``, ``FlowMatching``, ``PFGMPP``), the
module itself for the ``equinox.Module`` models that are their own parameters (``VDM``,
``EDM``; ``SVI`` trains a module's inexact arrays). The method is called ``init_params`` rather than ``init`` because
``DDPM.init(key, *cond)`` already exists with another meaning.

Each ``evaluate`` returns ``{metric: (value, standard_error)}`` of plain floats: the figure
and the noise of its estimate, so that two runs can be compared honestly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from gendsl.inference import Expectation

__all__ = ["Trainable", "density_metrics", "divergence_options", "mean_and_error", "mmd_with_error",
           "sigma_ode_log_likelihood"]


@runtime_checkable
class Trainable(Protocol):
    """What every paper model in ``gendsl.models`` offers a training front end.

    Attributes:
        objective: an ``Expectation`` of ``F(params, data)`` to maximize; train it with
            ``gendsl.inference.SVI`` (``data`` is a batch with a leading axis: an array, or
            a tuple ``(xs, *conds)`` of arrays that ``SVI`` minibatches together).
        sample_options: the keyword options ``sample`` accepts (e.g. ``("method", "steps")``).
        per_point: optional; absent means False. True means that ``objective`` is of ONE
            data point (it sees a batch of one, or one element of each tuple member): train
            it with ``SVI(objective, optimizer, per_point=True)``, which sums it over the
            minibatch. ``isinstance(model, Trainable)`` does not require it; read it with
            ``getattr(model, "per_point", False)``.

    Methods:
        init_params(key, data) -> params: the initial parameters (``data``: the training
            data or a batch of it, for shapes).
        sample(params, key, n, **options) -> array: ``n`` draws, shape ``(n, *data.shape[1:])``.
        evaluate(params, data, key) -> dict: the model's natural metric on held-out
            ``data``, ``{name: (value, standard_error)}``.

    Example:
        >>> from gendsl.models import FlowMatching, Trainable
        >>> isinstance(FlowMatching(2, hidden=8, depth=1), Trainable)
        True
        >>> getattr(FlowMatching(2, hidden=8, depth=1), "per_point", False)
        False
    """

    objective: Expectation
    sample_options: tuple[str, ...]

    def init_params(self, key, data) -> Any: ...

    def sample(self, params, key, n: int, **options) -> jax.Array: ...

    def evaluate(self, params, data, key) -> dict[str, tuple[float, float]]: ...


def mean_and_error(values) -> tuple[float, float]:
    """The mean of per-point values and its standard error ``sd / sqrt(n)`` (0 for one point).

    Example:
        >>> mean_and_error([1.0, 2.0, 3.0])
        (2.0, 0.5773502691896258)
    """
    v = np.asarray(values, np.float64).ravel()
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), se


def mmd_with_error(samples, data, *, blocks: int = 10) -> tuple[float, float]:
    """Squared MMD (Gaussian kernel, median-distance bandwidth of ``data``) and its noise level.

    The value is the unbiased statistic of all points (``gendsl.metrics.mmd``). Its standard
    error comes from ``blocks`` disjoint blocks of both samples: the spread of the block
    statistics over ``sqrt(blocks)``. Each block statistic is noisier than the full one, so
    this errs on the large side; two models whose MMDs differ by less are not distinguished.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> value, se = mmd_with_error(rng.normal(size=(400, 2)), rng.normal(size=(400, 2)))
        >>> abs(value) < 3 * se
        True
    """
    from gendsl.metrics import mmd

    x, y = np.asarray(samples, np.float64), np.asarray(data, np.float64)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    sub = y[: min(len(y), 1000)]
    d = np.sqrt(((sub[:, None, :] - sub[None, :, :]) ** 2).sum(-1))
    bandwidth = float(np.median(d[np.triu_indices(len(sub), 1)]))
    value = mmd(x, y, bandwidth=bandwidth)
    blocks = max(2, min(blocks, len(x) // 4, len(y) // 4))
    pairs = zip(np.array_split(x, blocks), np.array_split(y, blocks), strict=True)
    per = [mmd(a, b, bandwidth=bandwidth) for a, b in pairs]
    return float(value), float(np.std(per, ddof=1) / math.sqrt(blocks))


def sigma_ode_log_likelihood(denoise: Callable, params, x, sigma_min: float, sigma_max: float,
                             prior_log_prob: Callable, **options) -> jax.Array:
    """Exact ``log p(x)`` per point under EDM's / PFGM++'s probability-flow ODE in the noise level.

    Integrates ``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``sigma_min`` (where the
    perturbed data are taken as the data) up to ``sigma_max`` with the divergence, and
    scores the end point under the perturbation kernel there (``prior_log_prob``).

    Args:
        denoise: ``D(x, sigma, params)`` for one point.
        params: passed to ``denoise``.
        x: points, leading batch axis.
        sigma_min, sigma_max: the integration range.
        prior_log_prob: log density of one end point at ``sigma_max``.
        **options: ``ode_log_likelihood``'s (``divergence="hutchinson"`` with ``key``, tolerances).

    Example:
        >>> import jax.numpy as jnp
        >>> from jax.scipy.stats import norm
        >>> # The exact denoiser of N(0, 1) data: D(x, s) = x / (1 + s^2); then p_sigma = N(0, 1 + sigma^2).
        >>> lp = sigma_ode_log_likelihood(lambda x, s, p: x / (1 + s**2), None, jnp.array([[0.3], [-1.2]]),
        ...                               1e-3, 50.0, lambda z: norm.logpdf(z, scale=jnp.sqrt(1 + 50.0**2)).sum())
        >>> bool(jnp.allclose(lp, norm.logpdf(jnp.array([0.3, -1.2])), atol=1e-3))
        True
    """
    from gendsl.inference.diffusion import denoiser_velocity, ode_log_likelihood  # diffrax: only when used

    return ode_log_likelihood(denoiser_velocity(denoise), jnp.asarray(x), sigma_min, sigma_max, prior_log_prob,
                              args=params, **options)


def density_metrics(log_prob: Callable, data, key, draw: Callable) -> dict[str, tuple[float, float]]:
    """``evaluate``'s figures for a model with an exact density: NLL, bits/dim, and MMD for 2-D data.

    Args:
        log_prob: ``x -> log p(x)`` per point of a batch.
        data: held-out points, leading batch axis.
        key: PRNG key of the samples drawn for the MMD.
        draw: ``(key, n) -> n samples``.

    Returns:
        ``{"nll": (nats per point, se), "bits_per_dim": (nll / (dim ln 2), se / (dim ln 2))}``,
        plus ``"mmd"`` (``mmd_with_error``) when the points are 2-D. The bits per dimension
        are of the continuous density (they can be negative); for quantized data add the
        log2 of the bin width's inverse.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.scipy.stats import norm
        >>> x = jax.random.normal(jax.random.key(0), (100, 3))
        >>> out = density_metrics(lambda x: norm.logpdf(x).sum(-1), x, jax.random.key(1), None)
        >>> sorted(out), round(out["nll"][0] / 3, 1)    # about the entropy of N(0, 1), 1.42 nats
        (['bits_per_dim', 'nll'], 1.4)
    """
    data = jnp.asarray(data)
    nll, se = mean_and_error(-np.asarray(log_prob(data)))
    per_dim = math.prod(data.shape[1:]) * math.log(2.0)
    out = {"nll": (nll, se), "bits_per_dim": (nll / per_dim, se / per_dim)}
    if data.ndim == 2 and data.shape[1] == 2:
        out["mmd"] = mmd_with_error(np.asarray(draw(key, data.shape[0])), np.asarray(data))
    return out


def divergence_options(key, probes: int | None, options: dict) -> tuple[jax.Array, dict]:
    """``evaluate``'s choice of divergence for an ODE likelihood: exact, or Hutchinson with ``probes`` probes.

    Args:
        key: the ``evaluate`` key.
        probes: None for the exact divergence (the Jacobian's trace); a positive int for
            Hutchinson's unbiased estimate with that many Rademacher probes per point.
        options: the other ``ode_log_likelihood`` options.

    Returns:
        ``(key, options)``: the key left for the rest of the evaluation (e.g. the MMD's
        samples) and the options with ``divergence``, ``key`` and ``probes`` set.

    Example:
        >>> import jax
        >>> key, options = divergence_options(jax.random.key(0), 4, {})
        >>> options["divergence"], options["probes"]
        ('hutchinson', 4)
    """
    if probes is None:
        return key, options
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"evaluate: probes must be a positive int (Hutchinson probes per point) or None, "
                         f"got {probes!r}")
    key, k_probes = jax.random.split(key)
    return key, {**options, "divergence": "hutchinson", "key": k_probes, "probes": probes}
