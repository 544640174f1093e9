"""Diagnostics of a trained variational model: KL per latent dimension, collapse, passive variables.

``collapse_report`` gives, per guide site and latent dimension, the data-averaged
``KL(q(z_j | x) ‖ p(z_j))`` (closed-form where NumPyro has it, Monte Carlo otherwise),
the active units and the collapsed dimensions; it works for sites in plates and in
``gendsl.scan`` loops. ``passive_variables``, ``representation_correlation`` and
``drop_passive`` compare mean and sampled representations (Bonheme & Grzes).

Example:
    >>> import numpy as np
    >>> from gendsl.diagnostics import passive_variables
    >>> means = np.c_[np.linspace(-1, 1, 100), np.zeros(100)]
    >>> passive_variables(means, np.c_[np.full(100, 0.1), np.ones(100)])
    array([False,  True])
"""

from gendsl._diagnostics import (
    SiteCollapse,
    collapse_report,
    drop_passive,
    passive_variables,
    representation_correlation,
)

__all__ = [
    "SiteCollapse",
    "collapse_report",
    "drop_passive",
    "passive_variables",
    "representation_correlation",
]
