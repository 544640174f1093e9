"""Checkpoints and parameter files: ``.npz`` archives of named arrays, never pickle.

A file holds one pytree: each array leaf is stored under a readable name built
from its path (``params.decoder.layers.0.weight``), and ``__meta__`` holds a
JSON header (the gendsl version that wrote it, what it is, the step, and every
leaf's path, shape and dtype). Loading needs a *template* of the same structure,
built from the program (as ``equinox.tree_deserialise_leaves`` does); each leaf
is checked against it, so a file from another program, another gendsl version
or a damaged file is a clear error rather than a crash or silently wrong values.
PRNG keys are stored as their raw ``uint32`` data.

Files are replaced atomically: written to a temporary file in the same folder,
flushed and ``fsync``-ed, then renamed over the old one with ``os.replace`` (and
the folder is synced), so a crash or ``kill -9`` at any moment leaves either
the previous file or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import gendsl
from gendsl.cli._errors import CLIError

__all__ = ["FORMAT", "atomic_write", "save_tree", "load_tree", "read_meta", "leaf_name"]

FORMAT = 1


def atomic_write(path: str, write: Callable[[Any], None], *, mode: str = "wb") -> None:
    """Write ``path`` with ``write(file)`` so that readers see the old or the new file, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    with contextlib.suppress(OSError):  # persist the rename itself (not possible on every platform)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def leaf_name(path) -> str:
    """A readable name for a pytree path: ``params.decoder.layers.0.weight``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts) or "value"


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _is_leaf_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, int, bool))


def _entries(tree) -> list[tuple[str, Any]]:
    out, used = [], set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not _is_leaf_array(leaf):
            continue  # functions and other static leaves come from the template
        name = leaf_name(path)
        while name in used or name == "__meta__":
            name += "_"
        used.add(name)
        out.append((name, leaf))
    return out


def save_tree(path: str, tree, meta: dict) -> None:
    """Atomically save the array leaves of ``tree`` with the JSON header ``meta``."""
    arrays, leaves = {}, []
    for name, leaf in _entries(tree):
        key = _is_key(leaf)
        data = np.asarray(jax.random.key_data(leaf) if key else leaf)
        arrays[name] = data
        leaves.append({"name": name, "key": key, "shape": list(data.shape), "dtype": str(data.dtype)})
    header = {"format": FORMAT, "gendsl_version": gendsl.__version__, **meta, "leaves": leaves}
    arrays["__meta__"] = np.array(json.dumps(header))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _damaged(path: str, what: str, exc: BaseException) -> CLIError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)  # OSError repeats the path
    return CLIError(
        f"{path}: damaged, or not a gendsl {what} file ({type(exc).__name__}: {reason}); "
        "delete it and train again (a run's checkpoint.npz is replaced atomically, so the damage came from outside)",
        cause=exc,
    )


def read_meta(path: str, what: str) -> dict:
    """The JSON header of a saved tree, checked for the format and the gendsl version.

    Raises:
        CLIError: missing, damaged, or written by another gendsl version.
    """
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file (the run's {what} file); train the run first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["__meta__"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise _damaged(path, what, exc) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CLIError(f"{path}: a {what} file of unknown format ({found!r}); this gendsl reads format {FORMAT}")
    version = meta.get("gendsl_version")
    if version != gendsl.__version__:
        raise CLIError(
            f"{path}: this {what} file was written by gendsl {version}, this is gendsl {gendsl.__version__}; "
            "results are tied to the version that wrote them: train again with this version "
            "(or use gendsl " + str(version) + ")"
        )
    return meta


def load_tree(path: str, like, what: str) -> tuple[Any, dict]:
    """Load a tree saved by ``save_tree`` into the structure of ``like``: ``(tree, meta)``.

    Raises:
        CLIError: damaged file, other gendsl version, or leaves that do not match
            ``like`` (another program, or the program's parameters changed).
    """
    meta = read_meta(path, what)
    template = _entries(like)
    names = [n for n, _ in template]
    stored = [leaf["name"] for leaf in meta.get("leaves", [])]
    if names != stored:
        missing = sorted(set(names) - set(stored))[:3]
        extra = sorted(set(stored) - set(names))[:3]
        raise CLIError(
            f"{path}: this {what} file does not match this program's parameters (missing {missing}, unexpected "
            f"{extra}); was it written for another program, or did the model or the options change?"
        )
    values = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for (name, leaf), info in zip(template, meta["leaves"], strict=True):
                data = npz[name]
                want = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
                if data.shape != want.shape or data.dtype != want.dtype:
                    raise CLIError(
                        f"{path}: in this {what} file, {name} has shape {data.shape} and dtype {data.dtype}, but this "
                        f"program's has {want.shape} {want.dtype}; did the model or the options change?"
                    )
                if info["key"]:
                    values[name] = jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
                else:
                    values[name] = jax.numpy.asarray(data)
    except CLIError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _damaged(path, what, exc) from exc
    replaced = iter(values[n] for n in names)
    leaves, treedef = jax.tree_util.tree_flatten(like)
    out = [next(replaced) if _is_leaf_array(leaf) else leaf for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out), meta
