"""Continuous-time diffusion objectives: VDM's ELBO with a fixed or learned schedule, and EDM's loss.

**VDM** (Kingma et al. 2021). The forward process is variance preserving,
``q(z_t | x) = N(alpha_t x, sigma_t^2)`` with ``alpha_t^2 = sigmoid(-gamma(t))``,
``sigma_t^2 = sigmoid(gamma(t))`` and ``SNR(t) = exp(-gamma(t))``. The limit
``T -> inf`` of the discrete ELBO derived by ``diffusion_elbo`` (whose eps-form
per-step weight is ``(exp(gamma(t) - gamma(s)) - 1) / 2``) is the diffusion loss
``E_t[gamma'(t) / 2 ||eps - eps_hat(z_t, t)||^2]``; ``gamma'`` comes from ``jax.jvp``
of the schedule, so any monotone schedule module works, learned or fixed. The
ELBO adds the prior KL at ``t = 1`` and the reconstruction ``-log p(x | z_0)``.

**EDM** (Karras et al. 2022). Preconditioning ``D(x; sigma) = c_skip x +
c_out F(c_in x, c_noise)``, log-normal training noise ``ln sigma ~ N(P_mean,
P_std^2)`` and weight ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``,
which makes the effective target of ``F`` unit-weighted (``lambda c_out^2 = 1``).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = [
    "LearnedSchedule",
    "LinearSchedule",
    "discrete_decoder_log_prob",
    "edm_denoise",
    "edm_loss",
    "edm_precond",
    "edm_weight",
    "gamma_and_derivative",
    "vdm_terms",
]


class LinearSchedule(eqx.Module):
    """``gamma(t) = gamma_min + (gamma_max - gamma_min) t`` (VDM's fixed schedule; endpoints learnable as arrays).

    Example:
        >>> round(float(LinearSchedule(-13.3, 5.0)(0.5)), 2)
        -4.15
    """

    gamma_min: jax.Array
    gamma_max: jax.Array

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        self.gamma_min = jnp.asarray(gamma_min, jnp.float32)
        self.gamma_max = jnp.asarray(gamma_max, jnp.float32)

    def __call__(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t


class LearnedSchedule(eqx.Module):
    """VDM's learned monotone schedule: ``gamma(t) = g0 + (g1 - g0) (phi(t) - phi(0)) / (phi(1) - phi(0))``.

    ``phi(t) = l1(t) + l3(sigmoid(l2(l1(t))))`` with every weight made positive by
    a softplus, so ``phi`` and ``gamma`` increase in ``t``; ``g0`` and ``g1`` (the
    endpoints) are learned too.

    Example:
        >>> import jax, jax.numpy as jnp
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
        >>> g, dg = gamma_and_derivative(lambda t: t**3, 2.0)
        >>> float(g), float(dg)
        (8.0, 12.0)
    """
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(schedule, (t,), (jnp.ones_like(t),))


def discrete_decoder_log_prob(z0, x_int, gamma0, levels: int) -> jax.Array:
    """VDM's decoder ``log p(x | z_0)`` for data on ``levels`` grey levels, summed over elements.

    Level ``k`` sits at ``v_k = 2 (k + 1/2) / levels - 1``; the probability of each
    level is proportional to ``q(z_0 | x = v_k)``: logits ``-(z_0/alpha_0 - v_k)^2 / (2 exp(gamma_0))``.

    Example:
        >>> import jax.numpy as jnp
        >>> lp = discrete_decoder_log_prob(jnp.zeros(3), jnp.array([8, 8, 8]), -13.0, 17)
        >>> bool(abs(lp) < 1e-6)  # z_0 = 0 is level 8's value and gamma_0 = -13 is nearly noiseless
        True
    """
    alpha0 = jnp.sqrt(jax.nn.sigmoid(-gamma0))
    values = 2.0 * (jnp.arange(levels) + 0.5) / levels - 1.0
    logits = -0.5 * jnp.exp(-gamma0) * (z0[..., None] / alpha0 - values) ** 2
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.take_along_axis(log_probs, jnp.asarray(x_int)[..., None], axis=-1))


def vdm_terms(eps_fn: Callable, schedule: Callable, key, x, *, decoder_log_prob: Callable | None = None,
              T: int = 0, antithetic_t=None) -> dict:
    """The terms of VDM's negative ELBO (nats) for one data point ``x``.

    Args:
        eps_fn: ``(z_t, gamma_t) -> eps_hat`` (close over the network; it sees gamma, as in VDM).
        schedule: ``t -> gamma(t)``, increasing (``LinearSchedule``, ``LearnedSchedule``, any function).
        key: PRNG key.
        x: one data point, scaled to about [-1, 1].
        decoder_log_prob: ``(z_0, gamma_0) -> log p(x | z_0)``; None skips the reconstruction term.
        T: 0 for the continuous-time loss, or the number of steps of the discrete-time
            loss ``T/2 E[(exp(gamma(t) - gamma(t - 1/T)) - 1) ||eps - eps_hat||^2]``.
        antithetic_t: a time in [0, 1] to use instead of a uniform draw (low-discrepancy batches).

    Returns:
        ``{"diffusion", "prior", "reconstruction"}``: the negative ELBO is their sum.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> terms = vdm_terms(lambda z, g: jnp.zeros_like(z), LinearSchedule(-5.0, 5.0), jax.random.key(0), jnp.ones(4))
        >>> sorted(terms)
        ['diffusion', 'prior', 'reconstruction']
    """
    k_t, k_eps, k_0 = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, ()) if antithetic_t is None else jnp.asarray(antithetic_t, jnp.float32)
    if T:
        t = jnp.ceil(t * T) / T
    gamma_t, dgamma = gamma_and_derivative(schedule, t)
    eps = jax.random.normal(k_eps, jnp.shape(x))
    z_t = jnp.sqrt(jax.nn.sigmoid(-gamma_t)) * x + jnp.sqrt(jax.nn.sigmoid(gamma_t)) * eps
    err = jnp.sum((eps - eps_fn(z_t, gamma_t)) ** 2)
    if T:
        gamma_s = schedule(t - 1.0 / T)
        diffusion = 0.5 * T * jnp.expm1(gamma_t - gamma_s) * err
    else:
        diffusion = 0.5 * dgamma * err

    gamma_1 = schedule(jnp.float32(1.0))
    mean1, var1 = jnp.sqrt(jax.nn.sigmoid(-gamma_1)) * x, jax.nn.sigmoid(gamma_1)
    prior = 0.5 * jnp.sum(var1 + mean1**2 - 1.0 - jnp.log(var1))

    reconstruction = jnp.zeros(())
    if decoder_log_prob is not None:
        gamma_0 = schedule(jnp.float32(0.0))
        z_0 = jnp.sqrt(jax.nn.sigmoid(-gamma_0)) * x + jnp.sqrt(jax.nn.sigmoid(gamma_0)) * jax.random.normal(
            k_0, jnp.shape(x)
        )
        reconstruction = -decoder_log_prob(z_0, gamma_0)
    return {"diffusion": diffusion, "prior": prior, "reconstruction": reconstruction}


def edm_precond(sigma, sigma_data: float = 0.5) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` (Karras et al. 2022, Table 1).

    ``c_skip = s_d^2 / (sigma^2 + s_d^2)``, ``c_out = sigma s_d / sqrt(sigma^2 + s_d^2)``,
    ``c_in = 1 / sqrt(sigma^2 + s_d^2)``, ``c_noise = ln(sigma) / 4``.

    Example:
        >>> [round(float(c), 4) for c in edm_precond(0.5)]
        [0.5, 0.3536, 1.4142, -0.1733]
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1.0 / jnp.sqrt(total), jnp.log(sigma) / 4.0


def edm_weight(sigma, sigma_data: float = 0.5) -> jax.Array:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2``.

    Example:
        >>> float(edm_weight(0.5))
        8.0
    """
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_denoise(raw: Callable, x, sigma, *cond, sigma_data: float = 0.5):
    """``D(x; sigma) = c_skip x + c_out raw(c_in x, c_noise, *cond)`` for one example.

    Example:
        >>> float(edm_denoise(lambda u, c: 0.0 * u, 2.0, 0.5))  # raw = 0: D = c_skip x
        1.0
    """
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sigma_data)
    return c_skip * x + c_out * raw(c_in * x, c_noise, *cond)


def edm_loss(raw_fn: Callable, params, key, xs, *cond, sigma_data: float = 0.5, p_mean: float = -1.2,
             p_std: float = 1.2) -> jax.Array:
    """EDM's training loss ``E[lambda(sigma) ||D(x + sigma n; sigma) - x||^2]``, mean over elements and batch.

    Args:
        raw_fn: ``(params, u, c_noise, *cond) -> F`` for one example (the raw network).
        params: its parameters.
        key: PRNG key.
        xs: a batch of data (leading axis).
        *cond: per-example conditions.
        sigma_data, p_mean, p_std: EDM's constants (0.5, -1.2, 1.2 in the paper).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> loss = edm_loss(lambda p, u, c: jnp.zeros_like(u), None, jax.random.key(0), jnp.zeros((8, 3)))
        >>> loss.shape
        ()
    """

    def one(k, x, *c):
        k_sigma, k_n = jax.random.split(k)
        sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_sigma, ()))
        y = x + sigma * jax.random.normal(k_n, jnp.shape(x))
        d = edm_denoise(lambda u, cn, *cc: raw_fn(params, u, cn, *cc), y, sigma, *c, sigma_data=sigma_data)
        return edm_weight(sigma, sigma_data) * jnp.mean((d - x) ** 2)

    keys = jax.random.split(key, jnp.shape(xs)[0])
    return jnp.mean(jax.vmap(one)(keys, xs, *cond))
