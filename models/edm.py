"""EDM (Karras et al. 2022): preconditioned denoiser, log-normal noise, weighted loss, Heun sampler.

``EDM`` is an ``equinox.Module`` around a raw network ``F``;
``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (``gendsl.inference.diffusion.edm_precond``),
trained on ``EDM.objective`` (an ``Expectation`` from ``edm_objective``) and sampled with
``edm_sample`` (Heun, optional churn).
"""

from __future__ import annotations

import functools

import equinox as eqx

from gendsl.inference.diffusion import edm_denoise, edm_objective, edm_sample, karras_sigmas
from gendsl.models._nets import TimeMLP

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

    def sample(self, key, n: int, *cond, steps: int = 18, churn: float = 0.0, sigma_min: float = 0.002,
               sigma_max: float = 80.0):
        """``n`` samples by EDM's Heun sampler on ``steps`` Karras noise levels."""
        sigmas = karras_sigmas(steps, sigma_min, sigma_max)
        return edm_sample(_denoise, self, key, sigmas, (n, self.net.shape[0]), churn=churn, cond=cond)


def _raw(edm, u, c_noise, *cond):
    return edm.net(u, c_noise, *cond)


@functools.cache
def _objective(sigma_data: float):
    # One Expectation per sigma_data, so that jitted callers see the same function every time.
    return edm_objective(_raw, sigma_data=sigma_data)


def _denoise(edm, x, sigma, *cond):
    return edm.denoise(x, sigma, *cond)
