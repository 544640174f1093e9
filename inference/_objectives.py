"""The objectives library, each written with the same constructs a user has.

Every objective takes a model ``p`` and a guide ``q`` and returns an
``Expectation`` of ``F(params, *args)``: ``params`` is one dict holding the
parameters of both (``gendsl.param`` / ``gendsl.module`` names must differ),
``args`` are the arguments both programs receive (typically the data).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import gendsl
from gendsl.inference._expectation import Expectation, density, expectation, repeat, sim

__all__ = ["elbo", "iwelbo"]


def elbo(model, guide, *, beta: float = 1.0) -> Expectation:
    """The evidence lower bound ``E_q[log p(x, z) - log q(z)]`` (β-weighted if ``beta != 1``).

    With ``beta``, the bound is ``E_q[log p(x|z) - β (log q(z) - log p(z))]``,
    the KL-scaled objective of β-VAE, PV-RNN's meta-prior and the CVAE paper's
    weighted bound (β = 1 is the ELBO). The split between likelihood and prior
    is the model's observed versus latent sites.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import elbo
        >>> @gendsl.model
        ... def p(x):
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("z", dist.Normal(gendsl.param("m", 0.0), 1.0))
        >>> objective = elbo(p, q)
        >>> value = objective.estimate(jax.random.key(0), {"m": 0.5}, 1.0, samples=10_000)
        >>> round(float(value), 2)  # exact: -1.67 at m = 0.5
        -1.67
    """
    p, q = gendsl.model(model), gendsl.model(guide)

    def objective(params, *args, **kwargs):
        z, log_q = sim(q.bind(params))(*args, **kwargs)
        if beta == 1.0:
            return density(p.bind(params))(z, *args, **kwargs) - log_q
        log_lik, log_prior = _split_density(p.bind(params), z, args, kwargs)
        return log_lik - beta * (log_q - log_prior)

    objective.__name__ = "elbo" if beta == 1.0 else f"elbo_beta{beta}"
    return expectation(objective, models=(p, q))


def iwelbo(model, guide, particles: int) -> Expectation:
    """The importance-weighted bound ``E[log (1/K) sum_k p(x, z_k) / q(z_k)]`` (Burda et al.).

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import iwelbo
        >>> @gendsl.model
        ... def p(x):
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("z", dist.Normal(0.5 * x, 0.5**0.5))  # the exact posterior
        >>> value = iwelbo(p, q, 5).estimate(jax.random.key(0), {}, 1.0)
        >>> round(float(value), 4)  # log p(x) = log N(1; 0, 2), exactly, with the exact posterior
        -1.5155
    """
    if not isinstance(particles, int) or particles < 1:
        raise ValueError(f"iwelbo: particles must be a positive int, got {particles!r}")
    p, q = gendsl.model(model), gendsl.model(guide)

    def objective(params, *args, **kwargs):
        def log_weight():
            z, log_q = sim(q.bind(params))(*args, **kwargs)
            return density(p.bind(params))(z, *args, **kwargs) - log_q

        w = repeat(particles, log_weight)()
        return jax.nn.logsumexp(w) - jnp.log(particles)

    objective.__name__ = f"iwelbo{particles}"
    return expectation(objective, models=(p, q))


def _split_density(p, z, args, kwargs):
    """``(log p(observed | z), log p(z))`` from one assessment of the model."""
    trace, _ = p.generate(jax.random.key(0), z, *args, **kwargs)
    log_lik = sum((jnp.sum(trace.log_probs[a]) for a in trace.observed), jnp.zeros(()))
    return log_lik, trace.score - log_lik
