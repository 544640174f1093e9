"""Gradient strategies: how the derivative of an expectation flows through one site.

A strategy is attached to a sample site with ``gendsl.sample(..., strategy=S)``
or from outside with ``gendsl.handlers.strategy(model, rules={"z*": S})``.
Strings are accepted as shorthand: ``"reparam"``, ``"reinforce"``, ``"enum"``,
``"mvd"``.

============  ==========================================================  ==========================
strategy      gradient                                                     sites
============  ==========================================================  ==========================
REPARAM       pathwise, through the sampled value (implicit               ``has_rsample`` (Normal,
              reparameterization for Gamma, Beta, Dirichlet)               Gamma, Beta, Dirichlet...)
REINFORCE     score function ``(f - b) ∇ log q`` with a baseline ``b``    any
ENUM          exact sum over the support for an unbatched site; for a     finite support
              batched site, the local expectation per element
MVD           measure-valued derivative (weak derivative pairs)           Bernoulli, Categorical,
                                                                           Normal, Poisson, Geometric
============  ==========================================================  ==========================

The default is REPARAM where the distribution supports it, otherwise
REINFORCE with an exponential-moving-average baseline.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from numpyro.distributions import Distribution

from gendsl import GendslError

__all__ = [
    "ENUM",
    "MVD",
    "REINFORCE",
    "REPARAM",
    "Enum",
    "EstimatorError",
    "MeasureValued",
    "Reinforce",
    "Reparam",
    "Strategy",
]


class EstimatorError(GendslError, ValueError):
    """A site's gradient cannot be estimated without bias with the chosen strategy."""


class Strategy:
    """Base class of gradient strategies."""


@dataclasses.dataclass(frozen=True)
class Reparam(Strategy):
    """Pathwise gradient through a reparameterized sample."""


@dataclasses.dataclass(frozen=True)
class Reinforce(Strategy):
    """Score-function gradient with a baseline.

    Args:
        baseline: ``None`` (no baseline); a number (a constant baseline);
            ``"ema"`` (exponential moving average of past objective values,
            carried in the SVI state; zero in a one-off estimate); or ``"loo"``
            (leave-one-out: the mean of the other replicates when the estimate
            averages ``samples > 1`` independent replicates). Every one of these
            is independent of the current sample, so the estimator stays unbiased.
            With dependency tracking, the baseline is per element of the site and
            is subtracted from the element's own cost: an EMA or LOO baseline is
            kept per element, a callable may return an array that broadcasts
            against the site's elements (e.g. one baseline per data point) and
            is fitted to the elements' costs.
        decay: the EMA decay.
        track_dependencies: pair the site's score only with the parts of the
            objective that depend on it (found from the program's jaxpr; see
            ``gendsl.inference._provenance``): per data point in a plate, per
            step and later steps in a loop. ``False`` pairs every element's
            score with the whole objective, which is also unbiased but has more
            variance (for comparison and debugging).

    Example:
        >>> from gendsl.inference import Reinforce
        >>> Reinforce(baseline="loo")
        Reinforce(baseline='loo', decay=0.9, track_dependencies=True)
    """

    baseline: Any = "ema"
    decay: float = 0.9
    track_dependencies: bool = True

    def __post_init__(self):
        b = self.baseline
        ok = b is None or callable(b) or isinstance(b, (int, float)) or b in ("ema", "loo")
        if not ok:
            raise ValueError(
                f"Reinforce: baseline must be None, a number, 'ema', 'loo' or a callable "
                f"(params, *args) -> scalar, got {b!r}"
            )
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"Reinforce: decay must be in [0, 1), got {self.decay}")
        if not isinstance(self.track_dependencies, bool):
            raise ValueError(f"Reinforce: track_dependencies must be True or False, got {self.track_dependencies!r}")


@dataclasses.dataclass(frozen=True)
class Enum(Strategy):
    """Enumerate a finite-support site (exact sum, or local expectation when batched)."""


@dataclasses.dataclass(frozen=True)
class MeasureValued(Strategy):
    """Measure-valued derivative (weak derivative decomposition) of the site."""


REPARAM = Reparam()
REINFORCE = Reinforce()
ENUM = Enum()
MVD = MeasureValued()

_NAMES = {"reparam": REPARAM, "reinforce": REINFORCE, "enum": ENUM, "mvd": MVD}


def resolve(strategy: Any, fn: Distribution, address: str) -> Strategy:
    """The strategy to use at ``address``, checked against its distribution."""
    if strategy is None:
        return REPARAM if fn.has_rsample else REINFORCE
    if isinstance(strategy, str):
        if strategy.lower() not in _NAMES:
            raise EstimatorError(
                f"site '{address}': unknown strategy {strategy!r}; use one of {sorted(_NAMES)} "
                "or a gendsl.inference strategy object"
            )
        strategy = _NAMES[strategy.lower()]
    if not isinstance(strategy, Strategy):
        raise EstimatorError(
            f"site '{address}': expected a gradient strategy (REPARAM, REINFORCE, ENUM, MVD), "
            f"got {strategy!r}"
        )
    if isinstance(strategy, Reparam) and not fn.has_rsample:
        raise EstimatorError(
            f"site '{address}': REPARAM needs a reparameterizable distribution, but "
            f"{type(fn).__name__} has none; use strategy=ENUM (finite support), MVD or REINFORCE"
        )
    if isinstance(strategy, Enum) and not fn.has_enumerate_support:
        raise EstimatorError(
            f"site '{address}': ENUM needs a finite support, {type(fn).__name__} has none; "
            "use REINFORCE or MVD"
        )
    return strategy
