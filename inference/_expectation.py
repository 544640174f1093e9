"""``Expectation``: an objective ``E[F]`` and its unbiased estimates.

``expectation(F)`` marks the expected value of a function written in the objective language
(``sim``, ``density``, ``repeat``; see ``_language``) as an objective. Its methods estimate
the value and the gradient (``_estimator`` derives the surrogate from each site's strategy).
An ``Expectation`` only estimates: how its parameters start is declared with it
(``models=``, ``init=``) and read by ``init_params``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

import gendsl
from gendsl.inference._estimator import estimate, value_and_grad
from gendsl.internal import as_key

__all__ = ["Expectation", "expectation"]



class Expectation:
    """``E[F(params, *args)]`` over the random choices of ``F``; create it with ``expectation``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, sim
        >>> @gendsl.model
        ... def q(mu):
        ...     gendsl.sample("z", dist.Normal(mu, 1.0))
        >>> square = expectation(lambda mu: sim(q)(mu)[0]["z"] ** 2)  # E = mu^2 + 1
        >>> value, grad = jax.jit(square.value_and_grad)(jax.random.key(0), 2.0)

    Attributes:
        fn: the integrand ``F(params, *args)``.
        models: the models whose parameters ``params`` holds (a declaration, read by
            ``init_params``).
        init: how the parameters start, when not from ``models`` (read by ``init_params``).
    """

    def __init__(self, fn: Callable, models: tuple = (), init: Callable | None = None) -> None:
        self.fn = fn
        self.models = tuple(gendsl.model(m) for m in models)
        self.init = init
        functools.update_wrapper(self, fn, updated=[])

    def estimate(self, key, *args, samples: int = 1, **kwargs) -> jax.Array:
        """An unbiased estimate of the expectation (the mean of ``samples`` draws)."""
        return estimate(self.fn, args, kwargs, as_key(key), {}, _check_samples(samples))[1]

    def value_and_grad(self, key, params, *args, samples: int = 1, **kwargs):
        """Unbiased estimates of the expectation and of its gradient in ``params``.

        Args:
            key: PRNG key.
            params: the pytree to differentiate (the first argument of ``F``).
            *args, **kwargs: further arguments of ``F``.
            samples: number of independent replicates averaged; with more than
                one, REINFORCE sites with ``baseline="loo"`` use the others' mean.
        """
        value, grads, _ = self.value_and_grad_with_baselines(key, params, *args, samples=samples, **kwargs)
        return value, grads

    def grad(self, key, params, *args, samples: int = 1, **kwargs):
        """An unbiased estimate of the gradient in ``params``."""
        return self.value_and_grad(key, params, *args, samples=samples, **kwargs)[1]

    def surrogate(self, key, params, *args, samples: int = 1, **kwargs) -> tuple[jax.Array, jax.Array]:
        """``(surrogate, value)``: a scalar whose gradient in ``params`` is the unbiased gradient estimate.

        ``value_and_grad`` differentiates this. Differentiate it yourself to combine
        estimates first: for one estimate per data point, ``jax.grad`` of the mean of
        ``jax.vmap(surrogate)`` over the data sums the gradients inside the backward pass,
        whereas ``jax.vmap(value_and_grad)`` materializes one gradient per data point
        (10x slower for AIR on XLA:CPU, ``benchmarks/air.py``). EMA baselines are read
        as zero and not updated here (``value_and_grad_with_baselines`` threads them).

        Example:
            >>> import jax, gendsl, gendsl.distributions as dist
            >>> from gendsl.inference import expectation, sim
            >>> @gendsl.model
            ... def q(mu):
            ...     gendsl.sample("z", dist.Normal(mu, 1.0))
            >>> square = expectation(lambda mu: sim(q)(mu)[0]["z"] ** 2)
            >>> g = jax.grad(lambda mu: square.surrogate(jax.random.key(0), mu)[0])(2.0)
            >>> bool(g == square.grad(jax.random.key(0), 2.0))
            True
        """
        s, value, _, _ = estimate(self.fn, (params, *args), kwargs, as_key(key), {}, _check_samples(samples))
        return s, value

    def value_and_grad_with_baselines(self, key, params, *args, baselines=None, samples: int = 1, **kwargs):
        """``value_and_grad`` that also threads EMA baselines: returns ``(value, grads, baselines)``."""
        samples = _check_samples(samples)
        ema = dict(baselines or {})
        key = as_key(key)

        return value_and_grad(self.fn, params, args, kwargs, key, ema, samples)


def _check_samples(samples) -> int:
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    return samples


def expectation(fn: Callable, *, models: tuple = (), init: Callable | None = None) -> Expectation:
    """Mark ``fn``'s expected value as an objective.

    ``fn(params, *args)`` may draw with ``sim`` and ``repeat`` and score with
    ``density``; the result supports ``estimate``, ``grad`` and
    ``value_and_grad``, all unbiased and all usable under ``jit``/``vmap``.

    Args:
        fn: the integrand, ``fn(params, *args) -> scalar``.
        models: the models whose parameters ``params`` holds, so that
            ``init_params`` (and ``SVI.init``) can initialize them.
        init: how the parameters start when they are not (only) the models':
            ``init(key, *args, **kwargs) -> (params, constraints)``, with
            ``constraints`` mapping parameter names to a NumPyro constraint or None.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, sim, ENUM
        >>> @gendsl.model
        ... def q(p):
        ...     gendsl.sample("b", dist.Bernoulli(p), strategy=ENUM)
        >>> obj = expectation(lambda p: sim(q)(p)[0]["b"] * 3.0)
        >>> value, grad = jax.jit(obj.value_and_grad)(jax.random.key(0), 0.25)
        >>> round(float(value), 4), round(float(grad), 4)
        (0.75, 3.0)
    """
    return Expectation(fn, models, init)
