"""Diffusion and flow models: objectives derived from programs, samplers, likelihoods and guidance.

Installed as ``gendsl.inference.diffusion``. Every training objective here is an
``Expectation`` (as built by ``gendsl.inference.expectation``) of the quantity to
*maximize*, the mean over a batch of data points, like the variational objectives of
``gendsl.inference``: train it with ``gendsl.inference.SVI``, or take
``objective.value_and_grad(key, params, xs)`` (and negate it for a loss to minimize).
Its random choices (times, noise levels, noise) come from the objective's own key
(``objective_key``).

* Discrete-time diffusion derived from a program pair (reverse-chain model,
  forward-chain guide): ``diffusion_elbo`` recognizes the guide's Gaussian-linear chain
  (``GaussianChain``) and returns a ``DiffusionELBO`` with the ELBO and the "simple"
  eps / x0 / v objectives (DDPM, discrete-time VDM).
* Continuous time: VDM's ELBO terms (``vdm_terms``, ``discrete_decoder_log_prob``) with
  its schedules (``LinearSchedule``, ``LearnedSchedule``); EDM's preconditioning and
  objective (``edm_objective``).
* Paths and kernels as programs: the velocity target of a path (``path_velocity``) and
  the score target of a kernel (``kernel_score``) are derived by autodiff, hence the
  objectives ``flow_matching``, ``denoising_score_matching`` and
  ``denoising_objective``; library paths ``linear_path``, ``trig_path``,
  ``stochastic_interpolant``; the PFGM++ kernel and its objective (``pfgmpp_objective``).
* Sampling: DDPM / DDIM / EDM samplers, and ODEs (``ode_solve``) with exact likelihoods
  (``ode_log_likelihood``).
* Guidance: classifier-free (``guided``, ``drop_condition``) and, for inverse problems
  and rewards, ``dps_guidance``, ``tweedie_guidance`` and ``svdd_sample``.
"""

from gendsl.inference.diffusion._classifier_free_guidance import Guided, drop_condition, guided
from gendsl.inference.diffusion._derivation import (
    DiffusionELBO,
    DiffusionStructureError,
    GaussianChain,
    diffusion_elbo,
    gaussian_kl,
)
from gendsl.inference.diffusion._edm import edm_denoise, edm_objective, edm_precond, edm_weight
from gendsl.inference.diffusion._objective_key import objective_key
from gendsl.inference.diffusion._ode import denoiser_velocity, ode_log_likelihood, ode_solve, probability_flow
from gendsl.inference.diffusion._paths import (
    denoising_objective,
    denoising_score_matching,
    flow_matching,
    kernel_score,
    linear_path,
    path_velocity,
    stochastic_interpolant,
    trig_path,
)
from gendsl.inference.diffusion._pfgmpp import (
    PFGMPPKernel,
    pfgmpp_kernel,
    pfgmpp_objective,
    pfgmpp_perturb,
    pfgmpp_r,
)
from gendsl.inference.diffusion._reward_guidance import dps_guidance, svdd_sample, tweedie_guidance, tweedie_value
from gendsl.inference.diffusion._samplers import ddim_sample, ddpm_sample, edm_sample, karras_sigmas, vp_posterior
from gendsl.inference.diffusion._schedules import LearnedSchedule, LinearSchedule, gamma_and_derivative
from gendsl.inference.diffusion._vdm import discrete_decoder_log_prob, vdm_terms

__all__ = [
    # objectives derived from a program pair
    "DiffusionELBO",
    "DiffusionStructureError",
    "GaussianChain",
    "diffusion_elbo",
    "gaussian_kl",
    "objective_key",
    # continuous time: VDM and EDM
    "LearnedSchedule",
    "LinearSchedule",
    "discrete_decoder_log_prob",
    "edm_denoise",
    "edm_objective",
    "edm_precond",
    "edm_weight",
    "gamma_and_derivative",
    "vdm_terms",
    # paths and kernels as programs
    "PFGMPPKernel",
    "denoising_objective",
    "denoising_score_matching",
    "flow_matching",
    "kernel_score",
    "linear_path",
    "path_velocity",
    "pfgmpp_kernel",
    "pfgmpp_objective",
    "pfgmpp_perturb",
    "pfgmpp_r",
    "stochastic_interpolant",
    "trig_path",
    # samplers, ODEs and likelihoods
    "ddim_sample",
    "ddpm_sample",
    "denoiser_velocity",
    "edm_sample",
    "karras_sigmas",
    "ode_log_likelihood",
    "ode_solve",
    "probability_flow",
    "vp_posterior",
    # guidance
    "Guided",
    "drop_condition",
    "dps_guidance",
    "guided",
    "svdd_sample",
    "tweedie_guidance",
    "tweedie_value",
]
