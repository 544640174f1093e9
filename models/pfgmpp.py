"""PFGM++ (Xu et al., ICML 2023): Poisson flows with D augmented dimensions, D -> inf recovering EDM.

The perturbation kernel is the program ``gendsl.inference.diffusion.pfgmpp_kernel(D)``
(radius ``r = sigma sqrt(D)``, ``B ~ Beta(N/2, D/2)``, uniform direction); the
training objective ``pfgmpp_objective`` is derived from it with EDM's noise-level
distribution and weighting, and the network is EDM's preconditioned denoiser
``D(x, sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4)``. Sampling starts from
the PFGM++ kernel at ``sigma_max`` (heavy-tailed for small D) and integrates the ODE
``dx/dsigma = (x - D(x, sigma)) / sigma`` down to ``sigma_min`` on EDM's ``rho = 7``
grid with Heun's method (diffrax). ``D=None`` is EDM with its Gaussian kernel.

``PFGMPP`` implements ``gendsl.models.Trainable``; its ``evaluate`` reports the exact negative
log-likelihood by the same ODE (the kernel at ``sigma_max`` as the prior) and, for 2-D
data, the MMD against held-out points.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpyro.distributions as ndist
import optax

import gendsl
from gendsl.inference import SVI, init_params
from gendsl.inference.diffusion import PFGMPPKernel, denoiser_velocity, ode_solve, pfgmpp_objective, pfgmpp_r
from gendsl.models._nets import TimeMLP
from gendsl.models._protocol import density_metrics, divergence_options, sigma_ode_log_likelihood

__all__ = ["PFGMPP", "edm_sigmas"]


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """EDM's noise levels from ``sigma_max`` down to ``sigma_min``: ``steps + 1`` values, ``rho``-spaced.

    Example:
        >>> from gendsl.models import edm_sigmas
        >>> s = edm_sigmas(4, 0.01, 10.0)
        >>> round(float(s[0]), 4), round(float(s[-1]), 4), s.shape
        (10.0, 0.01, (5,))
    """
    i = jnp.arange(steps + 1) / steps
    return (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _denoiser_net(dim: int, hidden: int, depth: int, sigma_data: float):
    @gendsl.model
    def denoiser(x, sigma):
        # The network sees log(sigma) / 4, in about [-1.6, 1.1]: time frequencies up to 100 suffice.
        net = gendsl.module("denoiser", lambda k: TimeMLP(dim, hidden=hidden, depth=depth, max_frequency=100.0, key=k))
        total = sigma**2 + sigma_data**2
        c_skip, c_out, c_in = sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1 / jnp.sqrt(total)
        return c_skip * x + c_out * net(c_in * x, jnp.log(sigma) / 4)

    return denoiser


class PFGMPP:
    """A PFGM++ model of ``dim``-dimensional data (standardize the data to scale ``sigma_data``).

    Args:
        dim: data dimension ``N``.
        D: augmented dimensions (``None``: the Gaussian limit, EDM).
        sigma_data, p_mean, p_std: EDM's data scale and training noise-level distribution.
        sigma_min, sigma_max: the sampling range.
        hidden, depth: the denoiser MLP's size.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference import init_params
        >>> from gendsl.models import PFGMPP
        >>> model = PFGMPP(2, D=128, hidden=16, depth=1)
        >>> params, _ = init_params(model.objective, jax.random.key(0), jnp.zeros((8, 2)))
        >>> model.sample(params, jax.random.key(1), 5, steps=4).shape   # training: model.fit(key, data, steps)
        (5, 2)
    """

    sample_options = ("steps",)

    def __init__(self, dim: int, *, D: float | None = 128.0, sigma_data: float = 0.5, p_mean: float = -1.2,
                 p_std: float = 1.2, sigma_min: float = 0.002, sigma_max: float = 80.0, hidden: int = 128,
                 depth: int = 3):
        self.dim, self.D = dim, D
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.net = _denoiser_net(dim, hidden, depth, sigma_data)
        self.objective = pfgmpp_objective(self.net, D=D, sigma_data=sigma_data, p_mean=p_mean, p_std=p_std)

    def denoise(self, x, sigma, params):
        """The trained denoiser of one point (the ``D(x, sigma, args)`` form used by guidance and samplers)."""
        return self.net.bind(params)(x, sigma)

    def fit(self, key, data, steps: int, *, batch_size: int = 256, lr: float = 1e-3, progress: bool = False):
        """Train with Adam (cosine decay) on minibatches of ``data``; returns the parameters."""
        svi = SVI(self.objective, optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05)))
        state = svi.init(key, data[:batch_size])
        return svi.run(key, steps, data, batch_size=batch_size, state=state, progress=progress).params

    def init_params(self, key, data) -> dict:
        """The ``Trainable`` initial parameters (the denoiser network, initialized on one data point)."""
        return init_params(self.objective, key, data[:1])[0]

    def log_prob(self, params, x, **options):
        """Exact ``log p(x)`` per point (at ``sigma_min``) by the ODE up to ``sigma_max`` and the kernel there.

        ``options`` go to ``ode_log_likelihood`` (``divergence="hutchinson"`` with ``key=``, tolerances).
        """
        return _log_prob(self, params, x, options)

    def evaluate(self, params, data, key, *, probes: int | None = None, **options) -> dict:
        """Exact negative log-likelihood of held-out ``data`` (``log_prob``), and the MMD for 2-D data.

        ``probes``: None for the exact divergence, or the number of Hutchinson probes per point
        (``divergence_options``); ``options`` go to ``ode_log_likelihood``.

        Returns ``density_metrics``: ``{"nll": (nats per point, standard error),
        "bits_per_dim": ..., ["mmd": (value, standard error)]}``.
        """
        key, options = divergence_options(key, probes, options)

        def draw(k, n):
            return self.sample(params, k, n)

        return density_metrics(lambda x: self.log_prob(params, x, **options), data, key, draw)

    def prior(self, key, n: int):
        """``n`` draws of the perturbation kernel around 0 at ``sigma_max`` (the ODE's starting points)."""
        return _prior(self, key, n)

    def sample(self, params, key, n: int, *, steps: int = 32):
        """``n`` draws: the kernel at ``sigma_max``, then Heun steps on EDM's grid down to ``sigma_min``."""
        return _sample(self, params, self.prior(key, n), steps)


@eqx.filter_jit
def _prior(model: PFGMPP, key, n: int):
    loc = jnp.zeros((n, model.dim))
    if model.D is None:
        return ndist.Normal(loc, model.sigma_max).sample(key)
    return PFGMPPKernel(loc, pfgmpp_r(model.sigma_max, model.D), model.D).sample(key)


@eqx.filter_jit
def _sample(model: PFGMPP, params, x_T, steps: int):
    ts = edm_sigmas(steps, model.sigma_min, model.sigma_max)
    return ode_solve(denoiser_velocity(model.denoise), x_T, model.sigma_max, model.sigma_min, args=params, ts=ts)


@eqx.filter_jit
def _log_prob(model: PFGMPP, params, x, options):
    def prior(z):
        if model.D is None:
            return jnp.sum(ndist.Normal(0.0, model.sigma_max).log_prob(z))
        return PFGMPPKernel(jnp.zeros_like(z), pfgmpp_r(model.sigma_max, model.D), model.D).log_prob(z)

    return sigma_ode_log_likelihood(model.denoise, params, x, model.sigma_min, model.sigma_max, prior, **options)
