"""The estimator driver: an unbiased surrogate of an objective from one traced execution.

``estimate`` returns a scalar *surrogate* whose value is the objective's estimate and whose
gradient is an unbiased estimate of the objective's gradient:

* pathwise (REPARAM) sites keep their gradient through the value;
* score-function (REINFORCE) sites add ``(log q - sg(log q)) * sg(Q - b)`` (the DiCE "magic
  box" at first order), ``Q`` the paired cost (``_provenance``) and ``b`` the baseline;
* sites differentiated by re-execution (ENUM, MVD) add ``sum_j c_j * sg(F_j)`` over their
  branches, each ``F_j`` the objective re-run with the branch substituted (vmapped); an
  unbatched ENUM site is instead summed exactly, ``sum_k q(k) S(z = k)``.

Everything is traced once, so the estimator runs under ``jit``, ``vmap`` and ``lax.scan``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gendsl.inference._execution import Branches, Execution, Override, active
from gendsl.inference._provenance import costs

__all__ = ["estimate", "execute"]

sg = jax.lax.stop_gradient


def _scalar(f) -> jax.Array:
    f = jnp.asarray(f)
    if f.shape != ():
        raise ValueError(f"an objective must return a scalar, got shape {f.shape}; reduce it (e.g. .sum() or .mean())")
    return f


def execute(fn, args, kwargs, key, overrides, track=False) -> tuple[Execution, jax.Array]:
    """Run the objective once: its ``Execution`` record and its value."""
    run = Execution(key, overrides, track=track)
    with active(run):
        f = _scalar(fn(*args, **kwargs))
    return run, f


def _tracked_execute(fn, args, kwargs, key, overrides):
    """``execute`` through a jaxpr, with each tracked REINFORCE site's paired cost ``Q``.

    The objective is traced once with its REINFORCE values tagged, the jaxpr is analysed (see
    ``_provenance``) and evaluated, so nothing runs twice. The run's arrays come back as outputs
    of the jaxpr; its static parts (addresses, strategies) from the trace.
    """
    box = {}

    def traced():
        run, f = execute(fn, args, kwargs, key, overrides, track=True)
        box["run"] = run
        branches_ = [(b.index, b.value, b.carrier, b.path) for b in run.branches]
        return f, (run.scores, branches_, run.enum_logq, run.group_baselines)

    closed, shapes = jax.make_jaxpr(traced, return_shape=True)()
    run = box["run"]
    outputs, q = costs(closed, run.scores)
    f, (run.scores, found, run.enum_logq, run.group_baselines) = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(shapes), outputs
    )
    run.branches = [Branches(b.address, *arrays) for b, arrays in zip(run.branches, found, strict=True)]
    return run, f, q


def _tracked_sites(run: Execution) -> bool:
    return any(
        run.strategies[a].track_dependencies and run.group_baselines.get(run.site_group.get(a)) is None
        for a in run.scores
    )


def _surrogate(fn, args, kwargs, key, overrides, ema, statics):
    """``(surrogate, value, score terms, enum log q)`` of one execution; see the module docstring.

    Where the execution meets an unbatched ENUM site, the result is instead the sum over the
    site's support (and recursively over the ENUM sites met in each branch) of each complete
    path's probability times its surrogate and value, with the score terms folded in and
    ``None`` for the enum log q.

    The score terms map each REINFORCE site to ``(log q - sg(log q), Q)``, per element of the
    site; ``Q`` is the cost its score is paired with: the part of the objective that depends on
    the element (dependency tracking), or the whole objective.
    """
    run, f = execute(fn, args, kwargs, key, overrides)
    statics.update(run.strategies)
    if run.exact:
        address, support = run.exact[0]

        def branch(v):
            inner = [*overrides, Override(address, 0, v)]
            s, value, terms, logq = _surrogate(fn, args, kwargs, key, inner, ema, statics)
            if logq is None:  # a subtree: already summed over its paths, weighted
                return s, value
            for a, (dlq, q) in terms.items():
                s = s + jnp.sum(dlq * sg(q - statics[a].baseline_value(a, ema, None, args)))
            # A complete path (every enumerated site overridden) is weighted by its probability,
            # the product of q over its sites, read from this last execution. The executions that
            # only found the next site are then dead code: reading each site's q from its own
            # level would keep them, recomputing the program's prefix once per level, forward and
            # backward.
            weight = jnp.exp(sum(logq[o.address] for o in inner))
            return weight * s, weight * value

        s, values = jax.vmap(branch)(support)
        return jnp.sum(s), jnp.sum(values), {}, None
    q = {}
    if _tracked_sites(run):
        run, f, q = _tracked_execute(fn, args, kwargs, key, overrides)
    s = f
    for b in run.branches:

        def rerun(index, value, *path, b=b):
            inner = [*overrides, Override(b.address, index, value, path)]
            return execute(fn, args, kwargs, key, inner)[1]

        values = jax.vmap(rerun)(b.index, b.value, *b.path)
        s = s + jnp.sum(b.carrier * sg(values))
    terms = {}
    for a, lq in run.scores.items():
        group = run.group_baselines.get(run.site_group.get(a))
        dlq = lq - sg(lq)
        if group is not None:
            # Per-particle baselines: the term is complete here.
            group = jnp.reshape(group, group.shape + (1,) * (dlq.ndim - group.ndim))
            s = s + jnp.sum(dlq * sg(f - group))
        else:
            terms[a] = (dlq, q[a] if run.strategies[a].track_dependencies else f)
    return s, f, terms, run.enum_logq


def estimate(fn, args, kwargs, key, ema, samples):
    """``(mean surrogate, mean value, the score sites' strategies, their mean paired costs)``.

    With ``samples > 1`` replicates, ``"loo"`` baselines are the other replicates' mean cost.
    """
    statics: dict = {}
    keys = jax.random.split(key, samples)

    def replicate(k):
        s, value, terms, _ = _surrogate(fn, args, kwargs, k, [], ema, statics)
        return s, value, terms

    if samples == 1:
        # No vmap for a single replicate: a batch axis of size one makes XLA:CPU
        # transpose every matmul output (measured in benchmarks/vae_step.py).
        s, values, terms = jax.tree_util.tree_map(lambda a: a[None], replicate(keys[0]))
    else:
        s, values, terms = jax.vmap(replicate)(keys)
    total = s
    mean_costs = {}
    for address, (dlq, q) in terms.items():
        strategy = statics[address]
        loo = (jnp.sum(q, axis=0) - q) / (samples - 1) if samples > 1 else None
        signal = sg(q - strategy.baseline_value(address, ema, loo, args))
        signal = jnp.reshape(signal, signal.shape + (1,) * (dlq.ndim - signal.ndim))
        total = total + jnp.sum(dlq * signal, axis=tuple(range(1, dlq.ndim)))
        total = total + strategy.baseline_fit(q, args)
        mean_costs[address] = jnp.mean(q, axis=0)
    return jnp.mean(total), jnp.mean(values), statics, mean_costs


def value_and_grad(fn, params, args, kwargs, key, ema, samples, *, per_point=False):
    """``(value, gradient in params, updated EMA baselines)`` of ``E[fn(params, *args)]``.

    With ``per_point``, ``fn`` is applied to each element of the leading axis of ``args[0]``
    (a data point, kept as a batch of one) with its own key, and the values and surrogates are
    summed: one gradient of the summed surrogates. EMA baselines move towards the mean cost.
    """
    table: dict = {}  # the score sites' strategies, static: filled while tracing

    def surrogate(p):
        if not per_point:
            s, value, statics, mean_costs = estimate(fn, (p, *args), kwargs, key, ema, samples)
            table.update(statics)
            return s, (value, mean_costs)
        data, rest = args[0], args[1:]
        n = jax.tree_util.tree_leaves(data)[0].shape[0]

        def one(k, point):
            single = jax.tree_util.tree_map(lambda a: a[None], point)
            s, value, statics, mean_costs = estimate(fn, (p, single, *rest), kwargs, k, ema, samples)
            table.update(statics)
            return s, value, mean_costs

        s, values, mean_costs = jax.vmap(one)(jax.random.split(key, n), data)
        return jnp.sum(s), (jnp.sum(values), jax.tree_util.tree_map(lambda c: jnp.mean(c, axis=0), mean_costs))

    (_, (value, mean_costs)), grads = jax.value_and_grad(surrogate, has_aux=True)(params)
    new = dict(ema)
    for address, strategy in table.items():
        if address in mean_costs:
            updated = strategy.next_ema(ema.get(address), mean_costs[address])
            if updated is not None:
                new[address] = updated
    return value, grads, new
