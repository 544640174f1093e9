"""Relaxed: the Gumbel-softmax (binary Concrete) relaxation of a Bernoulli site. Biased; opt-in only.

The site's draw ``z = 1[(ℓ + L) > 0]`` (``L`` standard logistic noise, ``ℓ`` the logits) is
replaced by ``y = sigmoid((ℓ + L) / τ)``, a differentiable function of ``ℓ`` (Maddison et al.
2017; Jang et al. 2017). With ``straight_through=True`` (the default) the value stays the hard
draw ``z`` and the gradient is ``y``'s. Either way the gradient is that of a *different*
objective (the relaxed one, or none at all for the straight-through form): it is biased for the
objective written. gendsl never picks it by default and refuses it unless the strategy is built
with ``allow_bias=True``: prefer ENUM, MVD or REINFORCE, which are unbiased.

This file is the whole strategy: one class, registered as ``"relaxed"``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from numpyro import distributions as nd

from gendsl.inference._reexecution import elements
from gendsl.inference._strategies import EstimatorError, Site, Strategy
from gendsl.internal import POST

__all__ = ["Relaxed"]

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Relaxed(Strategy, name="relaxed"):
    """The Gumbel-softmax relaxation of a Bernoulli site (biased: needs ``allow_bias=True``).

    Args:
        temperature: ``τ > 0``; smaller is closer to the discrete draw, with noisier gradients.
        straight_through: keep the hard 0/1 value in the forward pass (the gradient is the
            relaxed value's); False passes the relaxed value ``y ∈ (0, 1)`` on.
        allow_bias: must be True: the estimator is biased for the objective as written.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import Relaxed, expectation, sim
        >>> @gendsl.model
        ... def q(logit):
        ...     gendsl.sample("b", dist.Bernoulli(logits=logit), strategy=Relaxed(0.5, allow_bias=True))
        >>> value, grad = expectation(lambda l: sim(q)(l)[0]["b"]).value_and_grad(jax.random.key(0), 0.0)
        >>> float(value) in (0.0, 1.0), float(grad) > 0.0
        (True, True)
    """

    temperature: float = 0.5
    straight_through: bool = True
    allow_bias: bool = False

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"Relaxed: temperature must be positive, got {self.temperature!r}")

    def check(self, fn: nd.Distribution, address: str) -> None:
        if not self.allow_bias:
            raise EstimatorError(
                f"site '{address}': the Gumbel-softmax relaxation is biased for the objective as written; "
                "pass Relaxed(..., allow_bias=True) to accept the bias, or use ENUM, MVD or REINFORCE "
                "(unbiased) for this site"
            )
        base, _ = elements(fn)
        if not isinstance(base, (nd.BernoulliProbs, nd.BernoulliLogits)):
            raise EstimatorError(
                f"site '{address}': Relaxed covers Bernoulli sites, not {type(base).__name__}; use ENUM, MVD "
                "or REINFORCE"
            )

    def relax(self, fn: nd.Distribution, key: jax.Array) -> jax.Array:
        """The relaxed (or straight-through) value of a draw with ``key``, differentiable in the logits."""
        base, shape = elements(fn)
        logits = jnp.broadcast_to(base.logits, shape)
        u = jax.random.uniform(key, shape, minval=1e-7, maxval=1.0 - 1e-7)
        soft = jax.nn.sigmoid((logits + jnp.log(u) - jnp.log1p(-u)) / self.temperature)
        if not self.straight_through:
            return soft
        hard = (soft > 0.5).astype(soft.dtype)
        return hard + (soft - sg(soft))  # exactly the hard value, with the soft gradient

    def sample_site(self, site: Site, msg: dict) -> None:
        msg["value"] = self.relax(msg["fn"], jax.random.fold_in(msg["kwargs"]["rng_key"], 2))

    def loop_site(self, site: Site, probe: dict) -> None:
        def relax(msg):
            msg["value"] = self.relax(msg["fn"], jax.random.fold_in(msg["kwargs"]["rng_key"], 2))

        probe.setdefault(POST, []).append(relax)
