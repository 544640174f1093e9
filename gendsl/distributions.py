"""Probability distributions: NumPyro's, re-exported.

gendsl does not write its own versions of distributions NumPyro already has.
Everything in ``numpyro.distributions`` is available here under the same name,
including ``constraints`` and ``transforms``.

One correction: NumPyro 0.22's ``BernoulliLogits.log_prob`` has the wrong
gradient at ``logits == 0`` exactly (``1 - x`` instead of ``0.5 - x``: the
derivative of ``clip(logits, 0)`` at the kink), and zero is the usual initial
value of a logit. ``BernoulliLogits`` (and ``Bernoulli(logits=...)``) here
compute NumPyro's stable form with its derivative ``x − σ(logits)`` given
explicitly: right everywhere, at the same cost.

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


@jax.custom_jvp
def _bernoulli_logits_log_prob(logits, value):
    # NumPyro's stable form (one exp, one log1p per element); its derivative is given below,
    # since differentiating through max/abs is wrong at logits = 0.
    return logits * value - jax.numpy.maximum(logits, 0.0) - jax.numpy.log1p(jax.numpy.exp(-jax.numpy.abs(logits)))


@_bernoulli_logits_log_prob.defjvp
def _bernoulli_logits_log_prob_jvp(primals, tangents):
    logits, value = primals
    d_logits, d_value = tangents
    out = _bernoulli_logits_log_prob(logits, value)
    return out, (value - jax.nn.sigmoid(logits)) * d_logits + logits * d_value


class BernoulliLogits(_NumPyroBernoulliLogits):
    """NumPyro's ``BernoulliLogits`` with a log density whose gradient is right at ``logits = 0``."""

    @validate_sample
    def log_prob(self, value):
        logits = jax.numpy.asarray(self.logits)
        logits, value = jax.numpy.broadcast_arrays(logits, jax.numpy.asarray(value, logits.dtype))
        return _bernoulli_logits_log_prob(logits, value)


def Bernoulli(probs=None, logits=None, *, validate_args=None):
    """A Bernoulli distribution from ``probs`` or ``logits`` (NumPyro's, see ``BernoulliLogits``)."""
    if probs is None and logits is not None:
        return BernoulliLogits(logits, validate_args=validate_args)
    if probs is not None and logits is None:
        return BernoulliProbs(probs, validate_args=validate_args)
    raise ValueError("Bernoulli: give exactly one of probs= or logits=")
