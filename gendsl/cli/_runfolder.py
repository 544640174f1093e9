"""The run folder: the one place that knows its file names and reads and writes them atomically.

A run folder (``--out`` of ``gendsl fit``) holds ``config.json``, ``checkpoint.npz`` (the
whole SVI state), ``params.npz`` (the constrained parameters), ``metrics.csv``, ``loss.png``,
``posterior.nc``, ``summary.txt``, and, after ``gendsl eval`` / ``gendsl sample``,
``eval.json``, ``samples.npz`` and ``samples.png``. Every file is replaced atomically
(``_checkpoint.atomic_write``): a crash leaves the old file or the new one, never a part.
Reading a folder runs no code: arrays come from ``.npz`` without pickle, the rest is JSON.

**One writer at a time.** ``gendsl fit`` holds an advisory lock (``fcntl.flock``, exclusive,
non-blocking) on the folder's ``.lock`` file for the whole run, with its pid written in the
file. The operating system releases the lock when the process ends, however it ends, so a
``kill -9`` never leaves a stale lock; the ``.lock`` file itself stays (removing it would let
two processes lock two different files of the same name). A second ``fit`` on a locked folder
is refused before it writes anything. ``gendsl eval`` / ``gendsl sample`` take no lock: they
read ``config.json`` and ``params.npz`` (each replaced atomically) and check that both come
from the same run (``run_id``), so they see a consistent snapshot of a running fit: its
parameters at its latest checkpoint.

**Leftovers.** A process killed while writing leaves its temporary file
(``.<name>.tmp-<pid>``). ``clean_leftovers``, called by ``fit`` under the lock, removes those
whose process no longer runs (never a live ``eval``'s file being written).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

import gendsl
from gendsl.cli._checkpoint import atomic_write, load_tree, save_tree
from gendsl.cli._errors import CLIError

__all__ = ["RunFolder", "RunLock", "RunLocked"]

_TMP = re.compile(r"^\..+\.tmp-(\d+)$")


class RunFolder:
    """A run folder at ``path`` (it need not exist yet).

    Attributes:
        path: the folder.
    """

    CONFIG = "config.json"
    CHECKPOINT = "checkpoint.npz"
    PARAMS = "params.npz"
    EMA_PARAMS = "ema_params.npz"
    METRICS = "metrics.csv"
    LOSS = "loss.png"
    POSTERIOR = "posterior.nc"
    SUMMARY = "summary.txt"
    EVAL = "eval.json"
    SAMPLES = "samples.npz"
    SAMPLES_PNG = "samples.png"
    LOCK = ".lock"
    #: What ``gendsl fit`` writes, in the order the closing message lists them.
    FIT_OUTPUTS = (PARAMS, METRICS, LOSS, POSTERIOR, SUMMARY, CONFIG)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def file(self, name: str) -> str:
        """The path of the folder's file ``name``."""
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        """Whether the folder holds ``name``."""
        return os.path.exists(self.file(name))

    def run_files(self) -> list[str]:
        """The files of a ``gendsl fit`` run that the folder already holds."""
        return [f for f in (self.CONFIG, self.CHECKPOINT, *self.FIT_OUTPUTS) if self.has(f)]

    def create(self) -> None:
        """Create the folder (and its parents) if needed."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise CLIError(f"--out {self.path}: exists and is not a directory")
        os.makedirs(self.path, exist_ok=True)

    # -- the lock and leftovers ----------------------------------------------------------

    def lock(self) -> RunLock:
        """Take the folder's exclusive lock (the folder must exist); release it with ``RunLock.release``.

        Raises:
            RunLocked: another process holds it (exit code 2, naming its pid).
        """
        return RunLock(self.file(self.LOCK), self.path)

    def check_unlocked(self) -> None:
        """Fail now if another process holds the lock; creates nothing (a cheap early check).

        Raises:
            RunLocked: another process holds it.
        """
        path = self.file(self.LOCK)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # no lock file: nobody has ever locked this folder
        try:
            _flock(fd, path, self.path)
        finally:
            os.close(fd)  # closing drops the probe's lock

    def clean_leftovers(self) -> list[str]:
        """Remove temporary files of writes that a killed process left; returns their names.

        Only files whose writer (the pid in the name) is no longer running, or is this
        process, are removed: an ``eval`` writing ``eval.json`` right now keeps its file.
        """
        removed = []
        try:
            names = os.listdir(self.path)
        except OSError:
            return removed
        for name in names:
            match = _TMP.match(name)
            if match is None or (int(match.group(1)) != os.getpid() and _alive(int(match.group(1)))):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.file(name))
                removed.append(name)
        return removed

    # -- config.json ---------------------------------------------------------------------

    def read_config(self, remedy: str) -> dict:
        """``config.json``, checked to be readable and written by this gendsl version.

        Args:
            remedy: what the user should do instead, appended to the error messages.
        """
        path = self.file(self.CONFIG)
        try:
            with open(path) as f:
                config = json.load(f)
            config["options"] = dict(config["options"])
        except OSError as exc:  # its message repeats the path: give the reason only
            raise CLIError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); {remedy}",
                           cause=exc) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CLIError(f"{path}: damaged, not the JSON gendsl writes ({reason}); {remedy}", cause=exc) from exc
        if not isinstance(config, dict):
            raise CLIError(f"{path}: damaged, not the JSON gendsl writes; {remedy}")
        if config.get("gendsl_version") != gendsl.__version__:
            raise CLIError(
                f"{path}: the run was made with gendsl {config.get('gendsl_version')}, this is gendsl "
                f"{gendsl.__version__}; {remedy}"
            )
        return config

    def write_json(self, name: str, obj: Any) -> str:
        """Atomically write ``obj`` as indented JSON to the file ``name``; returns its path."""
        text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
        path = self.file(name)
        atomic_write(path, lambda f: f.write(text), mode="w")
        return path

    # -- arrays --------------------------------------------------------------------------

    def save_tree(self, name: str, tree, meta: dict) -> None:
        """Atomically save a pytree's arrays with a JSON header (``_checkpoint``)."""
        save_tree(self.file(name), tree, meta)

    def load_tree(self, name: str, like, what: str):
        """Load a saved pytree into the structure of ``like``: ``(tree, meta)``."""
        return load_tree(self.file(name), like, what)

    def write_bytes(self, name: str, data: bytes) -> str:
        """Atomically write raw bytes (a PNG) to the file ``name``; returns its path."""
        path = self.file(name)
        atomic_write(path, lambda f: f.write(data))
        return path

    def write_text(self, name: str, text: str) -> str:
        """Atomically write text to the file ``name``; returns its path."""
        path = self.file(name)
        atomic_write(path, lambda f: f.write(text), mode="w")
        return path

    def write_with(self, name: str, write) -> str:
        """Atomically write the file ``name`` with ``write(file)`` (binary); returns its path."""
        path = self.file(name)
        atomic_write(path, write)
        return path


class RunLocked(CLIError):
    """The run folder is locked by another process (exit code 2)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


def _flock(fd: int, path: str, folder: str) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunLocked(
            f"--out {folder} is in use by another `gendsl fit` ({_holder(path)}); wait for it to finish or stop it, "
            "or choose another --out"
        ) from None


class RunLock:
    """An exclusive advisory lock on a run folder, held from construction to ``release``.

    The lock belongs to the open file, so the operating system drops it when the process
    exits or is killed; the file holds the pid of the holder for the error message.
    """

    def __init__(self, path: str, folder: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(self._fd, path, folder)
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def release(self) -> None:
        """Release the lock (idempotent); the file stays."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
