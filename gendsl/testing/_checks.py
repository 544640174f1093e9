"""Statistical checks for estimators: tolerances from the estimator's own standard error."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

__all__ = ["assert_unbiased", "draw_estimates"]


# XLA options that make a program compile faster and run slower: for a program that runs once.
FAST_COMPILE_CPU = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def fast_compile_options() -> dict | None:
    """``FAST_COMPILE_CPU`` on CPU (else None), for ``jax.jit(f, compiler_options=...)``."""
    return FAST_COMPILE_CPU if jax.default_backend() == "cpu" else None


def fast_jit(fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``fast_compile_options()``: for programs run once or twice."""
    return jax.jit(fn, compiler_options=fast_compile_options(), **jit_kwargs)


def draw_estimates(estimator: Callable, key, n: int, *, fast_compile: bool = True):
    """``n`` independent draws of ``estimator(key)``, jitted and vmapped over keys.

    The compiled program runs once, and for a statistical check compiling it costs far more
    than running it: on CPU it is compiled with ``FAST_COMPILE_CPU`` (about 2x faster to
    compile than XLA's defaults for a typical estimator). ``fast_compile=False`` uses XLA's
    defaults. The draws are the same either way up to float rounding.

    Example:
        >>> import jax
        >>> from gendsl.testing import draw_estimates
        >>> draw_estimates(lambda k: jax.random.normal(k), jax.random.key(0), 5).shape
        (5,)
    """
    keys = jax.random.split(key, n)
    options = fast_compile_options() if fast_compile else None
    return jax.jit(jax.vmap(estimator), compiler_options=options)(keys)


def assert_unbiased(estimates, exact, *, sigmas: float = 4.0, atol: float = 1e-6, name: str = "estimate"):
    """Assert that the mean of i.i.d. ``estimates`` is within ``sigmas`` standard errors of ``exact``.

    Works leaf by leaf on pytrees whose leaves have a leading sample axis. The
    standard error is the sample standard deviation over ``sqrt(n)``; a
    zero-variance (exact) estimator must match to ``atol`` plus float32 rounding.

    Returns:
        The pytree of ``(mean, standard_error)`` pairs, for reports.

    Example:
        >>> import numpy as np
        >>> from gendsl.testing import assert_unbiased
        >>> draws = np.random.default_rng(0).normal(1.0, 2.0, size=10_000)
        >>> mean, se = assert_unbiased(draws, 1.0)
        >>> bool(se < 0.03)
        True
    """
    est_leaves, tree = jax.tree_util.tree_flatten(estimates)
    exact_leaves = tree.flatten_up_to(exact)
    out = []
    for i, (e, x) in enumerate(zip(est_leaves, exact_leaves, strict=False)):
        e = np.asarray(e, np.float64)
        x = np.asarray(x, np.float64)
        n = e.shape[0]
        mean = e.mean(0)
        se = e.std(0, ddof=1) / np.sqrt(n)
        tol = sigmas * se + atol + 1e-5 * np.abs(x)
        bad = np.abs(mean - x) > tol
        if np.any(bad):
            raise AssertionError(
                f"{name} (leaf {i}) is biased: mean {mean[bad] if mean.ndim else mean} vs exact "
                f"{x[bad] if x.ndim else x}, standard error {se[bad] if se.ndim else se} (n={n}, "
                f"tolerance {sigmas} SE)"
            )
        out.append((mean, se))
    return jax.tree_util.tree_unflatten(tree, out)
