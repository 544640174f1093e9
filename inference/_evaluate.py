"""Held-out evaluation of a fitted model and guide: the ELBO and the IWAE-K bound, with standard errors."""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from gendsl.inference._objectives import elbo, iwelbo
from gendsl.internal import as_key

__all__ = ["BoundEstimates", "evaluate_bounds", "held_out_estimate", "log_predictive_density",
           "pointwise_log_likelihood"]


@dataclasses.dataclass(frozen=True)
class BoundEstimates:
    """What ``evaluate_bounds`` measured.

    Attributes:
        elbo, elbo_se: the ELBO (per data point with ``per_point``) and its Monte-Carlo
            standard error over the repeats.
        iwae, iwae_se: the IWAE-K bound, a lower bound of ``log p(x)`` that tightens with K,
            and its standard error.
        points: the number of data points averaged over (None for a whole data set).
    """

    elbo: float
    elbo_se: float
    iwae: float
    iwae_se: float
    points: int | None


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), se


def evaluate_bounds(model, guide, params: dict, data, *, key, particles: int = 100, samples: int = 10,
                    repeats: int = 3, per_point: bool = False, chunk: int = 100) -> BoundEstimates:
    """The ELBO and IWAE-K of ``model`` with ``guide`` at ``params`` on ``data``, each with its standard error.

    With ``per_point``, ``data``'s leading axis indexes data points; each point is evaluated
    on its own (the IWAE-K bound of each point, as in Burda et al. 2016) and the results are
    averaged over points, ``chunk`` points per compiled call. Otherwise the bounds are those
    of the whole data set (``log p(data)``). Each figure is the mean of ``repeats``
    independent estimates; the standard error is over those repeats.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import evaluate_bounds
        >>> @gendsl.model
        ... def p(x):
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("z", dist.Normal(0.5 * x, 0.5**0.5))  # the exact posterior
        >>> r = evaluate_bounds(p, q, {}, 1.0, key=jax.random.key(0), particles=5)
        >>> round(r.iwae, 4), round(r.elbo, 4)  # both log N(1; 0, 2) exactly
        (-1.5155, -1.5155)
    """
    if repeats < 2:
        raise ValueError(f"evaluate_bounds: repeats must be at least 2 for a standard error, got {repeats}")
    key = as_key(key)
    bound, iw = elbo(model, guide), iwelbo(model, guide, particles)
    if not per_point:
        keys = jax.random.split(key, 2 * repeats).reshape(2, repeats)
        e = jax.jit(jax.vmap(lambda k: bound.estimate(k, params, data, samples=samples)))(keys[0])
        w = jax.jit(jax.vmap(lambda k: iw.estimate(k, params, data)))(keys[1])
        return BoundEstimates(*_mean_se(e), *_mean_se(w), None)

    def one(k, x):
        single = jax.tree_util.tree_map(lambda a: a[None], x)
        k1, k2 = jax.random.split(k)
        return bound.estimate(k1, params, single, samples=samples), iw.estimate(k2, params, single)

    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, None)), in_axes=(0, 0)))
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    elbos, iwaes = [], []
    for start in range(0, n, chunk):
        x = jax.tree_util.tree_map(lambda a, s=start: a[s:s + chunk], data)
        m = jax.tree_util.tree_leaves(x)[0].shape[0]
        keys = jax.random.split(jax.random.fold_in(key, start), m * repeats).reshape(m, repeats)
        e, w = run(keys, x)
        elbos.append(np.asarray(e))
        iwaes.append(np.asarray(w))
    e, w = np.concatenate(elbos), np.concatenate(iwaes)  # (points, repeats)
    # Average over points; the standard error is over the repeats of that average.
    return BoundEstimates(*_mean_se(e.mean(axis=0)), *_mean_se(w.mean(axis=0)), n)


def held_out_estimate(objective, key, data, *, samples: int = 10, limit: int | None = 1000,
                      per_point: bool = False, pointwise: bool = False):
    """``f(params) -> float``: ``objective`` on held-out ``data``, with the same key at every call.

    For a curve of the held-out objective during training: common random numbers (one key) make
    successive values differ by the parameters' change, not by fresh noise. The estimate is
    compiled once; ``limit`` caps the number of data points (the leading axis; None: all), and
    ``per_point`` divides by their number (for a bound that sums over points). ``pointwise``
    is for an objective of one data point (as trained with ``SVI(per_point=True)``): it is
    estimated at each point with a key of its own and the mean is returned.

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import elbo, held_out_estimate
        >>> @gendsl.model
        ... def p(x):
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("z", dist.Normal(0.5 * x, 0.5**0.5))
        >>> f = held_out_estimate(elbo(p, q), jax.random.key(0), 1.0)
        >>> round(f({}), 4), f({}) == f({})  # log N(1; 0, 2), the same value at every call
        (-1.5155, True)
    """
    leaves = jax.tree_util.tree_leaves(data)
    n = leaves[0].shape[0] if leaves and jnp.ndim(leaves[0]) else None
    if n is not None and limit is not None and n > limit:
        data = jax.tree_util.tree_map(lambda a: a[:limit], data)
        n = limit
    scale = 1.0 / n if per_point and n else 1.0
    key = as_key(key)
    if pointwise:
        if n is None:
            raise ValueError("held_out_estimate: pointwise=True needs data with a leading data-point axis")
        keys = jax.random.split(key, n)
        estimate = eqx.filter_jit(lambda p, x: jnp.mean(
            jax.vmap(lambda k, xi: objective.estimate(k, p, xi, samples=samples))(keys, x)))
    else:
        estimate = eqx.filter_jit(lambda p, x: objective.estimate(key, p, x, samples=samples) * scale)
    return lambda params: float(estimate(params, data))


def pointwise_log_likelihood(model, draws: dict, *args, params: dict | None = None, **kwargs) -> dict:
    """Each observed site's log density, element by element, at each draw of the latents.

    What ``arviz.loo`` and a held-out predictive density need from a posterior sample (from
    NUTS, or from a guide): the model is run on ``args`` with its latent sites set to each
    draw in turn.

    Args:
        model: the ``@gendsl.model``.
        draws: ``{latent address: array}`` with a leading axis of ``S`` draws; entries that
            are not latent sample sites of the model (e.g. deterministic sites) are ignored.
        *args, **kwargs: the model's arguments (the data to score).
        params: values of the model's ``gendsl.param`` sites, if it has any.

    Returns:
        ``{observed address: array of shape (S, *site shape)}``.

    Raises:
        ValueError: a latent site of the model has no draws.

    Example:
        >>> import jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import pointwise_log_likelihood
        >>> @gendsl.model
        ... def m(x):
        ...     mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
        ...     with gendsl.plate("n", x.shape[0]):
        ...         gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> ll = pointwise_log_likelihood(m, {"mu": jnp.array([0.0, 1.0])}, jnp.array([0.0, 2.0, 1.0]))
        >>> ll["x"].shape, round(float(ll["x"][1, 1]), 4)      # log N(2; 1, 1)
        ((2, 3), -1.4189)
    """
    import gendsl

    bound = gendsl.model(model)
    if params is not None:
        bound = bound.bind(params)
    key = jax.random.key(0)  # the latents are all given; observed sites draw nothing
    shape = jax.eval_shape(lambda: bound.simulate(key, *args, **kwargs))
    latent = sorted(shape.latents)
    missing = [a for a in latent if a not in draws]
    if missing:
        raise ValueError(f"pointwise_log_likelihood: no draws of the latent site(s) {', '.join(missing)} "
                         f"(draws has {', '.join(sorted(draws)) or 'nothing'})")
    choices = {a: jnp.asarray(draws[a]) for a in latent}

    def score(one):
        trace, _ = bound.generate(key, one, *args, **kwargs)
        return {a: trace.log_probs[a] for a in trace.observed}

    return jax.jit(jax.vmap(score))(choices)


def log_predictive_density(log_likelihood: dict) -> tuple[float, float, int]:
    """The log pointwise predictive density of held-out data from ``pointwise_log_likelihood``.

    Each observed element's density is averaged over the ``S`` posterior draws,
    ``lpd_i = log (1/S) sum_s p(y_i | theta_s)`` (Gelman, Hwang and Vehtari 2014); the
    result is their mean per element, with the standard error ``sd(lpd_i) / sqrt(n)`` of
    that mean over the ``n`` elements.

    Returns:
        ``(mean lpd per element, its standard error, n)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.inference import log_predictive_density
        >>> log_predictive_density({"y": jnp.log(jnp.array([[0.2, 0.5], [0.4, 0.5]]))})[0]   # log 0.3, log 0.5
        -0.9485599...
    """
    per = []
    for v in log_likelihood.values():
        v = np.asarray(v, np.float64).reshape(np.shape(v)[0], -1)
        top = v.max(axis=0)
        per.append(top + np.log(np.mean(np.exp(v - top), axis=0)))  # log-mean-exp over draws, without overflow
    lpd = np.concatenate(per)
    mean, se = _mean_se(lpd)
    return mean, se, lpd.size
