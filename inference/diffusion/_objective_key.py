"""The randomness of a diffusion or flow objective: a key drawn inside the objective, by address.

The random choices of these objectives (times, noise levels, noise, dropped labels) do not
depend on the parameters, so drawing them from a key is exactly the reparameterized
estimator. The key is derived from the objective's own key and an address, like any ``sim``
draw: ``estimate``, ``value_and_grad`` and ``SVI`` all control it, and two objectives that
use the same address inside one execution draw the same numbers.
"""

from __future__ import annotations

import jax

import gendsl
from gendsl.inference._language import simulate_in_objective

__all__ = ["objective_key"]


@gendsl.model
def _key_program():
    return gendsl.prng_key("key")


def objective_key(name: str) -> jax.Array:
    """A PRNG key for the current execution of an objective, at the address ``name``.

    Call it inside the integrand of ``gendsl.inference.expectation``; outside an
    objective it is an error that says so.

    Args:
        name: the address of the draw inside the objective (distinct names give
            independent keys; the same name gives the same key).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference import expectation
        >>> from gendsl.inference.diffusion import objective_key
        >>> noisy = expectation(lambda w: jnp.mean((w - jax.random.normal(objective_key("eps"), (4096,))) ** 2))
        >>> round(float(noisy.estimate(jax.random.key(0), 0.0)), 1)    # E (w - eps)^2 = w^2 + 1
        1.0
    """
    return simulate_in_objective(_key_program, name, (), {}).retval
