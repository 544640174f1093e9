"""Shared constants and helpers of the command-line tests (the fixtures are in conftest.py)."""

import os
import pathlib

PROGRAMS = pathlib.Path(__file__).resolve().parent / "programs"
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
# The environment of child `gendsl` processes: compiled as in this process (see conftest.py).
LIGHT_ENV = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}

NORMAL_MODELS = '''
import jax.numpy as jnp
import gendsl, gendsl.distributions as dist

@gendsl.model
def model(x):
    mu = gendsl.sample("mu", dist.Normal(0.0, 10.0))
    with gendsl.plate("data", x.shape[0]):
        gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)

@gendsl.model
def guide(x):
    gendsl.sample("mu", dist.Normal(gendsl.param("loc", 0.0), 1.0))
'''


def listing(folder):
    """Files under ``folder`` (empty if it does not exist)."""
    return sorted(os.listdir(folder)) if os.path.exists(folder) else []


def assert_one_line(result, *fragments, code=2):
    """``result`` exited with ``code`` and one line on stderr holding every fragment (no traceback)."""
    assert result.code == code, result.err
    lines = result.error_lines
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.err
    return lines[0]
