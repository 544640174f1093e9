"""MVD: measure-valued derivatives, by re-executing the objective at weak-derivative branches.

``∂_φ E_{p_φ}[f] = c_φ (E_{p+}[f] - E_{p-}[f])`` (Mohamed et al., 2020, "Monte Carlo gradient
estimation in machine learning", table 1):

* Bernoulli(p):   ``∂_p  = f(1) - f(0)``
* Categorical(π): ``∂_πk = f(k)`` (the same branches as enumeration)
* Poisson(λ):     ``∂_λ  = E[f(x + 1) - f(x)]``, x ~ Poisson(λ)
* Geometric(p):   ``∂_p  = (1/p) E[f(x) - f(1 + g1 + g2)]``, x, g1, g2 ~ Geometric(p)
  (k p² (1-p)^(k-1) on k ≥ 1 is the law of one plus the sum of two geometrics)
* Normal(μ, σ):   ``∂_μ  = 1/(σ√(2π)) E[f(μ + σR) - f(μ - σR)]``, R ~ Rayleigh(1);
  ``∂_σ = (1/σ) E[f(μ + σM) - f(x)]``, M ~ double-sided Maxwell, x ~ Normal(μ, σ)

These differentiate the expectation through the distribution; ``f`` itself may depend on
the parameters too, through ``log q`` of the draw. In ``elbo`` that dependence (the
zero-mean ``∇θ log q(x)`` at the draw) is dropped, see ``_reexecution``: the gradient of a
lone Bernoulli site is then exact, ``∂p · (f(1) - f(0))``, where it used to be that plus or
minus ``∂θ log q`` of the draw.
Objectives in which ``log q`` enters nonlinearly keep it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from numpyro import distributions as nd

from gendsl.inference._reexecution import ReExecuted, elements, enumeration, stack
from gendsl.inference._strategies import EstimatorError

__all__ = ["MVD", "MeasureValued"]

sg = jax.lax.stop_gradient


def _param(base: nd.Distribution, name: str, shape: tuple[int, ...]) -> jax.Array:
    return jnp.broadcast_to(getattr(base, name), shape).reshape(-1)


@dataclasses.dataclass(frozen=True)
class MeasureValued(ReExecuted, name="mvd"):
    """Measure-valued derivative (weak derivative decomposition) of the site."""

    def branches(self, address: str, fn: nd.Distribution, value: jax.Array, key: jax.Array):
        base, shape = elements(fn)
        n = math.prod(shape)
        x = sg(value).reshape(-1)
        idx = jnp.arange(n)
        if isinstance(base, (nd.CategoricalProbs, nd.CategoricalLogits)):
            return enumeration(address, base, shape, x.dtype)
        if isinstance(base, (nd.BernoulliProbs, nd.BernoulliLogits)):
            p = _param(base, "probs", shape)
            one, zero = jnp.ones_like(x), jnp.zeros_like(x)
            return stack([(idx, one, p - sg(p)), (idx, zero, sg(p) - p)])
        if isinstance(base, nd.Poisson):
            rate = _param(base, "rate", shape)
            return stack([(idx, x + 1, rate - sg(rate)), (idx, x, sg(rate) - rate)])
        if isinstance(base, (nd.GeometricProbs, nd.GeometricLogits)):
            p = _param(base, "probs", shape)
            g = jax.random.geometric(key, sg(p), shape=(2, n)) - 1  # numpyro counts failures
            carrier = (p - sg(p)) / sg(p)
            return stack([(idx, x, carrier), (idx, (1 + g[0] + g[1]).astype(x.dtype), -carrier)])
        if isinstance(base, nd.Normal):
            loc, scale = _param(base, "loc", shape), _param(base, "scale", shape)
            k1, k2 = jax.random.split(key)
            rayleigh = jnp.sqrt(-2.0 * jnp.log(jax.random.uniform(k1, (n,), minval=1e-12)))
            normals = jax.random.normal(k2, (4, n))
            maxwell = jnp.sign(normals[3]) * jnp.linalg.norm(normals[:3], axis=0)
            mu, sigma = sg(loc), sg(scale)
            c_loc = (loc - mu) / (sigma * math.sqrt(2 * math.pi))
            c_scale = (scale - sigma) / sigma
            return stack([
                (idx, mu + sigma * rayleigh, c_loc),
                (idx, mu - sigma * rayleigh, -c_loc),
                (idx, mu + sigma * maxwell, c_scale),
                (idx, x, -c_scale),
            ])
        raise EstimatorError(
            f"site '{address}': MVD is implemented for Bernoulli, Categorical, Normal, Poisson and "
            f"Geometric, not {type(base).__name__}; use REINFORCE (or ENUM for finite support)"
        )


MVD = MeasureValued()
