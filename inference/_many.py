"""Many independent fits of one program as one compiled program: ``fit_many``.

What a researcher runs first on a big machine: several seeds, or a grid of one
hyperparameter, of the same ``SVI``. ``fit_many`` stacks the fits' states along a leading
"fit" axis and ``jax.vmap``-s ``SVI.run``'s chunk over it, so all fits advance together in
one compiled ``lax.scan`` (one compilation, one host sync per chunk). With a mesh, the fit
axis is split over its devices (each device runs whole fits; no collectives). Each fit is
exactly what ``svi.run(key_i, ...)`` would do: its own initial state from ``key_i``, its own
minibatches from ``fold_in(batch_key_i, step)``; vmap changes no value, only the order of some
float operations (batched matmuls), so results equal separate runs to float32 rounding.

A hyperparameter is varied through optax's own mechanism: build the optimizer with
``optax.inject_hyperparams`` (its hyperparameters then live in the optimizer state, an array
per fit), and pass ``hyperparams={"learning_rate": jnp.array([...])}``.

Fits stop independently: a fit whose objective or gradient becomes non-finite (or trips the
divergence guard) keeps its last finite state and stops moving while the others continue; its
result carries the error instead of raising it. Validation-based early stopping is per run
(``SVI.run``), not here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gendsl.inference._sharding import DataParallel
from gendsl.inference._svi import (
    SVI,
    ChunkInfo,
    DivergenceError,
    NonFiniteError,
    SVIRunResult,
    SVIState,
    _non_finite_hint,
    _progress,
    _take,
    _Validation,
)
from gendsl.internal import as_key

__all__ = ["fit_many"]


def fit_many(
    svi: SVI,
    keys,
    num_steps: int,
    *args,
    batch_size: int | None = None,
    chunk_size: int = 100,
    progress: bool = True,
    states: Sequence[SVIState] | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    divergence: float | None = 1e6,
    ema: float | None = None,
    callback: Callable[[list[ChunkInfo]], bool | None] | None = None,
    align: int | None = None,
    validate: Callable[[Any], float] | Sequence[Callable[[Any], float]] | None = None,
    validate_every: int | None = None,
    **kwargs,
) -> list[SVIRunResult]:
    """Run independent fits of ``svi`` together, vmapped in one compiled program; one result per fit.

    Fit ``i`` is ``svi.run(keys[i], num_steps, *args, batch_size=..., ...)``: the same initial
    state, minibatches and steps (equal to float32 rounding; see the module docstring).

    Args:
        svi: the ``SVI`` to run.
        keys: one PRNG key per fit (a sequence of keys or ints, or a stacked key array).
        num_steps: steps per fit.
        *args, **kwargs: the objective's arguments, shared by all fits (the data first).
        batch_size, chunk_size, progress, divergence, ema: as in ``SVI.run``.
        states: one state per fit to continue from (e.g. loaded checkpoints), instead of
            initializing from the keys (whose second halves still draw the minibatches).
        hyperparams: optimizer hyperparameters per fit, ``{name: array of one value per fit}``;
            the optimizer must be built with ``optax.inject_hyperparams`` (e.g.
            ``optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)``) and ``name`` be one
            of its hyperparameters.
        mesh: split the fits over this mesh's devices (``data_mesh(n)``; the number of fits
            must be a multiple of its size). None: the default device.
        callback: called after every chunk with one ``ChunkInfo`` per fit (its state, global
            step, the objective of the steps it took in the chunk: none once it has stopped,
            and its validation figure when one was computed); returning True stops all fits
            (each result's ``stopped``).
        align: also end chunks at global steps that are multiples of ``align`` (as in ``SVI.run``).
        validate, validate_every: as in ``SVI.run``, for each running fit: ``validate(params)``
            (its EMA parameters with ``ema``) at every multiple of ``validate_every`` and after
            the last step; each result's ``validation`` and ``best_step`` record them. ``validate``
            may be one function per fit (e.g. each with its own fixed key). No early stopping:
            every fit runs to the end.

    Returns:
        One ``SVIRunResult`` per fit, in the order of ``keys``. A fit stopped by a non-finite
        objective or the divergence guard has its last finite state and ``error`` (the
        ``NonFiniteError`` or ``DivergenceError`` that ``SVI.run`` would have raised).
        ``steps_per_second`` is each fit's rate (all fits advance together).

    Example:
        >>> import jax, jax.numpy as jnp, optax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import SVI, elbo, fit_many
        >>> @gendsl.model
        ... def p(x):
        ...     mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
        ...     with gendsl.plate("n", x.shape[0]):
        ...         gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("mu", dist.Normal(gendsl.param("m", 0.0), 0.3))
        >>> svi = SVI(elbo(p, q), optax.inject_hyperparams(optax.adam)(learning_rate=0.1))
        >>> results = fit_many(svi, [0, 1, 2], 300, jnp.full(8, 2.0), progress=False,
        ...                    hyperparams={"learning_rate": jnp.array([0.1, 0.05, 0.02])})
        >>> [abs(float(r.params["m"]) - 16 / 9) < 0.15 for r in results]  # each near the posterior mean
        [True, True, True]
    """
    if not isinstance(svi, SVI):
        raise TypeError(f"fit_many: expected an SVI, got {type(svi).__name__}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"fit_many: num_steps must be a positive int, got {num_steps!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"fit_many: chunk_size must be a positive int, got {chunk_size!r}")
    if divergence is not None and not (isinstance(divergence, (int, float)) and divergence > 1):
        raise ValueError(f"fit_many: divergence must be a number > 1 or None, got {divergence!r}")
    if ema is not None and not (isinstance(ema, (int, float)) and 0 <= ema < 1):
        raise ValueError(f"fit_many: ema must be a decay in [0, 1) or None, got {ema!r}")
    if (validate is None) != (validate_every is None):
        raise ValueError("fit_many: validate and validate_every go together: validate=fn(params) -> float, "
                         "validate_every=k steps")
    for name, value in (("validate_every", validate_every), ("align", align)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"fit_many: {name} must be a positive int, got {value!r}")
    keys = _keys(keys)
    fits = len(keys)
    split = [jax.random.split(k) for k in keys]
    batch_keys = jnp.stack([b for _, b in split])
    data, rest = (args[0], args[1:]) if args else (None, ())
    n_data = None
    if batch_size is not None:
        if data is None:
            raise ValueError("fit_many: batch_size needs the data as the first argument")
        n_data = jax.tree_util.tree_leaves(data)[0].shape[0]
        if not 1 <= batch_size <= n_data:
            raise ValueError(f"fit_many: batch_size must be in [1, {n_data}], got {batch_size}")
    if states is None:
        first = _take(data, jnp.arange(batch_size)) if batch_size else data
        init_args = (first, *rest) if args else ()
        states = [svi.init(k, *init_args, **kwargs) for k, _ in split]
    elif len(states) != fits:
        raise ValueError(f"fit_many: got {len(states)} states for {fits} keys; give one state per fit")
    # The bijections are static (compared by identity): share the first fit's, so the states stack.
    states = [dataclasses.replace(s, bijections=states[0].bijections) for s in states]
    states = [_with_ema(s, ema) for s in states]
    if hyperparams:
        states = [dataclasses.replace(s, opt_state=_with_hyperparams(s.opt_state, hyperparams, i, fits))
                  for i, s in enumerate(states)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)

    length = min(chunk_size, num_steps)
    many = jax.vmap(svi._make_chunk(batch_size, n_data, length, kwargs, ema), in_axes=(0, (0, None, None), 0, 0, None))
    if mesh is None:
        chunk = jax.jit(many)
    else:
        parallel = DataParallel(mesh)
        parallel.check_divides(fits, "the number of fits")
        stacked, batch_keys = parallel.split(stacked), parallel.split(batch_keys)
        data, rest = parallel.replicate(data), parallel.replicate(rest)
        chunk = jax.jit(many, out_shardings=parallel.batched)

    limit = np.inf if divergence is None else float(divergence)
    validates = list(validate) if isinstance(validate, Sequence) else [validate] * fits
    if len(validates) != fits:
        raise ValueError(f"fit_many: got {len(validates)} validate functions for {fits} fits; give one, or one per fit")
    trackers = [_Validation(v, None, svi.get_ema_params if ema is not None else svi.get_params) for v in validates]
    values: list[list[float]] = [[] for _ in range(fits)]
    failures: list[tuple | None] = [None] * fits
    done, stopped, compiled_at = 0, False, None
    bar = _progress(num_steps, progress)
    try:
        while done < num_steps and not stopped:
            at = np.asarray(stacked.step)
            alive = np.array([f is None for f in failures])
            n_valid = min(length, num_steps - done)
            first = int(at[alive].min())
            for b in (align, validate_every):  # chunks end there (checkpoints, validations)
                if b is not None:
                    n_valid = min(n_valid, (first // b + 1) * b - first)
            scale = np.array([max(1.0, float(np.median(np.abs(v)))) if v else np.nan for v in values], np.float32)
            new, objective, finite, guarded = chunk(
                stacked, (batch_keys, data, rest), np.where(alive, n_valid, 0).astype(np.int32), scale, limit
            )
            objective, finite = np.asarray(objective)[:, :n_valid], np.asarray(finite)[:, :n_valid]
            guarded = np.asarray(guarded)
            if compiled_at is None:
                compiled_at = (time.perf_counter(), done + n_valid)
            taken = np.zeros(fits, int)  # this chunk's steps of each fit (0 for one stopped earlier)
            for i in np.flatnonzero(alive):
                taken[i] = int(np.argmin(finite[i])) if not finite[i].all() else n_valid
                values[i].extend(objective[i, : taken[i]].tolist())
                if taken[i] < n_valid:
                    failures[i] = (int(at[i]) + taken[i] + 1, float(objective[i, taken[i]]), float(guarded[i]))
            stacked, done = new, done + n_valid
            figures: list[float | None] = [None] * fits
            if validate_every is not None:
                for i in np.flatnonzero(alive & (taken == n_valid)):
                    step = int(at[i]) + n_valid
                    if step % validate_every == 0 or done == num_steps:
                        figures[i] = trackers[i].record(_fit(stacked, i), step)
            if callback is not None:
                infos = [ChunkInfo(_fit(stacked, i), int(at[i]) + int(taken[i]), objective[i, : taken[i]], figures[i])
                         for i in range(fits)]
                stopped = bool(callback(infos))
            bar.update(n_valid)
            bar.set_postfix(objective=f"{np.mean(objective[alive]) if alive.any() else np.nan:.4g}",
                            running=f"{int(alive.sum())}/{fits}")
            if not any(f is None for f in failures):
                break
    finally:
        bar.close()

    rate = float("nan")
    if compiled_at is not None and done > compiled_at[1]:
        rate = (done - compiled_at[1]) / (time.perf_counter() - compiled_at[0])
    results = []
    for i in range(fits):
        state = _fit(stacked, i)
        result = SVIRunResult(state, svi.get_params(state), np.asarray(values[i]), rate, stopped,
                              svi.get_ema_params(state), trackers[i].best_step, list(trackers[i].history))
        if failures[i] is not None:
            result.error = _error(failures[i], divergence, limit, args, kwargs, result)
        results.append(result)
    return results


def _keys(keys) -> list[jax.Array]:
    if isinstance(keys, jax.Array) and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = list(keys) if keys.ndim else [keys]
    elif isinstance(keys, (jax.Array, np.ndarray)) and keys.dtype == np.uint32 and keys.ndim == 2:
        keys = list(keys)
    keys = [as_key(k) for k in keys]
    if not keys:
        raise ValueError("fit_many: got no keys; pass one key (or int seed) per fit")
    return keys


def _with_ema(state: SVIState, ema):
    if ema is not None and state.ema is None:
        return dataclasses.replace(state, ema=state.params)
    if ema is None and state.ema is not None:
        raise ValueError("fit_many: a state carries an EMA of the parameters; pass ema=<decay> to continue it")
    return state


def _with_hyperparams(opt_state, hyperparams: Mapping[str, Any], i: int, fits: int):
    """``opt_state`` with fit ``i``'s value of each named hyperparameter (optax.inject_hyperparams' state)."""
    found: dict[str, bool] = dict.fromkeys(hyperparams, False)
    names: set[str] = set()

    def visit(s):
        if isinstance(getattr(s, "hyperparams", None), dict) and hasattr(s, "_replace"):
            table = dict(s.hyperparams)
            names.update(table)
            for name, values in hyperparams.items():
                if name in table:
                    column = np.asarray(values)
                    if column.shape[:1] != (fits,):
                        raise ValueError(f"fit_many: hyperparams[{name!r}] must hold one value per fit ({fits}), "
                                         f"got shape {column.shape}")
                    table[name] = jnp.asarray(column[i], dtype=jnp.asarray(table[name]).dtype)
                    found[name] = True
            return s._replace(hyperparams=table)
        if hasattr(s, "_fields"):
            return s._replace(**{f: visit(getattr(s, f)) for f in s._fields})
        if isinstance(s, (tuple, list)):
            return type(s)(visit(x) for x in s)
        return s

    new = visit(opt_state)
    missing = sorted(n for n, ok in found.items() if not ok)
    if missing:
        if not names:
            raise ValueError(
                f"fit_many: hyperparams {missing} need an optimizer whose hyperparameters live in its state: build it "
                "with optax.inject_hyperparams, e.g. optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)"
            )
        raise ValueError(f"fit_many: the optimizer has no hyperparameter {missing}; it has {sorted(names)}")
    return new


def _fit(stacked: SVIState, i: int) -> SVIState:
    return jax.tree_util.tree_map(lambda a: a[i], stacked)


def _error(failure, divergence, limit, args, kwargs, result) -> NonFiniteError:
    step, value, scale = failure
    if np.isfinite(value) and abs(value) > limit * scale:
        return DivergenceError(
            f"objective diverged at step {step}: |{value:.3g}| is more than {divergence:g} times its running scale "
            f"{scale:.3g}; this fit stopped, keeping the parameters of step {step - 1}",
            step=step, value=value, result=result,
        )
    return NonFiniteError(
        f"objective or gradient is not finite at step {step}; this fit stopped, keeping the parameters of step "
        f"{step - 1} ({_non_finite_hint(args, kwargs)})",
        step=step, value=value, result=result,
    )
