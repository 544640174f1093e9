"""From resolved options to the library objects that train: objective, strategies, optimizer.

The command line's vocabulary maps onto ``gendsl.inference``: objective names onto the
objectives library, ``--strategy`` rules onto ``gendsl.handlers.strategy``, optimizer names
onto optax. ``--particles`` means importance samples for the multi-particle bounds and
independent replicates (``SVI(samples=K)``) for the ELBO.

Per-data-point objectives: ``iwelbo(model, guide, K)`` on a minibatch is the bound of the
*whole minibatch* with ``K`` joint particles, close to the ELBO for a large batch; the IWAE
paper's objective sums each data point's own bound. With ``per_point``, ``iwelbo``,
``iwelbo-dreg``, ``renyi`` and ``rws`` use the library's per-point forms (``plate=``, the plate
found by ``gendsl.inference.common_plate``); ``vimco`` and a program's own objective run
under ``SVI(per_point=True)``, which applies the objective to each data point and sums.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import optax

import gendsl
from gendsl.cli._errors import CLIError
from gendsl.inference import (
    AUTO,
    ENUM,
    MVD,
    REPARAM,
    Expectation,
    Reinforce,
    Strategy,
    common_plate,
    elbo,
    iwelbo,
    renyi,
    rws,
    vimco,
)

__all__ = ["OBJECTIVES", "Built", "build_objective", "strategy_rules", "build_optimizer", "parse_strategy"]

OBJECTIVES = ("elbo", "elbo-stl", "iwelbo", "iwelbo-dreg", "vimco", "renyi", "rws")
MULTI_PARTICLE = ("iwelbo", "iwelbo-dreg", "vimco", "renyi", "rws")
PER_POINT_FORMS = ("iwelbo", "iwelbo-dreg", "renyi", "rws")


@dataclasses.dataclass
class Built:
    """The objective and how SVI runs it.

    Attributes:
        objective: the ``Expectation`` to maximize.
        name: the objective's name (for config.json and messages).
        particles: K (None for a program-built objective that does not take it).
        samples: independent replicates per step (``SVI(samples=...)``).
        per_point: whether the objective is the sum of per-data-point objectives.
        svi_per_point: whether SVI applies the objective point by point (``SVI(per_point=True)``),
            for objectives without a batched per-point form.
    """

    objective: Expectation
    name: str
    particles: int | None
    samples: int
    per_point: bool = False
    svi_per_point: bool = False


def build_objective(name: str, model, guide, particles: int | None, alpha: float, program,
                    per_point: bool = False, example=None) -> Built:
    """The objective ``name`` (a library name, or ``"program"`` for the program's own ``objective``).

    With ``per_point``, a multi-particle objective is summed over data points (the library's
    ``plate=`` forms, on the plate that holds every site of ``model`` and ``guide`` run on
    ``example``), and a program's objective is applied to each point; the ELBO is such a sum
    already.

    Raises:
        CLIError: unknown name, invalid particles, a program objective that does not build an
            ``Expectation``, or no single plate for a per-point bound.
    """
    if name == "program":
        spec = program.get("objective")
        if spec is None:
            raise CLIError(f"{program.path}: --objective program: the program defines no `objective`")
        if isinstance(spec, str):
            return build_objective(spec.lower(), model, guide, particles, alpha, program, per_point, example)
        if isinstance(spec, Expectation):
            return Built(spec, "program", None, 1, per_point, per_point)
        if not callable(spec):
            raise CLIError(f"{program.path}: `objective` must be a name, a factory or an Expectation, "
                           f"got {type(spec).__name__}")
        kwargs = {"particles": particles} if particles is not None and _accepts(spec, "particles") else {}
        built = program.call("in objective(model, guide)", spec, model, guide, **kwargs)
        if not isinstance(built, Expectation):
            raise CLIError(
                f"{program.path}: objective(model, guide) returned a {type(built).__name__}; return a "
                "gendsl.inference objective (elbo(...), iwelbo(...), expectation(f, models=(model, guide)))"
            )
        return Built(built, "program", kwargs.get("particles"), 1, per_point, per_point)
    if name not in OBJECTIVES:
        raise CLIError(
            f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)} (or define `objective` in the "
            "program and pass --objective program)"
        )
    k = particles if particles is not None else (1 if name.startswith("elbo") else 5)
    if name == "vimco" and k < 2:
        raise CLIError("--objective vimco needs --particles 2 or more (its baselines leave one particle out)")
    if name == "renyi" and alpha == 1.0:
        raise CLIError("--alpha 1 makes renyi the ELBO; use --objective elbo")
    plate = None
    if per_point and name in PER_POINT_FORMS:
        try:
            plate = program.call("while finding the data plate", common_plate, model, guide, example)
        except gendsl.AddressError as exc:
            raise CLIError(f"--per-point: {exc} (or pass --per-point off)") from exc
    try:
        objective = {
            "elbo": lambda: elbo(model, guide),
            "elbo-stl": lambda: elbo(model, guide, estimator="stl"),
            "iwelbo": lambda: iwelbo(model, guide, k, plate=plate),
            "iwelbo-dreg": lambda: iwelbo(model, guide, k, estimator="dreg", plate=plate),
            "vimco": lambda: vimco(model, guide, k),
            "renyi": lambda: renyi(model, guide, alpha, k, plate=plate),
            "rws": lambda: rws(model, guide, k, plate=plate),
        }[name]()
    except ValueError as exc:
        raise CLIError(f"--objective {name}: {exc}") from exc
    samples = k if name.startswith("elbo") else 1
    multi = per_point and name in MULTI_PARTICLE
    return Built(objective, name, k, samples, multi, multi and plate is None)


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# ----------------------------------------------------------------------------- strategies

_SIMPLE = {"reparam": REPARAM, "enum": ENUM, "mvd": MVD, "auto": AUTO}


def parse_strategy(text: str) -> Strategy:
    """``reparam``, ``enum``, ``mvd``, ``auto`` or ``reinforce[:<ema|loo|none|number>][:notrack]`` as a strategy.

    ``notrack`` turns dependency tracking off (each score paired with the whole objective).
    ``auto`` is ``gendsl.inference.AUTO``: ``SVI.init`` measures the admissible strategies'
    gradient variance x time at the site and keeps the best (``svi.strategy_choice``).
    """
    t = text.strip().lower()
    if t in _SIMPLE:
        return _SIMPLE[t]
    head, *rest = t.split(":")
    track = "notrack" not in rest
    rest = [r for r in rest if r != "notrack"]
    if head == "reinforce" and len(rest) <= 1:
        baseline = rest[0] if rest else "ema"
        if baseline in ("ema", "loo"):
            return Reinforce(baseline=baseline, track_dependencies=track)
        if baseline == "none":
            return Reinforce(baseline=None, track_dependencies=track)
        try:
            return Reinforce(baseline=float(baseline), track_dependencies=track)
        except ValueError:
            pass
    raise CLIError(
        f"unknown strategy {text!r}; use reparam, enum, mvd, auto, reinforce, reinforce:loo, reinforce:none, "
        "reinforce:<constant>, each reinforce form optionally ending in :notrack (no dependency tracking)"
    )


def parse_rules(rules: list[str]) -> list[tuple[str | None, Strategy]]:
    """Command-line rules ``NAME`` / ``PATTERN=NAME`` as ``(pattern or None, strategy)`` pairs."""
    out = []
    for rule in rules:
        pattern, sep, name = rule.rpartition("=")
        strategy = parse_strategy(name)
        if not sep:
            if strategy is REPARAM:
                raise CLIError("--strategy reparam without a pattern would apply to sites that cannot be "
                               "reparameterized; write PATTERN=reparam")
            out.append((None, strategy))
        else:
            if not pattern:
                raise CLIError(f"--strategy {rule!r}: empty site pattern; write PATTERN=NAME, e.g. z=enum")
            out.append((pattern, strategy))
    return out


def program_rules(program) -> list[tuple[str | None, Any]]:
    """The program's ``strategies = {pattern: strategy}`` as rules."""
    spec = program.get("strategies")
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise CLIError(f"{program.path}: `strategies` must be a dict {{address pattern: strategy}}, "
                       f"got {type(spec).__name__}")
    out = []
    for pattern, strategy in spec.items():
        if isinstance(strategy, str):
            strategy = parse_strategy(strategy)
        if not isinstance(pattern, str) or not isinstance(strategy, Strategy):
            raise CLIError(f"{program.path}: strategies[{pattern!r}] = {strategy!r}: expected an address "
                           "pattern mapped to a strategy (REPARAM, ENUM, MVD, AUTO, Reinforce(...) or their names)")
        out.append((pattern, strategy))
    return out


def strategy_rules(program_rules, command_rules) -> dict:
    """One ``gendsl.handlers.strategy`` rule table from the program's and the command line's rules.

    The handler applies an exact address first, then the first matching pattern, then the
    ``None`` rule (sites that cannot be reparameterized). The table lists the command line's
    rules first, latest first, then the program's: so command-line rules win over the
    program's, and a later ``--strategy`` over an earlier one.
    """
    table: dict = {}
    for pattern, strategy in [*reversed(command_rules), *program_rules]:
        table.setdefault(pattern, strategy)
    return table


def describe_rules(rules) -> list[str]:
    """Rules as strings, for config.json."""
    return [f"{'<non-reparameterizable>' if p is None else p}={s!r}" for p, s in rules]


def build_optimizer(name: str, lr: float, schedule: str, steps: int, clip: float | None, warmup: int | None = None):
    """The optax transformation for the options.

    ``warmup`` steps raise the learning rate linearly from 0 to ``lr``; the schedule (constant,
    or cosine decay to 0 at ``steps``) follows.

    Raises:
        CLIError: a warm-up as long as the run.
    """
    warmup = warmup or 0
    if warmup and warmup >= steps:
        raise CLIError(f"--warmup {warmup}: the warm-up must be shorter than the run (--steps {steps}); "
                       "lower --warmup or raise --steps")
    if schedule == "constant":
        rate = lr if not warmup else optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    else:
        rate = (optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps) if warmup
                else optax.cosine_decay_schedule(lr, steps))
    make = {
        "adam": optax.adam,
        "adamw": optax.adamw,
        "sgd": optax.sgd,
        "momentum": lambda r: optax.sgd(r, momentum=0.9),
        "rmsprop": optax.rmsprop,
        "adagrad": optax.adagrad,
        "adabelief": optax.adabelief,
    }[name]
    optimizer = make(rate)
    return optax.chain(optax.clip_by_global_norm(clip), optimizer) if clip else optimizer
