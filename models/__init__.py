"""Models from the literature written as gendsl programs (installed as gendsl.models)."""

# flows and kernels (part B)
# isort: split
from gendsl.models.flow_matching import FlowMatching, TimeMLP, coupling_path, energy_distance, mmd
from gendsl.models.pfgmpp import PFGMPP, edm_sigmas

# diffusion (part A)
# isort: split
from gendsl.models.ddpm import DDPM, linear_alpha_bar, vp_forward, vp_reverse
from gendsl.models.diffusevae import DiffuseVAE
from gendsl.models.edm import EDM
from gendsl.models.vdm import VDM

# Attend-Infer-Repeat (benchmarks issue, Table 2)
# isort: split
from gendsl.models.air import AIR, AIRConfig, make_air

__all__ = [
    # Attend-Infer-Repeat
    "AIR",
    "AIRConfig",
    "make_air",
    # flows and kernels (part B)
    "FlowMatching",
    "PFGMPP",
    "TimeMLP",
    "coupling_path",
    "edm_sigmas",
    "energy_distance",
    "mmd",
    # diffusion (part A)
    "DDPM",
    "DiffuseVAE",
    "EDM",
    "VDM",
    "linear_alpha_bar",
    "vp_forward",
    "vp_reverse",
]
