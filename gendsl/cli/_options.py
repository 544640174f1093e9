"""Command-line options: their types, defaults, and how a program's ``defaults`` merge in.

Precedence: an option given on the command line, then the program's
``defaults = {...}``, then the built-in default below. Every value, whichever
its source (the command line, ``defaults``, or a run's ``config.json`` read back
by ``--resume``, ``eval`` and ``sample``), passes through the same ``check``:
a bad value is one line naming where it came from and the option, exit code 2.
Values in messages are shown as the user wrote them (``nan``, not ``np.float32(nan)``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from gendsl.cli._errors import CLIError

__all__ = ["Option", "FIT_OPTIONS", "OPTIMIZERS", "merge", "add_options", "check", "check_all", "show"]

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "rmsprop", "adagrad", "adabelief")
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "gpu")
METHODS = ("vi", "nuts")
CHAIN_METHODS = ("vectorized", "sequential", "parallel")


def show(value) -> str:
    """``value`` as a message shows it: strings quoted, NumPy scalars as plain numbers."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        with contextlib.suppress(Exception):
            value = value.item()  # np.float32(nan) -> nan
    if isinstance(value, float):
        return format(value, "g")
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def positive_int(value) -> int:
    """An int >= 1 (from an int or a string)."""
    number = _int(value)
    if number < 1:
        raise ValueError(f"expected a positive integer, got {show(value)}")
    return number


def natural_int(value) -> int:
    """An int >= 0."""
    number = _int(value)
    if number < 0:
        raise ValueError(f"expected a non-negative integer, got {show(value)}")
    return number


def _int(value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {show(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).replace("_", ""))
    except ValueError:
        raise ValueError(f"expected an integer, got {show(value)}") from None


def positive_float(value) -> float:
    """A finite float > 0."""
    number = _float(value)
    if not number > 0 or not math.isfinite(number):
        raise ValueError(f"expected a positive finite number, got {show(value)}")
    return number


def nonnegative_float(value) -> float:
    """A finite float >= 0."""
    number = _float(value)
    if not number >= 0 or not math.isfinite(number):
        raise ValueError(f"expected a non-negative finite number, got {show(value)}")
    return number


def open_unit(value) -> float:
    """A float strictly between 0 and 1."""
    number = _float(value)
    if not 0.0 < number < 1.0:
        raise ValueError(f"expected a number between 0 and 1 (exclusive), got {show(value)}")
    return number


def _float(value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {show(value)}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {show(value)}") from None


def real(value) -> float:
    """A finite float."""
    number = _float(value)
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {show(value)}")
    return number


def optional(check: Callable) -> Callable:
    """``check``, or None for ``None`` / ``"none"``."""

    def run(value):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "full", "")):
            return None
        return check(value)

    run.__name__ = check.__name__
    return run


def device_count(value) -> int | str:
    """A positive int (devices of a data mesh) or ``"all"``."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    try:
        return positive_int(value)
    except ValueError:
        raise ValueError(f"expected a positive number of devices or 'all', got {show(value)}") from None


def seed_list(value) -> list[int]:
    """Seeds ``A:B`` (``A`` up to ``B - 1``, as Python's ``range``) or ``a,b,c``: distinct non-negative ints."""
    if isinstance(value, (list, tuple)):
        seeds = [natural_int(v) for v in value]
    else:
        text = str(value).strip()
        try:
            if ":" in text:
                start, stop = (int(t) for t in text.split(":"))
                seeds = list(range(start, stop))
            else:
                seeds = [int(t) for t in text.split(",")]
        except ValueError:
            raise ValueError(f"expected seeds as A:B (e.g. 0:8) or a,b,c, got {show(value)}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"expected at least one seed, all distinct and non-negative, got {show(value)}")
    return seeds


def one_of(*names: str) -> Callable:
    """A string among ``names`` (case-insensitive)."""

    def run(value):
        text = str(value).lower()
        if text not in names:
            raise ValueError(f"expected one of {', '.join(names)}; got {show(value)}")
        return text

    return run


def boolean(value) -> bool:
    """True or False (also from ``"true"``/``"false"``, ``"yes"``/``"no"``, ``1``/``0``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ValueError(f"expected true or false, got {show(value)}")


def text(value) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {show(value)}")
    return value


def strategy_list(value) -> list[str]:
    """A list of strategy rules (``NAME`` or ``PATTERN=NAME``); syntax is checked where they are built."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"expected a strategy rule such as 'enum' or 'z=reinforce', or a list of them; got {show(value)}")


@dataclasses.dataclass(frozen=True)
class Option:
    """One ``gendsl fit`` option."""

    name: str
    check: Callable
    default: Any
    help: str
    metavar: str | None = None
    flag: bool = False  # a switch on the command line (``--stop-on-divergence``), a boolean elsewhere


FIT_OPTIONS = (
    Option("method", one_of(*METHODS), "vi",
           "vi: train the guide by stochastic variational inference (default); nuts: sample the model's posterior "
           "with NumPyro's NUTS (no guide; for models small enough for MCMC)", "vi|nuts"),
    Option("objective", optional(text), None,
           "objective to maximize: elbo, elbo-stl, iwelbo, iwelbo-dreg, vimco, renyi, rws, or 'program' for the "
           "program's own `objective` (the default when the program defines one; otherwise elbo)", "NAME"),
    Option("particles", optional(positive_int), None,
           "particles K: importance samples for iwelbo/iwelbo-dreg/vimco/renyi/rws (default 5), or independent "
           "replicates averaged per step for elbo/elbo-stl (default 1)", "K"),
    Option("alpha", real, 0.5, "alpha of the renyi objective (default 0.5)", "A"),
    Option("strategy", strategy_list, [],
           "gradient strategy rule for guide sites, repeatable: NAME applies to every site that cannot be "
           "reparameterized, PATTERN=NAME to the sites matching the fnmatch pattern; NAME is reparam, enum, mvd, "
           "reinforce (EMA baseline), reinforce:loo, reinforce:none or reinforce:<constant>, or auto (measure the "
           "admissible ones' gradient variance x time at the start and keep the best; recorded in config.json); "
           "append :notrack to pair REINFORCE scores with the whole objective (no dependency tracking)", "RULE"),
    Option("steps", positive_int, 1000,
           "total optimization steps; with --resume, the total to reach, not steps to add (fewer than the run has "
           "done is an error) (default 1000)", "N"),
    Option("batch_size", optional(positive_int), None,
           "minibatch size: each step sees B random data points of the training data (default: all of it)", "B"),
    Option("lr", positive_float, 1e-3, "learning rate (default 1e-3)", "LR"),
    Option("optimizer", one_of(*OPTIMIZERS), "adam", f"optax optimizer: {', '.join(OPTIMIZERS)} (default adam)",
           "NAME"),
    Option("schedule", one_of(*SCHEDULES), "constant",
           "learning-rate schedule: constant, or cosine decay to 0 over --steps (default constant)", "NAME"),
    Option("clip", optional(positive_float), None, "clip gradients to this global norm (default: no clipping)",
           "NORM"),
    Option("ema", optional(open_unit), None,
           "keep an exponential moving average of the parameters with this decay (e.g. 0.999); eval and sample "
           "use the EMA weights (ema_params.npz) by default (default: none)", "DECAY"),
    Option("warmup", optional(natural_int), None,
           "--method vi: linear learning-rate warm-up from 0 over the first N steps (default 0); --method nuts: "
           "warm-up (adaptation) iterations per chain (default 1000)", "N"),
    Option("validate_every", optional(positive_int), None,
           "evaluate the objective on the held-out split every K steps and keep the best state (needs data() to "
           "return (train, test)) (default: never)", "K"),
    Option("patience", optional(positive_int), None,
           "with --validate-every: stop after M validations without improvement and restore the best state "
           "(default: never stop early)", "M"),
    Option("seed", natural_int, 0, "random seed (default 0)", "S"),
    Option("seeds", optional(seed_list), None,
           "independent fits, one per seed, trained together as one compiled program: A:B (seeds A..B-1) or "
           "a,b,c; writes OUT/seed<k>/ for each (each a run folder, resumable on its own) and OUT/seeds.png "
           "comparing their curves (default: one fit, --seed)", "A:B"),
    Option("chunk_size", positive_int, 100,
           "steps per compiled call; the progress bar, metrics and the non-finite check update once per chunk "
           "(default 100)", "N"),
    Option("checkpoint_every", positive_int, 1000,
           "write a checkpoint (and evaluate the held-out ELBO) every N steps (default 1000)", "N"),
    Option("per_point", one_of("auto", "on", "off"), "auto",
           "evaluate multi-particle objectives (iwelbo, vimco, renyi, rws) per data point and sum, as in the IWAE "
           "paper: auto means on with --batch-size (default auto)", "auto|on|off"),
    Option("posterior_draws", positive_int, 1000, "guide draws in posterior.nc (default 1000, fewer for large "
           "latents)", "N"),
    Option("posterior_points", positive_int, 100,
           "with --batch-size, posterior.nc covers the first N training points (default 100)", "N"),
    Option("data", optional(text), None, "path passed to the program's data(path) (default: none)", "PATH"),
    Option("model", optional(text), None, "name of the model in the program (default: `model`)", "NAME"),
    Option("guide", optional(text), None,
           "name of the guide in the program, or 'auto' for a mean-field normal guide (default: `guide`)", "NAME"),
    Option("stop_on_divergence", boolean, False,
           "stop training (exit code 1, keeping the last good checkpoint) at the first checkpoint where the held-out "
           "ELBO or the training objective has worsened by more than 100 times its starting magnitude; without it, "
           "that is a warning in the output and summary.txt", flag=True),
    Option("chains", positive_int, 4, "--method nuts: independent chains (default 4; at least 2 for R-hat)", "C"),
    Option("draws", positive_int, 1000, "--method nuts: draws kept per chain after warm-up (default 1000)", "N"),
    Option("target_accept", open_unit, 0.8,
           "--method nuts: target acceptance probability of the step-size adaptation, in (0, 1); raise it (0.9, "
           "0.95) when there are divergences (default 0.8)", "P"),
    Option("chain_method", one_of(*CHAIN_METHODS), "vectorized",
           "--method nuts: vectorized runs all chains in one compiled program (default; one device), sequential "
           "one after another, parallel one device per chain", "NAME"),
    Option("device", one_of(*DEVICES), "auto", "run on cpu or gpu (default: JAX's default device)", "cpu|gpu"),
    Option("devices", optional(device_count), None,
           "data parallelism: split each minibatch over N devices of a 1-D mesh (or 'all'); the batch must be a "
           "multiple of N; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N host devices "
           "(default: one device)", "N|all"),
    Option("out", optional(text), None, "output directory (default: runs/<program name>)", "DIR"),
)

BY_NAME = {o.name: o for o in FIT_OPTIONS}


def add_options(parser: argparse.ArgumentParser, options=FIT_OPTIONS) -> None:
    """Add ``options`` to ``parser``; every one defaults to None so that given values are recognizable."""
    for option in options:
        flag = "--" + option.name.replace("_", "-")
        if option.name == "strategy":
            parser.add_argument(flag, action="append", default=None, help=option.help, metavar=option.metavar)
        elif option.flag:
            parser.add_argument(flag, action="store_const", const=True, default=None, help=option.help)
        else:
            parser.add_argument(flag, default=None, help=option.help, metavar=option.metavar)


def check(name: str, value: Any, where: str) -> Any:
    """``value`` converted by option ``name``'s check; a bad value is a one-line ``CLIError`` naming ``where``."""
    try:
        return BY_NAME[name].check(value)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{where}: {exc}") from None


def check_all(values: Mapping[str, Any], where: Callable[[str], str], *, remedy: str = "") -> dict[str, Any]:
    """Every option of ``values`` checked: the one path for ``defaults`` and ``config.json``.

    Args:
        values: ``{option: value}``; keys may use ``-`` or ``_``.
        where: the place of an option in messages, e.g. ``lambda n: f"prog.py: defaults[{n!r}]"``.
        remedy: appended to the messages (what to do instead).

    Raises:
        CLIError: an unknown option, or a value that fails its check.
    """
    if not isinstance(values, Mapping):
        raise CLIError(f"{where('')}: expected a dict of option values, got {type(values).__name__}{remedy}")
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in BY_NAME:
            known = ", ".join(sorted(BY_NAME))
            raise CLIError(f"{where(str(key))}: unknown option; the options are {known}{remedy}")
        try:
            out[name] = BY_NAME[name].check(value)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"{where(str(key))}: {exc}{remedy}") from None
    return out


def merge(given: Mapping[str, Any], defaults: Mapping[str, Any], program_path: str) -> dict[str, Any]:
    """The resolved options: given (command line) over the program's ``defaults`` over the built-in defaults.

    Raises:
        CLIError: an unknown key in ``defaults``, or a value that fails its check.
    """
    from_program = check_all(defaults, lambda n: f"{program_path}: defaults[{n!r}]" if n else f"{program_path}: "
                             "defaults")
    resolved = {}
    for option in FIT_OPTIONS:
        if given.get(option.name) is not None:
            flag = "--" + option.name.replace("_", "-")
            resolved[option.name] = check(option.name, given[option.name], f"argument {flag}")
        elif option.name in from_program:
            resolved[option.name] = from_program[option.name]
        else:
            resolved[option.name] = option.default
    if resolved["out"] is None:
        stem = os.path.splitext(os.path.basename(program_path))[0]
        resolved["out"] = os.path.join("runs", stem)
    return resolved


def from_config(saved: Any, config_path: str, remedy: str) -> dict[str, Any]:
    """A run's options read back from its ``config.json``, checked like any other source.

    Options the file lacks (written before they existed) take their built-in default.

    Raises:
        CLIError: an unknown option or a bad value, naming the file and the option.
    """
    where = lambda n: f"{config_path}: options[{n!r}]" if n else f"{config_path}: options"  # noqa: E731
    checked = check_all(saved, where, remedy=f" ({remedy})")
    return {o.name: checked.get(o.name, o.default) for o in FIT_OPTIONS}
