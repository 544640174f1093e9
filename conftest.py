"""The library's doctests compile lightly optimized, like the tests (see ``tests/conftest.py``).

A doctest compiles a small program once and runs it for milliseconds, so XLA's optimization
passes cost more than they save; ``jax_disable_most_optimizations`` changes how fast the
compiled code runs, not what it computes. This file holds what ``tests/conftest.py``
cannot (its hooks see no item outside ``tests/``) and the session's compilation cache.
"""

import os
import pathlib
import shutil
import tempfile

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent
DOCTESTED = (ROOT / "gendsl", ROOT / "inference", ROOT / "models")
_DEFAULT = jax.config.read("jax_disable_most_optimizations")
_CACHE_ENV = "GENDSL_TEST_JAX_CACHE"


def _doctested(path: pathlib.Path) -> bool:
    return any(root in path.parents for root in DOCTESTED)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _doctested(item.path.resolve()):
        jax.config.update("jax_disable_most_optimizations", True)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if _doctested(item.path.resolve()):
        jax.config.update("jax_disable_most_optimizations", _DEFAULT)



def pytest_configure(config):
    """One JAX compilation cache for the session, shared by its xdist workers.

    Both workers compile many of the same small programs (eager operations, the estimators of
    shared fixtures); with the cache one compiles and the other loads (about 15% less CPU for
    the fast suite). The folder is new for every session and removed at its end, so no run
    starts from another's compilations.
    """
    if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="gendsl-jax-cache-")
        config._gendsl_cache_owner = True
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if getattr(config, "_gendsl_cache_owner", False):
        shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)
