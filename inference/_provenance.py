"""Dependency tracking: which cost terms of an objective depend on which score-function sites.

A REINFORCE site ``z`` contributes ``∇log q(z | parents) · Q`` to the gradient, where ``Q`` may
be the whole objective ``F``, but only the part of ``F`` that depends on ``z`` has a non-zero
expectation in that product: every other term is independent of ``z`` given ``z``'s parents.
Keeping only the dependent terms (Rao-Blackwellization, as in Pyro's and NumPyro's
``TraceGraph_ELBO``) leaves the estimator unbiased and removes the variance the other terms add.
In a plate over data points it pairs each point's score with its own cost; in a loop it pairs
the site at step ``s`` with the costs at steps ``t ≥ s`` only.

How it is found, from the program itself:

1. The objective is traced to a jaxpr with every REINFORCE value passed through ``tag_p``, an
   identity primitive that names the site (``score_site``).
2. ``analyze`` runs forward over the jaxpr and computes, for every variable and every site, a
   *relation* between the variable's elements and the site's score elements: for each score
   axis, either ``None`` (an element may depend on any element along that axis) or
   ``(target, kind)``: the element at index ``i`` of the variable's axis ``target`` depends
   only on score elements at index ``i`` (``kind="eq"``) or ``≤ i`` (``"le"``) of that axis.
   Inside a ``lax.scan`` body the target can also be the loop step, ``("step", level)``, which
   becomes the leading axis of the loop's stacked outputs. Every rule over-approximates: an
   unknown primitive keeps the dependence and forgets the alignment, which costs variance,
   never bias.
3. The same pass writes ``F`` as a sum of *leaf* arrays with constant coefficients (through
   ``add``, ``sub``, ``neg``, ``reduce_sum``, reshapes, broadcasts and multiplication by
   site-independent scalars); leaves that depend on no site are dropped.
4. ``costs`` evaluates the jaxpr once, with the leaves as extra outputs, and pairs each site's
   score with the sum of the leaf elements related to it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Literal, Primitive, jaxpr_as_fun
from jax.interpreters import ad, batching, mlir

from gendsl.internal import site_log_prob_p

__all__ = ["analyze", "costs", "score_site", "tag_p"]

# ----------------------------------------------------------------------------- the tag

tag_p = Primitive("gendsl_score_site")


def score_site(value, *, address: str, loops: int, batch_ndim: int):
    """``value`` unchanged, marked in the jaxpr as the value of the REINFORCE site ``address``.

    ``loops`` is the number of ``gendsl.scan`` loops around the site and ``batch_ndim`` the
    number of leading axes of ``value`` that its score (``log_prob``) keeps.
    """
    return tag_p.bind(value, address=address, loops=loops, batch_ndim=batch_ndim, vmapped=0)


tag_p.def_impl(lambda x, **_: x)
tag_p.def_abstract_eval(lambda x, **_: x)
ad.deflinear2(tag_p, lambda ct, x, **_: [ct])
mlir.register_lowering(tag_p, mlir.lower_fun(lambda x, **_: x, multiple_results=False))


def _tag_batch(args, dims, *, vmapped, **params):
    # The vmapped axis goes first, so that the analysis knows where each `repeat` particle
    # axis lies: particle axes lead, outermost first (the order `repeat` stacks scores in).
    (x,), (d,) = args, dims
    x = jnp.moveaxis(x, d, 0)
    return tag_p.bind(x, vmapped=vmapped + 1, **params), 0


batching.primitive_batchers[tag_p] = _tag_batch

# ----------------------------------------------------------------------------- relations

EQ, LE = "eq", "le"

_ELEMENTWISE = {
    "abs", "acos", "acosh", "add", "and", "asin", "asinh", "atan", "atan2", "atanh", "bessel_i0e", "bessel_i1e",
    "cbrt", "ceil", "clamp", "conj", "convert_element_type", "copy", "copy_p", "cos", "cosh", "digamma", "div",
    "eq", "erf", "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "igamma", "igamma_grad_a",
    "igammac", "imag", "integer_pow", "is_finite", "le", "lgamma", "log", "log1p", "logistic", "lt", "max", "min",
    "mul", "ne", "neg", "nextafter", "not", "or", "polygamma", "population_count", "pow", "random_gamma_grad",
    "real", "reduce_precision", "regularized_incomplete_beta", "rem", "round", "rsqrt", "select_n", "shift_left",
    "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sinh", "sqrt", "square", "stop_gradient",
    "sub", "tan", "tanh", "xor", "zeta",
}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax", "argmin"}
_CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "remat": "jaxpr",
          "checkpoint": "jaxpr"}  # fmt: skip


def _merge_entry(a, b):
    if a == b:
        return a
    if a is None or b is None or a[0] != b[0]:
        return None
    return (a[0], LE)  # one target, "eq" and "le": "le" covers both


def _merge(deps_list):
    out: dict[str, tuple] = {}
    for deps in deps_list:
        for site, rel in deps.items():
            old = out.get(site)
            out[site] = rel if old is None else tuple(_merge_entry(x, y) for x, y in zip(old, rel, strict=True))
    return out


def _remap(deps, axis_map):
    """Move var-axis targets with ``axis_map(axis) -> new axis or None``; steps stay."""
    out = {}
    for site, rel in deps.items():
        new = []
        for e in rel:
            if e is None or not isinstance(e[0], int):
                new.append(e)
            else:
                t = axis_map(e[0])
                new.append(None if t is None else (t, e[1]))
        out[site] = tuple(new)
    return out


def _forget_axes(deps):
    return _remap(deps, lambda _: None)


class _Analysis:
    """One forward pass over a jaxpr (and, recursively, its sub-jaxprs)."""

    def __init__(self):
        self.sizes: dict[str, tuple] = {}  # site -> score shape (from its tags)
        self.untracked: set[str] = set()  # sites whose tags the analysis could not follow

    # -- entry

    def run(self, jaxpr, in_deps, depth, terms=None, counters=None):
        """Relations of ``jaxpr``'s outputs given its inputs'; ``counters`` maps input
        positions that hold a loop's step counter to the loop's level."""
        env: dict[Any, dict] = {}
        # Integer variables known to be a loop counter ("step", level), or an iota (0, 1, ...).
        self.index = {jaxpr.invars[i]: ("step", level) for i, level in (counters or {}).items()}

        def read(v):
            return {} if isinstance(v, Literal) else env.get(v, {})

        for v, d in zip(jaxpr.invars, in_deps, strict=True):
            env[v] = d
        for v in jaxpr.constvars:
            env[v] = {}
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            index = self.index
            outs = self.eqn(eqn, ins, depth)
            self.index = index  # sub-jaxprs have their own
            self._track_index(eqn)
            for v, d in zip(eqn.outvars, outs, strict=True):
                env[v] = self._valid(d, v.aval)
            if terms is not None:
                _decompose(eqn, env, read, terms)
        return [read(v) for v in jaxpr.outvars], env

    def _valid(self, deps, aval):
        """Drop targets that do not fit the variable's shape (a relation needs equal lengths)."""
        shape = getattr(aval, "shape", ())
        out = {}
        for site, rel in deps.items():
            sizes = self.sizes.get(site)
            new = []
            for i, e in enumerate(rel):
                if e is not None and isinstance(e[0], int):
                    ok = e[0] < len(shape) and sizes is not None and shape[e[0]] == sizes[i]
                    e = e if ok else None
                new.append(e)
            out[site] = tuple(new)
        return out

    def _track_index(self, eqn):
        name, p = eqn.primitive.name, eqn.params
        if name == "iota" and p["dimension"] == 0 and len(p["shape"]) == 1:
            self.index[eqn.outvars[0]] = "iota"
        elif name in ("copy", "copy_p", "convert_element_type") and not isinstance(eqn.invars[0], Literal):
            known = self.index.get(eqn.invars[0])
            if known is not None and jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.integer):
                self.index[eqn.outvars[0]] = known
        elif name == "lt" and isinstance(self._counter(eqn.invars[0]), tuple):
            # Negative-index normalization, `select_n(t < 0, t, t + n)`: a counter is never < 0.
            b = eqn.invars[1]
            if isinstance(b, Literal) and b.val <= 0:
                self.index[eqn.outvars[0]] = "false"
        elif name == "select_n" and len(eqn.invars) == 3 and self._counter(eqn.invars[0]) == "false":
            known = self._counter(eqn.invars[1])
            if known is not None:
                self.index[eqn.outvars[0]] = known

    def _counter(self, v):
        return None if isinstance(v, Literal) else self.index.get(v)

    # -- rules

    def eqn(self, eqn, ins, depth):
        name = eqn.primitive.name
        p = eqn.params
        out_avals = [v.aval for v in eqn.outvars]
        rank = len(getattr(out_avals[0], "shape", ())) if out_avals else 0
        if eqn.primitive is tag_p:
            return [self._tag(eqn, ins[0], depth)]
        if eqn.primitive is site_log_prob_p:  # identity; one site's log density stays one leaf
            return [ins[0]]
        if name in _ELEMENTWISE:
            shifted = []
            for v, d in zip(eqn.invars, ins, strict=True):
                r = len(getattr(v.aval, "shape", ()))
                shifted.append(_remap(d, lambda a, r=r: a + rank - r))  # numpy-style right alignment
            return [_merge(shifted)]
        if name == "broadcast_in_dim":
            dims = p["broadcast_dimensions"]
            return [_merge([_remap(ins[0], lambda a: dims[a]), *map(_forget_axes, ins[1:])])]
        if name == "reshape" and p.get("dimensions") is None:
            return [_remap(ins[0], _reshape_map(eqn.invars[0].aval.shape, out_avals[0].shape))]
        if name == "squeeze":
            gone = sorted(a % len(eqn.invars[0].aval.shape) for a in p["dimensions"])
            return [_remap(ins[0], lambda a: None if a in gone else a - sum(g < a for g in gone))]
        if name == "transpose":
            perm = list(p["permutation"])
            return [_remap(ins[0], perm.index)]
        if name in _REDUCTIONS:
            axes = sorted(p["axes"])
            return [_remap(ins[0], lambda a: None if a in axes else a - sum(x < a for x in axes))]
        if name in _CUMULATIVE:
            ax, rev = p["axis"], p["reverse"]
            return [self._cumulative(ins[0], ax, rev)]
        if name == "dot_general":
            return [_dot_general(eqn, ins)]
        if name == "concatenate":
            dim = p["dimension"]
            return [_merge([_remap(d, lambda a: None if a == dim else a) for d in ins])]
        if name == "pad":
            cfg = p["padding_config"]
            moved = [i for i, c in enumerate(cfg) if tuple(c) != (0, 0, 0)]
            return [_merge([_remap(ins[0], lambda a: None if a in moved else a), _forget_axes(ins[1])])]
        if name == "slice":
            shape = eqn.invars[0].aval.shape
            strides = p["strides"] or (1,) * len(shape)
            whole = [
                p["start_indices"][i] == 0 and p["limit_indices"][i] == shape[i] and strides[i] == 1
                for i in range(len(shape))
            ]
            return [_remap(ins[0], lambda a: a if whole[a] else None)]
        if name == "rev":
            return [_remap(ins[0], lambda a: None if a in p["dimensions"] else a)]
        if name == "dynamic_slice":
            shape = eqn.invars[0].aval.shape

            def sliced(a):
                if p["slice_sizes"][a] == shape[a]:
                    return a  # the whole axis: the start index is clamped to 0
                step = self._counter(eqn.invars[1 + a])
                # Element t of the axis taken at step t of a loop: "this step's element".
                return step if p["slice_sizes"][a] == 1 and isinstance(step, tuple) else None

            return [_merge([_remap(ins[0], sliced), *map(_forget_axes, ins[1:])])]
        if name == "dynamic_update_slice":
            shape, upd = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            whole = [upd[i] == shape[i] for i in range(len(shape))]
            keep = lambda a: a if whole[a] else None  # noqa: E731
            return [_merge([_remap(ins[0], keep), _remap(ins[1], keep), *map(_forget_axes, ins[2:])])]
        if name == "gather":
            return [self._gather(eqn, ins)]
        if name == "split":
            ax = p["axis"]
            return [_remap(ins[0], lambda a: None if a == ax else a) for _ in out_avals]
        if name in _CALLS and _sub(p.get(_CALLS[name])) is not None:
            sub = _sub(p[_CALLS[name]])
            if len(sub.invars) == len(ins):
                counters = {i: c[1] for i, v in enumerate(eqn.invars) if isinstance(c := self._counter(v), tuple)}
                return self.run(sub, ins, depth, counters=counters)[0]
        if name == "scan":
            return self._scan(eqn, ins, depth)
        if name == "cond":
            return self._cond(eqn, ins, depth)
        return self._generic(eqn, ins)

    def _generic(self, eqn, ins):
        for sub in _subjaxprs(eqn.params):
            self.untracked |= _tags_in(sub)
        merged = _merge([_forget_axes(d) for d in ins])
        return [merged for _ in eqn.outvars]

    def _tag(self, eqn, dep, depth):
        p = eqn.params
        site, k, loops, nb = p["address"], p["vmapped"], p["loops"], p["batch_ndim"]
        shape = eqn.invars[0].aval.shape
        if loops != depth or nb < 0 or k + nb > len(shape):
            self.untracked.add(site)
            return dep
        rel = (
            *((i, EQ) for i in range(k)),
            *((("step", j), EQ) for j in range(loops)),
            *((k + i, EQ) for i in range(nb)),
        )
        # The score's shape: particle axes, loop steps (unknown here: the loop length), batch.
        sizes = (*shape[:k], *(None,) * loops, *shape[k : k + nb])
        old = self.sizes.get(site)
        if old is not None and len(old) != len(sizes):
            self.untracked.add(site)  # one address tagged twice with different shapes
            return dep
        self.sizes.setdefault(site, sizes)
        return _merge([dep, {site: rel}])

    def _gather(self, eqn, ins):
        """``operand[indices]``: output element ``i`` reads the indices at ``i`` (and any operand element)."""
        dn = eqn.params["dimension_numbers"]
        out_rank = len(eqn.outvars[0].aval.shape)
        batch_out = [d for d in range(out_rank) if d not in dn.offset_dims]
        n_batch = len(eqn.invars[1].aval.shape) - 1  # the last axis of the indices holds the index vector
        indices = _remap(ins[1], lambda a: batch_out[a] if a < n_batch else None)
        # Batched gathers (from vmap) align operand batching dims with the indices' batching dims.
        pairs = dict(zip(dn.operand_batching_dims, dn.start_indices_batching_dims, strict=True))
        operand = _remap(ins[0], lambda a: batch_out[pairs[a]] if a in pairs else None)
        return _merge([operand, indices])

    def _cumulative(self, dep, ax, rev):
        out = {}
        for site, rel in dep.items():
            out[site] = tuple(
                e if e is None or e[0] != ax else (None if rev else (ax, LE)) for e in rel
            )
        return out

    def _cond(self, eqn, ins, depth):
        index, ops = ins[0], ins[1:]
        outs = [self.run(_sub(b), ops, depth)[0] for b in eqn.params["branches"]]
        idx = _forget_axes(index)
        return [_merge([*(o[i] for o in outs), idx]) for i in range(len(eqn.outvars))]

    def _scan(self, eqn, ins, depth):
        p = eqn.params
        body = _sub(p["jaxpr"])
        nc, nk, reverse = p["num_consts"], p["num_carry"], p["reverse"]
        consts, init, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]
        here = ("step", depth)
        counters = {}
        for i, v in enumerate(eqn.invars):
            known = self._counter(v)
            if i < nc and isinstance(known, tuple):
                counters[i] = known[1]  # an enclosing loop's counter, passed in
            elif i >= nc + nk and known == "iota" and v.aval.shape == (p["length"],) and not reverse:
                counters[i] = depth  # arange(length) sliced per step: this loop's counter
        # A per-step slice loses the leading axis: it becomes "this step".
        x_deps = [_remap(d, lambda a: here if a == 0 else a - 1) for d in xs]
        carry = init
        for _ in range(64):
            outs, _env = self.run(body, [*consts, *carry, *x_deps], depth + 1, counters=counters)
            # The next step's carry depends on this and earlier steps: "le" (or, for a reversed
            # loop, on later ones: forget the step).
            fed = [_step_feedback(d, here, reverse) for d in outs[:nk]]
            new = [_merge([a, b]) for a, b in zip(init, fed, strict=True)]
            if new == carry:
                break
            carry = new
        else:  # pragma: no cover - the lattice is finite; this is a safety net
            carry = [_forget_axes(d) for d in carry]
        final = [_merge([a, _step_feedback(d, here, reverse=True)]) for a, d in zip(init, outs[:nk], strict=True)]
        ys = [self._step_to_axis(d, here, p["length"]) for d in outs[nk:]]
        return [*final, *ys]

    def _step_to_axis(self, deps, step, length):
        """A per-step output stacked by the loop: "this step" becomes its leading axis."""
        out = {}
        for site, rel in deps.items():
            new = []
            for i, e in enumerate(rel):
                if e is None:
                    new.append(None)
                elif e[0] == step:
                    new.append((0, e[1]))
                    self._set_size(site, i, length)
                elif isinstance(e[0], int):
                    new.append((e[0] + 1, e[1]))
                else:
                    new.append(e)
            out[site] = tuple(new)
        return out

    def _set_size(self, site, i, length):
        sizes = list(self.sizes[site])
        if sizes[i] is not None and sizes[i] != length:
            self.untracked.add(site)
        sizes[i] = length
        self.sizes[site] = tuple(sizes)


def _step_feedback(deps, step, reverse):
    out = {}
    for site, rel in deps.items():
        new = []
        for e in rel:
            if e is not None and e[0] == step:
                e = None if reverse else (step, LE)
            new.append(e)
        out[site] = tuple(new)
    return out


def _reshape_map(in_shape, out_shape):
    def where(a):
        pre = math.prod(in_shape[:a])
        for m in range(len(out_shape)):
            if math.prod(out_shape[:m]) == pre and out_shape[m] == in_shape[a]:
                return m
        return None

    return where


def _dot_general(eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs_rank, rhs_rank = (len(v.aval.shape) for v in eqn.invars[:2])
    lfree = [a for a in range(lhs_rank) if a not in lc and a not in lb]
    rfree = [a for a in range(rhs_rank) if a not in rc and a not in rb]

    def lmap(a):
        if a in lb:
            return list(lb).index(a)
        return None if a in lc else len(lb) + lfree.index(a)

    def rmap(a):
        if a in rb:
            return list(rb).index(a)
        return None if a in rc else len(lb) + len(lfree) + rfree.index(a)

    return _merge([_remap(ins[0], lmap), _remap(ins[1], rmap)])


def _sub(j):
    if j is None:
        return None
    if isinstance(j, ClosedJaxpr):
        return j.jaxpr
    return j if hasattr(j, "eqns") else None


def _subjaxprs(params):
    for v in params.values():
        for x in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(x, ClosedJaxpr) or hasattr(x, "eqns"):
                yield _sub(x)


def _tags_in(jaxpr) -> set[str]:
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive is tag_p:
            found.add(eqn.params["address"])
        for sub in _subjaxprs(eqn.params):
            found |= _tags_in(sub)
    return found


# ----------------------------------------------------------------------------- additive structure


def _size(v) -> int:
    return max(1, math.prod(getattr(v.aval, "shape", ())))


def _scaled(terms, factor):
    return [(leaf, (*coef, factor)) for leaf, coef in terms]


def _decompose(eqn, env, read, terms):
    """``terms[v]``: ``sum(v) = Σ coef · sum(leaf)`` up to site-independent constants."""
    name = eqn.primitive.name
    if len(eqn.outvars) != 1:
        return
    out = eqn.outvars[0]
    if not env.get(out):
        terms[out] = []  # depends on no site: a constant as far as any score is concerned
        return

    def of(v):
        if isinstance(v, Literal) or not read(v):
            return []
        return terms.get(v, [(v, ())])

    ins = eqn.invars
    floating = jnp.issubdtype(getattr(out.aval, "dtype", jnp.float32), jnp.floating)
    if not floating:
        return
    if name in ("add", "sub", "add_any"):
        a = _scaled(of(ins[0]), _size(out) / _size(ins[0]))
        b = _scaled(of(ins[1]), _size(out) / _size(ins[1]))
        terms[out] = a + (_scaled(b, -1.0) if name == "sub" else b)
    elif name == "neg":
        terms[out] = _scaled(of(ins[0]), -1.0)
    elif name in ("reduce_sum", "reshape", "squeeze", "transpose", "copy", "copy_p", "convert_element_type"):
        if name != "convert_element_type" or jnp.issubdtype(ins[0].aval.dtype, jnp.floating):
            terms[out] = of(ins[0])
    elif name == "broadcast_in_dim" and len(ins) == 1:
        terms[out] = _scaled(of(ins[0]), _size(out) / _size(ins[0]))
    elif name in ("mul", "div"):
        for i, j in ((0, 1), (1, 0)) if name == "mul" else ((0, 1),):
            c = ins[j]
            if _size(c) == 1 and (isinstance(c, Literal) or not read(c)):
                factor = c if name == "mul" else ("inv", c)
                terms[out] = _scaled(of(ins[i]), factor)
                break


# ----------------------------------------------------------------------------- entry points


def analyze(closed: ClosedJaxpr, output: int = 0):
    """Relations of the terms of output ``output`` of ``closed`` to the tagged sites.

    Returns ``(terms, untracked, sizes)``: ``terms`` a list of ``(leaf var, coefficient,
    relations)`` with ``sum(output) = Σ coef · sum(leaf)`` plus site-independent constants;
    ``untracked`` the sites the analysis could not follow (pair them with the whole output).
    """
    a = _Analysis()
    jaxpr = closed.jaxpr
    terms: dict = {}
    _, env = a.run(jaxpr, [{} for _ in jaxpr.invars], 0, terms)
    out = jaxpr.outvars[output]
    if isinstance(out, Literal):
        return [], a.untracked, a.sizes
    leaves = terms.get(out, [(out, ())] if env.get(out) else [])
    return [(leaf, coef, env.get(leaf, {})) for leaf, coef in leaves], a.untracked, a.sizes


def _coefficient(coef, value_of):
    c = 1.0
    for f in coef:
        if isinstance(f, tuple) and f[0] == "inv":
            c = c / _literal_or(f[1], value_of)
        elif isinstance(f, float):
            c = c * f
        else:
            c = c * _literal_or(f, value_of)
    return c


def _literal_or(v, value_of):
    return jnp.reshape(v.val if isinstance(v, Literal) else value_of[v], ())


def pair(cost, rel, score_shape) -> jax.Array:
    """``Q[s] = Σ_c R(c, s) cost[c]`` for score elements ``s``, broadcastable to ``score_shape``."""
    kept = {}  # cost axis -> (score axis, kind)
    for i, e in enumerate(rel):
        if e is None or not isinstance(e[0], int):
            continue
        t, kind = e
        if t in kept or t >= cost.ndim or cost.shape[t] != score_shape[i]:
            continue  # dropping an alignment over-approximates: still unbiased
        kept[t] = (i, kind)
    summed = tuple(a for a in range(cost.ndim) if a not in kept)
    d = jnp.sum(cost, axis=summed) if summed else cost
    order = sorted(kept, key=lambda t: kept[t][0])  # remaining axes in score-axis order
    d = jnp.transpose(d, [sorted(kept).index(t) for t in order])
    for pos, t in enumerate(order):
        if kept[t][1] == LE:  # cost at index t depends on scores at indices <= t
            d = jnp.flip(jnp.cumsum(jnp.flip(d, pos), axis=pos), pos)
    shape = [1] * len(score_shape)
    for t in order:
        shape[kept[t][0]] = score_shape[kept[t][0]]
    return jnp.reshape(d, shape)


def costs(closed: ClosedJaxpr, scores: dict[str, jax.Array]):
    """Evaluate ``closed`` and the cost paired with each site's score.

    Returns ``(outputs, Q)``: the jaxpr's outputs and ``Q[site]`` (broadcastable to the site's
    score shape): the sum of the terms of output 0 that depend on each score element.
    ``scores`` maps each site to an abstract value of its score (only the shape is used).
    """
    terms, untracked, _ = analyze(closed)
    jaxpr = closed.jaxpr
    extra = []
    for leaf, coef, _ in terms:
        extra.append(leaf)
        extra += [f for f in coef if not isinstance(f, (float, Literal, tuple))]
        extra += [f[1] for f in coef if isinstance(f, tuple) and not isinstance(f[1], Literal)]
    extra = list(dict.fromkeys(extra))
    wide = jaxpr.replace(outvars=[*jaxpr.outvars, *extra])
    values = jaxpr_as_fun(ClosedJaxpr(wide, closed.consts))()
    n = len(jaxpr.outvars)
    outputs, value_of = values[:n], dict(zip(extra, values[n:], strict=True))
    q = {}
    for site, score in scores.items():
        shape = tuple(jnp.shape(score))
        if site in untracked:
            q[site] = outputs[0]
            continue
        total = jnp.zeros(())
        for leaf, coef, rels in terms:
            rel = rels.get(site)
            if rel is None:
                continue
            if len(rel) != len(shape):
                total = outputs[0]  # score and tag disagree on the axes: use the whole objective
                break
            total = total + _coefficient(coef, value_of) * pair(value_of[leaf], rel, shape)
        q[site] = total
    return outputs, q
