"""Diffusion samplers: ancestral DDPM, DDIM (eta), EDM's Heun sampler with optional churn.

Each is one ``lax.scan`` over the time grid, compiled once per prediction
function and shapes (``equinox.filter_jit``: arrays, including the parameters
and the schedule, are traced; the prediction function is static, so pass the
same function object on every call). A prediction function takes
``(params, z, t, *cond)`` for *one* example; the samplers ``vmap`` it over the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ddim_sample", "ddpm_sample", "edm_sample", "karras_sigmas", "vp_posterior"]


def vp_posterior(x0, z_t, alpha_bar_s, alpha_bar_t):
    """Mean and variance of ``q(z_s | z_t, x0)`` for ``s < t`` in a variance-preserving chain.

    Example:
        >>> m, v = vp_posterior(1.0, 0.0, 1.0, 0.5)  # s = 0 (alpha_bar 1): the posterior is x0 exactly
        >>> float(m), float(v)
        (1.0, 0.0)
    """
    a_ts2 = alpha_bar_t / alpha_bar_s
    var_ts = 1.0 - a_ts2
    var_s, var_t = 1.0 - alpha_bar_s, 1.0 - alpha_bar_t
    mean = (jnp.sqrt(a_ts2) * var_s / var_t) * z_t + (jnp.sqrt(alpha_bar_s) * var_ts / var_t) * x0
    return mean, var_ts * var_s / var_t


def _batched(fn, params, z, t, cond):
    return jax.vmap(lambda zi, *ci: fn(params, zi, t, *ci))(z, *cond)


@eqx.filter_jit
def ddpm_sample(eps_fn: Callable, params, key, alpha_bar, shape: tuple, *, cond: tuple = (),
                variance: str = "beta") -> jax.Array:
    """Ancestral sampling of the DDPM reverse chain, ``t = T, ..., 1``.

    Args:
        eps_fn: ``(params, z, t, *cond) -> eps_hat`` for one example, integer ``t``.
        params: the network parameters (traced).
        key: PRNG key.
        alpha_bar: ``alpha_bar_t`` for ``t = 0..T`` (``alpha_bar_0 = 1``).
        shape: ``(n, *event_shape)``.
        cond: per-example conditions, each with leading axis ``n``.
        variance: ``"beta"`` (``sigma_t^2 = beta_t``) or ``"posterior"``.

    Returns:
        The samples ``x_0`` (the mean of the last step, as in DDPM).

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> ab = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, 100))])
        >>> x = ddpm_sample(lambda p, z, t: jnp.zeros_like(z), None, jax.random.key(0), ab, (3, 2))
        >>> x.shape
        (3, 2)
    """
    alpha_bar = jnp.asarray(alpha_bar, jnp.float32)
    T = alpha_bar.shape[0] - 1
    k0, key = jax.random.split(key)
    z = jax.random.normal(k0, shape)

    def step(z, t):
        ab_t, ab_s = alpha_bar[t], alpha_bar[t - 1]
        eps = _batched(eps_fn, params, z, t, cond)
        x0 = (z - jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(ab_t)
        mean, var = vp_posterior(x0, z, ab_s, ab_t)
        if variance == "beta":
            var = 1.0 - ab_t / ab_s
        noise = jax.random.normal(jax.random.fold_in(key, t), shape)
        return jnp.where(t > 1, mean + jnp.sqrt(var) * noise, mean), None

    z, _ = jax.lax.scan(step, z, jnp.arange(T, 0, -1))
    return z


@eqx.filter_jit
def ddim_sample(eps_fn: Callable, params, key, alpha_bar, times, shape: tuple, *, eta: float = 0.0,
                cond: tuple = ()) -> jax.Array:
    """DDIM (Song et al. 2021) on a decreasing grid of integer times ending at 0.

    ``z_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma noise`` with
    ``sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s)``: ``eta = 0`` is
    the deterministic sampler, ``eta = 1`` the ancestral one.

    Args:
        eps_fn, params, key, alpha_bar, shape, cond: as for ``ddpm_sample``.
        times: decreasing integer times, ``times[0] = T`` ... ``times[-1] = 0``.
        eta: the stochasticity.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> ab = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, 100))])
        >>> times = np.linspace(100, 0, 11).astype(int)
        >>> ddim_sample(lambda p, z, t: jnp.zeros_like(z), None, jax.random.key(0), ab, times, (3, 2)).shape
        (3, 2)
    """
    alpha_bar = jnp.asarray(alpha_bar, jnp.float32)
    times = jnp.asarray(times)
    k0, key = jax.random.split(key)
    z = jax.random.normal(k0, shape)

    def step(z, ts):
        i, t, s = ts
        ab_t, ab_s = alpha_bar[t], alpha_bar[s]
        eps = _batched(eps_fn, params, z, t, cond)
        x0 = (z - jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(ab_t)
        sigma = eta * jnp.sqrt((1.0 - ab_s) / (1.0 - ab_t)) * jnp.sqrt(1.0 - ab_t / ab_s)
        noise = jax.random.normal(jax.random.fold_in(key, i), shape)
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_s - sigma**2, 0.0))
        return jnp.sqrt(ab_s) * x0 + direction * eps + sigma * noise, None

    n = times.shape[0] - 1
    z, _ = jax.lax.scan(step, z, (jnp.arange(n), times[:-1], times[1:]))
    return z


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """EDM's noise levels ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, then 0.

    Example:
        >>> s = karras_sigmas(18)
        >>> s.shape, float(s[0]), round(float(s[-2]), 4), float(s[-1])
        ((19,), 80.0, 0.002, 0.0)
    """
    i = np.arange(n)
    inv = sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return np.concatenate([inv**rho, [0.0]])


@eqx.filter_jit
def edm_sample(denoise_fn: Callable, params, key, sigmas, shape: tuple, *, churn: float = 0.0,
               s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
               cond: tuple = ()) -> jax.Array:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): Heun steps with optional churn.

    Args:
        denoise_fn: ``(params, x, sigma, *cond) -> D(x; sigma)`` for one example.
        params: the denoiser's parameters (traced).
        key: PRNG key.
        sigmas: decreasing noise levels ending with 0 (``karras_sigmas``).
        shape: ``(n, *event_shape)``.
        churn: ``S_churn`` (0: the deterministic Heun sampler, Algorithm 1).
        s_tmin, s_tmax, s_noise: EDM's churn range and noise inflation.
        cond: per-example conditions.

    Example:
        >>> import jax
        >>> x = edm_sample(lambda p, x, s: 0.0 * x, None, jax.random.key(0), karras_sigmas(10), (4, 2))
        >>> bool(jax.numpy.allclose(x, 0.0, atol=1e-4))  # D = 0: everything flows to 0
        True
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = sigmas.shape[0] - 1
    k0, key = jax.random.split(key)
    x = sigmas[0] * jax.random.normal(k0, shape)
    gamma_max = min(churn / n, np.sqrt(2.0) - 1.0)

    def step(x, inputs):
        i, sigma, sigma_next = inputs
        gamma = jnp.where((sigma >= s_tmin) & (sigma <= s_tmax), gamma_max, 0.0)
        sigma_hat = sigma * (1.0 + gamma)
        noise = jax.random.normal(jax.random.fold_in(key, i), shape)
        # sqrt(sigma_hat^2 - sigma^2), written so that gamma = 0 gives exactly 0 (a fused
        # multiply-add of the difference can round below zero and give NaN).
        x_hat = x + sigma * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * noise
        d = (x_hat - _batched(denoise_fn, params, x_hat, sigma_hat, cond)) / sigma_hat
        x_next = x_hat + (sigma_next - sigma_hat) * d
        # Heun's correction, except on the last step to sigma = 0 (Euler there, as in EDM).
        safe = jnp.where(sigma_next > 0, sigma_next, 1.0)
        d2 = (x_next - _batched(denoise_fn, params, x_next, safe, cond)) / safe
        corrected = x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d2)
        return jnp.where(sigma_next > 0, corrected, x_next), None

    x, _ = jax.lax.scan(step, x, (jnp.arange(n), sigmas[:-1], sigmas[1:]))
    return x
