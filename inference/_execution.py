"""The record of one execution of an objective, and the stack of executions in progress.

An objective ``F`` runs inside an ``Execution``: ``sim`` draws under its key, each latent
site's strategy writes what the estimator needs into it (score terms, branches to
re-execute, a site to enumerate exactly), and ``repeat`` opens one child execution per
particle. The estimator driver (``_estimator``) reads the record afterwards.

*Overrides* are how a re-execution is steered: element ``index`` of site ``address`` takes
``value`` instead of its draw. Every other site keeps its draw, because keys derive from
addresses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

import gendsl
from gendsl.internal import join

__all__ = ["Branches", "Execution", "Override", "active", "current", "innermost"]


@dataclasses.dataclass
class Override:
    """Element ``index`` of the site ``address`` replaced by ``value``.

    ``path`` holds the particle indices of enclosing ``repeat`` calls; the override applies
    in the particle the path names (``active`` tracks that).
    """

    address: str
    index: Any
    value: Any
    path: tuple = ()
    active: Any = True


@dataclasses.dataclass
class Branches:
    """A site's branches: re-execute with element ``index`` set to ``value``; ``carrier`` weighs it.

    The estimator adds ``sum_j carrier_j * stop_gradient(F_j)``, so the gradient of the
    carriers carries each branch's weight (see ``_reexecution``).
    """

    address: str
    index: Any
    value: Any
    carrier: Any
    path: tuple = ()


class Execution:
    """What one execution of an objective found at its sites.

    Attributes:
        key: the execution's key; ``sim`` draws under ``fold_in(key, hash(address))``.
        overrides: the ``Override``s of this re-execution (empty in the first run).
        prefix: the address of the enclosing ``repeat`` (children of a ``repeat``).
        exact_allowed: whether an unbatched ENUM site may be summed exactly (not inside
            ``repeat``, whose particles would each need their own sum).
        track: whether REINFORCE values are tagged for dependency tracking.
        scores: REINFORCE site address -> its log density (per element), for the score term.
        strategies: REINFORCE site address -> its strategy (static).
        site_group: site address -> the address of the ``repeat`` it was drawn in.
        group_baselines: ``repeat`` address -> per-particle baselines (``baselines``).
        branches: ``Branches`` of the sites differentiated by re-execution.
        exact: ``(address, support)`` of unbatched ENUM sites, summed exactly.
        enum_logq: log q of each overridden site at its overridden value.
        subsample_key: the key every subsampled plate of the objective draws its indices with
            (``gendsl.internal.shared_subsamples``): the root execution's key, shared by its
            ``repeat`` particles, so that guide, model and particles subsample alike.
    """

    def __init__(self, key, overrides, *, prefix: str = "", exact_allowed: bool = True, track: bool = False,
                 subsample_key=None):
        self.key = key
        self.subsample_key = key if subsample_key is None else subsample_key
        self.overrides = overrides
        self.prefix = prefix
        self.exact_allowed = exact_allowed
        self.track = track
        self.scores: dict[str, Any] = {}
        self.strategies: dict[str, Any] = {}
        self.site_group: dict[str, str] = {}
        self.group_baselines: dict[str, Any] = {}
        self.branches: list[Branches] = []
        self.exact: list[tuple[str, Any]] = []
        self.enum_logq: dict[str, Any] = {}
        self._count = 0

    def child_address(self, kind: str, name: str | None) -> str:
        """The address of a ``sim`` or ``repeat`` in this execution (``sim0``, ``sim1``... unnamed)."""
        if name is None:
            name = f"{kind}{self._count}"
            self._count += 1
        return join(self.prefix, name)

    def overrides_of(self, address: str) -> list[Override]:
        """The overrides of ``address`` in this execution (not those meant for a particle)."""
        return [o for o in self.overrides if o.address == address and not o.path]

    def add_score(self, address: str, log_prob: jax.Array, strategy) -> None:
        """Register a score-function site: its per-element ``log q`` and its strategy."""
        self.scores[address] = log_prob
        self.strategies[address] = strategy


_EXECUTIONS: list[Execution] = []


def innermost() -> Execution | None:
    """The innermost execution in progress, or None outside objectives."""
    return _EXECUTIONS[-1] if _EXECUTIONS else None


def current(what: str) -> Execution:
    """The innermost execution in progress; ``what`` names the caller in the error."""
    if not _EXECUTIONS:
        raise gendsl.GendslError(
            f"{what} draws random choices, so it must run inside an objective: wrap the function "
            "in gendsl.inference.expectation(f) and call .estimate(key, ...) or .grad(key, ...)"
        )
    return _EXECUTIONS[-1]


class active:
    """Context manager: ``execution`` is the current one inside the block (exception-safe)."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution

    def __enter__(self) -> Execution:
        _EXECUTIONS.append(self.execution)
        return self.execution

    def __exit__(self, *exc) -> None:
        _EXECUTIONS.remove(self.execution)
