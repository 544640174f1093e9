"""Probability distributions: NumPyro's, re-exported.

gendsl does not write its own versions of distributions NumPyro already has.
Everything in ``numpyro.distributions`` is available here under the same name,
including ``constraints`` and ``transforms``.

Example:
    >>> import gendsl.distributions as dist
    >>> float(dist.Normal(0.0, 1.0).log_prob(0.0))  # doctest: +ELLIPSIS
    -0.918...
"""

from numpyro.distributions import *  # noqa: F403
from numpyro.distributions import constraints, transforms  # noqa: F401
