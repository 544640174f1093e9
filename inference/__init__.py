"""Programmable variational inference for gendsl models (installed as ``gendsl.inference``).

Objectives are programs built from ``sim``, ``density``, ``repeat`` and
``expectation``; each random choice carries a gradient strategy (``REPARAM``,
``REINFORCE``, ``ENUM``, ``MVD``) and the estimator is derived from them.
"""

from gendsl.inference._expectation import Expectation, density, expectation, repeat, sim
from gendsl.inference._objectives import elbo, iwelbo
from gendsl.inference._strategies import (
    ENUM,
    MVD,
    REINFORCE,
    REPARAM,
    Enum,
    EstimatorError,
    MeasureValued,
    Reinforce,
    Reparam,
    Strategy,
)
from gendsl.inference._svi import SVI, NonFiniteError, SVIRunResult, SVIState

__all__ = [
    "SVI",
    "NonFiniteError",
    "SVIRunResult",
    "SVIState",
    "ENUM",
    "MVD",
    "REINFORCE",
    "REPARAM",
    "Enum",
    "EstimatorError",
    "Expectation",
    "MeasureValued",
    "Reinforce",
    "Reparam",
    "Strategy",
    "density",
    "elbo",
    "iwelbo",
    "expectation",
    "repeat",
    "sim",
]
