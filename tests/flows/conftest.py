"""Compile the flow tests with ``jax_disable_most_optimizations`` (see tests/conftest.py).

Most of these programs are small and compiled once, so XLA's optimization passes cost more than
they save; the few tests whose run time is in executing many draws (``FULLY_OPTIMIZED``) keep the
default. The flag changes how fast the compiled code runs, not what it computes.
"""

import jax

FULLY_OPTIMIZED = {"test_samples_approach_the_gaussian_as_D_grows"}


def pytest_runtest_setup(item):
    # Runs after tests/conftest.py's tryfirst hook, which restores the default for every test.
    if item.originalname not in FULLY_OPTIMIZED:
        jax.config.update("jax_disable_most_optimizations", True)
