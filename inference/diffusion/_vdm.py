"""VDM's ELBO in continuous (and finite) time, per data point (Kingma et al. 2021).

The forward process is variance preserving, ``q(z_t | x) = N(alpha_t x, sigma_t^2)``
with ``alpha_t^2 = sigmoid(-gamma(t))``, ``sigma_t^2 = sigmoid(gamma(t))`` and
``SNR(t) = exp(-gamma(t))`` (schedules in ``_schedules``). The limit ``T -> inf`` of the
discrete ELBO derived by ``diffusion_elbo`` (whose eps-form per-step weight is
``(exp(gamma(t) - gamma(s)) - 1) / 2``) is the diffusion term
``E_t[gamma'(t) / 2 ||eps - eps_hat(z_t, t)||^2]``; ``gamma'`` comes from ``jax.jvp`` of
the schedule, so any monotone schedule module works, learned or fixed. The ELBO adds the
reconstruction ``log p(x | z_0)`` and subtracts the prior KL at ``t = 1``.

``vdm_terms`` is the per-point helper (it takes its key explicitly); a model's training
objective is an ``Expectation`` of the batch mean of
``reconstruction - prior_kl - diffusion`` (``gendsl.models.VDM.objective``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gendsl.inference.diffusion._schedules import _endpoint_and_shape_parts, gamma_and_derivative

__all__ = ["discrete_decoder_log_prob", "vdm_terms"]


def discrete_decoder_log_prob(z0, x_int, gamma0, levels: int) -> jax.Array:
    """VDM's decoder ``log p(x | z_0)`` for data on ``levels`` grey levels, summed over elements.

    Level ``k`` sits at ``v_k = 2 (k + 1/2) / levels - 1``; the probability of each
    level is proportional to ``q(z_0 | x = v_k)``: logits ``-(z_0/alpha_0 - v_k)^2 / (2 exp(gamma_0))``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.inference.diffusion import discrete_decoder_log_prob
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
              T: int = 0, antithetic_t=None, variance_gradient: bool = False) -> dict:
    """One draw of each term of VDM's ELBO (nats) for one data point ``x``.

    Args:
        eps_fn: ``(z_t, gamma_t) -> eps_hat`` (close over the network; it sees gamma, as in VDM).
        schedule: ``t -> gamma(t)``, increasing (``LinearSchedule``, ``LearnedSchedule``, any function).
        key: PRNG key.
        x: one data point, scaled to about [-1, 1].
        decoder_log_prob: ``(z_0, gamma_0) -> log p(x | z_0)``; None skips the reconstruction term.
        T: 0 for the continuous-time diffusion term, or the number of steps of the
            discrete-time one ``T/2 E[(exp(gamma(t) - gamma(t - 1/T)) - 1) ||eps - eps_hat||^2]``.
        antithetic_t: a time in [0, 1] to use instead of a uniform draw (low-discrepancy batches).
        variance_gradient: VDM's variance-minimizing schedule update (continuous time only). The
            values are unchanged, and so are the gradients in the network and the schedule's
            endpoints; the gradient of ``diffusion`` in the schedule's shape parameters becomes
            that of ``diffusion ** 2``. In continuous time the diffusion term's expectation does
            not depend on the shape (it is an integral over gamma between the endpoints), so
            this trains the shape to minimize the estimator's variance without biasing the ELBO.

    Returns:
        ``{"reconstruction": log p(x | z_0), "prior_kl": KL(q(z_1 | x) || N(0, I)),
        "diffusion": the diffusion term}`` (``reconstruction`` is 0 without a decoder);
        the ELBO is ``reconstruction - prior_kl - diffusion``, as with
        ``DiffusionELBO.terms``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import LinearSchedule, vdm_terms
        >>> terms = vdm_terms(lambda z, g: jnp.zeros_like(z), LinearSchedule(-5.0, 5.0), jax.random.key(0), jnp.ones(4))
        >>> sorted(terms)
        ['diffusion', 'prior_kl', 'reconstruction']
    """
    if variance_gradient and T:
        raise ValueError("vdm_terms: variance_gradient=True needs the continuous-time loss (T=0); in discrete "
                         "time the ELBO depends on the schedule's shape, so its gradient must stay the ELBO's")
    k_t, k_eps, k_0 = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, ()) if antithetic_t is None else jnp.asarray(antithetic_t, jnp.float32)
    if T:
        t = jnp.ceil(t * T) / T
    eps = jax.random.normal(k_eps, jnp.shape(x))

    def diffusion_term(gamma_t, dgamma):
        z_t = jnp.sqrt(jax.nn.sigmoid(-gamma_t)) * x + jnp.sqrt(jax.nn.sigmoid(gamma_t)) * eps
        err = jnp.sum((eps - eps_fn(z_t, gamma_t)) ** 2)
        if T:
            return 0.5 * T * jnp.expm1(gamma_t - schedule(t - 1.0 / T)) * err
        return 0.5 * dgamma * err

    if variance_gradient:
        schedule, shape_only = _endpoint_and_shape_parts(schedule)
        gamma_t, dgamma = gamma_and_derivative(schedule, t)
        gamma_s, dgamma_s = gamma_and_derivative(shape_only, t)
        # d(L^2)/d(shape) = 2 L dL/d(shape): the shape's path into the loss carries weight 2 L and value 0.
        # L itself needs one more forward pass of the network (no backward pass).
        weight = 2.0 * jax.lax.stop_gradient(diffusion_term(gamma_t, dgamma))
        gamma_t = gamma_t + weight * (gamma_s - jax.lax.stop_gradient(gamma_s))
        dgamma = dgamma + weight * (dgamma_s - jax.lax.stop_gradient(dgamma_s))
    else:
        gamma_t, dgamma = gamma_and_derivative(schedule, t)
    diffusion = diffusion_term(gamma_t, dgamma)

    gamma_1 = schedule(jnp.float32(1.0))
    mean1, var1 = jnp.sqrt(jax.nn.sigmoid(-gamma_1)) * x, jax.nn.sigmoid(gamma_1)
    prior_kl = 0.5 * jnp.sum(var1 + mean1**2 - 1.0 - jnp.log(var1))

    reconstruction = jnp.zeros(())
    if decoder_log_prob is not None:
        gamma_0 = schedule(jnp.float32(0.0))
        z_0 = jnp.sqrt(jax.nn.sigmoid(-gamma_0)) * x + jnp.sqrt(jax.nn.sigmoid(gamma_0)) * jax.random.normal(
            k_0, jnp.shape(x)
        )
        reconstruction = decoder_log_prob(z_0, gamma_0)
    return {"reconstruction": reconstruction, "prior_kl": prior_kl, "diffusion": diffusion}
