"""The errors the command line reports as one line, and how it finds their place in the program."""

from __future__ import annotations

import os
import traceback

__all__ = ["CLIError", "ProgramError", "TrainingStopped", "program_frame", "describe"]


class CLIError(Exception):
    """A failure the user can fix: printed as one line, exit code ``code`` (2 by default).

    Attributes:
        code: the process exit code.
        cause: the exception behind it, printed in full with ``--debug``.
    """

    def __init__(self, message: str, *, code: int = 2, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.cause = cause


class ProgramError(CLIError):
    """An exception raised by the program file's own code (at import, in ``data()``, in a model)."""


class TrainingStopped(CLIError):
    """Training stopped early (non-finite objective, or a signal); outputs so far are kept."""


def program_frame(exc: BaseException, path: str) -> traceback.FrameSummary | None:
    """The innermost traceback frame of ``exc`` that lies in the file ``path``."""
    target = os.path.realpath(path)
    found = None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # follow "raise ... from" chains too
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            if os.path.realpath(frame.filename) == target:
                found = frame
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return found


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, shortened to ``limit`` characters."""
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return line


def describe(exc: BaseException, path: str, what: str) -> ProgramError:
    """A one-line ``ProgramError`` for ``exc``, raised while ``what`` ran code of the program at ``path``.

    The line names the program's innermost line in the traceback (``file:line``),
    the exception type and the first line of its message.
    """
    frame = program_frame(exc, path)
    where = f"{path}:{frame.lineno}" if frame is not None else path
    message = first_line(exc)
    kind = type(exc).__name__
    text = f"{where}: {kind}: {message}" if message else f"{where}: {kind}"
    return ProgramError(f"{text} ({what})", cause=exc)
