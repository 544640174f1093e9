"""Matmul layout of vectorized particles: one product over particles x data points.

``repeat`` vectorizes a particle function with ``jax.vmap``. Inside it, a network is
usually applied with the user's own ``jax.vmap`` over a batch of ``B`` data points, and
an equinox layer computes ``weight @ x``. Batching that over ``B`` and then over the
``K`` particles gives ``dot_general(weight, x)`` of shape ``(out, K, B)``, transposed at
once to ``(K, B, out)`` (where the batching rule of the next operation wants the mapped
axes), and, in the backward pass, weight gradients that contract two axes ``(K, B)``.
With one mapped axis XLA:CPU folds such transposes into the matmul; with two it copies
every activation and every gradient flowing back through the network once more
(``benchmarks/vae_step.py --hlo`` counts the transposes; the step was 1.17x the
hand-written one that runs the decoder on ``K*B`` rows).

``fold_particle_products`` rewrites the particles' jaxpr before anything differentiates
or compiles it, in two steps, each the same product written differently:

1. *swap*: a ``dot_general`` whose only use is a ``transpose`` that puts the second
   operand's free axes before the first's becomes the ``dot_general`` of the swapped
   operands, which yields that order directly;
2. *fold*: a ``dot_general`` whose first operand has several free axes followed by its
   one contracted axis (``(K, B, in)``, no batch axes) becomes a matmul of that operand
   reshaped to ``(K*B, in)``, reshaped back: one matmul over particles x data points,
   whose gradient contracts one axis.

Every output element is the same sum of the same products, so values and gradients are
those of the program as written (up to the summation order XLA picks for a matmul).
Under dependency tracking (``_provenance``) only the swap is made: the analysis follows a
product's axes through a ``dot_general`` but not through a reshape that merges two of them,
and would pair each REINFORCE score with more of the objective than it does now.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import jax
from jax.extend.core import ClosedJaxpr, DropVar, Jaxpr, JaxprEqn, Var, jaxpr_as_fun

__all__ = ["fold_particle_products"]

_CALLS = ("pjit", "jit")  # calls whose jaxpr is rewritten too (a jitted network)


def fold_particle_products(fn: Callable[[], object], *, fold: bool = True) -> Callable[[], object]:
    """``fn`` traced to a jaxpr, rewritten as above, and evaluated.

    Args:
        fn: a function of no arguments (it closes over its inputs, tracers of enclosing
            transformations included); its Python side effects happen once, while it is
            traced, as under ``jax.vmap``.
        fold: whether to make step 2 (reshape into one matmul) as well as step 1 (swap).

    Returns:
        A function of no arguments returning what ``fn`` returns.
    """

    def run():
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)()
        outputs = jaxpr_as_fun(rewrite_closed(closed, fold=fold))()
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), outputs)

    return run


def rewrite_closed(closed: ClosedJaxpr, *, fold: bool = True) -> ClosedJaxpr:
    """``closed`` with its products swapped and folded (the same object when none is)."""
    jaxpr = _rewrite(closed.jaxpr, fold)
    return closed if jaxpr is closed.jaxpr else ClosedJaxpr(jaxpr, closed.consts)


def _rewrite(jaxpr: Jaxpr, fold: bool) -> Jaxpr:
    eqns: list = list(jaxpr.eqns)
    changed = _swap(jaxpr, eqns)
    out = []
    for eqn in eqns:
        if eqn is None:
            continue
        if eqn.primitive.name in _CALLS:
            inner = rewrite_closed(eqn.params["jaxpr"], fold=fold)
            if inner is not eqn.params["jaxpr"]:
                eqn = eqn.replace(params={**eqn.params, "jaxpr": inner})
                changed = True
        folded = _fold(eqn) if fold and eqn.primitive.name == "dot_general" else None
        if folded is None:
            out.append(eqn)
        else:
            out.extend(folded)
            changed = True
    return jaxpr.replace(eqns=out) if changed else jaxpr


def _swap(jaxpr: Jaxpr, eqns: list) -> bool:
    """Step 1 in place on ``eqns`` (a removed ``transpose`` becomes None): whether any was swapped."""
    uses = collections.Counter(v for v in jaxpr.outvars if isinstance(v, Var))
    producer = {}
    for i, eqn in enumerate(jaxpr.eqns):
        uses.update(v for v in eqn.invars if isinstance(v, Var))
        if eqn.primitive.name == "dot_general":
            producer[eqn.outvars[0]] = i
    changed = False
    for i, eqn in enumerate(jaxpr.eqns):
        if eqn.primitive.name != "transpose" or not isinstance(eqn.invars[0], Var):
            continue
        j = producer.get(eqn.invars[0])
        if j is None or uses[eqn.invars[0]] != 1:
            continue
        dot = jaxpr.eqns[j]
        if tuple(eqn.params["permutation"]) != _swapped_order(dot):
            continue
        # The swapped product takes the transpose's place as the producer of its output, and is
        # emitted where the product was, where both operands are already defined.
        eqns[j] = dot.replace(invars=dot.invars[::-1], outvars=eqn.outvars, params=_swapped_params(dot.params))
        eqns[i] = None
        changed = True
    return changed


def _swapped_order(dot: JaxprEqn) -> tuple[int, ...]:
    """The permutation of ``dot``'s output that the swapped product produces directly."""
    (contract, _), (batch, _) = dot.params["dimension_numbers"]
    lhs, rhs = (v.aval.ndim for v in dot.invars)
    n_batch, n_lhs = len(batch), lhs - len(batch) - len(contract)
    n_rhs = rhs - len(batch) - len(contract)
    return (*range(n_batch), *range(n_batch + n_lhs, n_batch + n_lhs + n_rhs), *range(n_batch, n_batch + n_lhs))


def _swapped_params(params: dict) -> dict:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params["dimension_numbers"]
    precision = params["precision"]
    if isinstance(precision, tuple):
        precision = precision[::-1]
    return {
        **params,
        "dimension_numbers": ((rhs_contract, lhs_contract), (rhs_batch, lhs_batch)),
        "precision": precision,
    }


def _fold(dot: JaxprEqn) -> list[JaxprEqn] | None:
    """Step 2: the equations of the folded product, or None when ``dot`` is not of that form."""
    lhs, rhs = dot.invars
    out = dot.outvars[0]
    (lhs_contract, rhs_contract), (lhs_batch, _) = dot.params["dimension_numbers"]
    if not isinstance(lhs, Var) or isinstance(out, DropVar) or lhs_batch or dot.params.get("out_sharding"):
        return None
    if lhs.aval.ndim < 3 or tuple(lhs_contract) != (lhs.aval.ndim - 1,):
        return None
    precision, preferred = dot.params["precision"], dot.params["preferred_element_type"]

    def product(a, b):
        flat = a.reshape(-1, a.shape[-1])
        dims = (((1,), tuple(rhs_contract)), ((), ()))
        c = jax.lax.dot_general(flat, b, dims, precision=precision, preferred_element_type=preferred)
        return c.reshape(*a.shape[:-1], *c.shape[1:])

    specs = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in (lhs, rhs)]
    sub = jax.make_jaxpr(product)(*specs)
    if sub.consts or sub.out_avals[0].shape != out.aval.shape or sub.out_avals[0].dtype != out.aval.dtype:
        return None
    rename = dict(zip(sub.jaxpr.invars, (lhs, rhs), strict=True))
    rename[sub.jaxpr.outvars[0]] = out
    return [
        e.replace(
            invars=[rename.get(v, v) if isinstance(v, Var) else v for v in e.invars],
            outvars=[rename.get(v, v) for v in e.outvars],
            source_info=dot.source_info,
            ctx=dot.ctx,
        )
        for e in sub.jaxpr.eqns
    ]
