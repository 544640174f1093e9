"""EDM (Karras et al. 2022): preconditioned denoiser, log-normal noise, weighted loss, Heun sampler.

``EDM`` is an ``equinox.Module`` around a raw network ``F``;
``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (``gendsl.inference.diffusion.edm_precond``),
trained on ``EDM.objective`` (an ``Expectation`` from ``edm_objective``) and sampled with
``edm_sample`` (Heun, optional churn).

``EDM`` implements ``gendsl.models.Trainable``; the module is its own parameters. Its
``evaluate`` reports the exact negative log-likelihood by the probability-flow ODE in the
noise level (and, for 2-D data, the MMD against the held-out points).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.stats import norm

from gendsl.inference.diffusion import edm_denoise, edm_objective, edm_sample, karras_sigmas
from gendsl.models._nets import TimeMLP
from gendsl.models._protocol import density_metrics, divergence_options, sigma_ode_log_likelihood

__all__ = ["EDM"]


class EDM(eqx.Module):
    """An EDM on vectors of ``dim`` elements, optionally class-conditional.

    Args:
        dim: the data dimension.
        sigma_data: the data's standard deviation (EDM: 0.5).
        num_classes: for class labels (``num_classes`` = no condition).
        hidden, depth: the ``TimeMLP`` raw network; it sees ``c_noise = ln(sigma) / 4`` as its time.
        key: PRNG key.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.models import EDM
        >>> edm = EDM(2, hidden=16, depth=1, key=jax.random.key(0))
        >>> value, grads = jax.jit(edm.objective.value_and_grad)(jax.random.key(1), edm, jnp.zeros((8, 2)))
        >>> value.shape, edm.sample(jax.random.key(2), 3, steps=4).shape
        ((), (3, 2))
    """

    net: TimeMLP
    sigma_data: float = eqx.field(static=True)
    sample_options = ("steps", "churn", "sigma_min", "sigma_max")

    def __init__(self, dim: int, *, sigma_data: float = 0.5, num_classes: int | None = None, hidden: int = 128,
                 depth: int = 3, key):
        self.net = TimeMLP(dim, hidden=hidden, depth=depth, num_classes=num_classes, key=key)
        self.sigma_data = sigma_data

    def denoise(self, x, sigma, *cond):
        """``D(x; sigma)`` for one example."""
        return edm_denoise(self.net, x, sigma, *cond, sigma_data=self.sigma_data)

    @property
    def objective(self):
        """The training objective, an ``Expectation`` of ``F(edm, xs, *cond)``: minus EDM's weighted loss.

        The parameters are the module itself (``edm``); the loss is averaged over the
        elements and the examples of the batch ``xs`` (``edm_objective`` with this
        model's ``sigma_data`` and the paper's noise levels).
        """
        return _objective(self.sigma_data)

    def sample(self, *args, steps: int = 18, churn: float = 0.0, sigma_min: float = 0.002,
               sigma_max: float = 80.0):
        """``n`` samples by EDM's Heun sampler on ``steps`` Karras noise levels.

        Called as ``edm.sample(key, n, *cond)`` (this module's parameters) or, the
        ``Trainable`` form, ``edm.sample(params, key, n, *cond)`` with ``params`` a trained ``EDM``.
        """
        params, (key, n, *cond) = (args[0], args[1:]) if isinstance(args[0], EDM) else (self, args)
        sigmas = karras_sigmas(steps, sigma_min, sigma_max)
        return edm_sample(_denoise, params, key, sigmas, (n, params.net.shape[0]), churn=churn, cond=tuple(cond))

    def init_params(self, key, data) -> EDM:
        """The ``Trainable`` parameters: the module itself (its arrays were drawn by its constructor's key)."""
        del key, data
        return self

    def evaluate(self, params: EDM, data, key, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 probes: int | None = None, **options) -> dict:
        """Exact negative log-likelihood of held-out ``data`` (nats per point) by the probability-flow ODE.

        Integrates ``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``sigma_min`` to ``sigma_max``
        and scores the end under ``N(0, sigma_max^2)`` (``sigma_ode_log_likelihood``; options
        go to ``ode_log_likelihood``; ``probes`` as in ``divergence_options``). For 2-D data it also
        reports the MMD of ``len(data)`` samples against ``data`` (``mmd_with_error``).

        Returns:
            ``{"nll": (nats, standard_error), "bits_per_dim": ..., ["mmd": ...]}``.
        """
        key, options = divergence_options(key, probes, options)

        def log_prob(x):
            return _log_prob(params, x, sigma_min, sigma_max, options)

        return density_metrics(log_prob, data, key, lambda k, n: params.sample(k, n))


def _raw(edm, u, c_noise, *cond):
    return edm.net(u, c_noise, *cond)


@functools.cache
def _objective(sigma_data: float):
    # One Expectation per sigma_data, so that jitted callers see the same function every time.
    return edm_objective(_raw, sigma_data=sigma_data)


def _denoise(edm, x, sigma, *cond):
    return edm.denoise(x, sigma, *cond)


def _denoise_args(x, sigma, edm):
    return edm.denoise(x, sigma)


@eqx.filter_jit
def _log_prob(edm, x, sigma_min, sigma_max, options):
    def prior(z):
        return jnp.sum(norm.logpdf(z, scale=sigma_max))

    return sigma_ode_log_likelihood(_denoise_args, edm, x, sigma_min, sigma_max, prior, **options)
