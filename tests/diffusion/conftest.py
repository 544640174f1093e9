"""Compile the diffusion tests with ``jax_disable_most_optimizations`` (see tests/conftest.py).

Their programs are small and compiled once or twice each, so XLA's optimization passes cost more
than they save. The flag changes how fast the compiled code runs, not what it computes: every
check compares against ground truth with a tolerance derived from the sample's own standard error.
"""

import jax


def pytest_runtest_setup(item):
    # Runs after tests/conftest.py's tryfirst hook, which restores the default for every test.
    jax.config.update("jax_disable_most_optimizations", True)
