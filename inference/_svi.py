"""Stochastic variational inference: pure ``init`` / ``step``, and a chunked ``run``.

``SVI(objective, optimizer)`` maximizes an ``Expectation`` with any optax
transformation. Parameters are optimized in unconstrained space (each
``gendsl.param``'s constraint gives the bijection); the objective always sees
constrained values.

``step`` is a pure function ``(state, *args) -> (state, info)``: jit it once.
``run`` scans ``chunk_size`` steps per compiled call (one host sync per chunk,
not per step), draws minibatches inside the scan, shows a progress bar, and
stops at the first non-finite objective or gradient, keeping the last finite
state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.distributions import biject_to

from gendsl._address import as_key
from gendsl._errors import GendslError
from gendsl.inference._expectation import Expectation, expectation

__all__ = ["SVI", "SVIRunResult", "SVIState", "NonFiniteError"]


class NonFiniteError(GendslError, FloatingPointError):
    """The objective or its gradient became NaN or infinite."""


class SVIState(eqx.Module):
    """The state of SVI: unconstrained parameters, optimizer state, baselines, key, step."""

    params: dict
    opt_state: Any
    baselines: dict
    key: jax.Array
    step: jax.Array


@dataclasses.dataclass
class SVIRunResult:
    """What ``SVI.run`` returns.

    Attributes:
        state: the final (or last finite) state.
        params: its constrained parameters.
        objective: objective estimate at every completed step (numpy array).
        steps_per_second: throughput after compilation.
    """

    state: SVIState
    params: dict
    objective: np.ndarray
    steps_per_second: float


class SVI:
    """Maximize an objective with stochastic gradients.

    Args:
        objective: an ``Expectation`` (``elbo(model, guide)``, ``iwelbo(...)``, or
            ``expectation(f, models=...)``).
        optimizer: an optax gradient transformation.
        samples: independent replicates averaged per step (enables ``"loo"`` baselines).

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

    def __init__(self, objective: Expectation, optimizer: optax.GradientTransformation, *, samples: int = 1):
        if not isinstance(objective, Expectation):
            raise TypeError(
                f"SVI: expected an objective built with gendsl.inference (elbo, iwelbo, expectation), "
                f"got {type(objective).__name__}"
            )
        self.objective = objective
        self.optimizer = optimizer
        self.samples = samples
        self._transforms: dict[str, Any] | None = None

    # -- parameters ------------------------------------------------------------------------

    def constrain(self, params: dict) -> dict:
        """Map unconstrained parameters to the values the objective sees."""
        t = self._require_init()
        return {k: (t[k](v) if k in t else v) for k, v in params.items()}

    def _require_init(self) -> dict:
        if self._transforms is None:
            raise GendslError("SVI: call svi.init(key, *args) before step/run/constrain")
        return self._transforms

    def init(self, key, *args, params: dict | None = None, **kwargs) -> SVIState:
        """The initial state.

        Args:
            key: PRNG key.
            *args, **kwargs: the objective's arguments (e.g. the data).
            params: initial constrained parameters; by default from the models'
                ``gendsl.param`` / ``gendsl.module`` initializers.
        """
        key = as_key(key)
        k_init, k_run = jax.random.split(key)
        init, constraints = ({}, {}) if params is not None else self.objective.init_params(k_init, *args, **kwargs)
        if params is not None:
            init = dict(params)
            try:
                constraints = self.objective.init_params(k_init, *args, **kwargs)[1]
            except ValueError:
                constraints = {}
        self._transforms = {
            k: biject_to(c) for k, c in constraints.items() if c is not None and k in init and _is_array(init[k])
        }
        unconstrained = {k: (self._transforms[k].inv(v) if k in self._transforms else v) for k, v in init.items()}
        # Strongly typed leaves: a weakly typed float from a Python literal would
        # become strong after the first update and retrace the jitted step.
        unconstrained = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), unconstrained)
        # Find the sites with EMA baselines now, so that the state's structure
        # never changes between steps (a change would retrace the jitted step).
        shapes = jax.eval_shape(
            lambda u: self._objective_u().value_and_grad_with_baselines(
                k_run, u, *args, baselines={}, samples=self.samples, **kwargs
            )[2],
            unconstrained,
        )
        baselines = {a: jnp.zeros(s.shape, s.dtype) for a, s in shapes.items()}
        return SVIState(unconstrained, self.optimizer.init(unconstrained), baselines, k_run, jnp.zeros((), jnp.int32))

    # -- one step --------------------------------------------------------------------------

    def _objective_u(self) -> Expectation:
        fn = self.objective.fn

        def in_unconstrained(u, *args, **kwargs):
            return fn(self.constrain(u), *args, **kwargs)

        return expectation(in_unconstrained)

    def step(self, state: SVIState, *args, **kwargs) -> tuple[SVIState, dict]:
        """One optimization step: ``(state, *args) -> (state, info)``. Pure; jit it once.

        ``info`` holds ``objective`` (the estimate at the pre-step parameters)
        and ``finite`` (whether it and the gradient were finite; if not, the
        state is returned unchanged).
        """
        self._require_init()
        key, sub = jax.random.split(state.key)
        value, grads, baselines = self._objective_u().value_and_grad_with_baselines(
            sub, state.params, *args, baselines=state.baselines, samples=self.samples, **kwargs
        )
        neg = jax.tree_util.tree_map(jnp.negative, grads)  # optax minimizes
        updates, opt_state = self.optimizer.update(neg, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(value) & _all_finite(grads)
        new = SVIState(params, opt_state, baselines, key, state.step + 1)
        kept = SVIState(state.params, state.opt_state, state.baselines, key, state.step)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, kept)
        return new, {"objective": value, "finite": finite}

    # -- many steps ------------------------------------------------------------------------

    def run(
        self,
        key,
        num_steps: int,
        *args,
        batch_size: int | None = None,
        chunk_size: int = 100,
        progress: bool = True,
        state: SVIState | None = None,
        **kwargs,
    ) -> SVIRunResult:
        """Run ``num_steps`` steps, ``chunk_size`` per compiled ``lax.scan``.

        Args:
            key: PRNG key (for init and minibatches).
            num_steps: total steps.
            *args: the objective's arguments; with ``batch_size``, the first
                one is the data (an array or pytree of arrays with a shared
                leading axis) and each step sees a random minibatch of it.
            batch_size: minibatch size (None: full data every step).
            chunk_size: steps per compiled call; the progress bar and the
                non-finite check run once per chunk.
            progress: show a progress bar.
            state: continue from this state instead of initializing.

        Raises:
            NonFiniteError: the objective or gradient became non-finite; the
                error's ``result`` attribute holds the last finite state.
        """
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"run: num_steps must be a positive int, got {num_steps!r}")
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
        if state is None:
            first = _take(data, jnp.arange(batch_size)) if batch_size else data
            state = self.init(k_init, *((first, *rest) if args else ()), **kwargs)
        chunk = jax.jit(self._make_chunk(batch_size, n_data, kwargs), static_argnums=2)

        values, done, t0, compiled_at = [], 0, time.perf_counter(), None
        bar = _progress(num_steps, progress)
        try:
            while done < num_steps:
                length = min(chunk_size, num_steps - done)
                new_state, info = chunk(state, (k_batches, data, rest), length)
                objective = np.asarray(info["objective"])
                finite = np.asarray(info["finite"])
                if compiled_at is None:
                    compiled_at = (time.perf_counter(), done + length)
                if not finite.all():
                    bad = int(np.argmin(finite))
                    values.extend(objective[:bad].tolist())
                    result = self._result(new_state, values, t0, compiled_at)
                    err = NonFiniteError(
                        f"objective or gradient is not finite at step {done + bad + 1}; "
                        f"stopped, keeping the parameters of step {done + bad} (lower the learning "
                        "rate, or check the model's support and initialization)"
                    )
                    err.result = result
                    raise err
                values.extend(objective.tolist())
                state, done = new_state, done + length
                bar.update(length)
                bar.set_postfix(objective=f"{np.mean(objective):.4g}")
        finally:
            bar.close()
        return self._result(state, values, t0, compiled_at)

    def _make_chunk(self, batch_size, n_data, kwargs):
        def chunk(state, inputs, length):
            key, data, rest = inputs

            def body(carry, i):
                s, alive = carry
                if batch_size:
                    # Indexed by the global step, so a run continued from a saved
                    # state draws the same minibatches as an uninterrupted one.
                    step_key = jax.random.fold_in(key, s.step)
                    idx = jax.random.choice(step_key, n_data, (batch_size,), replace=False)
                    args = (_take(data, idx), *rest)
                else:
                    args = (data, *rest) if data is not None else ()
                new, info = self.step(s, *args, **kwargs)
                alive = alive & info["finite"]
                new = jax.tree_util.tree_map(lambda a, b: jnp.where(alive, a, b), new, s)
                return (new, alive), {"objective": info["objective"], "finite": alive}

            (state, _), info = jax.lax.scan(body, (state, jnp.array(True)), jnp.arange(length))
            return state, info

        return chunk

    def _result(self, state, values, t0, compiled_at) -> SVIRunResult:
        rate = float("nan")
        if compiled_at is not None:
            elapsed = time.perf_counter() - compiled_at[0]
            remaining = len(values) - compiled_at[1]
            if elapsed > 0 and remaining > 0:
                rate = remaining / elapsed
        return SVIRunResult(state, self.constrain(state.params), np.asarray(values), rate)


def _take(data, idx):
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, float, int))


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


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
