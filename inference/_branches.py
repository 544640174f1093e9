"""Branches of a site for enumeration and measure-valued derivatives.

For a site whose gradient is taken by re-execution, this module lists the
*branches*: element ``n`` of the site's value replaced by ``v``, with a
*carrier* ``c`` — a scalar whose gradient is the branch's weight. The estimator
adds ``sum_j c_j * stop_gradient(f_j)``, where ``f_j`` is the objective
re-executed with branch ``j`` substituted, so that the gradient is
``sum_j ∇c_j · f_j``.

Measure-valued derivatives (Mohamed et al., 2020, "Monte Carlo gradient
estimation in machine learning", table 1): ``∂_φ E_{p_φ}[f] = c_φ (E_{p+}[f] - E_{p-}[f])``.

* Bernoulli(p):   ``∂_p  = f(1) - f(0)``
* Categorical(π): ``∂_πk = f(k)`` (the same branches as enumeration)
* Poisson(λ):     ``∂_λ  = E[f(x + 1) - f(x)]``, x ~ Poisson(λ)
* Geometric(p):   ``∂_p  = (1/p) E[f(x) - f(1 + g1 + g2)]``, x, g1, g2 ~ Geometric(p)
  (k p² (1-p)^(k-1) on k ≥ 1 is the law of one plus the sum of two geometrics)
* Normal(μ, σ):   ``∂_μ  = 1/(σ√(2π)) E[f(μ + σR) - f(μ - σR)]``, R ~ Rayleigh(1);
  ``∂_σ = (1/σ) E[f(μ + σM) - f(x)]``, M ~ double-sided Maxwell, x ~ Normal(μ, σ)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from numpyro import distributions as nd

from gendsl.inference._strategies import Enum, EstimatorError

sg = jax.lax.stop_gradient


def elements(fn: nd.Distribution) -> tuple[nd.Distribution, tuple[int, ...]]:
    """Peel ``Independent``/``Expanded`` wrappers: the scalar family and the full shape."""
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    base = fn
    while isinstance(base, (nd.Independent, nd.ExpandedDistribution)):
        base = base.base_dist
    return base, shape


def _param(base: nd.Distribution, name: str, shape: tuple[int, ...]) -> jax.Array:
    return jnp.broadcast_to(getattr(base, name), shape).reshape(-1)


def branches(address, fn, value, strategy, key):
    """``(index, value, carrier)`` arrays of every branch of the site."""
    base, shape = elements(fn)
    if base.event_shape != ():
        raise EstimatorError(
            f"site '{address}': {type(strategy).__name__} needs a distribution of scalar elements, "
            f"{type(base).__name__} has event shape {base.event_shape}; use REINFORCE"
        )
    n = math.prod(shape)
    x = sg(value).reshape(-1)
    idx = jnp.arange(n)
    if isinstance(strategy, Enum) or isinstance(base, (nd.CategoricalProbs, nd.CategoricalLogits)):
        return _enumeration(address, base, shape, x.dtype)
    if isinstance(base, (nd.BernoulliProbs, nd.BernoulliLogits)):
        p = _param(base, "probs", shape)
        one, zero = jnp.ones_like(x), jnp.zeros_like(x)
        return _stack([(idx, one, p - sg(p)), (idx, zero, sg(p) - p)])
    if isinstance(base, nd.Poisson):
        rate = _param(base, "rate", shape)
        return _stack([(idx, x + 1, rate - sg(rate)), (idx, x, sg(rate) - rate)])
    if isinstance(base, (nd.GeometricProbs, nd.GeometricLogits)):
        p = _param(base, "probs", shape)
        g = jax.random.geometric(key, sg(p), shape=(2, n)) - 1  # numpyro counts failures
        carrier = (p - sg(p)) / sg(p)
        return _stack([(idx, x, carrier), (idx, (1 + g[0] + g[1]).astype(x.dtype), -carrier)])
    if isinstance(base, nd.Normal):
        loc, scale = _param(base, "loc", shape), _param(base, "scale", shape)
        k1, k2 = jax.random.split(key)
        rayleigh = jnp.sqrt(-2.0 * jnp.log(jax.random.uniform(k1, (n,), minval=1e-12)))
        normals = jax.random.normal(k2, (4, n))
        maxwell = jnp.sign(normals[3]) * jnp.linalg.norm(normals[:3], axis=0)
        mu, sigma = sg(loc), sg(scale)
        c_loc = (loc - mu) / (sigma * math.sqrt(2 * math.pi))
        c_scale = (scale - sigma) / sigma
        return _stack([
            (idx, mu + sigma * rayleigh, c_loc),
            (idx, mu - sigma * rayleigh, -c_loc),
            (idx, mu + sigma * maxwell, c_scale),
            (idx, x, -c_scale),
        ])
    raise EstimatorError(
        f"site '{address}': MVD is implemented for Bernoulli, Categorical, Normal, Poisson and "
        f"Geometric, not {type(base).__name__}; use REINFORCE (or ENUM for finite support)"
    )


def _enumeration(address, base, shape, dtype):
    try:
        support = base.enumerate_support(expand=False).reshape(-1)
    except (NotImplementedError, ValueError) as err:
        raise EstimatorError(
            f"site '{address}': cannot enumerate {type(base).__name__} ({err}); use REINFORCE"
        ) from None
    k = support.shape[0]
    n = math.prod(shape)
    lp = base.expand(shape).log_prob(support.reshape((k,) + (1,) * len(shape))).reshape(k, n)
    q = jnp.exp(lp)
    idx = jnp.tile(jnp.arange(n), k)
    vals = jnp.repeat(support.astype(dtype), n)
    return idx, vals, (q - sg(q)).reshape(-1)


def _stack(parts):
    idx, vals, carriers = zip(*parts, strict=False)
    return jnp.concatenate(idx), jnp.concatenate(vals), jnp.concatenate(carriers)


def enumerate_values(address, fn) -> jax.Array:
    """The support of an unbatched finite site, for exact enumeration."""
    try:
        return fn.enumerate_support(expand=False).reshape(-1)
    except (NotImplementedError, ValueError) as err:
        raise EstimatorError(
            f"site '{address}': cannot enumerate {type(fn).__name__} ({err}); use REINFORCE"
        ) from None
