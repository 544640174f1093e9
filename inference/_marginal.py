"""``marginal`` and ``normalize``: models whose densities are estimated inside an objective.

Both work with ``sim`` and ``density`` like ordinary models, so the objectives
written for models (``elbo``, ``iwelbo``) accept them unchanged; that is how
the hierarchical bounds HVI, IWHVI and DIWHVI are built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

import gendsl
from gendsl import handlers
from gendsl.inference._language import density, repeat, sim, simulate_in_objective

__all__ = ["Marginal", "Normalized", "marginal", "normalize"]

sg = jax.lax.stop_gradient


class Marginal:
    """``q(keep)`` of a model ``q(keep, rest)``, with the rest integrated out by importance sampling.

    See ``marginal``.
    """

    def __init__(self, model, keep: Sequence[str], proposal=None, particles: int = 1) -> None:
        if isinstance(keep, str):
            keep = (keep,)
        if not keep:
            raise ValueError("marginal: keep must name at least one address")
        if not isinstance(particles, int) or particles < 1:
            raise ValueError(f"marginal: particles must be a positive int, got {particles!r}")
        self.model = gendsl.model(model)
        self.keep = tuple(keep)
        self.proposal = None if proposal is None else gendsl.model(proposal)
        self.particles = particles

    def bind(self, params) -> Marginal:
        """The same marginal with the parameters of the model and the proposal set."""
        proposal = None if self.proposal is None else self.proposal.bind(params)
        return Marginal(self.model.bind(params), self.keep, proposal, self.particles)

    def _kept(self, choices) -> dict:
        missing = [a for a in self.keep if a not in choices]
        if missing:
            raise gendsl.AddressError(
                f"marginal: {missing} are not latent sites of the model; it has {sorted(choices)}"
            )
        return {a: choices[a] for a in self.keep}

    def _log_weight(self, kept, args, kwargs) -> jax.Array:
        """``log q(kept, u) - log r(u | kept)`` with ``u ~ r`` (one fresh proposal draw)."""
        if self.proposal is None:
            # The model's own conditional prior over the rest: the weight is the
            # density of the kept sites, now observed.
            tr = simulate_in_objective(
                gendsl.model(handlers.condition(self.model.fn, data=kept)), None, args, kwargs
            )
            return sum((jnp.sum(tr.log_probs[a]) for a in self.keep), jnp.zeros(()))
        rest, log_r = sim(self.proposal)(kept, *args, **kwargs)
        return density(self.model)({**kept, **rest}, *args, **kwargs) - log_r

    def sim_in_objective(self, name, *args, **kwargs) -> tuple[dict, jax.Array]:
        """Draw ``keep`` from the model; return it with ``log q̂``, where ``E[1/q̂] = 1/q(keep)``."""
        tr = simulate_in_objective(self.model, name, args, kwargs)
        kept = self._kept(tr.latents)
        if self.proposal is None:
            log_w0 = sum((jnp.sum(tr.log_probs[a]) for a in self.keep), jnp.zeros(()))
        else:
            rest = {a: v for a, v in tr.latents.items() if a not in self.keep}
            log_w0 = tr.score - density(self.proposal)(rest, kept, *args, **kwargs)
        if self.particles == 1:
            return kept, log_w0
        others = repeat(self.particles - 1, lambda: self._log_weight(kept, args, kwargs))()
        log_w = jnp.concatenate([log_w0[None], others])
        return kept, jax.nn.logsumexp(log_w) - jnp.log(self.particles)

    def density_in_objective(self, choices, *args, **kwargs) -> jax.Array:
        """``log q̂(keep)`` with ``E[q̂] = q(keep)``, from ``particles`` proposal draws."""
        kept = self._kept(choices)
        log_w = repeat(self.particles, lambda: self._log_weight(kept, args, kwargs))()
        return jax.nn.logsumexp(log_w) - jnp.log(self.particles)


def marginal(model, keep: Sequence[str], *, proposal=None, particles: int = 1) -> Marginal:
    """The marginal of ``model`` on the addresses ``keep``, estimated by importance sampling.

    Inside an objective, ``density(marginal(...))(choices)`` is the log of an
    unbiased estimate of ``q(keep)``, and ``sim(marginal(...))()`` returns draws
    of ``keep`` with the log of an estimate whose reciprocal is unbiased for
    ``1 / q(keep)`` (the particle that generated the draw plus ``particles - 1``
    proposal draws). With these, ``elbo(p, marginal(q, ...))`` is a lower bound
    of the ELBO of the intractable marginal guide: HVI, and IWHVI for more
    particles.

    Args:
        model: a model over ``keep`` and auxiliary sites.
        keep: the addresses of the marginal.
        proposal: a model ``r(rest | keep)``, called as ``proposal(kept, *args)``
            and sampling the auxiliary sites at their addresses; by default the
            model's own prior over them.
        particles: the number of importance samples ``m``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import density, expectation, marginal
        >>> @gendsl.model
        ... def q():
        ...     u = gendsl.sample("u", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(u, 1.0))
        >>> q_x = marginal(q, keep=["x"], particles=100)
        >>> estimate = expectation(lambda _: jax.numpy.exp(density(q_x)({"x": 0.0})))
        >>> run = jax.jit(lambda key: estimate.estimate(key, None, samples=200))
        >>> round(float(run(jax.random.key(0))), 2)  # N(0; 0, 2)
        0.28
    """
    return Marginal(model, keep, proposal, particles)


class Normalized:
    """The posterior of ``model`` given ``data`` as a sampling-importance-resampling sampler."""

    def __init__(self, model, data: dict, proposal, particles: int) -> None:
        if not isinstance(particles, int) or particles < 1:
            raise ValueError(f"normalize: particles must be a positive int, got {particles!r}")
        self.model = gendsl.model(model)
        self.data = dict(data)
        self.proposal = gendsl.model(proposal)
        self.particles = particles

    def bind(self, params) -> Normalized:
        return Normalized(self.model.bind(params), self.data, self.proposal.bind(params), self.particles)

    def sim_in_objective(self, name, *args, **kwargs) -> tuple[dict, jax.Array]:
        """A resampled draw ``z`` and ``log p(z, data) - log Ẑ`` (``Ẑ`` unbiased for ``p(data)``)."""

        def particle():
            z, log_q = sim(self.proposal)(*args, **kwargs)
            log_p = density(self.model)({**z, **self.data}, *args, **kwargs)
            return z, log_p, log_p - log_q

        zs, log_p, log_w = repeat(self.particles, particle)()
        index = sim(_resample)(log_w)[0]["index"]
        z = jax.tree_util.tree_map(lambda v: v[index], zs)
        log_z = jax.nn.logsumexp(log_w) - jnp.log(self.particles)
        return z, log_p[index] - log_z


@gendsl.model
def _resample(log_w):
    return gendsl.sample("index", gendsl.distributions.Categorical(logits=log_w))


def normalize(model, data: dict[str, Any], *, proposal, particles: int) -> Normalized:
    """The posterior ``p(z | data)`` as a sampler, by sampling-importance-resampling.

    ``sim(normalize(p, data, proposal=q, particles=K))(*args)`` draws ``K``
    particles from ``q``, resamples one by its importance weight, and returns
    it with ``log p(z, data) - log Ẑ``, where ``Ẑ`` (the mean weight) is an
    unbiased estimate of ``p(data)``. Reweighted wake-sleep's q-wake phase is
    ``density(q)(z)`` for such a ``z``.

    Args:
        model: the joint model ``p(z, data)``.
        data: observed values by address.
        proposal: a model over ``z`` taking the same arguments.
        particles: ``K``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, normalize, sim
        >>> @gendsl.model
        ... def p():
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0))
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(0.0, 2.0))
        >>> posterior = normalize(p, {"x": 2.0}, proposal=q, particles=50)
        >>> mean = expectation(lambda _: sim(posterior)()[0]["z"])
        >>> run = jax.jit(lambda key: mean.estimate(key, None, samples=400))
        >>> round(float(run(jax.random.key(0))), 1)  # exact: 1.0
        1.0
    """
    return Normalized(model, data, proposal, particles)
