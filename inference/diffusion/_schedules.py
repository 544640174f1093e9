"""Noise schedules of variance-preserving diffusions in VDM's form, ``gamma(t) = -log SNR(t)``.

The forward process is ``q(z_t | x) = N(alpha_t x, sigma_t^2)`` with
``alpha_t^2 = sigmoid(-gamma(t))`` and ``sigma_t^2 = sigmoid(gamma(t))``. A schedule is
any increasing function ``t -> gamma(t)`` on ``[0, 1]``; the two here are equinox
modules, so their endpoints (and the learned one's shape) train with the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["LearnedSchedule", "LinearSchedule", "gamma_and_derivative"]


class LinearSchedule(eqx.Module):
    """``gamma(t) = gamma_min + (gamma_max - gamma_min) t`` (VDM's fixed schedule; endpoints learnable as arrays).

    Example:
        >>> from gendsl.inference.diffusion import LinearSchedule
        >>> round(float(LinearSchedule(-13.3, 5.0)(0.5)), 2)
        -4.15
    """

    gamma_min: jax.Array
    gamma_max: jax.Array
    endpoint_fields: ClassVar[tuple] = ("gamma_min", "gamma_max")

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        self.gamma_min = jnp.asarray(gamma_min, jnp.float32)
        self.gamma_max = jnp.asarray(gamma_max, jnp.float32)

    def __call__(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t


class LearnedSchedule(eqx.Module):
    """VDM's learned monotone schedule: ``gamma(t) = g0 + (g1 - g0) (phi(t) - phi(0)) / (phi(1) - phi(0))``.

    ``phi(t) = l1(t) + l3(sigmoid(l2(l1(t))))`` with every weight made positive by
    a softplus, so ``phi`` and ``gamma`` increase in ``t``; ``g0`` and ``g1`` (the
    endpoints) are learned too. In continuous time the ELBO depends on the endpoints
    only; the shape (the other weights) sets the variance of its estimate, which
    ``vdm_terms(..., variance_gradient=True)`` trains it to minimize.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import LearnedSchedule
        >>> g = LearnedSchedule(key=jax.random.key(0))
        >>> ts = jnp.linspace(0.0, 1.0, 5)
        >>> bool(jnp.all(jnp.diff(jax.vmap(g)(ts)) > 0)), round(float(g(0.0)), 1), round(float(g(1.0)), 1)
        (True, -13.3, 5.0)
    """

    g0: jax.Array
    g1: jax.Array
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    w3: jax.Array
    endpoint_fields: ClassVar[tuple] = ("g0", "g1")

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 64, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.g0 = jnp.asarray(gamma_min, jnp.float32)
        self.g1 = jnp.asarray(gamma_max, jnp.float32)
        self.w1 = jax.random.normal(k1, ())
        self.b1 = jnp.zeros(())
        self.w2 = jax.random.normal(k2, (hidden,))
        self.b2 = jnp.zeros((hidden,))
        self.w3 = jax.random.normal(k3, (hidden,)) / hidden

    def _phi(self, t):
        h1 = jax.nn.softplus(self.w1) * t + self.b1
        h2 = jax.nn.sigmoid(jax.nn.softplus(self.w2) * h1 + self.b2)
        return h1 + jnp.dot(jax.nn.softplus(self.w3), h2)

    def __call__(self, t):
        p0, p1 = self._phi(0.0), self._phi(1.0)
        return self.g0 + (self.g1 - self.g0) * (self._phi(t) - p0) / (p1 - p0)


def gamma_and_derivative(schedule: Callable, t) -> tuple[jax.Array, jax.Array]:
    """``(gamma(t), gamma'(t))`` by one forward-mode pass (``jax.jvp``).

    Example:
        >>> from gendsl.inference.diffusion import gamma_and_derivative
        >>> g, dg = gamma_and_derivative(lambda t: t**3, 2.0)
        >>> float(g), float(dg)
        (8.0, 12.0)
    """
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(schedule, (t,), (jnp.ones_like(t),))


def _endpoint_and_shape_parts(schedule) -> tuple:
    """Two copies of ``schedule``: one differentiable in its endpoints only, one in its shape only.

    Both compute the same ``gamma``; the first stops the gradient of the shape
    parameters, the second that of the endpoints (named by the class's
    ``endpoint_fields``), so a loss can give each its own gradient.
    """
    names = getattr(type(schedule), "endpoint_fields", None)
    if names is None or not isinstance(schedule, eqx.Module):
        raise ValueError(
            f"variance_gradient: the schedule must be an equinox module naming its endpoint parameters in "
            f"`endpoint_fields` (LinearSchedule, LearnedSchedule); got {type(schedule).__name__}"
        )
    fields = [f.name for f in dataclasses.fields(schedule)]
    shape = [n for n in fields if n not in names]

    def stopped(which):
        if not which:
            return schedule
        return eqx.tree_at(lambda s: [getattr(s, n) for n in which], schedule,
                           [jax.lax.stop_gradient(getattr(schedule, n)) for n in which])

    return stopped(shape), stopped(list(names))
