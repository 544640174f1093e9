"""Shared configuration of the test suite.

Compilation, not execution, is what the language and inference tests spend their time on:
each one compiles a few small programs (an estimator vmapped over a few thousand keys, or
eager operations on new shapes) and runs them for milliseconds. For such programs XLA's
backend optimizations cost more than they save, so the tests under ``LIGHTLY_OPTIMIZED``
compile with ``jax_disable_most_optimizations`` (about 2x faster compilation on CPU). It
changes how fast the compiled code runs, not what it computes: the checks are unchanged.
The flag is set before each test's fixtures, so module-scoped fixtures compile under it too,
and restored for every other test (the diffusion, flow and command-line tests, which train).
"""

import pathlib

import jax
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
LIGHTLY_OPTIMIZED = (TESTS / "core", TESTS / "inference", TESTS / "models", TESTS / "test_readme.py")
_DEFAULT = jax.config.read("jax_disable_most_optimizations")  # JAX_DISABLE_MOST_OPTIMIZATIONS=1 still wins


def lightly_optimized(path: pathlib.Path) -> bool:
    return any(path == root or root in path.parents for root in LIGHTLY_OPTIMIZED)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    jax.config.update("jax_disable_most_optimizations", _DEFAULT or lightly_optimized(item.path.resolve()))


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    # Items outside tests/ (the doctests) see no hook of this file: leave JAX as it was.
    jax.config.update("jax_disable_most_optimizations", _DEFAULT)
