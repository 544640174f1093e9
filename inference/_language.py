"""The objective language: ``sim``, ``density``, ``repeat`` and ``baselines``.

An objective is a Python function ``F(params, *args) -> scalar`` built from these
constructs; ``expectation(F)`` (``_expectation``) stands for ``E[F]`` over every random
choice ``sim`` makes. Each construct works on the current ``Execution`` (``_execution``):
``sim`` runs a model under the site handler (``_sites``), which applies every latent site's
gradient strategy; ``repeat`` opens one child execution per particle, vectorized.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import gendsl
from gendsl.inference._execution import Branches, Execution, Override, active, current, innermost
from gendsl.inference._layout import fold_particle_products
from gendsl.inference._sites import SiteHandler
from gendsl.internal import Recorder, address_hash, assess_trace, join, seed, shared_subsamples, site_key

__all__ = ["baselines", "density", "repeat", "scored_trace", "sim", "simulate_in_objective"]

sg = jax.lax.stop_gradient


def sim(model, *, name: str | None = None) -> Callable[..., tuple[dict, jax.Array]]:
    """Sample a model inside an objective: ``sim(model)(*args) -> (choices, log_density)``.

    Every latent site is drawn with its gradient strategy. The log density is
    ``log q(choices)``, differentiable in the model's parameters.

    Args:
        model: a ``gendsl.Model`` (or a NumPyro model function).
        name: the address of this draw within the objective (default: ``sim0``,
            ``sim1``, ... in program order).

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, sim
        >>> @gendsl.model
        ... def q(mu):
        ...     gendsl.sample("z", dist.Normal(mu, 1.0))
        >>> mean_z = expectation(lambda mu: sim(q)(mu)[0]["z"])
        >>> float(mean_z.grad(jax.random.key(0), 0.5))
        1.0
    """
    if hasattr(model, "sim_in_objective"):  # marginal(...), normalize(...)
        return functools.partial(model.sim_in_objective, name)
    model = gendsl.model(model)

    def run(*args, **kwargs):
        tr = simulate_in_objective(model, name, args, kwargs)
        return tr.latents, tr.score

    return run


def simulate_in_objective(model, name, args, kwargs, *, score_paths=True) -> gendsl.Trace:
    """Run ``model`` inside the current objective, each latent site with its strategy.

    With ``score_paths=False``, the log density of a REINFORCE, ENUM or MVD site enters the
    trace without its gradient in the distribution's parameters (the value is unchanged). That gradient,
    ``∇θ log q(z; θ)`` at the drawn ``z``, has expectation zero; an objective in which ``log q``
    enters linearly (the ELBO) may drop it, which removes its variance (as Pyro's and NumPyro's
    ``TraceGraph_ELBO`` do). Sites inside nested ``gendsl.scan`` loops keep it.
    """
    execution = current("sim(model)")
    address = execution.child_address("sim", name)
    rec = Recorder()
    with (
        SiteHandler(execution, address, score_paths=score_paths),
        rec,
        seed(key=site_key(execution.key, address)),
        shared_subsamples(execution.subsample_key),
    ):
        retval = model.fn(*args, **kwargs)
    return rec.trace(retval)


def density(model) -> Callable[..., jax.Array]:
    """The log density of given choices: ``density(model)(choices, *args)``.

    Deterministic and differentiable (in the choices and the parameters); the
    same as ``model.assess``.

    Example:
        >>> import gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import density
        >>> @gendsl.model
        ... def p():
        ...     gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> round(float(density(p)({"z": 0.0})), 4)
        -0.9189
    """
    if hasattr(model, "density_in_objective"):  # marginal(...): a random, unbiased estimate
        return model.density_in_objective
    model = gendsl.model(model)

    def run(choices, *args, **kwargs):
        return scored_trace(model, choices, args, kwargs).score

    return run


def scored_trace(model: gendsl.Model, choices, args, kwargs) -> gendsl.Trace:
    """The trace of ``model`` at ``choices``; inside an objective, subsampled plates draw its indices."""
    execution = innermost()
    key = None if execution is None else execution.subsample_key
    return assess_trace(model, choices, args, kwargs, subsample_key=key)


def repeat(n: int, fn: Callable, *, name: str | None = None) -> Callable:
    """``n`` independent executions of ``fn`` inside an objective, vectorized.

    ``repeat(n, f)(*args)`` returns ``f(*args)`` stacked along a new leading
    axis, each execution with its own randomness (particles). Inside an
    objective, use it instead of ``jax.vmap`` so that the estimator keeps track
    of the sites in every particle.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, repeat, sim
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> draws = expectation(lambda _: repeat(3, lambda: sim(q)()[0]["z"])().sum())
        >>> draws.estimate(jax.random.key(0), None).shape
        ()
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"repeat: n must be a positive int, got {n!r}")

    def run(*args, **kwargs):
        parent = current("repeat(n, fn)")
        address = parent.child_address("repeat", name)
        base_key = jax.random.fold_in(parent.key, address_hash(address))
        mine = [o for o in parent.overrides if o.path]
        static: dict[str, Any] = {}

        def one(i, overrides):
            child = Execution(
                jax.random.fold_in(base_key, i), [], prefix=address, exact_allowed=False, track=parent.track,
                subsample_key=parent.subsample_key,
            )
            child.overrides = [
                Override(o.address, o.index, o.value, o.path[1:], jnp.logical_and(o.active, o.path[0] == i))
                for o in overrides
            ]
            with active(child):
                out = fn(*args, **kwargs)
            static["strategies"] = child.strategies
            static["groups"] = child.site_group
            static["branches"] = [(b.address, len(b.path)) for b in child.branches]
            return out, child.scores, [(b.index, b.value, b.carrier, b.path) for b in child.branches]

        # Traced through a jaxpr so that the networks the particles share compile as one matmul over
        # particles x data points (see _layout).
        particles = fold_particle_products(
            lambda: jax.vmap(one, in_axes=(0, None))(jnp.arange(n), mine), fold=not parent.track
        )
        out, scores, found = particles()
        for address_, lq in scores.items():
            # Keep one score per particle, so that a per-particle baseline (VIMCO) can pair with it.
            parent.scores[address_] = lq
            parent.site_group[address_] = static["groups"].get(address_, address)
        parent.strategies.update(static["strategies"])
        for (address_, _), (index, value, carrier, path) in zip(static["branches"], found, strict=False):
            particle = jnp.broadcast_to(jnp.arange(n)[:, None], index.shape)
            flat = [particle.reshape(-1), *(p.reshape(-1) for p in path)]
            parent.branches.append(
                Branches(address_, index.reshape(-1), value.reshape(-1), carrier.reshape(-1), tuple(flat))
            )
        return out

    return run


def baselines(name: str, values) -> None:
    """Per-particle baselines for the REINFORCE sites of ``repeat(..., name=name)``.

    Inside an objective, after ``w = repeat(k, f, name=name)()``, call
    ``baselines(name, b)`` with ``b`` of shape ``(k,)``: the score of every
    REINFORCE site drawn in particle ``i`` is then paired with ``F - b[i]``
    instead of its strategy's baseline. ``b[i]`` must not depend on particle
    ``i``'s draws (for example a leave-one-out function of the others, as in
    VIMCO), or the estimator is biased; it is stopped from gradients here.

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import REINFORCE, baselines, expectation, repeat, sim
        >>> @gendsl.model
        ... def q(p):
        ...     return gendsl.sample("b", dist.Bernoulli(p), strategy=REINFORCE)
        >>> def f(p):
        ...     draws = repeat(2, lambda: sim(q)(p)[0]["b"], name="pair")()
        ...     baselines("pair", jnp.stack([draws[1], draws[0]]))  # the other particle's draw
        ...     return draws.mean()
        >>> g = jax.jit(expectation(f).grad)(jax.random.key(0), 0.5)
    """
    execution = current("baselines(...)")
    execution.group_baselines[join(execution.prefix, name)] = sg(jnp.asarray(values))
