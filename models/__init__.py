"""Models from the literature written as gendsl programs (installed as gendsl.models)."""

# flows and kernels (part B)
# isort: split
from gendsl.models.flow_matching import FlowMatching, TimeMLP, coupling_path, energy_distance, mmd
from gendsl.models.pfgmpp import PFGMPP, edm_sigmas

__all__ = [
    # flows and kernels (part B)
    "FlowMatching",
    "PFGMPP",
    "TimeMLP",
    "coupling_path",
    "edm_sigmas",
    "energy_distance",
    "mmd",
]
