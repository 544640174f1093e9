"""Helpers for the command-line tests: run ``gendsl`` in-process and write small program files.

The tests compile with ``jax_disable_most_optimizations`` (see tests/conftest.py): each ``gendsl``
call compiles a few small programs and runs them for milliseconds, so XLA's optimization passes
cost more than they save. The flag changes how fast the compiled code runs, not what it computes;
the child processes of test_signals.py get it too (``cli_helpers.LIGHT_ENV``), so that a run resumed here from
a child's checkpoint and an uninterrupted run here use the same compiled code.
"""

import textwrap

import jax
import pytest

from gendsl.cli import main


def pytest_runtest_setup(item):
    # Runs after tests/conftest.py's tryfirst hook, which restores the default for every test.
    jax.config.update("jax_disable_most_optimizations", True)


class Result:
    """Exit code and captured output of one ``gendsl`` call."""

    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    @property
    def error_lines(self):
        """The non-empty lines on stderr."""
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def gendsl_cli(capsys):
    """``gendsl_cli(*argv)`` runs ``main(argv)`` in this process and returns a ``Result``."""

    def run(*argv):
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def program(tmp_path):
    """``program(source, name="prog.py")`` writes a program file into tmp_path and returns its path."""

    def write(source, name="prog.py"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write
