"""The run folder: the one place that knows its file names and reads and writes them atomically.

A run folder (``--out`` of ``gendsl fit``) holds ``config.json``, ``checkpoint.npz`` (the
whole SVI state), ``params.npz`` (the constrained parameters), ``metrics.csv``, ``loss.png``,
``posterior.nc``, ``summary.txt``, and, after ``gendsl eval`` / ``gendsl sample``,
``eval.json``, ``samples.npz`` and ``samples.png``. Every file is replaced atomically
(``_checkpoint.atomic_write``): a crash leaves the old file or the new one, never a part.
Reading a folder runs no code: arrays come from ``.npz`` without pickle, the rest is JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any

import gendsl
from gendsl.cli._checkpoint import atomic_write, load_tree, save_tree
from gendsl.cli._errors import CLIError

__all__ = ["RunFolder"]


class RunFolder:
    """A run folder at ``path`` (it need not exist yet).

    Attributes:
        path: the folder.
    """

    CONFIG = "config.json"
    CHECKPOINT = "checkpoint.npz"
    PARAMS = "params.npz"
    METRICS = "metrics.csv"
    LOSS = "loss.png"
    POSTERIOR = "posterior.nc"
    SUMMARY = "summary.txt"
    EVAL = "eval.json"
    SAMPLES = "samples.npz"
    SAMPLES_PNG = "samples.png"
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
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"{path}: damaged ({exc}); {remedy}", cause=exc) from exc
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
