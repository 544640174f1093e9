"""Programmable variational inference for gendsl models (installed as ``gendsl.inference``).

Objectives are programs built from ``sim``, ``density``, ``repeat`` and ``expectation``;
each random choice carries a gradient strategy (``REPARAM``, ``REINFORCE``, ``ENUM``,
``MVD``, or your own ``Strategy``) and the estimator is derived from them. ``SVI`` trains
any objective (``SVI.run(..., mesh=data_mesh(n))`` data-parallel over devices and hosts,
``fit_many`` many independent fits in one program; docs/scale.md); ``AutoNormal`` is a guide
built from the model. Diffusion and flow objectives live in ``gendsl.inference.diffusion``.
"""

from gendsl.inference._arviz import to_inference_data
from gendsl.inference._auto import AUTO, Auto, AutoUnresolved, StrategyChoice, StrategyRow, assign, choose_strategies
from gendsl.inference._autoguide import (
    AutoDelta,
    AutoGuide,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from gendsl.inference._autoguide_flows import AutoBNAFNormal, AutoFlow, AutoIAFNormal
from gendsl.inference._distributed import initialize_distributed
from gendsl.inference._enum import ENUM, Enum
from gendsl.inference._evaluate import (
    BoundEstimates,
    evaluate_bounds,
    held_out_estimate,
    log_predictive_density,
    pointwise_log_likelihood,
)
from gendsl.inference._expectation import Expectation, expectation
from gendsl.inference._language import baselines, density, repeat, sim
from gendsl.inference._many import fit_many
from gendsl.inference._marginal import Marginal, Normalized, marginal, normalize
from gendsl.inference._mcmc import nuts
from gendsl.inference._mvd import MVD, MeasureValued
from gendsl.inference._objectives import (
    common_plate,
    diwhvi,
    elbo,
    hvi,
    iwelbo,
    iwhvi,
    p_wake,
    q_wake,
    renyi,
    rws,
    sleep,
    vimco,
)
from gendsl.inference._params import init_params
from gendsl.inference._reinforce import REINFORCE, Reinforce
from gendsl.inference._relaxed import Relaxed
from gendsl.inference._sharding import data_mesh, data_parallel_step, shard_data
from gendsl.inference._strategies import REPARAM, EstimatorError, Reparam, Site, Strategy
from gendsl.inference._svi import SVI, ChunkInfo, DivergenceError, NonFiniteError, SVIInfo, SVIRunResult, SVIState

__all__ = [
    "AUTO",
    "SVI",
    "Auto",
    "AutoUnresolved",
    "StrategyChoice",
    "StrategyRow",
    "assign",
    "choose_strategies",
    "AutoBNAFNormal",
    "AutoDelta",
    "AutoFlow",
    "AutoGuide",
    "AutoIAFNormal",
    "AutoLowRankMultivariateNormal",
    "AutoMultivariateNormal",
    "AutoNormal",
    "BoundEstimates",
    "ChunkInfo",
    "DivergenceError",
    "NonFiniteError",
    "Relaxed",
    "SVIInfo",
    "SVIRunResult",
    "SVIState",
    "Site",
    "common_plate",
    "data_mesh",
    "data_parallel_step",
    "fit_many",
    "initialize_distributed",
    "shard_data",
    "evaluate_bounds",
    "held_out_estimate",
    "log_predictive_density",
    "pointwise_log_likelihood",
    "init_params",
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
    "Marginal",
    "Normalized",
    "baselines",
    "density",
    "marginal",
    "normalize",
    "nuts",
    "diwhvi",
    "elbo",
    "hvi",
    "iwelbo",
    "iwhvi",
    "p_wake",
    "q_wake",
    "renyi",
    "rws",
    "sleep",
    "to_inference_data",
    "vimco",
    "expectation",
    "repeat",
    "sim",
]
