"""How an objective's parameters start, and the map between constrained and unconstrained values.

Initialization is separate from estimation: an ``Expectation`` declares where its parameters
come from (``models=`` whose ``gendsl.param`` / ``gendsl.module`` initializers run, or an
explicit ``init=``), and ``init_params`` reads that declaration. Optimizers work in
unconstrained space; each ``gendsl.param``'s constraint gives the bijection.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import biject_to

from gendsl import Model
from gendsl.inference._expectation import Expectation
from gendsl.internal import as_key, init_models

__all__ = ["init_params", "transforms"]


def init_params(objective: Expectation, key, *args, **kwargs) -> tuple[dict, dict]:
    """Initial parameters of an objective and their constraints: ``(params, constraints)``.

    ``params`` are constrained values by name; ``constraints`` maps names to a NumPyro
    constraint (or None). They come from the objective's ``init=`` when it has one, else from
    the ``gendsl.param`` / ``gendsl.module`` initializers of its ``models=``, each run on
    ``*args`` (model ``i`` with ``fold_in(key, i)``).

    Raises:
        ValueError: the objective declares neither, or two models declare a parameter of the
            same name.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import elbo, init_params
        >>> @gendsl.model
        ... def p():
        ...     gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(gendsl.param("m", 0.5), 1.0))
        >>> init_params(elbo(p, q), jax.random.key(0))[0]
        {'m': 0.5}
    """
    if not isinstance(objective, Expectation):
        raise TypeError(f"init_params: expected a gendsl.inference objective, got {type(objective).__name__}")
    if objective.init is not None:
        return objective.init(key, *args, **kwargs)
    if not objective.models:
        raise ValueError(
            "this objective does not know its models: declare them with "
            "expectation(f, models=(model, guide)) or expectation(f, init=...), or pass initial params explicitly"
        )
    params, constraints = {}, {}
    if all(isinstance(m, Model) for m in objective.models):
        inits = init_models(objective.models, key, *args, **kwargs)
    else:
        inits = [m.init_with_constraints(jax.random.fold_in(as_key(key), i), *args, **kwargs)
                 for i, m in enumerate(objective.models)]
    for p, c in inits:
        clash = sorted(set(p) & set(params))
        if clash:
            raise ValueError(
                f"parameters {clash} are declared by two models of this objective; give the "
                "model's and the guide's parameters different names"
            )
        params.update(p)
        constraints.update(c)
    return params, constraints


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, float, int))


def transforms(params: dict, constraints: dict) -> dict[str, Any]:
    """The bijection from unconstrained space onto each constrained array parameter's support."""
    return {k: biject_to(c) for k, c in constraints.items() if c is not None and k in params and _is_array(params[k])}


def strongly_typed(tree):
    """The tree with every leaf a strongly typed array.

    A weakly typed float from a Python literal would become strong after the first optimizer
    update and retrace a jitted step.
    """
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)
