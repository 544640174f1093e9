"""EDM (Karras et al. 2022): preconditioning, loss weight, and the training objective.

Preconditioning ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``, log-normal
training noise ``ln sigma ~ N(P_mean, P_std^2)`` and weight
``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, which makes the
effective target of ``F`` unit-weighted (``lambda c_out^2 = 1``). The objective is an
``Expectation`` of minus the weighted loss, trained like every objective of gendsl.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gendsl.inference import expectation
from gendsl.inference._expectation import Expectation
from gendsl.inference.diffusion._objective_key import objective_key

__all__ = ["edm_denoise", "edm_objective", "edm_precond", "edm_weight"]


def edm_precond(sigma, sigma_data: float = 0.5) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` (Karras et al. 2022, Table 1).

    ``c_skip = s_d^2 / (sigma^2 + s_d^2)``, ``c_out = sigma s_d / sqrt(sigma^2 + s_d^2)``,
    ``c_in = 1 / sqrt(sigma^2 + s_d^2)``, ``c_noise = ln(sigma) / 4``.

    Example:
        >>> from gendsl.inference.diffusion import edm_precond
        >>> [round(float(c), 4) for c in edm_precond(0.5)]
        [0.5, 0.3536, 1.4142, -0.1733]
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1.0 / jnp.sqrt(total), jnp.log(sigma) / 4.0


def edm_weight(sigma, sigma_data: float = 0.5) -> jax.Array:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2``.

    Example:
        >>> from gendsl.inference.diffusion import edm_weight
        >>> float(edm_weight(0.5))
        8.0
    """
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_denoise(raw: Callable, x, sigma, *cond, sigma_data: float = 0.5):
    """``D(x; sigma) = c_skip x + c_out raw(c_in x, c_noise, *cond)`` for one example.

    Example:
        >>> from gendsl.inference.diffusion import edm_denoise
        >>> float(edm_denoise(lambda u, c: 0.0 * u, 2.0, 0.5))  # raw = 0: D = c_skip x
        1.0
    """
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sigma_data)
    return c_skip * x + c_out * raw(c_in * x, c_noise, *cond)


def edm_objective(raw_fn: Callable, *, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                  name: str = "edm") -> Expectation:
    """EDM's training objective: ``-E[lambda(sigma) ||D(x + sigma n; sigma) - x||^2]``, mean over elements and batch.

    ``ln sigma ~ N(p_mean, p_std^2)`` and ``n ~ N(0, I)`` for each data point, drawn from
    the objective's own key (``objective_key(name)``).

    Args:
        raw_fn: ``(params, u, c_noise, *cond) -> F`` for one example (the raw network).
        sigma_data, p_mean, p_std: EDM's constants (0.5, -1.2, 1.2 in the paper).
        name: the address of the objective's draws.

    Returns:
        An ``Expectation`` of ``F(params, xs, *cond)``: ``xs`` a batch of data (leading
        axis), ``cond`` per-example conditions.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import edm_objective
        >>> objective = edm_objective(lambda w, u, c_noise: w * u)       # a one-parameter "network"
        >>> xs = 0.5 * jax.random.normal(jax.random.key(1), (256, 2))
        >>> value, grad = jax.jit(objective.value_and_grad)(jax.random.key(0), 0.0, xs)
        >>> bool(value < 0), grad.shape
        (True, ())
    """

    def one(k, params, x, *c):
        k_sigma, k_n = jax.random.split(k)
        sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_sigma, ()))
        y = x + sigma * jax.random.normal(k_n, jnp.shape(x))
        d = edm_denoise(lambda u, cn, *cc: raw_fn(params, u, cn, *cc), y, sigma, *c, sigma_data=sigma_data)
        return edm_weight(sigma, sigma_data) * jnp.mean((d - x) ** 2)

    def objective(params, xs, *cond):
        keys = jax.random.split(objective_key(name), jnp.shape(xs)[0])
        return -jnp.mean(jax.vmap(lambda k, x, *c: one(k, params, x, *c))(keys, xs, *cond))

    objective.__name__ = name
    return expectation(objective)
