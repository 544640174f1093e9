"""Stochastic variational inference: pure ``init`` / ``step``, and one chunked runner ``run``.

``SVI(objective, optimizer)`` maximizes an ``Expectation`` with any optax transformation.
Parameters are optimized in unconstrained space (each ``gendsl.param``'s constraint gives the
bijection, carried as static data in the state); the objective always sees constrained values,
``svi.get_params(state)``.

* ``init(key, *args) -> SVIState`` and ``step(state, *args) -> (SVIState, SVIInfo)`` are pure
  functions of their inputs (the ``SVI`` object only holds configuration): jit ``step`` once.
* With ``per_point=True`` the objective is applied to each data point of the first argument
  separately and the results summed (the minibatch surrogate): one gradient of the summed
  surrogates, not one gradient per point.
* ``run`` scans ``chunk_size`` steps per compiled call (one compilation for the whole run, one
  host sync per chunk), draws the minibatch of global step ``t`` from ``fold_in(batch_key, t)``
  (so a run resumed from a saved state continues bit for bit), calls a callback after each
  chunk (checkpoints, metrics, signals), and stops at the first non-finite objective or
  gradient, keeping the last finite state.
* ``run(..., ema=decay)`` keeps an exponential moving average of the parameters in the state
  (``SVIState.ema``). It averages the *unconstrained* parameters, the coordinates the optimizer
  moves additively, so the average of a constrained parameter always stays in its support and
  has the same structure as ``SVIState.params`` (a checkpoint stores it like them). Without
  ``ema`` the field is None and adds no leaves: the state's arrays are those of earlier versions.
* ``run(..., validate=fn, validate_every=k, patience=m)`` is validation-based early stopping:
  chunks end at multiples of ``k``, ``fn(params)`` is computed there on the host, the best
  state is kept, and ``m`` evaluations without improvement stop the run at the best state.
* Parameters are a dict of named parameters (``gendsl.param``) or any pytree, e.g. an
  ``equinox.Module`` that is its own parameters (``VDM``, ``EDM``): its inexact arrays are
  optimized and the rest is held static (``eqx.partition``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax

from gendsl import GendslError
from gendsl.inference._auto import AutoUnresolved, choose_strategies
from gendsl.inference._estimator import value_and_grad
from gendsl.inference._expectation import Expectation
from gendsl.inference._params import init_params, strongly_typed, transforms
from gendsl.inference._sharding import DataParallel, addressable, leading
from gendsl.internal import as_key

__all__ = ["SVI", "ChunkInfo", "DivergenceError", "NonFiniteError", "SVIInfo", "SVIRunResult", "SVIState"]



class NonFiniteError(GendslError, FloatingPointError):
    """The objective or its gradient became NaN or infinite.

    Attributes:
        step: the (1-based, global) step whose objective or gradient was not finite.
        value: the objective estimate at that step.
        result: an ``SVIRunResult`` with the last finite state.
    """

    def __init__(self, message: str, *, step: int, value: float, result: SVIRunResult) -> None:
        super().__init__(message)
        self.step = step
        self.value = value
        self.result = result


class DivergenceError(NonFiniteError):
    """The objective stayed finite but its magnitude exceeded ``divergence`` times its running scale.

    A subclass of ``NonFiniteError``, with the same attributes: the run stopped before the
    offending step, and ``result`` holds the last state before it.
    """


class _Bijections:
    """The parameters' bijections, static in the state (compared by identity: they do not hash).

    For parameters that are not a dict (an ``equinox.Module``), ``static`` holds their
    non-array part and the optimized part is the module's inexact arrays.
    """

    def __init__(self, table: dict, static: Any = None) -> None:
        self.table = table
        self.static = static

    def constrain(self, params):
        if self.static is not None:
            return eqx.combine(params, self.static)
        return {k: (self.table[k](v) if k in self.table else v) for k, v in params.items()}

    def unconstrain(self, params):
        if self.static is not None:
            return eqx.filter(params, eqx.is_inexact_array)
        return {k: (self.table[k].inv(v) if k in self.table else v) for k, v in params.items()}


class SVIState(eqx.Module):
    """The state of SVI: unconstrained parameters, optimizer state, baselines, key, step count.

    Attributes:
        params: unconstrained parameters (``SVI.get_params`` gives the constrained ones).
        opt_state: the optax state.
        baselines: EMA baselines of the REINFORCE sites, by address.
        key: the key of the next step's estimate.
        step: the number of steps taken.
        bijections: each constrained parameter's bijection (static: it fixes the structure, not values).
        ema: the exponential moving average of the unconstrained parameters that ``run(..., ema=)``
            keeps (same structure as ``params``), or None (no leaves) when no EMA is kept.
    """

    params: Any
    opt_state: Any
    baselines: dict
    key: jax.Array
    step: jax.Array
    bijections: _Bijections = eqx.field(static=True)
    ema: Any = None


class SVIInfo(NamedTuple):
    """What one step reports.

    Attributes:
        objective: the objective's estimate at the parameters before the step.
        finite: whether it and the gradient were finite (if not, the state is unchanged).
    """

    objective: jax.Array
    finite: jax.Array


class ChunkInfo(NamedTuple):
    """What ``SVI.run`` hands its callback after each chunk.

    Attributes:
        state: the state after the chunk.
        step: its global step count.
        objective: the objective at each step of the chunk (numpy array).
        validation: ``validate``'s value at this step when ``run`` validated here, else None.
    """

    state: SVIState
    step: int
    objective: np.ndarray
    validation: float | None = None


@dataclasses.dataclass
class SVIRunResult:
    """What ``SVI.run`` returns.

    Attributes:
        state: the final (or last finite) state.
        params: its constrained parameters.
        objective: objective estimate at every completed step of this run (numpy array).
        steps_per_second: throughput after the first chunk (which includes compilation).
        stopped: True when the callback or early stopping (``patience``) stopped the run early.
        ema_params: the constrained EMA parameters of ``state`` (None without ``ema``).
        best_step: with ``validate``, the global step of the best validation value (the state
            returned when early stopping stopped the run), else None.
        validation: with ``validate``, the ``(step, value)`` pairs evaluated in this run.
        error: from ``fit_many``, the ``NonFiniteError`` (or ``DivergenceError``) that stopped
            this fit, which ``run`` raises instead; else None.
    """

    state: SVIState
    params: Any
    objective: np.ndarray
    steps_per_second: float
    stopped: bool = False
    ema_params: Any = None
    best_step: int | None = None
    validation: list = dataclasses.field(default_factory=list)
    error: NonFiniteError | None = None


class SVI:
    """Maximize an objective with stochastic gradients.

    Args:
        objective: an ``Expectation`` (``elbo(model, guide)``, ``iwelbo(...)``, a diffusion
            objective, or ``expectation(f, models=...)``).
        optimizer: an optax gradient transformation.
        samples: independent replicates averaged per step (enables ``"loo"`` baselines).
        per_point: apply the objective to each data point (the leading axis of the first
            argument) separately and sum: the minibatch surrogate of a sum over data points
            of a per-point objective (VIMCO, or a user objective, on one point at a time).
            Objectives that have a batched per-point form (``iwelbo(..., plate=...)``) are
            faster with it.

    A learning-rate warm-up is an optax schedule given to the optimizer, e.g.
    ``optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 500, 20_000))``, or
    ``optax.join_schedules([optax.linear_schedule(0.0, lr, 500), optax.constant_schedule(lr)], [500])``;
    the schedule's count lives in the optimizer state, so a resumed run continues it.
    ``run(..., ema=0.999)`` keeps an EMA of the parameters and ``run(..., validate=...,
    patience=...)`` stops early at the best validation value.

    Sites marked ``AUTO`` get their strategies at the first ``init``: ``choose_strategies``
    measures the candidates on its arguments and parameters, ``svi.strategy_choice`` keeps
    the report, and ``svi.objective`` becomes the objective with the choice applied (later
    inits and steps use it).

    Example:
        >>> import jax, optax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import SVI, elbo
        >>> @gendsl.model
        ... def p(x):
        ...     mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
        ...     with gendsl.plate("n", x.shape[0]):
        ...         gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("mu", dist.Normal(gendsl.param("m", 0.0), 0.3))
        >>> svi = SVI(elbo(p, q), optax.adam(0.01))
        >>> x = jax.numpy.full(8, 2.0)
        >>> result = svi.run(jax.random.key(0), 2000, x, progress=False)
        >>> abs(float(result.params["m"]) - 16 / 9) < 0.1  # the posterior mean
        True
    """

    def __init__(self, objective: Expectation, optimizer: optax.GradientTransformation, *, samples: int = 1,
                 per_point: bool = False):
        if not isinstance(objective, Expectation):
            raise TypeError(
                f"SVI: expected an objective built with gendsl.inference (elbo, iwelbo, expectation), "
                f"got {type(objective).__name__}"
            )
        if not isinstance(samples, int) or samples < 1:
            raise ValueError(f"SVI: samples must be a positive int, got {samples!r}")
        self.objective = objective
        self.optimizer = optimizer
        self.samples = samples
        self.per_point = bool(per_point)
        self.strategy_choice = None

    # -- state ---------------------------------------------------------------------------

    def init(self, key, *args, params: dict | None = None, ema: bool = False, **kwargs) -> SVIState:
        """The initial state.

        Args:
            key: PRNG key.
            *args, **kwargs: the objective's arguments (e.g. the data, or a minibatch of it).
            params: initial constrained parameters; by default ``init_params(objective, ...)``.
                A dict of named parameters, or any pytree (an ``equinox.Module`` that is its
                own parameters): then its inexact arrays are trained and the rest held static.
            ema: start an EMA of the parameters at the initial ones, as ``run(..., ema=decay)``
                does for a state without one (so that the state has the leaves of a saved one).
        """
        key = as_key(key)
        k_init, k_run = jax.random.split(key)
        if params is not None and not isinstance(params, dict):
            init = params
            bijections = _Bijections({}, eqx.filter(params, eqx.is_inexact_array, inverse=True))
        else:
            if params is None:
                init, constraints = init_params(self.objective, k_init, *args, **kwargs)
            else:
                init = dict(params)
                try:
                    constraints = init_params(self.objective, k_init, *args, **kwargs)[1]
                except ValueError:
                    constraints = {}
            bijections = _Bijections(transforms(init, constraints))
        unconstrained = strongly_typed(bijections.unconstrain(init))
        # Find the sites with EMA baselines now, so that the state's structure never changes
        # between steps (a change would retrace the jitted step).
        # The same trace also shows which parameters the objective uses at all.
        trace = jax.make_jaxpr(lambda u: self._estimate(bijections, k_run, u, {}, args, kwargs), return_shape=True)
        try:
            jaxpr, (_, _, shapes) = trace(unconstrained)
        except AutoUnresolved:
            # AUTO sites: choose their strategies by measurement, once; steps use the choice.
            self.strategy_choice = choose_strategies(self.objective, k_init, *args, params=init, samples=self.samples,
                                                     per_point=self.per_point, **kwargs)
            self.objective = self.strategy_choice.objective
            jaxpr, (_, _, shapes) = trace(unconstrained)
        _check_all_used(jaxpr.jaxpr, unconstrained)
        baselines = {a: jnp.zeros(s.shape, s.dtype) for a, s in shapes.items()}
        return SVIState(unconstrained, self.optimizer.init(unconstrained), baselines, k_run,
                        jnp.zeros((), jnp.int32), bijections, unconstrained if ema else None)

    def get_params(self, state: SVIState):
        """The constrained parameters of ``state`` (what the objective sees)."""
        return state.bijections.constrain(state.params)

    def get_ema_params(self, state: SVIState):
        """The constrained EMA parameters of ``state`` (None when it keeps no EMA)."""
        return None if state.ema is None else state.bijections.constrain(state.ema)

    # -- one step ------------------------------------------------------------------------

    def _estimate(self, bijections, key, u, ema, args, kwargs):
        """``(value, grads, new EMA baselines)`` at unconstrained parameters ``u``."""
        fn = self.objective.fn

        def in_unconstrained(p, *a, **kw):
            return fn(bijections.constrain(p), *a, **kw)

        return value_and_grad(in_unconstrained, u, args, kwargs, key, ema, self.samples, per_point=self.per_point)

    def step(self, state: SVIState, *args, **kwargs) -> tuple[SVIState, SVIInfo]:
        """One optimization step: ``(state, *args) -> (state, info)``. Pure; jit it once.

        A non-finite objective or gradient leaves the state unchanged (``info.finite`` is False);
        so does a gradient whose elements sum beyond float range (about 3e38), which no
        optimizer step could use either.
        """
        key, sub = jax.random.split(state.key)
        value, grads, baselines = self._estimate(state.bijections, sub, state.params, state.baselines, args, kwargs)
        finite = _finite(value, grads)

        def update(_):
            neg = jax.tree_util.tree_map(jnp.negative, grads)  # optax minimizes
            updates, opt_state = self.optimizer.update(neg, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state, baselines, state.step + 1

        def keep(_):
            return state.params, state.opt_state, state.baselines, state.step

        # A cond rather than a select on every leaf of the state: same result, and XLA compiles
        # the first step about 0.5 s faster on CPU for a 784-200-10 VAE (benchmarks/first_step.py).
        params, opt_state, baselines, step = jax.lax.cond(finite, update, keep, None)
        new = SVIState(params, opt_state, baselines, key, step, state.bijections, state.ema)
        return new, SVIInfo(value, finite)

    # -- many steps ----------------------------------------------------------------------

    def run(
        self,
        key,
        num_steps: int,
        *args,
        batch_size: int | None = None,
        chunk_size: int = 100,
        progress: bool = True,
        state: SVIState | None = None,
        callback: Callable[[ChunkInfo], bool | None] | None = None,
        align: int | None = None,
        divergence: float | None = 1e6,
        ema: float | None = None,
        validate: Callable[[Any], float] | None = None,
        validate_every: int | None = None,
        patience: int | None = None,
        mesh: jax.sharding.Mesh | None = None,
        **kwargs,
    ) -> SVIRunResult:
        """Take ``num_steps`` steps, ``chunk_size`` per compiled ``lax.scan``.

        Args:
            key: PRNG key; ``init_key, batch_key = jax.random.split(key)``: the state starts
                from ``init_key`` (unless ``state`` is given) and the minibatch of global
                step ``t`` is drawn with ``fold_in(batch_key, t)``.
            num_steps: steps to take in this call.
            *args: the objective's arguments; with ``batch_size``, the first one is the data
                (an array or pytree of arrays with a shared leading axis) and each step sees
                a random minibatch of it.
            batch_size: minibatch size (None: all the data every step).
            chunk_size: steps per compiled call; the callback, the progress bar and the
                non-finite check run once per chunk.
            progress: show a progress bar.
            state: continue from this state instead of initializing.
            callback: called with a ``ChunkInfo`` after every chunk; returning True stops
                the run after that chunk (``result.stopped``).
            align: also end chunks at global steps that are multiples of ``align`` (e.g. a
                checkpoint interval), so that the callback sees those states.
            divergence: the divergence guard. A step whose objective estimate exceeds, in
                magnitude, ``divergence`` times the running scale (the median magnitude of
                this run's estimates so far, at least 1; the first estimate's for the first
                chunk) stops the run before that step. An unstable fit can grow to 1e45 and
                stay finite; estimates of a healthy one do not jump by a factor of a million.
                None turns the guard off.
            ema: keep an exponential moving average of the (unconstrained) parameters with
                this decay in ``[0, 1)``: ``ema_t = ema * ema_{t-1} + (1 - ema) * params_t``
                after every step, starting from the parameters of the state the run starts
                from (no bias correction). It lives in ``state.ema`` (a resumed run continues
                it); ``result.ema_params`` are its constrained values.
            validate: ``validate(params) -> float``, higher is better (e.g. a held-out ELBO),
                called on the host with the constrained parameters (the EMA parameters when
                ``ema`` is set: the weights one would use) at every multiple of
                ``validate_every`` and after the run's last step; the best state is kept
                (``result.best_step``).
            validate_every: the validation interval in steps (chunks end there).
            patience: stop after this many validations in a row without improvement and
                return the best state (``result.stopped``); None: never stop early. The
                bookkeeping is per call: a resumed run starts a new best.
            mesh: data parallelism over a ``jax.sharding.Mesh`` (``data_mesh(n)``): each step's
                minibatch (the first argument's leading axis, drawn as without a mesh) is split
                over the mesh's devices, the state and the other arguments are replicated, and
                XLA inserts the all-reduces; the update is the one-device update, up to the order
                of float sums (docs/scale.md). The batch (``batch_size``, or the whole data) must
                be a multiple of the mesh's size. A ``state`` from any device layout is accepted;
                the result's arrays are replicated on the mesh (``jax.device_get`` gives numpy).
                None: one device, the program of earlier versions.

        Raises:
            NonFiniteError: the objective or gradient became non-finite; the callback has
                seen the steps before it, and the error's ``result`` holds the last finite
                state.
            DivergenceError: the divergence guard stopped the run (a ``NonFiniteError``, with
                the same attributes).
        """
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"run: num_steps must be a positive int, got {num_steps!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"run: chunk_size must be a positive int, got {chunk_size!r}")
        if align is not None and (not isinstance(align, int) or align < 1):
            raise ValueError(f"run: align must be a positive int, got {align!r}")
        if divergence is not None and not (isinstance(divergence, (int, float)) and divergence > 1):
            raise ValueError(f"run: divergence must be a number > 1 or None, got {divergence!r}")
        if ema is not None and not (isinstance(ema, (int, float)) and 0 <= ema < 1):
            raise ValueError(f"run: ema must be a decay in [0, 1) (e.g. 0.999) or None, got {ema!r}")
        if (validate is None) != (validate_every is None):
            raise ValueError("run: validate and validate_every go together: validate=fn(params) -> float, "
                             "validate_every=k steps")
        if validate_every is not None and (not isinstance(validate_every, int) or validate_every < 1):
            raise ValueError(f"run: validate_every must be a positive int, got {validate_every!r}")
        if patience is not None and (validate is None or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"run: patience must be a positive int and needs validate=..., got {patience!r}")
        key = as_key(key)
        k_init, k_batches = jax.random.split(key)
        data, rest = (args[0], args[1:]) if args else (None, ())
        n_data = None
        if batch_size is not None:
            if data is None:
                raise ValueError("run: batch_size needs the data as the first argument")
            n_data = jax.tree_util.tree_leaves(data)[0].shape[0]
            if not 1 <= batch_size <= n_data:
                raise ValueError(f"run: batch_size must be in [1, {n_data}], got {batch_size}")
        parallel = None if mesh is None else DataParallel(mesh)
        if parallel is not None:
            parallel.check_divides(batch_size or leading(data), "batch_size" if batch_size else "the data")
            data, rest, k_batches = parallel.place_data(data), parallel.replicate(rest), parallel.replicate(k_batches)
        if state is None:
            first = _take(data, jnp.arange(batch_size)) if batch_size else data
            init_args = (first, *rest) if args else ()
            if parallel is not None and not addressable((init_args, kwargs)):
                # A global array of several processes: no process can look at its values, so
                # initialize under jit (the value checks of init skip traced values).
                state = jax.jit(lambda k, a: self.init(k, *a, **kwargs))(k_init, init_args)
            else:
                state = self.init(k_init, *init_args, **kwargs)
        if parallel is not None:
            state = parallel.replicate(state)
        elif _on_several_devices(state):
            # A state from a data-parallel run, continued on one device.
            state = jax.device_put(state, jax.devices()[0])
        if ema is not None and state.ema is None:
            state = dataclasses.replace(state, ema=state.params)
        elif ema is None and state.ema is not None:
            raise ValueError(
                "run: this state carries an EMA of the parameters; pass ema=<decay> to continue it, or drop it "
                "with dataclasses.replace(state, ema=None)"
            )
        length = min(chunk_size, num_steps)
        if parallel is None:
            chunk = jax.jit(self._make_chunk(batch_size, n_data, length, kwargs, ema))
        else:
            chunk = jax.jit(self._make_chunk(batch_size, n_data, length, kwargs, ema, parallel.constrain),
                            out_shardings=parallel.replicated)
        tracker = _Validation(validate, patience, self.get_ema_params if ema is not None else self.get_params)
        boundaries = [b for b in (align, validate_every) if b is not None]

        values: list[float] = []
        done, stopped, compiled_at = 0, False, None
        bar = _progress(num_steps, progress)
        try:
            while done < num_steps and not stopped:
                at = int(state.step)
                n_valid = min(length, num_steps - done)
                for b in boundaries:
                    n_valid = min(n_valid, (at // b + 1) * b - at)
                scale = max(1.0, float(np.median(np.abs(values)))) if values else np.nan
                limit = np.inf if divergence is None else float(divergence)
                new_state, objective, finite, guarded = chunk(state, (k_batches, data, rest), n_valid, scale, limit)
                objective = np.asarray(objective)[:n_valid]
                finite = np.asarray(finite)[:n_valid]
                if compiled_at is None:
                    compiled_at = (time.perf_counter(), done + n_valid)
                if not finite.all():
                    good = int(np.argmin(finite))
                    values.extend(objective[:good].tolist())
                    if callback is not None and good:
                        callback(ChunkInfo(new_state, at + good, objective[:good]))
                    result = self._result(new_state, values, compiled_at, False, tracker)
                    bad = float(objective[good])
                    if np.isfinite(bad) and abs(bad) > limit * float(guarded):
                        raise DivergenceError(
                            f"objective diverged at step {at + good + 1}: |{bad:.3g}| is more than {divergence:g} "
                            f"times its running scale {float(guarded):.3g}; stopped, keeping the parameters of step "
                            f"{at + good} (lower the learning rate; run(..., divergence=None) turns this guard off)",
                            step=at + good + 1, value=bad, result=result,
                        )
                    raise NonFiniteError(
                        f"objective or gradient is not finite at step {at + good + 1}; stopped, keeping the "
                        f"parameters of step {at + good} ({_non_finite_hint(args, kwargs)})",
                        step=at + good + 1, value=bad, result=result,
                    )
                values.extend(objective.tolist())
                state, done = new_state, done + n_valid
                figure = None
                if validate_every is not None and ((at + n_valid) % validate_every == 0 or done == num_steps):
                    figure = tracker.record(state, at + n_valid)
                if callback is not None:
                    stopped = bool(callback(ChunkInfo(state, at + n_valid, objective, figure)))
                if tracker.exhausted():
                    state, stopped = tracker.best_state, True
                bar.update(n_valid)
                postfix = {"objective": f"{np.mean(objective):.4g}"}
                if tracker.history:
                    postfix["validation"] = f"{tracker.history[-1][1]:.4g}"
                bar.set_postfix(**postfix)
        finally:
            bar.close()
        return self._result(state, values, compiled_at, stopped, tracker)

    def _make_chunk(self, batch_size, n_data, length, kwargs, ema, constrain=None):
        def chunk(state, inputs, n_valid, scale, limit):
            key, data, rest = inputs

            def body(carry, i):
                s, alive, scale = carry
                active = alive & (i < n_valid)
                if batch_size:
                    # Indexed by the global step, so a run continued from a saved state
                    # draws the same minibatches as an uninterrupted one.
                    idx = jax.random.choice(jax.random.fold_in(key, s.step), n_data, (batch_size,), replace=False)
                    args = (_take(data, idx), *rest)
                else:
                    args = (data, *rest) if data is not None else ()
                if constrain is not None and args:
                    args = (constrain(args[0]), *args[1:])
                new, info = self.step(s, *args, **kwargs)
                if ema is not None:
                    average = jax.tree_util.tree_map(lambda e, p: ema * e + (1.0 - ema) * p, s.ema, new.params)
                    new = dataclasses.replace(new, ema=average)
                # The divergence guard: the first chunk's scale is its first estimate's magnitude.
                first = jnp.maximum(1.0, jnp.abs(info.objective)).astype(scale.dtype)
                scale = jnp.where(jnp.isnan(scale), first, scale)
                ok = info.finite & (jnp.abs(info.objective) <= limit * scale)
                keep = active & ok
                s = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, s)
                return (s, alive & (ok | ~active), scale), (info.objective, ok | ~active)

            init = (state, jnp.array(True), jnp.asarray(scale, jnp.float32))
            (state, _, scale), (objective, finite) = jax.lax.scan(body, init, jnp.arange(length))
            return state, objective, finite, scale

        return chunk

    def _result(self, state, values, compiled_at, stopped, tracker) -> SVIRunResult:
        rate = float("nan")
        if compiled_at is not None:
            elapsed = time.perf_counter() - compiled_at[0]
            remaining = len(values) - compiled_at[1]
            if elapsed > 0 and remaining > 0:
                rate = remaining / elapsed
        return SVIRunResult(state, self.get_params(state), np.asarray(values), rate, stopped,
                            self.get_ema_params(state), tracker.best_step, list(tracker.history))


class _Validation:
    """Early stopping's host-side bookkeeping: the best validation value, its state, the wait since."""

    def __init__(self, fn, patience, params_of):
        self.fn, self.patience, self.params_of = fn, patience, params_of
        self.history: list[tuple[int, float]] = []
        self.best_value, self.best_step, self.best_state, self.waited = -np.inf, None, None, 0

    def record(self, state, step: int) -> float:
        value = float(self.fn(self.params_of(state)))
        self.history.append((step, value))
        # NaN never improves: a validation that breaks down counts against patience.
        if value > self.best_value:
            self.best_value, self.best_step, self.best_state, self.waited = value, step, state, 0
        else:
            self.waited += 1
        return value

    def exhausted(self) -> bool:
        return self.patience is not None and self.best_state is not None and self.waited >= self.patience


def _check_all_used(jaxpr, params: dict) -> None:
    """Raise when some parameters never reach the objective: their gradient is zero by construction.

    Backward liveness over the jaxpr of one estimate (value, gradients, baselines): an equation
    is live when one of its outputs is, and then all of its inputs are (sub-jaxprs count as one
    equation, so this errs towards "used"). A parameter read only under ``stop_gradient`` is
    used (deliberately frozen, as in ``p_wake``); one whose leaves are all dead is not, which
    is what a model left unbound inside an objective (``sim(guide)`` for
    ``sim(guide.bind(params))``) looks like.
    """
    live = {v for v in jaxpr.outvars if isinstance(v, jax.extend.core.Var)}
    for eqn in reversed(jaxpr.eqns):
        if any(v in live for v in eqn.outvars) or eqn.effects:
            live.update(v for v in eqn.invars if isinstance(v, jax.extend.core.Var))
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    used: dict[str, bool] = {}
    for (path, _), var in zip(leaves, jaxpr.invars, strict=True):
        name = str(getattr(path[0], "key", path[0]))
        used[name] = used.get(name, False) or var in live
    unused = sorted(name for name, u in used.items() if not u)
    if unused:
        raise GendslError(
            f"SVI: the objective never uses the parameters {unused}, so their gradient is zero and training "
            "would not change them; inside the objective, run each model with the parameters it receives: "
            "sim(guide.bind(params)), density(model.bind(params))"
        )


def _non_finite_hint(args, kwargs) -> str:
    """The likely cause of a non-finite objective, from a host-side look at the (concrete) data.

    Under ``jit`` the model's own check of observed values cannot see them, so ``run`` looks
    here, once, when the objective has already become non-finite.
    """
    bad = total = 0
    for leaf in jax.tree_util.tree_leaves((args, kwargs)):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue  # a global array of several processes: this process cannot see all of it
        arr = np.asarray(leaf) if isinstance(leaf, (np.ndarray, jax.Array, float)) else None
        if arr is not None and np.issubdtype(arr.dtype, np.inexact):
            bad += int(arr.size - np.isfinite(arr).sum())
            total += arr.size
    if bad:
        return (f"the data holds {bad} NaN or infinite values of {total}: clean it, or mask the missing entries "
                "with gendsl.handlers.mask")
    return "lower the learning rate, or check the model's support and initialization"


def _on_several_devices(tree) -> bool:
    return any(isinstance(a, jax.Array) and len(a.sharding.device_set) > 1 for a in jax.tree_util.tree_leaves(tree))


def _take(data, idx):
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)


def _finite(value, grads) -> jax.Array:
    """True where the objective and every gradient element are finite.

    One sum per leaf and one scalar test, not an elementwise test per leaf: a non-finite
    element makes its sum non-finite, and compiling one reduction is cheaper than two.
    """
    total = sum((jnp.sum(g) for g in jax.tree_util.tree_leaves(grads)), jnp.zeros((), jnp.result_type(value)))
    return jnp.isfinite(value) & jnp.isfinite(total)


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True)
