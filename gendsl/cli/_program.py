"""Loading a program file and finding what the command line needs in it.

The convention (documented in ``docs/fit.md``): a program file is a Python file
that defines

* ``model``: an ``@gendsl.model`` (the generative model, with observed sites);
* ``guide``: an ``@gendsl.model`` with the same arguments (the variational
  family), or the string ``"auto"`` for a mean-field normal guide;
* ``data()``: returns the training data, or a pair ``(train, test)``;
  ``data(path)`` receives ``--data PATH``;
* optionally ``objective`` (a name such as ``"iwelbo"``, a factory
  ``objective(model, guide, particles=K)``, or a ready ``Expectation``),
  ``strategies`` (``{address pattern: strategy}`` applied to the guide),
  ``defaults`` (``{option: value}`` for the command-line options),
  ``image_shape`` (e.g. ``(28, 28)``, for sample grids) and ``conditions``
  (the keys of a dict of data that the model is conditioned on, e.g. ``("y",)``
  for a class-conditional model; ``gendsl sample --cond y=3`` sets them).

The model and the guide are called as ``model(data)`` and ``guide(data)``; the
data is an array or a pytree (dict, tuple) of arrays. With ``--batch-size``,
every leaf's leading axis indexes data points, and each step sees a random
minibatch of them.

Names may differ from ``model`` / ``guide``: two ``@gendsl.model`` objects are
told apart by which one observes data; any other case is an error that says
what to add (or ``--model NAME --guide NAME``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gendsl
from gendsl.cli._errors import CLIError, describe

__all__ = ["Data", "Kind", "Program", "condition", "find_kind", "load_program", "load_data", "find_models",
           "leading_size", "take"]


@dataclasses.dataclass
class Program:
    """A loaded program file.

    Attributes:
        path: the path as given on the command line.
        module: the executed module.
        sha256: hash of the file's bytes (recorded in ``config.json``).
    """

    path: str
    module: ModuleType
    sha256: str

    def get(self, name: str, default: Any = None) -> Any:
        """A top-level name of the program, or ``default``."""
        return getattr(self.module, name, default)

    @property
    def defaults(self) -> dict:
        """The program's ``defaults`` dict (validated by the caller)."""
        value = self.get("defaults", {})
        if not isinstance(value, Mapping):
            raise CLIError(f"{self.path}: `defaults` must be a dict of option values, got {type(value).__name__}")
        return dict(value)

    def models(self) -> dict[str, gendsl.Model]:
        """Every public ``gendsl.Model`` defined at the program's top level, by name (one name per object)."""
        found: dict[str, gendsl.Model] = {}
        ids: set[int] = set()
        names = sorted(vars(self.module), key=lambda n: (n not in ("model", "guide"), n))
        for name in names:
            obj = vars(self.module)[name]
            if isinstance(obj, gendsl.Model) and not name.startswith("_") and id(obj) not in ids:
                found[name] = obj
                ids.add(id(obj))
        return found

    def call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        """Run program code; an exception becomes a one-line error naming the program's line."""
        try:
            return fn(*args, **kwargs)
        except CLIError:
            raise
        except Exception as exc:
            raise describe(exc, self.path, what) from exc


@dataclasses.dataclass
class Data:
    """The program's data: ``train`` (a pytree of arrays) and an optional ``test`` of the same structure."""

    train: Any
    test: Any | None


def _options_show(value) -> str:
    from gendsl.cli._options import show

    return "" if value is None else show(value)


def load_program(path: str) -> Program:
    """Execute the program file at ``path`` as a module (its ``__main__`` block does not run).

    Raises:
        CLIError: the file is missing, unreadable or has a syntax error, or its
            top-level code raised (the line names the program's line).
    """
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CLIError(f"{path}: is a directory; give the program's .py file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        source = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: cannot read the program: {exc}", cause=exc) from exc
    try:
        code = compile(source, path, "exec")
    except ValueError as exc:  # null bytes, on Pythons that do not call them a SyntaxError
        raise CLIError(f"{path}: not a Python program ({exc})", cause=exc) from exc
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}" if exc.lineno else path
        raise CLIError(f"{where}: SyntaxError: {exc.msg}", cause=exc) from exc
    digest = hashlib.sha256(raw).hexdigest()
    name = "gendsl_program_" + digest[:12]
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # a program may import modules that sit next to it
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:  # sys.exit() in the program's top level (outside `if __name__ == "__main__":`)
        sys.modules.pop(name, None)
        raise CLIError(f"{path}: the program called sys.exit({_options_show(exc.code)}) while being imported; "
                       "put that call under `if __name__ == \"__main__\":`", cause=exc) from exc
    except Exception as exc:
        sys.modules.pop(name, None)
        raise describe(exc, path, "while importing the program") from exc
    return Program(path, module, digest)


# ----------------------------------------------------------------------------- data


def load_data(program: Program, path: str | None) -> Data:
    """Call the program's ``data()`` (or ``data(path)``) and validate what it returns.

    Raises:
        CLIError: no ``data`` function, an argument mismatch with ``--data``,
            a non-numeric leaf, NaN or infinite values, or a test split whose
            structure differs from the training data.
    """
    fn = program.get("data")
    if fn is None:
        raise CLIError(
            f"{program.path}: no data: define `def data():` returning the training data "
            "(or a pair `(train, test)`) as arrays"
        )
    if not callable(fn):
        raise CLIError(f"{program.path}: `data` must be a function returning the data, got {type(fn).__name__}")
    takes = _takes_path(fn)
    if path is not None and takes is False:
        raise CLIError(f"{program.path}: --data was given but data() takes no argument; define `def data(path=None):`")
    if path is None and takes == "required":
        raise CLIError(f"{program.path}: data() needs a path: pass --data PATH")
    out = program.call("in data()", fn, path) if path is not None else program.call("in data()", fn)
    if out is None:
        raise CLIError(f"{program.path}: data() returned None; return the training data or (train, test)")
    if isinstance(out, (tuple, list)) and len(out) == 2:
        train, test = out
    else:
        train, test = out, None
    train = _as_arrays(program, train, "training data")
    if test is not None:
        test = _as_arrays(program, test, "test data")
        if jax.tree_util.tree_structure(train) != jax.tree_util.tree_structure(test):
            raise CLIError(f"{program.path}: data(): the test data's structure differs from the training data's")
        for a, b in zip(jax.tree_util.tree_leaves(train), jax.tree_util.tree_leaves(test), strict=True):
            if a.shape[1:] != b.shape[1:]:
                raise CLIError(
                    f"{program.path}: data(): a test leaf has shape {b.shape}, but the training leaf has "
                    f"{a.shape}; they must agree except in the leading (data point) axis"
                )
    return Data(train, test)


def _takes_path(fn) -> bool | str:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if not positional:
        return False
    first = positional[0]
    if first.kind is not first.VAR_POSITIONAL and first.default is inspect.Parameter.empty:
        return "required"
    return True


def _as_arrays(program: Program, tree, what: str):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    if not leaves:
        raise CLIError(f"{program.path}: data() returned no arrays in the {what}")
    out = []
    for name, leaf in zip(paths, leaves, strict=True):
        label = f"{what}{name}" if name else what
        try:
            arr = np.asarray(leaf)
        except Exception as exc:
            raise CLIError(f"{program.path}: data(): {label} is not an array ({type(leaf).__name__})") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise CLIError(f"{program.path}: data(): {label} has dtype {arr.dtype}; return numeric arrays")
        if arr.ndim and arr.shape[0] == 0:  # with or without a plate, an empty data set fits only the prior
            raise CLIError(f"{program.path}: data(): {label} has no data points (shape {arr.shape}); return at "
                           "least one")
        if np.issubdtype(arr.dtype, np.inexact):
            bad = ~np.isfinite(arr)
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise CLIError(
                    f"{program.path}: data(): {label} has {int(bad.sum())} NaN or infinite values of "
                    f"{arr.size} (first at index {first}); clean them or drop those data points"
                )
        out.append(jnp.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, out)


def leading_size(tree, program_path: str, what: str = "training data") -> int:
    """The shared leading axis of every leaf (the number of data points).

    Raises:
        CLIError: a scalar leaf, or leaves with different leading sizes.
    """
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path) or "(the array)"
        if jnp.ndim(leaf) == 0:
            raise CLIError(
                f"{program_path}: data(): {what} {name} is a scalar; with --batch-size every array needs a "
                "leading data-point axis"
            )
        sizes[name] = jnp.shape(leaf)[0]
    if len(set(sizes.values())) > 1:
        raise CLIError(
            f"{program_path}: data(): with --batch-size every array needs the same leading (data point) axis; "
            f"got {sizes}"
        )
    n = next(iter(sizes.values()))
    if n == 0:
        raise CLIError(f"{program_path}: data(): the {what} has no data points")
    return n


def take(tree, idx):
    """Rows ``idx`` of every leaf."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), tree)


def _declared_conditions(program: Program, data) -> tuple[str, ...]:
    declared = program.get("conditions")
    if declared is None:
        return ()
    if isinstance(declared, str) or not all(isinstance(n, str) for n in declared):
        raise CLIError(f"{program.path}: `conditions` must be a tuple of the data's dict keys, e.g. (\"y\",); "
                       f"got {declared!r}")
    missing = [n for n in declared if not isinstance(data, Mapping) or n not in data]
    if missing:
        keys = ", ".join(map(str, data)) if isinstance(data, Mapping) else f"not a dict ({type(data).__name__})"
        raise CLIError(f"{program.path}: `conditions` names {', '.join(missing)}, which the data lacks (its keys: "
                       f"{keys})")
    return tuple(declared)


def condition(program: Program, data, values: Mapping[str, str]):
    """``data`` with each conditioning input named in ``values`` set to that value at every data point.

    A program declares its conditioning inputs as ``conditions = ("y", ...)``: keys of its dict of
    data that the model reads but does not observe (a class label, the top half of an image).
    A value is a number, or comma-separated numbers for a vector per data point; it is cast to
    the leaf's dtype and broadcast over the leaf's leading (data point) axis.

    Raises:
        CLIError: the program declares no conditions, a name it does not declare, or a value that
            is not a number or does not fit the leaf's shape (one line naming the conditions).

    Example:
        >>> import types, jax.numpy as jnp
        >>> program = Program("cvae.py", types.SimpleNamespace(conditions=("y",)), "")
        >>> data = {"x": jnp.zeros((3, 64)), "y": jnp.array([0, 1, 2])}
        >>> condition(program, data, {"y": "3"})["y"]
        Array([3, 3, 3], dtype=int32)
        >>> condition(program, data, {"label": "3"})
        Traceback (most recent call last):
        gendsl.cli._errors.CLIError: --cond label=3: cvae.py has no conditioning input 'label'; its conditions: y
    """
    declared = _declared_conditions(program, data)
    if values and not declared:
        raise CLIError(f"--cond {next(iter(values))}: {program.path} is not conditional (it declares no "
                       "`conditions`, the data keys its model is conditioned on)")
    out = dict(data) if values else data
    for name, text in values.items():
        if name not in declared:
            raise CLIError(f"--cond {name}={text}: {program.path} has no conditioning input {name!r}; its "
                           f"conditions: {', '.join(declared)}")
        leaf = jnp.asarray(data[name])
        try:
            value = np.array([float(v) for v in text.split(",")])
        except ValueError:
            raise CLIError(f"--cond {name}={text}: expected a number, or comma-separated numbers") from None
        per_point = leaf.shape[1:]
        if value.size not in (1, math.prod(per_point)):
            raise CLIError(f"--cond {name}={text}: {value.size} numbers, but {name} has {math.prod(per_point)} per "
                           f"data point (shape {per_point})")
        if jnp.issubdtype(leaf.dtype, jnp.integer) and not np.all(value == np.round(value)):
            raise CLIError(f"--cond {name}={text}: {name} holds integers ({leaf.dtype})")
        out[name] = jnp.broadcast_to(jnp.asarray(value.reshape(per_point if value.size > 1 else ()), leaf.dtype),
                                     leaf.shape)
    return out


# ----------------------------------------------------------------------------- model and guide


def find_models(program: Program, model_name: str | None, guide_name: str | None, example) -> tuple:
    """The program's model and guide: ``(model, guide, model_name, guide_name)``.

    ``guide`` may come back as the string ``"auto"`` (build it with
    ``auto_guide``). ``example`` is the data a model is called with to tell a
    model (it observes data) from a guide (it does not).

    Raises:
        CLIError: no candidate, several, or a named one that is missing or not a model.
    """
    path = program.path
    candidates = program.models()
    listing = ", ".join(f"`{n}`" for n in candidates) or "none"

    def named(name, role):
        if name == "auto" and role == "guide":
            return "auto"
        obj = program.get(name)
        if obj is None:
            raise CLIError(f"{path}: --{role} {name}: the program defines no `{name}` (its models: {listing})")
        if isinstance(obj, str) and role == "guide" and obj == "auto":
            return "auto"
        if not isinstance(obj, gendsl.Model):
            if callable(obj) and not isinstance(obj, type):
                return gendsl.model(obj)
            raise CLIError(f"{path}: `{name}` is a {type(obj).__name__}, not a @gendsl.model ({role})")
        return obj

    model = named(model_name, "model") if model_name else None
    guide = named(guide_name, "guide") if guide_name else None
    if model is None and program.get("model") is not None:
        model, model_name = named("model", "model"), "model"  # a plain (NumPyro) function is a model too
    if guide is None and program.get("guide") is not None:
        guide, guide_name = named("guide", "guide"), "guide"
    rest = {n: m for n, m in candidates.items() if m is not model and m is not guide}

    if model is None and guide is None:
        if len(rest) == 2:
            (a, ma), (b, mb) = rest.items()
            oa, ob = _observes(program, ma, a, example), _observes(program, mb, b, example)
            if oa != ob:
                (model_name, model), (guide_name, guide) = ((a, ma), (b, mb)) if oa else ((b, mb), (a, ma))
                return model, guide, model_name, guide_name
            raise CLIError(
                f"{path}: two models, `{a}` and `{b}`, and {'both' if oa else 'neither'} observe data, so "
                "which is the guide is ambiguous: name them `model` and `guide` (or pass --model NAME --guide NAME)"
            )
        if not rest:
            raise CLIError(
                f"{path}: no model: define `@gendsl.model def model(data): ...` and a guide "
                "`@gendsl.model def guide(data): ...` (or `guide = \"auto\"`)"
            )
        if len(rest) == 1:
            (name, _), = rest.items()
            raise CLIError(
                f"{path}: one model, `{name}`, and no guide: define `@gendsl.model def guide(data): ...` "
                "(or set `guide = \"auto\"` for a mean-field normal guide)"
            )
        raise CLIError(
            f"{path}: several candidate models ({listing}): name the model `model` and the guide `guide` "
            "(or pass --model NAME --guide NAME)"
        )
    if model is None:
        if len(rest) == 1:
            (model_name, model), = rest.items()
        else:
            which = "no other model" if not rest else f"several candidates ({', '.join(rest)})"
            raise CLIError(f"{path}: the guide is `{guide_name}` but there is {which}: name the model `model`")
    if guide is None:
        if len(rest) == 1:
            (guide_name, guide), = rest.items()
        elif not rest:
            raise CLIError(
                f"{path}: a model (`{model_name}`) but no guide: define `@gendsl.model def guide(data): ...` "
                "(or set `guide = \"auto\"` for a mean-field normal guide)"
            )
        else:
            raise CLIError(
                f"{path}: the model is `{model_name}` but several candidate guides ({', '.join(rest)}): "
                "name the guide `guide` (or pass --guide NAME)"
            )
    return model, guide, model_name, guide_name


def _observes(program: Program, m: gendsl.Model, name: str, example) -> bool:
    trace = program.call(f"in {name}(data)", jax.eval_shape, lambda x: m.simulate(jax.random.key(0), x), example)
    return bool(trace.observed)


# ----------------------------------------------------------------------------- program kinds


@dataclasses.dataclass
class Kind:
    """What a program trains (``docs/fit.md``, "Program kinds").

    Attributes:
        kind: ``"vi"`` (a model and a guide), ``"trainable"`` (a ``gendsl.models.Trainable``:
            its objective, initial parameters, sampler and metric) or ``"objective"`` (an
            ``Expectation`` alone).
        name: the program's name for the trainable or the objective (None for ``vi``).
        trainable: the Trainable object (``trainable`` kind).
        objective: the ``Expectation`` to maximize (``trainable`` and ``objective`` kinds).
        init: ``init(key, data) -> params``, or None to start from the objective's own
            ``init=`` / ``models=`` (``gendsl.inference.init_params``).
    """

    kind: str
    name: str | None = None
    trainable: Any = None
    objective: Any = None
    init: Callable | None = None


def _trainables(program: Program) -> dict:
    from gendsl.models import Trainable

    found, ids = {}, set()
    names = sorted(vars(program.module), key=lambda n: (n != "trainable", n))
    for name in names:
        obj = vars(program.module)[name]
        if name.startswith("_") or isinstance(obj, (type, ModuleType)) or id(obj) in ids:
            continue
        if isinstance(obj, Trainable):
            found[name] = obj
            ids.add(id(obj))
    return found


def find_kind(program: Program) -> Kind:
    """The program's kind: a Trainable, an objective alone, or a model and a guide.

    A top-level ``trainable`` (or the one top-level object that is a ``Trainable``) makes the
    program a ``trainable`` one; an ``objective`` that is an ``Expectation`` in a program
    without models is an ``objective`` one (its parameters start from the program's
    ``init_params(key, data)`` or the objective's own ``init=``); anything else is a model
    and a guide (``find_models``).

    Raises:
        CLIError: several Trainables, or a Trainable beside models: naming the candidates.
    """
    from gendsl.inference import Expectation
    from gendsl.inference import init_params as library_init

    path = program.path
    trainables = _trainables(program)
    models = program.models()
    listing = ", ".join(f"`{n}`" for n in trainables)
    if len(trainables) > 1 and "trainable" not in trainables:
        raise CLIError(f"{path}: several Trainable models ({listing}): keep one, or name the one to train "
                       "`trainable`")
    if trainables:
        name, obj = next(iter(trainables.items()))
        if models:
            others = ", ".join(f"`{n}`" for n in models)
            raise CLIError(f"{path}: both a Trainable ({listing}) and models ({others}): the program kind is "
                           "ambiguous; keep the Trainable or the model and guide, not both")
        init = program.get("init_params")
        if init is library_init:
            init = None
        if callable(init) and not isinstance(init, type) and init is not obj.init_params:
            raise CLIError(f"{path}: both a Trainable (`{name}`) and `init_params`: a Trainable starts from its own "
                           f"`{name}.init_params`; drop one")
        return Kind("trainable", name, obj, obj.objective, obj.init_params)
    objective = program.get("objective")
    if isinstance(objective, Expectation) and not models and program.get("model") is None:
        init = program.get("init_params")
        init = None if init is library_init else init
        if init is not None and (not callable(init) or isinstance(init, type)):
            raise CLIError(f"{path}: `init_params` must be a function init_params(key, data) -> params, got "
                           f"{type(init).__name__}")
        return Kind("objective", "objective", None, objective, init)
    return Kind("vi")
