"""Models from the literature written as gendsl programs (installed as gendsl.models)."""

from gendsl.models._nets import TimeMLP
from gendsl.models._protocol import Trainable, density_metrics, divergence_options, mean_and_error, mmd_with_error
from gendsl.models.air import AIR, AIRConfig, make_air
from gendsl.models.ddpm import DDPM, discretized_gaussian_log_prob, linear_alpha_bar, vp_forward, vp_reverse
from gendsl.models.diffusevae import DiffuseVAE
from gendsl.models.edm import EDM
from gendsl.models.flow_matching import FlowMatching, coupling_path, energy_distance, mmd
from gendsl.models.pfgmpp import PFGMPP, edm_sigmas
from gendsl.models.vdm import VDM

__all__ = [
    # the protocol every paper model implements, and its metrics
    "Trainable",
    "density_metrics",
    "divergence_options",
    "mean_and_error",
    "mmd_with_error",
    # structured latent-variable models: Attend-Infer-Repeat
    "AIR",
    "AIRConfig",
    "make_air",
    # diffusion models
    "DDPM",
    "DiffuseVAE",
    "EDM",
    "VDM",
    "discretized_gaussian_log_prob",
    "linear_alpha_bar",
    "vp_forward",
    "vp_reverse",
    # flows and Poisson flows
    "FlowMatching",
    "PFGMPP",
    "coupling_path",
    "edm_sigmas",
    # the shared time-conditioned network
    "TimeMLP",
    # sample-quality metrics
    "energy_distance",
    "mmd",
]
