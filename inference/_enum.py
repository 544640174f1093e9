"""ENUM: enumerate a finite-support site.

An unbatched scalar site outside ``repeat`` is summed exactly: the objective is re-executed
at every support value and weighted by ``q``, ``sum_k q(k) S(z = k)``. A batched site gets
the local expectation per element: one re-execution per element and support value, with
the other elements at their draws.

In ``elbo`` the site records ``log q`` without its gradient in the guide's parameters at the
drawn value (zero in expectation; see ``_reexecution``), so a plate whose elements each
affect only their own terms (a mixture model's assignments) gets the exact gradient from one
sample. Objectives in which ``log q`` enters nonlinearly keep that term, and are unbiased.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from numpyro import distributions as nd

from gendsl.inference._reexecution import ReExecuted, elements, enumeration
from gendsl.inference._strategies import EstimatorError

__all__ = ["ENUM", "Enum"]


@dataclasses.dataclass(frozen=True)
class Enum(ReExecuted, name="enum"):
    """Enumerate a finite-support site (exact sum, or local expectation when batched)."""

    def check(self, fn: nd.Distribution, address: str) -> None:
        if not fn.has_enumerate_support:
            raise EstimatorError(
                f"site '{address}': ENUM needs a finite support, {type(fn).__name__} has none; "
                "use REINFORCE or MVD"
            )

    def exact_support(self, address, fn, value):
        if jnp.size(value) != 1 or fn.event_shape != ():
            return None
        try:
            return fn.enumerate_support(expand=False).reshape(-1)
        except (NotImplementedError, ValueError) as err:
            raise EstimatorError(
                f"site '{address}': cannot enumerate {type(fn).__name__} ({err}); use REINFORCE"
            ) from None

    def branches(self, address: str, fn: nd.Distribution, value: jax.Array, key: jax.Array):
        base, shape = elements(fn)
        return enumeration(address, base, shape, jnp.asarray(value).dtype)


ENUM = Enum()
