"""Probability distributions: NumPyro's, re-exported.

gendsl does not write its own versions of distributions NumPyro already has.
Everything in ``numpyro.distributions`` is available here under the same name,
including ``constraints`` and ``transforms``.

One correction: NumPyro 0.22's ``BernoulliLogits.log_prob`` has the wrong
gradient at ``logits == 0`` exactly (``1 - x`` instead of ``0.5 - x``: the
derivative of ``clip(logits, 0)`` at the kink), and zero is the usual initial
value of a logit. ``BernoulliLogits`` (and ``Bernoulli(logits=...)``) here
compute the same log density as ``x·logits − softplus(logits)``, whose
gradient is right everywhere, at the cost of NumPyro's form.

Example:
    >>> import jax, gendsl.distributions as dist
    >>> float(dist.Normal(0.0, 1.0).log_prob(0.0))  # doctest: +ELLIPSIS
    -0.918...
    >>> float(jax.grad(lambda l: dist.Bernoulli(logits=l).log_prob(1))(0.0))
    0.5
"""

import jax
from numpyro.distributions import *  # noqa: F403
from numpyro.distributions import BernoulliLogits as _NumPyroBernoulliLogits
from numpyro.distributions import BernoulliProbs, constraints, transforms  # noqa: F401
from numpyro.distributions.util import validate_sample


class BernoulliLogits(_NumPyroBernoulliLogits):
    """NumPyro's ``BernoulliLogits`` with a log density whose gradient is right at ``logits = 0``."""

    @validate_sample
    def log_prob(self, value):
        # x·l − softplus(l): softplus (logaddexp) has a custom derivative, σ(l), right at 0 too;
        # as cheap as NumPyro's form (one exp, one log1p per element).
        return value * self.logits - jax.nn.softplus(self.logits)


def Bernoulli(probs=None, logits=None, *, validate_args=None):
    """A Bernoulli distribution from ``probs`` or ``logits`` (NumPyro's, see ``BernoulliLogits``)."""
    if probs is None and logits is not None:
        return BernoulliLogits(logits, validate_args=validate_args)
    if probs is not None and logits is None:
        return BernoulliProbs(probs, validate_args=validate_args)
    raise ValueError("Bernoulli: give exactly one of probs= or logits=")
