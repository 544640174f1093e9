"""The execution trace of a model, and the handler that records it.

A ``Trace`` is an ``equinox.Module`` and therefore a JAX pytree: it can be
returned from ``jit``, stacked by ``vmap`` and passed through ``lax.scan``. Which
sites are observed is static metadata, so it survives those transformations
unchanged.

A trace fresh from its ``Recorder`` also carries each sample site's distribution and
scale (``Trace.site_distribution``), which a closed-form KL needs. They are not leaves
of the pytree: flattening drops them (see ``SiteDistributions``), so ``jit``, ``vmap``
and ``tree_map`` see exactly the arrays above.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from numpyro.distributions import ImproperUniform
from numpyro.primitives import Messenger

from gendsl._errors import AddressError, GendslError, NoKeyError, ObservationError
from gendsl._messages import KEEP_FN

# An identity that marks one site's log density as one cost term. Estimators that pair score
# functions with the costs depending on them (gendsl.inference) then count a site's whole log
# density, whatever the arithmetic inside its distribution's log_prob, as NumPyro and Pyro do.
# It costs nothing at run time (lowered to its input).
site_log_prob_p = Primitive("gendsl_site_log_prob")
site_log_prob_p.def_impl(lambda x: x)
site_log_prob_p.def_abstract_eval(lambda x: x)
ad.deflinear2(site_log_prob_p, lambda ct, x: [ct])
batching.defvectorized(site_log_prob_p)
mlir.register_lowering(site_log_prob_p, mlir.lower_fun(lambda x: x, multiple_results=False))

__all__ = ["SiteDistributions", "Trace"]


@jax.tree_util.register_pytree_node_class
class SiteDistributions:
    """Each sample site's ``(distribution, scale)``, carried by a trace but not among its leaves.

    A distribution is a Python object that may hold tracers of the execution that drew it,
    and whose ``batch_shape`` ``vmap`` would not update; so the table lives only on the trace
    the ``Recorder`` returned, and flattening (``jit``, ``vmap``, ``tree_map``) leaves an
    empty one. Read it inside the function that runs the model.

    Attributes:
        table: address -> ``(fn, scale)``, or None once the trace has been flattened.
    """

    __slots__ = ("table",)

    def __init__(self, table: dict | None = None) -> None:
        self.table = table

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls()

    def __repr__(self) -> str:
        return "SiteDistributions(" + ("flattened" if self.table is None else ", ".join(self.table)) + ")"


class Trace(eqx.Module):
    """What one execution of a model did.

    Attributes:
        choices: value of every sample site by address, latent and observed.
            Sites inside ``gendsl.scan`` have addresses ``"loop/site"`` and a
            leading axis indexed by the step.
        log_probs: log density of every sample site by address, summed over
            event dimensions, with plate subsampling scale and masks applied.
        retval: the model's return value.
        deterministics: values of ``gendsl.deterministic`` sites.
        params: values of ``gendsl.param`` / ``gendsl.module`` sites.
        subsamples: the indices drawn by each subsampled plate, by plate name;
            ``assess({**trace.choices, **trace.subsamples})`` rescores the trace.
        score: total log density ``log p(choices)`` of the execution (one
            number per execution, so a vmapped trace has one per batch entry).
        observed: addresses of observed sites (static).
        site_plates: for each sample site, the plates it is in and their
            dimensions, as ``((address, ((plate, dim), ...)), ...)`` (static).
        distributions: each sample site's distribution and scale; not pytree
            leaves (read them with ``site_distribution``).

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> @gendsl.model
        ... def m():
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=0.5)
        >>> tr = m.simulate(jax.random.key(0))
        >>> bool(tr.score == tr.log_probs["z"] + tr.log_probs["x"])
        True
    """

    choices: dict[str, Any]
    log_probs: dict[str, jax.Array]
    retval: Any
    deterministics: dict[str, Any]
    params: dict[str, Any]
    subsamples: dict[str, jax.Array]
    score: jax.Array
    observed: tuple[str, ...] = eqx.field(static=True)
    site_plates: tuple = eqx.field(static=True, default=())
    distributions: SiteDistributions = eqx.field(default_factory=SiteDistributions)

    @property
    def latents(self) -> dict[str, Any]:
        """The choices of the unobserved sites."""
        return {k: v for k, v in self.choices.items() if k not in self.observed}

    def plate_log_density(self, plate: str, addresses=None) -> jax.Array:
        """Per-element log density of the sites in ``plate``: a vector over the plate.

        Every site in ``addresses`` (default: all sites) must lie in the plate;
        other dimensions are summed. Per-data-point bounds (IWAE) need this.
        """
        if plate in self.subsamples:
            # Each element's log density carries the N/B scale, which a per-point bound would put
            # inside its log-mean-exp: refuse rather than return a wrong bound.
            raise AddressError(
                f"plate '{plate}' is subsampled; a per-'{plate}' bound needs the plate without "
                "subsample_size (train on minibatches with SVI.run(..., batch_size=...) instead)"
            )
        plates = dict(self.site_plates)
        total = None
        for address in self.log_probs if addresses is None else addresses:
            dims = dict(plates.get(address, ()))
            if plate not in dims:
                raise AddressError(
                    f"site '{address}' is not inside plate '{plate}'; a per-'{plate}' log density needs "
                    f"every site in that plate (the site's plates: {sorted(dims) or 'none'})"
                )
            lp = jnp.asarray(self.log_probs[address])
            dim = dims[plate]
            if -dim > lp.ndim:
                raise AddressError(f"site '{address}': its log density has no dimension {dim} for plate '{plate}'")
            lp = jnp.moveaxis(lp, dim, 0)
            lp = lp.reshape(lp.shape[0], -1).sum(axis=1)
            total = lp if total is None else total + lp
        if total is None:
            raise AddressError(f"no sites to sum over plate '{plate}'")
        return total

    def site_distribution(self, address: str) -> tuple[Any, Any]:
        """``(fn, scale)`` of the sample site at ``address``: what its value was drawn from or scored by.

        ``fn`` is the distribution as the site saw it, with its plates' batch shape and
        any ``handlers.mask`` applied (a ``MaskedDistribution``), before a gradient strategy
        stopped its parameters; ``scale`` is the site's scale (``handlers.scale`` times a
        subsampled plate's size / subsample size), or None. A site of a ``gendsl.scan`` loop
        has a ``ScanSite`` stand-in holding the stacked log density (and, from a
        ``Recorder(loop_distributions=True)``, each step's distribution).

        Raises:
            AddressError: no sample site at ``address``.
            GendslError: the trace has been through ``jit``, ``vmap`` or ``tree_map``, which
                drop distributions (they are not pytree leaves): read them inside the traced
                function instead.

        Example:
            >>> import jax, gendsl, gendsl.distributions as dist
            >>> @gendsl.model
            ... def m():
            ...     with gendsl.plate("data", 3):
            ...         gendsl.sample("z", dist.Normal(0.0, 1.0))
            >>> fn, scale = m.simulate(jax.random.key(0)).site_distribution("z")
            >>> fn.batch_shape, scale
            ((3,), None)
        """
        table = self.distributions.table
        if table is None:
            raise GendslError(
                f"site '{address}': this trace carries no distributions, because it went through jit, vmap or "
                "tree_map (distributions are not pytree leaves); call site_distribution inside the function "
                "that runs the model"
            )
        return table[_known(address, table)]

    def site_score(self, address: str) -> jax.Array:
        """Total log density of the site at ``address`` (of an unbatched trace)."""
        return jnp.sum(self.log_probs[_known(address, self.log_probs)])


def _known(address: str, table: dict) -> str:
    if address not in table:
        raise AddressError(f"no site '{address}' in this trace; it has {sorted(table)}")
    return address


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Recorder(Messenger):
    """Records sample, param and deterministic sites; checks them on the way.

    Sits outermost in gendsl's entry points, so it sees each message after
    plates have broadcast the distribution and after substitution and seeding.

    Args:
        loop_distributions: also keep each step's distribution of the sites of
            ``gendsl.scan`` loops (``ScanSite.step_fn``). Off by default: it adds the
            distributions' parameters to the loop's outputs, which the objectives do
            not need; ``gendsl.diagnostics`` turns it on.
    """

    def __init__(self, *, loop_distributions: bool = False) -> None:
        super().__init__()
        self.loop_distributions = loop_distributions
        self.values: dict[str, Any] = {}
        self.log_probs: dict[str, jax.Array] = {}
        self.observed: list[str] = []
        self.deterministics: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.param_constraints: dict[str, Any] = {}
        self.subsamples: dict[str, Any] = {}
        self.site_plates: dict[str, tuple] = {}
        self.param_decls: dict[str, tuple] = {}
        self.distributions: dict[str, tuple] = {}
        self._drawn_from: dict[str, tuple] = {}

    def loop_site(self, probe) -> None:
        """Asks a ``gendsl.scan`` loop for its sites' per-step distributions, if ``loop_distributions``."""
        if self.loop_distributions:
            probe[KEEP_FN] = True

    def process_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        name = msg["name"]
        # The distribution as the value is drawn from it: a gradient strategy may later swap
        # msg["fn"] for a copy with stopped parameters (the log q it records), which a KL
        # in the guide's parameters must not see.
        self._drawn_from[name] = (msg["fn"], msg.get("scale"))
        if msg["value"] is None and msg["kwargs"].get("rng_key") is None:
            raise NoKeyError(
                f"sample site '{name}' needs a random key but none is in scope: use "
                "model.simulate(key, ...) / model.generate(key, ...), or wrap it in "
                "gendsl.handlers.seed(fn, key=...)"
            )
        if msg["value"] is None and isinstance(msg["fn"], ImproperUniform):
            raise GendslError(
                f"sample site '{name}' has an improper prior (ImproperUniform): it can be scored but not drawn; "
                "give it a value (model.assess, or generate's constraints) or a proper prior"
            )
        if msg["is_observed"] and msg["value"] is not None:
            _check_observation(name, msg["value"], msg["fn"], in_plate=bool(msg.get("cond_indep_stack")))

    def postprocess_message(self, msg) -> None:
        kind = msg["type"]
        name = msg.get("name")
        if kind == "plate":
            size, subsample_size = msg["args"]
            if subsample_size is not None and subsample_size < size:
                self.subsamples[name] = msg["value"]
            return
        if kind == "param":
            self._check_param(name, msg)
            self.params[name] = msg["value"]
            self.param_constraints[name] = msg["kwargs"].get("constraint")
            return
        if kind == "deterministic":
            self._claim(name)
            self.deterministics[name] = msg["value"]
            return
        if kind != "sample":
            return
        self._claim(name)
        value = msg["value"]
        lp = site_log_prob_p.bind(jnp.asarray(msg["fn"].log_prob(value)))
        if msg.get("scale") is not None:
            lp = lp * msg["scale"]
        self.values[name] = value
        self.log_probs[name] = lp
        self.distributions[name] = self._drawn_from.pop(name, (msg["fn"], msg.get("scale")))
        self.site_plates[name] = tuple((f.name, f.dim) for f in msg.get("cond_indep_stack") or ())
        if msg["is_observed"]:
            self.observed.append(name)

    def _check_param(self, name: str, msg) -> None:
        """A parameter may be read twice, but not re-declared differently, nor share a site's name."""
        if name in self.values or name in self.deterministics:
            raise AddressError(
                f"address '{name}' is both a sample (or deterministic) site and a param; give the param "
                "another name"
            )
        declared = (_signature(msg["value"]), msg["args"][0] if msg["args"] else None)
        if name not in self.param_decls:
            self.param_decls[name] = declared
            return
        (old_shape, old_init), (new_shape, new_init) = self.param_decls[name], declared
        if old_shape != new_shape:
            raise AddressError(
                f"param '{name}' is declared twice with different shapes, {old_shape[1]} and {new_shape[1]}; "
                "a name stands for one parameter: give the second one another name"
            )
        if _differ(old_init, new_init):
            raise AddressError(
                f"param '{name}' is declared twice with different initial values; a name stands for one "
                "parameter: give the second one another name, or the same initial value"
            )

    def _claim(self, name: str) -> None:
        if name in self.params:
            raise AddressError(
                f"address '{name}' is both a param and a sample (or deterministic) site; give the site "
                "another name"
            )
        if name in self.values or name in self.deterministics:
            raise AddressError(
                f"address '{name}' is used by two sites in one execution; give each site a "
                f"unique name (e.g. f'{name}_{{i}}' in a Python loop) or use gendsl.scan "
                "for loops, which indexes addresses by step"
            )

    def trace(self, retval: Any) -> Trace:
        score = jnp.zeros(())
        for lp in self.log_probs.values():
            score = score + jnp.sum(lp)
        return Trace(
            score=score,
            choices=dict(self.values),
            log_probs=dict(self.log_probs),
            retval=retval,
            deterministics=dict(self.deterministics),
            params=dict(self.params),
            subsamples=dict(self.subsamples),
            observed=tuple(self.observed),
            site_plates=tuple(self.site_plates.items()),
            distributions=SiteDistributions(dict(self.distributions)),
        )


def _signature(value: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(value)
    return treedef, tuple(tuple(jnp.shape(x)) for x in leaves)


def _differ(a: Any, b: Any) -> bool:
    """Whether two concrete initial values differ (callables and traced values are not compared)."""
    if a is None or b is None or callable(a) or callable(b):
        return False
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(leaves_a) != len(leaves_b):
        return True
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if not (_is_concrete(x) and _is_concrete(y)):
            return False
        if np.shape(x) != np.shape(y) or not np.array_equal(np.asarray(x), np.asarray(y)):
            return True
    return False


def _check_observation(name: str, value: Any, fn: Any, *, in_plate: bool = False) -> None:
    shape = tuple(jnp.shape(value))
    dist_shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    try:
        joint = tuple(jnp.broadcast_shapes(shape, dist_shape))
    except ValueError:
        raise ObservationError(
            f"observed site '{name}': value of shape {shape} does not broadcast with the "
            f"distribution's shape {dist_shape} (batch {tuple(fn.batch_shape)}, event "
            f"{tuple(fn.event_shape)}); reshape the data or fix the plate / .to_event() "
            "of the distribution"
        ) from None
    if in_plate and joint != dist_shape:
        # Inside a plate the distribution's shape is the site's: a larger observation would be
        # scored as more observations than the plate has, silently.
        raise ObservationError(
            f"observed site '{name}': value of shape {shape} is larger than the site's shape {dist_shape} "
            f"(batch {tuple(fn.batch_shape)}, event {tuple(fn.event_shape)}, with its plates); it would count "
            "as more observations than the plates hold: reshape the data or fix the plate / .to_event()"
        )
    if _is_concrete(value):
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.isfinite(arr).sum())
            raise ObservationError(
                f"observed site '{name}': {bad} of {arr.size} values are NaN or infinite; "
                "clean the data or mask the missing entries with gendsl.handlers.mask"
            )
