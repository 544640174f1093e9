"""Models from the literature written as gendsl programs (installed as gendsl.models).

The names below are loaded on first use (PEP 562): ``from gendsl.models import Trainable`` reads
the protocol without importing the diffusion models and diffrax, so that a command that only
checks whether a program holds a ``Trainable`` stays cheap.
"""

import importlib

_SOURCES = {
    "TimeMLP": "_nets",
    **dict.fromkeys(["Trainable", "density_metrics", "divergence_options", "mean_and_error", "mmd_with_error"],
                    "_protocol"),
    **dict.fromkeys(["AIR", "AIRConfig", "make_air"], "air"),
    "CVAE": "cvae",
    **dict.fromkeys(["DDPM", "discretized_gaussian_log_prob", "linear_alpha_bar", "vp_forward", "vp_reverse"], "ddpm"),
    "DiffuseVAE": "diffusevae",
    "EDM": "edm",
    **dict.fromkeys(["FlowMatching", "coupling_path"], "flow_matching"),
    **dict.fromkeys(["energy_distance", "mmd"], "gendsl.metrics"),
    **dict.fromkeys(["PFGMPP", "edm_sigmas"], "pfgmpp"),
    "VDM": "vdm",
}


def __getattr__(name: str):
    if name in _SOURCES:
        source = _SOURCES[name]
        module = source if source.startswith("gendsl.") else f"gendsl.models.{source}"
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'gendsl.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


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
    # conditional VAEs (Sohn et al. 2015)
    "CVAE",
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
    # sample-quality metrics (re-exported from gendsl.metrics)
    "energy_distance",
    "mmd",
]
