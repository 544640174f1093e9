"""From resolved options to the objects that train: objective, strategies, optimizer, step.

The objective names map onto ``gendsl.inference``'s library (``rws`` combines
``p_wake`` and ``q_wake``). ``--particles`` means importance samples for the
multi-particle bounds and independent replicates (``SVI(samples=K)``) for the ELBO.

Per-data-point objectives: ``iwelbo(model, guide, K)`` called on a minibatch is
the bound of the *whole minibatch* with ``K`` joint particles, which is close to
the ELBO for a large batch. The IWAE paper's objective is the sum over data
points of each point's own bound. With ``per_point``, ``iwelbo``,
``iwelbo-dreg``, ``renyi`` and ``rws`` use their batched per-point forms
(``_per_point``); ``vimco`` and a program's own objective are applied to each
point by ``make_step``, which ``jax.vmap``s the gradient estimator over the
points (every point with its own key; EMA baselines shared) and sums.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import optax
from numpyro.primitives import Messenger

import gendsl
from gendsl.cli._errors import CLIError
from gendsl.cli._per_point import PER_POINT, per_point_objective
from gendsl.inference import (
    ENUM,
    MVD,
    REPARAM,
    SVI,
    Expectation,
    Reinforce,
    Strategy,
    SVIState,
    elbo,
    expectation,
    iwelbo,
    renyi,
    rws,
    vimco,
)

__all__ = ["OBJECTIVES", "Built", "build_objective", "apply_strategies", "build_optimizer", "make_step", "rws"]

sg = jax.lax.stop_gradient

OBJECTIVES = ("elbo", "elbo-stl", "iwelbo", "iwelbo-dreg", "vimco", "renyi", "rws")
MULTI_PARTICLE = ("iwelbo", "iwelbo-dreg", "vimco", "renyi", "rws")


@dataclasses.dataclass
class Built:
    """The objective and how SVI runs it.

    Attributes:
        objective: the ``Expectation`` to maximize.
        name: the objective's name (for config.json and messages).
        particles: K (None for a program-built objective that does not take it).
        samples: independent replicates per step (``SVI(samples=...)``).
        per_point: whether the objective is the sum of per-data-point objectives.
        vmap_points: whether the step gets there by a ``jax.vmap`` over points
            (objectives without a batched per-point form).
    """

    objective: Expectation
    name: str
    particles: int | None
    samples: int
    per_point: bool = False
    vmap_points: bool = False


def build_objective(name: str, model, guide, particles: int | None, alpha: float, program,
                    per_point: bool = False) -> Built:
    """The objective ``name`` (a library name, or ``"program"`` for the program's own ``objective``).

    With ``per_point``, a multi-particle objective is summed over data points
    (``_per_point``), and a program's objective is applied to each point (by
    ``jax.vmap``); the ELBO is such a sum already.

    Raises:
        CLIError: unknown name, invalid particles, or a program objective that
            does not build an ``Expectation``.
    """
    if name == "program":
        spec = program.get("objective")
        if spec is None:
            raise CLIError(f"{program.path}: --objective program: the program defines no `objective`")
        if isinstance(spec, str):
            return build_objective(spec.lower(), model, guide, particles, alpha, program, per_point)
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
    if per_point and name in PER_POINT:
        return Built(per_point_objective(name, model, guide, k, alpha), name, k, 1, True, False)
    try:
        objective = {
            "elbo": lambda: elbo(model, guide),
            "elbo-stl": lambda: elbo(model, guide, estimator="stl"),
            "iwelbo": lambda: iwelbo(model, guide, k),
            "iwelbo-dreg": lambda: iwelbo(model, guide, k, estimator="dreg"),
            "vimco": lambda: vimco(model, guide, k),
            "renyi": lambda: renyi(model, guide, alpha, k),
            "rws": lambda: rws(model, guide, k),
        }[name]()
    except ValueError as exc:
        raise CLIError(f"--objective {name}: {exc}") from exc
    samples = k if name.startswith("elbo") else 1
    multi = name in MULTI_PARTICLE
    return Built(objective, name, k, samples, per_point and multi, per_point and multi)


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# ----------------------------------------------------------------------------- strategies

_SIMPLE = {"reparam": REPARAM, "enum": ENUM, "mvd": MVD}


def parse_strategy(text: str) -> Strategy:
    """``reparam``, ``enum``, ``mvd`` or ``reinforce[:<ema|loo|none|number>][:notrack]`` as a strategy.

    ``notrack`` turns dependency tracking off (each score paired with the whole objective).
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
        f"unknown strategy {text!r}; use reparam, enum, mvd, reinforce, reinforce:loo, reinforce:none, "
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
                           "pattern mapped to a strategy (REPARAM, ENUM, MVD, Reinforce(...) or their names)")
        out.append((pattern, strategy))
    return out


class _Strategies(Messenger):
    """Sets ``infer["strategy"]`` of guide sites; the last matching rule wins.

    A rule without a pattern applies to every site whose distribution cannot be
    reparameterized (discrete sites, for instance).
    """

    def __init__(self, fn, rules):
        self.rules = rules
        super().__init__(fn)

    def process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        chosen = None
        for pattern, strategy in self.rules:
            if (pattern is None and not msg["fn"].has_rsample) or (
                pattern is not None and fnmatch.fnmatchcase(msg["name"], pattern)
            ):
                chosen = strategy
        if chosen is not None:
            msg["infer"] = {**(msg.get("infer") or {}), "strategy": chosen}


def apply_strategies(guide: gendsl.Model, rules) -> gendsl.Model:
    """``guide`` with the strategy ``rules`` applied (unchanged when there are none)."""
    return gendsl.model(_Strategies(guide.fn, rules)) if rules else guide


def describe_rules(rules) -> list[str]:
    """Rules as strings, for config.json."""
    return [f"{'<non-reparameterizable>' if p is None else p}={s!r}" for p, s in rules]


# ----------------------------------------------------------------------------- optimizer and step


def build_optimizer(name: str, lr: float, schedule: str, steps: int, clip: float | None):
    """The optax transformation for the options."""
    rate = lr if schedule == "constant" else optax.cosine_decay_schedule(lr, steps)
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


def make_step(svi: SVI, per_point: bool):
    """A pure ``step(state, data) -> (state, info)``: ``svi.step``, or its per-data-point form."""
    if not per_point:
        return svi.step
    objective = svi.objective

    def in_unconstrained(u, *args, **kwargs):
        return objective.fn(svi.constrain(u), *args, **kwargs)

    objective_u = expectation(in_unconstrained)

    def step(state: SVIState, data) -> tuple[SVIState, dict]:
        key, sub = jax.random.split(state.key)
        n = jax.tree_util.tree_leaves(data)[0].shape[0]

        def one(k, point):
            single = jax.tree_util.tree_map(lambda a: a[None], point)
            return objective_u.value_and_grad_with_baselines(
                k, state.params, single, baselines=state.baselines, samples=svi.samples
            )

        values, grads, baselines = jax.vmap(one)(jax.random.split(sub, n), data)
        value = jnp.sum(values)
        grads = jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0), grads)
        baselines = jax.tree_util.tree_map(lambda b: jnp.mean(b, axis=0), baselines)
        neg = jax.tree_util.tree_map(jnp.negative, grads)  # optax minimizes
        updates, opt_state = svi.optimizer.update(neg, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        leaves = [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]
        finite = jnp.isfinite(value) & jnp.all(jnp.stack(leaves)) if leaves else jnp.isfinite(value)
        new = SVIState(params, opt_state, baselines, key, state.step + 1)
        kept = SVIState(state.params, state.opt_state, state.baselines, key, state.step)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, kept)
        return new, {"objective": value, "finite": finite}

    return step
