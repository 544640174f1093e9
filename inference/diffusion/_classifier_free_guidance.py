"""Classifier-free guidance (Ho & Salimans 2022): condition dropout in training, guided predictions in sampling.

A conditional network is trained on labels that are replaced, with probability
``p_uncond``, by a "no condition" token; at sampling time the guided prediction
``(1 + w) f(z, t, c) - w f(z, t, none)`` extrapolates away from the unconditional
one. The same combination applies to eps, x0, v or denoiser outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["Guided", "drop_condition", "guided"]


def drop_condition(key, labels, p_uncond: float, null) -> jax.Array:
    """Replace each label by ``null`` with probability ``p_uncond`` (independently).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> out = drop_condition(jax.random.key(0), jnp.zeros(10_000, jnp.int32), 0.2, 7)
        >>> round(float((out == 7).mean()), 2)
        0.2
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"drop_condition: p_uncond must be in [0, 1], got {p_uncond}")
    labels = jnp.asarray(labels)
    drop = jax.random.bernoulli(key, p_uncond, jnp.shape(labels))
    return jnp.where(drop, jnp.asarray(null, labels.dtype), labels)


@dataclasses.dataclass(frozen=True)
class Guided:
    """A guided prediction function ``(params, z, t, label) -> (1 + w) f(.., label) - w f(.., null)``.

    Hashable and compared by value, so samplers jitted on it compile once per
    ``(fn, w, null)``. Create it with ``guided``.

    Example:
        >>> from gendsl.inference.diffusion import Guided, guided
        >>> f = lambda params, z, t, label: z * (label + 1.0)
        >>> guided(f, 1.0, null=0) == Guided(f, 1.0, 0), float(guided(f, 1.0, null=0)(None, 2.0, 0.5, 2))
        (True, 10.0)
    """

    fn: Callable
    w: float
    null: int

    def __call__(self, params, z, t, label):
        cond = self.fn(params, z, t, label)
        if self.w == 0.0:
            return cond
        uncond = self.fn(params, z, t, jnp.full_like(jnp.asarray(label), self.null))
        return (1.0 + self.w) * cond - self.w * uncond


def guided(fn: Callable, w: float, null: int) -> Guided:
    """Classifier-free guidance of a prediction function ``fn(params, z, t, label)`` with weight ``w``.

    ``w = 0`` is the conditional model; ``w = -1`` the unconditional one.

    Example:
        >>> f = lambda params, z, t, label: z * (label + 1.0)
        >>> float(guided(f, 2.0, null=0)(None, 1.0, 0.5, 1))  # 3 * 2 - 2 * 1
        4.0
    """
    return Guided(fn, float(w), int(null))
