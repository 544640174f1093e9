"""``@gendsl.model``: a function of random choices as an object with an interface.

The three operations follow Gen's generative-function interface, built on the
NumPyro handler stack:

* ``simulate(key, *args)`` runs the program forward and returns its ``Trace``;
* ``assess(choices, *args)`` scores a complete set of choices;
* ``generate(key, constraints, *args)`` runs with some choices fixed and returns
  the importance weight of the prior proposal for the rest.

The model object is still a plain callable, so NumPyro's handlers, ``MCMC`` and
``Predictive`` run it like any NumPyro model.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.handlers as nh
from numpyro.distributions import ImproperUniform, biject_to
from numpyro.primitives import Messenger

from gendsl._address import as_key
from gendsl._errors import AddressError, MissingChoiceError
from gendsl._handlers import seed, shared_subsamples
from gendsl._trace import Recorder, Trace

__all__ = ["Model", "VmapModel", "assess_trace", "init_models", "model"]


class RequireValues(Messenger):
    """Fails on a latent site that received no value (used by ``assess``)."""

    def loop_site(self, probe) -> None:
        """The same check for a site of a ``gendsl.scan`` body (see ``LoopSiteHandler``)."""
        if probe["value"] is None and not probe["is_observed"]:
            raise missing_choice(probe["name"])

    def process_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["value"] is None and not msg["is_observed"]:
            raise missing_choice(msg["name"])
        if msg["type"] == "plate" and msg["value"] is None and msg["kwargs"].get("rng_key") is None:
            size, subsample_size = msg["args"]
            if subsample_size is not None and subsample_size < size:
                raise MissingChoiceError(
                    f"assess: plate '{msg['name']}' draws {subsample_size} of {size} indices; pass them "
                    f"as choices['{msg['name']}'] (a simulated trace holds them in trace.subsamples)"
                )


class _ImproperAtZero(Messenger):
    """Gives a site with an improper prior (``ImproperUniform``: no sampler) the point 0 in unconstrained space.

    Only ``Model.init`` uses it: collecting the parameters runs the model, and a flat prior can
    be scored but not drawn. Any value in the support serves, since no parameter depends on it.
    """

    def process_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["value"] is None and isinstance(msg["fn"], ImproperUniform):
            fn = msg["fn"]
            transform = biject_to(fn.support)
            shape = tuple(msg["kwargs"].get("sample_shape", ())) + tuple(fn.batch_shape) + tuple(fn.event_shape)
            msg["value"] = transform(jnp.zeros(transform.inverse_shape(shape)))


def missing_choice(address: str) -> MissingChoiceError:
    """The error for a latent site at ``address`` that ``assess`` found without a value (also raised in loops)."""
    return MissingChoiceError(
        f"assess: no value for latent site '{address}'; add choices['{address}'], or use "
        "model.generate(key, constraints, ...) to sample the sites you leave out"
    )


def _check_mapping(what: str, value: Any) -> Mapping:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what}: expected a dict from address to value, got {type(value).__name__}")
    return value


def _check_visited(what: str, given: Mapping, rec: Recorder) -> None:
    visited = set(rec.values) | set(rec.subsamples)
    unknown = sorted(set(given) - visited)
    if unknown:
        raise AddressError(
            f"{what}: {unknown} {'is' if len(unknown) == 1 else 'are'} not the address of any "
            f"sample site this execution visits; the visited sites are {sorted(visited)}"
        )


class Model:
    """A generative model: a Python function of ``gendsl.sample`` calls.

    Create one with the ``@gendsl.model`` decorator. Calling the object runs the
    function under whatever handlers are active (this is how NumPyro's
    ``MCMC``/``Predictive`` use it); the methods below are gendsl's interface.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> @gendsl.model
        ... def m(mu):
        ...     z = gendsl.sample("z", dist.Normal(mu, 1.0))
        ...     return gendsl.sample("x", dist.Normal(z, 1.0), obs=0.0)
        >>> tr = m.simulate(jax.random.key(0), 1.0)
        >>> bool(jax.numpy.isclose(m.assess(tr.choices, 1.0), tr.score))
        True
    """

    def __init__(self, fn: Callable) -> None:
        if not callable(fn):
            raise TypeError(f"gendsl.model expects a function, got {type(fn).__name__}")
        self.fn = fn
        functools.update_wrapper(self, fn, updated=[])
        # A compile cache, like jax.jit's own: built on first use, never read by traced code.
        self._init_jit: Callable | None = None
        self._init_constraints: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<gendsl.Model {getattr(self.fn, '__qualname__', repr(self.fn))}>"

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def simulate(self, key, *args, **kwargs) -> Trace:
        """Run the model forward with randomness from ``key``.

        Args:
            key: a PRNG key or an int seed.
            *args, **kwargs: the model's arguments.

        Returns:
            The ``Trace`` of the execution.
        """
        rec = Recorder()
        with rec, seed(key=as_key(key)):
            retval = self.fn(*args, **kwargs)
        return rec.trace(retval)

    def assess(self, choices: Mapping[str, Any], *args, **kwargs) -> jax.Array:
        """Log density ``log p(choices)`` of a complete set of choices.

        Args:
            choices: a value for every latent site (loop sites stacked over
                steps, as in ``Trace.choices``), and the indices of every
                subsampled plate (as in ``Trace.subsamples``). Values for observed
                sites replace the observation, as with ``numpyro.handlers.substitute``.
            *args, **kwargs: the model's arguments.

        Raises:
            MissingChoiceError: a latent site has no value.
            AddressError: ``choices`` names an address the model never visits.
        """
        return assess_trace(self, choices, args, kwargs).score

    def generate(self, key, constraints: Mapping[str, Any], *args, **kwargs) -> tuple[Trace, jax.Array]:
        """Run with ``constraints`` fixed; sample the other latents from the prior.

        Returns the trace and the log importance weight
        ``log p(all choices) - log p(prior-sampled choices)``: the log density of
        the constrained and observed sites.

        Args:
            key: a PRNG key or an int seed.
            constraints: values for some sample sites, by address.
            *args, **kwargs: the model's arguments.

        Raises:
            AddressError: ``constraints`` names an address the model never visits.
        """
        _check_mapping("generate(constraints)", constraints)
        rec = Recorder()
        with rec, seed(key=as_key(key)), nh.substitute(data=dict(constraints)):
            retval = self.fn(*args, **kwargs)
        _check_visited("generate(constraints)", constraints, rec)
        trace = rec.trace(retval)
        weight = jnp.zeros(())
        for address, lp in trace.log_probs.items():
            if address in constraints or address in trace.observed:
                weight = weight + jnp.sum(lp)
        return trace, weight

    def init(self, key, *args, **kwargs) -> dict[str, Any]:
        """Initial values of the model's parameters (``gendsl.param``/``gendsl.module``).

        Returns:
            A dict from parameter name to value (a pytree for modules), the
            explicit parameter pytree that ``bind`` and optax consume.
        """
        return self.init_with_constraints(key, *args, **kwargs)[0]

    def init_with_constraints(self, key, *args, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """``init``, plus each parameter's constraint (``None`` means unconstrained).

        The model runs under ``jit``, compiled once per argument signature: for a
        network-sized model that is much faster than executing it op by op.
        """
        if self._init_jit is None:

            def run(key, args, kwargs):
                params, self._init_constraints = _record_params(self, key, args, kwargs)
                return params

            self._init_jit = eqx.filter_jit(run)
        params = self._init_jit(as_key(key), args, kwargs)
        return params, dict(self._init_constraints)

    def bind(self, params: Mapping[str, Any]) -> Model:
        """The same model with its parameters set to ``params``.

        Example:
            >>> import jax, jax.numpy as jnp, gendsl
            >>> @gendsl.model
            ... def m():
            ...     return gendsl.param("w", jnp.zeros(2))
            >>> m.bind({"w": jnp.ones(2)}).simulate(jax.random.key(0)).retval
            Array([1., 1.], dtype=float32)
        """
        _check_mapping("bind(params)", params)
        return Model(nh.substitute(self.fn, data=dict(params)))

    def vmap(self, in_axes: int | tuple | None = 0, *, axis_size: int | None = None,
             constraints_axis: int | None = None) -> VmapModel:
        """A vectorized model: many independent executions as one batched program.

        Args:
            in_axes: which axis of each model argument is mapped (as ``jax.vmap``);
                None broadcasts an argument.
            axis_size: the number of executions; needed when no argument is mapped.
            constraints_axis: axis of ``generate``'s constraints (None: shared).

        Example:
            >>> import jax, gendsl, gendsl.distributions as dist
            >>> @gendsl.model
            ... def m(mu):
            ...     return gendsl.sample("z", dist.Normal(mu, 1.0))
            >>> tr = jax.jit(m.vmap().simulate)(jax.random.key(0), jax.numpy.arange(3.0))
            >>> tr.choices["z"].shape
            (3,)
        """
        return VmapModel(self, in_axes, axis_size, constraints_axis)

    def repeat(self, n: int) -> VmapModel:
        """``n`` independent executions with shared arguments (particles)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"repeat: n must be a positive int, got {n!r}")
        return VmapModel(self, None, n, None)


def _record_params(model: Model, key, args, kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``model`` once for its parameters: ``(params, constraints)``; the constraints are static."""
    rec = Recorder()
    with rec, seed(key=key), _ImproperAtZero():
        model.fn(*args, **kwargs)
    return rec.params, rec.param_constraints


@functools.lru_cache(maxsize=64)
def _joint_init(models: tuple[Model, ...]) -> tuple[Callable, list]:
    constraints: list = [{} for _ in models]

    def run(key, args, kwargs):
        params = []
        for i, m in enumerate(models):
            p, constraints[i] = _record_params(m, jax.random.fold_in(key, i), args, kwargs)  # static: set while tracing
            params.append(p)
        return params

    return eqx.filter_jit(run), constraints


def init_models(models, key, *args, **kwargs) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``init_with_constraints`` of several models on the same arguments, compiled as one program.

    Model ``i`` initializes with ``fold_in(key, i)``, so each gets the parameters that its own
    ``init_with_constraints(fold_in(key, i), ...)`` would. One program instead of one per
    model: the compile of a network initializer dominates the time to a first step, and
    XLA compiles one program of two initializers faster than two programs.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.internal import init_models
        >>> @gendsl.model
        ... def p():
        ...     gendsl.sample("z", dist.Normal(gendsl.param("a", 1.0), 1.0))
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(0.0, gendsl.param("b", 2.0, constraint=dist.constraints.positive)))
        >>> [(sorted(p), sorted(c)) for p, c in init_models((p, q), jax.random.key(0))]
        [(['a'], ['a']), (['b'], ['b'])]
    """
    models = tuple(models)
    run, constraints = _joint_init(models)
    params = run(as_key(key), args, kwargs)
    return [(p, dict(c)) for p, c in zip(params, constraints, strict=True)]


class VmapModel:
    """Batched ``simulate``/``assess``/``generate``; see ``Model.vmap`` and ``Model.repeat``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> @gendsl.model
        ... def m():
        ...     return gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> particles = m.repeat(4).simulate(jax.random.key(0))
        >>> m.repeat(4).assess(particles.choices).shape
        (4,)
    """

    def __init__(self, model: Model, in_axes, axis_size, constraints_axis) -> None:
        self.model = model
        self.in_axes = in_axes
        self.axis_size = axis_size
        self.constraints_axis = constraints_axis

    def _axes(self, args: tuple) -> tuple:
        if isinstance(self.in_axes, tuple):
            if len(self.in_axes) != len(args):
                raise ValueError(
                    f"vmap: in_axes has {len(self.in_axes)} entries but the model got {len(args)} arguments"
                )
            return self.in_axes
        return (self.in_axes,) * len(args)

    def _size(self, args: tuple, axes: tuple) -> int:
        if self.axis_size is not None:
            return self.axis_size
        for arg, axis in zip(args, axes, strict=False):
            if axis is not None:
                leaves = jax.tree_util.tree_leaves(arg)
                if leaves:
                    return jnp.shape(leaves[0])[axis]
        raise ValueError("vmap: no argument is mapped; pass axis_size=n (or use model.repeat(n))")

    def simulate(self, key, *args, **kwargs) -> Trace:
        """``n`` traces stacked along a leading axis."""
        axes = self._axes(args)
        keys = jax.random.split(as_key(key), self._size(args, axes))
        run = functools.partial(_simulate, self.model, kwargs)
        return jax.vmap(run, in_axes=(0, *axes))(keys, *args)

    def assess(self, choices, *args, **kwargs) -> jax.Array:
        """Log densities of ``n`` sets of choices stacked along axis 0."""
        axes = self._axes(args)
        run = functools.partial(_assess, self.model, kwargs)
        return jax.vmap(run, in_axes=(0, *axes))(choices, *args)

    def generate(self, key, constraints, *args, **kwargs) -> tuple[Trace, jax.Array]:
        """``n`` (trace, log weight) pairs; see ``Model.generate``."""
        axes = self._axes(args)
        keys = jax.random.split(as_key(key), self._size(args, axes))
        run = functools.partial(_generate, self.model, kwargs)
        return jax.vmap(run, in_axes=(0, self.constraints_axis, *axes))(keys, constraints, *args)


def assess_trace(model: Model, choices: Mapping[str, Any], args: tuple, kwargs: dict, *,
                 subsample_key: Any = None) -> Trace:
    """The trace of ``model`` at ``choices`` (``Model.assess`` returns its score).

    With ``subsample_key``, a subsampled plate whose indices are not among the choices draws
    them under ``shared_subsamples(subsample_key)``, as inside an objective; without it, such a
    plate is an error.
    """
    _check_mapping("assess(choices)", choices)
    rec = Recorder()
    shared = contextlib.nullcontext() if subsample_key is None else shared_subsamples(subsample_key)
    with rec, RequireValues(), nh.substitute(data=dict(choices)), shared:
        retval = model.fn(*args, **kwargs)
    _check_visited("assess(choices)", choices, rec)
    return rec.trace(retval)


def _simulate(model, kwargs, key, *args):
    return model.simulate(key, *args, **kwargs)


def _assess(model, kwargs, choices, *args):
    return model.assess(choices, *args, **kwargs)


def _generate(model, kwargs, key, constraints, *args):
    return model.generate(key, constraints, *args, **kwargs)


def model(fn: Callable) -> Model:
    """Decorate a function of ``gendsl.sample`` (or ``numpyro.sample``) calls as a model.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> @gendsl.model
        ... def coin():
        ...     return gendsl.sample("heads", dist.Bernoulli(0.5))
        >>> coin.simulate(jax.random.key(0)).choices["heads"].shape
        ()
    """
    return fn if isinstance(fn, Model) else Model(fn)
