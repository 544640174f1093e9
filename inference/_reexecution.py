"""Strategies that differentiate a site by re-executing the objective: the shared machinery.

For such a site the strategy lists its *branches*: element ``n`` of the site's value
replaced by ``v``, with a *carrier* ``c``, a scalar whose gradient is the branch's weight.
The estimator adds ``sum_j c_j * stop_gradient(F_j)``, where ``F_j`` is the objective
re-executed with branch ``j`` substituted (vmapped over the branches), so that the gradient
is ``sum_j ∇c_j · F_j``. Keys are derived from addresses, so a re-execution reproduces every
draw made before the site exactly: it is the continuation of the program at the site.

The gradient is then ``∇θ F`` at the drawn values (the *pathwise part*) plus the branch
terms. Where the objective uses the recorded ``log q`` of the draw, the pathwise part holds
``∇θ log q(z)`` at the drawn ``z`` (through the distribution's parameters), whose expectation
is zero given everything drawn before the site. An objective in which ``log q`` enters
linearly (the ELBO: ``Site.score_paths`` is False) lets the site record ``log q`` without
that gradient (the route REINFORCE sites take too, ``_reinforce``): the estimate stays unbiased and loses the
term's variance. For a site of a plate whose elements each affect only their own terms, the
local expectations then sum to the exact gradient. Any other objective (IWELBO, Rényi,
a user's) keeps the term: where ``log q`` enters nonlinearly its gradient is weighted by
quantities of the draws (IWELBO's normalized weights), so its expectation is not zero.

``ENUM`` (``_enum``) and ``MVD`` (``_mvd``) differ only in their branches.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from numpyro import distributions as nd

from gendsl.inference._execution import Branches
from gendsl.inference._strategies import EstimatorError, Site, Strategy
from gendsl.internal import LOOP_EXTRAS, LOOP_STEPS, POST, STOP_GRADIENT

__all__ = ["ReExecuted", "elements", "enumeration", "stack"]

sg = jax.lax.stop_gradient


def elements(fn: nd.Distribution) -> tuple[nd.Distribution, tuple[int, ...]]:
    """Peel ``Independent``/``Expanded`` wrappers: the scalar family and the full shape."""
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    base = fn
    while isinstance(base, (nd.Independent, nd.ExpandedDistribution)):
        base = base.base_dist
    return base, shape


def enumeration(address: str, base: nd.Distribution, shape: tuple[int, ...], dtype):
    """Every element at every support value, carried by ``q(value) - sg(q(value))``."""
    try:
        support = base.enumerate_support(expand=False).reshape(-1)
    except (NotImplementedError, ValueError) as err:
        raise EstimatorError(
            f"site '{address}': cannot enumerate {type(base).__name__} ({err}); use REINFORCE"
        ) from None
    k = support.shape[0]
    n = math.prod(shape)
    lp = base.expand(shape).log_prob(support.reshape((k,) + (1,) * len(shape))).reshape(k, n)
    q = jnp.exp(lp)
    idx = jnp.tile(jnp.arange(n), k)
    vals = jnp.repeat(support.astype(dtype), n)
    return idx, vals, (q - sg(q)).reshape(-1)


def stack(parts):
    """Concatenate ``(index, value, carrier)`` triples."""
    idx, vals, carriers = zip(*parts, strict=False)
    return jnp.concatenate(idx), jnp.concatenate(vals), jnp.concatenate(carriers)


class ReExecuted(Strategy):
    """Base class: the site's value is stopped and its gradient comes from re-executions.

    Subclasses define ``branches`` and may allow an exact sum (``exact_support``).
    """

    def branches(self, address: str, fn: nd.Distribution, value: jax.Array, key: jax.Array):
        """``(index, value, carrier)`` arrays of every branch of the site."""
        raise NotImplementedError

    def exact_support(self, address: str, fn: nd.Distribution, value: jax.Array) -> jax.Array | None:
        """The support to sum over exactly, for a site that allows it; None otherwise."""
        return None

    def _branches(self, address, fn, value, key):
        base, _ = elements(fn)
        if base.event_shape != ():
            raise EstimatorError(
                f"site '{address}': {type(self).__name__} needs a distribution of scalar elements, "
                f"{type(base).__name__} has event shape {base.event_shape}; use REINFORCE"
            )
        return self.branches(address, fn, value, key)

    def sample_site(self, site: Site, msg: dict) -> None:
        fn, value, run = msg["fn"], sg(msg["value"]), site.execution
        mine = run.overrides_of(site.address)
        if mine:
            flat = value.reshape(-1)
            for o in mine:
                flat = jnp.where(o.active, flat.at[o.index].set(jnp.asarray(o.value, flat.dtype)), flat)
            value = flat.reshape(jnp.shape(value))
            run.enum_logq[site.address] = jnp.sum(fn.log_prob(value))
        else:
            support = self.exact_support(site.address, fn, value) if run.exact_allowed else None
            if support is not None:
                run.exact.append((site.address, support))
            else:
                key = jax.random.fold_in(msg["kwargs"]["rng_key"], 1)
                index, vals, carrier = self._branches(site.address, fn, value, key)
                run.branches.append(Branches(site.address, index, vals, carrier))
        msg["value"] = value
        if not site.score_paths:
            # The carriers and enum_logq above keep their θ-gradient; only the recorded log q
            # loses it (the zero-mean term, see the module docstring).
            msg["fn"] = jax.tree_util.tree_map(sg, fn)

    def loop_site(self, site: Site, probe: dict) -> None:
        """Stop the value; a ``POST`` hook applies this run's overrides at the matching step, or else
        lists the site's branches for the step (stacked over steps by the loop)."""
        probe[STOP_GRADIENT] = True
        steps = probe.get(LOOP_STEPS, ())
        if len(steps) != 1:
            raise EstimatorError(
                f"site '{site.address}': {type(self).__name__} inside nested gendsl.scan loops is not "
                "supported yet; use REINFORCE for this site"
            )
        t = steps[0]
        fn = probe["fn"]
        per_step = math.prod(tuple(fn.batch_shape) + tuple(fn.event_shape))
        mine = site.execution.overrides_of(site.address)

        def post(msg):
            value = sg(msg["value"])
            if mine:
                flat = value.reshape(-1)
                for o in mine:
                    hit = jnp.logical_and(o.active, o.index // per_step == t)
                    new = flat.at[o.index % per_step].set(jnp.asarray(o.value, flat.dtype))
                    flat = jnp.where(hit, new, flat)
                msg["value"] = flat.reshape(jnp.shape(value))
                return None
            msg["value"] = value
            key = jax.random.fold_in(msg["kwargs"]["rng_key"], 1)
            return self._branches(site.address, msg["fn"], value, key)

        probe.setdefault(POST, []).append(post)
        if not site.score_paths:

            def stop(msg):
                # After ``post`` took its branches from the live distribution: the loop records
                # log q without the zero-mean θ-gradient (see the module docstring).
                msg["fn"] = jax.tree_util.tree_map(sg, msg["fn"])

            probe[POST].append(stop)

    def loop_site_done(self, site: Site, msg: dict) -> None:
        extras = msg.get(LOOP_EXTRAS)
        if extras is None:
            return  # overridden in this run: the value is final
        index, value, carrier = extras  # each (steps, branches per step)
        per_step = math.prod(jnp.shape(msg["value"])[1:])
        steps = jnp.arange(index.shape[0])[:, None]
        flat_index = (steps * per_step + index).reshape(-1)
        site.execution.branches.append(Branches(site.address, flat_index, value.reshape(-1), carrier.reshape(-1)))
