"""Programmable variational inference for gendsl models (installed as ``gendsl.inference``).

Objectives are programs built from ``sim``, ``density``, ``repeat`` and
``expectation``; each random choice carries a gradient strategy (``REPARAM``,
``REINFORCE``, ``ENUM``, ``MVD``) and the estimator is derived from them.
"""

from gendsl.inference._arviz import to_inference_data
from gendsl.inference._constructs import Marginal, Normalized, marginal, normalize
from gendsl.inference._expectation import Expectation, baselines, density, expectation, repeat, sim
from gendsl.inference._objectives import (
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

# diffusion (part A)
# isort: split
from gendsl.inference._diffusion import (
    DiffusionELBO,
    DiffusionStructureError,
    GaussianChain,
    diffusion_elbo,
    gaussian_kl,
)
from gendsl.inference._diffusion_continuous import (
    LearnedSchedule,
    LinearSchedule,
    discrete_decoder_log_prob,
    edm_denoise,
    edm_loss,
    edm_precond,
    edm_weight,
    gamma_and_derivative,
    vdm_terms,
)
from gendsl.inference._diffusion_guidance import Guided, drop_condition, guided
from gendsl.inference._diffusion_samplers import ddim_sample, ddpm_sample, edm_sample, karras_sigmas, vp_posterior

# flows and kernels (part B)
# isort: split
from gendsl.inference._guidance import dps_guidance, svdd_sample, tweedie_guidance, tweedie_value
from gendsl.inference._kernels import PFGMPPKernel, pfgmpp_kernel, pfgmpp_loss, pfgmpp_perturb, pfgmpp_r
from gendsl.inference._ode import denoiser_velocity, ode_log_likelihood, ode_solve, probability_flow
from gendsl.inference._paths import (
    denoising_loss,
    denoising_score_matching,
    flow_matching,
    kernel_score,
    linear_path,
    path_velocity,
    stochastic_interpolant,
    trig_path,
)

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
    "Marginal",
    "Normalized",
    "baselines",
    "density",
    "marginal",
    "normalize",
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
    # flows and kernels (part B)
    "PFGMPPKernel",
    "denoising_loss",
    "denoising_score_matching",
    "denoiser_velocity",
    "dps_guidance",
    "flow_matching",
    "kernel_score",
    "linear_path",
    "ode_log_likelihood",
    "ode_solve",
    "path_velocity",
    "pfgmpp_kernel",
    "pfgmpp_loss",
    "pfgmpp_perturb",
    "pfgmpp_r",
    "probability_flow",
    "stochastic_interpolant",
    "svdd_sample",
    "trig_path",
    "tweedie_guidance",
    "tweedie_value",
    # diffusion (part A)
    "DiffusionELBO",
    "DiffusionStructureError",
    "GaussianChain",
    "Guided",
    "LearnedSchedule",
    "LinearSchedule",
    "ddim_sample",
    "ddpm_sample",
    "diffusion_elbo",
    "discrete_decoder_log_prob",
    "drop_condition",
    "edm_denoise",
    "edm_loss",
    "edm_precond",
    "edm_sample",
    "edm_weight",
    "gamma_and_derivative",
    "gaussian_kl",
    "guided",
    "karras_sigmas",
    "vdm_terms",
    "vp_posterior",
]
