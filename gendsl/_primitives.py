"""The primitives a model is written in.

Each primitive sends a message through NumPyro's handler stack, so NumPyro's
handlers and inference algorithms see gendsl sites as ordinary NumPyro sites.
``plate``, ``deterministic`` and ``factor`` are NumPyro's own and are re-exported
unchanged; ``sample`` and ``param`` add what gendsl needs (a strategy per site,
named keys for parameter initialisation, clear errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
from numpyro.distributions import Distribution, constraints
from numpyro.primitives import _PYRO_STACK, apply_stack

from gendsl._errors import NoKeyError
from gendsl._messages import ADDRESS

__all__ = ["sample", "param", "module", "prng_key", "plate", "deterministic", "factor"]

plate = numpyro.plate
deterministic = numpyro.deterministic
factor = numpyro.factor


def sample(
    name: str,
    fn: Distribution,
    obs: Any = None,
    *,
    strategy: Any = None,
    infer: dict | None = None,
    sample_shape: tuple[int, ...] = (),
    rng_key: jax.Array | None = None,
) -> jax.Array:
    """Draw (or observe) the random choice at address ``name``.

    Args:
        name: the site's address; unique within one execution of the model.
        fn: a ``gendsl.distributions`` (NumPyro) distribution.
        obs: an observed value; the site then contributes ``log p(obs)`` and is
            not a latent choice.
        strategy: the gradient strategy for this site (see ``gendsl.inference``);
            stored as ``infer["strategy"]``. A ``gendsl.handlers.strategy``
            applied from outside overrides it.
        infer: extra metadata, as in ``numpyro.sample``.
        sample_shape: extra leading sample dimensions.
        rng_key: an explicit key; normally the enclosing ``seed`` provides one.

    Returns:
        The sampled, substituted or observed value.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> @gendsl.model
        ... def coin():
        ...     p = gendsl.sample("p", dist.Beta(2.0, 2.0))
        ...     return gendsl.sample("flip", dist.Bernoulli(p), obs=1.0)
        >>> tr = coin.simulate(jax.random.key(0))
        >>> sorted(tr.choices), tr.observed
        (['flip', 'p'], ('flip',))
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"sample: expected a non-empty str address, got {name!r}")
    if not isinstance(fn, Distribution):
        raise TypeError(
            f"sample site '{name}': expected a gendsl.distributions (NumPyro) distribution, "
            f"got {type(fn).__name__}"
        )
    if not _PYRO_STACK and obs is None and rng_key is None:
        raise NoKeyError(
            f"sample site '{name}' needs a random key but none is in scope: call "
            "model.simulate(key, ...) or wrap the function in gendsl.handlers.seed(fn, key=...)"
        )
    infer = {} if infer is None else dict(infer)
    if strategy is not None:
        infer["strategy"] = strategy
    return numpyro.sample(name, fn, obs=obs, rng_key=rng_key, sample_shape=sample_shape, infer=infer)


def prng_key(name: str) -> jax.Array | None:
    """A PRNG key for the address ``name`` from the enclosing seed handler.

    Under ``gendsl.handlers.seed`` the key depends only on the seed and ``name``.

    Example:
        >>> import jax, gendsl
        >>> k = gendsl.handlers.seed(lambda: gendsl.prng_key("init"), key=0)()
        >>> k.shape
        ()
    """
    if not _PYRO_STACK:
        raise NoKeyError(
            f"prng_key('{name}') needs a key in scope: wrap the caller in gendsl.handlers.seed"
        )
    value = request_key(name)
    if value is None:
        raise NoKeyError(
            f"prng_key('{name}') found no seed handler: run through model.simulate(key, ...) "
            "or gendsl.handlers.seed"
        )
    return value


def request_key(address: str) -> jax.Array | None:
    """The key the handler stack gives ``address``, or None when no seed handler is active."""
    if not _PYRO_STACK:
        return None
    msg = {
        "type": "prng_key",
        ADDRESS: address,
        "fn": lambda rng_key: rng_key,
        "args": (),
        "kwargs": {"rng_key": None},
        "value": None,
    }
    return apply_stack(msg)["value"]


def param(
    name: str,
    init_value: Any,
    *,
    constraint: constraints.Constraint = constraints.real,
    event_dim: int | None = None,
) -> Any:
    """A named, learnable parameter.

    Outside inference the parameter takes ``init_value``; inference (or
    ``Model.bind``) substitutes its current value. There is no global parameter
    store: ``Model.init`` returns the initial values as an explicit dict.

    Args:
        name: the parameter's name, unique within the model.
        init_value: an array (pytree) or a callable ``key -> array``; a callable
            gets the key of address ``name`` from the enclosing seed.
        constraint: the support of the parameter (``dist.constraints.positive``...).
        event_dim: as in ``numpyro.param``, for parameters inside subsampled plates.

    Returns:
        The parameter's value (constrained).

    Example:
        >>> import jax, jax.numpy as jnp, gendsl
        >>> from gendsl.distributions import constraints
        >>> @gendsl.model
        ... def m():
        ...     return gendsl.param("scale", jnp.ones(2), constraint=constraints.positive)
        >>> m.init(jax.random.key(0))
        {'scale': Array([1., 1.], dtype=float32)}
    """
    if not _PYRO_STACK:
        if callable(init_value):
            raise NoKeyError(
                f"param '{name}' has a callable initializer but no key is in scope: use "
                "model.init(key, ...) or gendsl.handlers.seed"
            )
        return init_value
    if callable(init_value):

        def fn(init=init_value, **_):  # kwargs carry the constraint, not inputs
            return init(prng_key(name))

        args: tuple = ()
    else:

        def fn(value, **_):
            return value

        args = (init_value,)
    msg = {
        "type": "param",
        "name": name,
        "fn": fn,
        "args": args,
        "kwargs": {"constraint": constraint, "event_dim": event_dim},
        "value": None,
        "scale": None,
        "cond_indep_stack": [],
    }
    return apply_stack(msg)["value"]


def module(name: str, init: eqx.Module | Callable[[jax.Array], eqx.Module]) -> eqx.Module:
    """Use an ``equinox.Module`` as a model parameter.

    The module's floating-point arrays become one parameter site ``name`` (a
    pytree); the rest (activation functions, shapes) stays static.

    Args:
        name: the parameter's name.
        init: a module, or a callable ``key -> module`` (evaluated only when the
            parameter is not substituted, e.g. in ``Model.init``).

    Returns:
        The module with its current parameters.

    Example:
        >>> import jax, equinox as eqx, gendsl
        >>> @gendsl.model
        ... def m(x):
        ...     net = gendsl.module("net", lambda k: eqx.nn.Linear(3, 2, key=k))
        ...     return net(x)
        >>> params = m.init(jax.random.key(0), jax.numpy.ones(3))
        >>> params["net"].weight.shape
        (2, 3)
    """
    if callable(init) and not isinstance(init, eqx.Module):
        shape = eqx.filter_eval_shape(init, jax.random.key(0))
        static = eqx.partition(shape, _is_param_leaf)[1]
        frozen = [x for x in jax.tree_util.tree_leaves(static) if isinstance(x, jax.ShapeDtypeStruct)]
        if frozen:
            # Only the floating-point arrays become the parameter; the rest must be known without a
            # key, and an integer array made by the initializer (a permutation, a mask) is not.
            raise TypeError(
                f"module '{name}': the initializer makes non-floating arrays ({frozen[0].dtype}"
                f"{list(frozen[0].shape)}) that gendsl.module cannot rebuild from a key; pass the built module, "
                f"gendsl.module('{name}', init(key))"
            )

        def init_params(key):
            return eqx.partition(init(key), _is_param_leaf)[0]

        value = param(name, init_params)
    else:
        params, static = eqx.partition(init, _is_param_leaf)
        value = param(name, params)
    return eqx.combine(value, static)


def _is_param_leaf(x: Any) -> bool:
    if isinstance(x, jax.ShapeDtypeStruct):
        return jnp.issubdtype(x.dtype, jnp.inexact)
    return eqx.is_inexact_array(x)
