"""The PFGM++ perturbation kernel (Xu et al., ICML 2023) as a distribution and as programs.

In ``N`` data dimensions with ``D`` augmented dimensions the kernel is

    p_r(x | y) ∝ (||x - y||^2 + r^2)^(-(N + D) / 2),

normalized by ``pi^(N/2) Gamma(D/2) / Gamma((N+D)/2) r^(-D)``. Its radius
``R = ||x - y||`` is ``r sqrt(B / (1 - B))`` with ``B ~ Beta(N/2, D/2)``, and its
direction is uniform on the sphere: that is the reparameterized sampler used
here (``pfgmpp_perturb`` writes it as a program with sites ``B`` and
``direction``; ``PFGMPPKernel`` packs it with the closed-form density so that the
score can be taken by autodiff). With the alignment ``r = sigma sqrt(D)`` the
kernel is a multivariate Student-t with ``D`` degrees of freedom and scale
``sigma``, which tends to ``N(y, sigma^2 I)`` as ``D -> inf`` (EDM's kernel);
``D=None`` selects that Gaussian limit.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpyro.distributions as ndist
from jax.scipy.special import gammaln
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes

import gendsl
from gendsl.inference._expectation import Expectation
from gendsl.inference.diffusion._paths import denoising_objective

__all__ = ["PFGMPPKernel", "pfgmpp_kernel", "pfgmpp_objective", "pfgmpp_perturb", "pfgmpp_r"]


def pfgmpp_r(sigma, D):
    """The alignment ``r = sigma sqrt(D)`` that matches PFGM++ with D extra dimensions to EDM's sigma.

    Example:
        >>> from gendsl.inference.diffusion import pfgmpp_r
        >>> float(pfgmpp_r(2.0, 16))
        8.0
    """
    return sigma * jnp.sqrt(jnp.asarray(D, jnp.result_type(float)))


def _radius(key, n: int, D, r, shape):
    b = jax.random.beta(key, 0.5 * n, 0.5 * D, shape)
    return r * jnp.sqrt(b / (1.0 - b))


def _direction(key, n: int, shape):
    g = jax.random.normal(key, (*shape, n))
    return g / jnp.linalg.norm(g, axis=-1, keepdims=True)


class PFGMPPKernel(ndist.Distribution):
    """The PFGM++ kernel ``p_r(x | y) ∝ (||x - y||^2 + r^2)^(-(N+D)/2)`` on ``R^N`` (event dim 1).

    Args:
        loc: the centre ``y``, shape ``(..., N)``.
        r: the radius parameter (``pfgmpp_r(sigma, D)`` aligns it with EDM's sigma).
        D: the number of augmented dimensions (a positive number).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import PFGMPPKernel
        >>> k = PFGMPPKernel(jnp.zeros(2), r=1.0, D=2)
        >>> round(float(k.log_prob(jnp.zeros(2))), 4)   # log(Gamma(2) / (pi Gamma(1)))
        -1.1447
        >>> jax.jit(k.sample, static_argnums=1)(jax.random.key(0), (5,)).shape
        (5, 2)
    """

    arg_constraints: ClassVar = {"loc": constraints.real_vector, "r": constraints.positive, "D": constraints.positive}
    support = constraints.real_vector
    reparametrized_params: ClassVar = ["loc", "r"]

    def __init__(self, loc, r, D, *, validate_args=None):
        loc = jnp.asarray(loc)
        if loc.ndim < 1:
            raise ValueError(f"PFGMPPKernel: loc must have an event axis (shape (..., N)), got shape {loc.shape}")
        r, D = jnp.asarray(r, loc.dtype), jnp.asarray(D, loc.dtype)
        r, D = promote_shapes(r, D)
        batch_shape = jax.lax.broadcast_shapes(loc.shape[:-1], jnp.shape(r), jnp.shape(D))
        self.loc, self.r, self.D = loc, r, D
        super().__init__(batch_shape=batch_shape, event_shape=loc.shape[-1:], validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:
        return True

    def rsample(self, key, sample_shape=()):
        return self.sample(key, sample_shape)

    def sample(self, key, sample_shape=()):
        n = self.event_shape[0]
        shape = tuple(sample_shape) + self.batch_shape
        k_b, k_u = jax.random.split(key)
        radius = _radius(k_b, n, jnp.broadcast_to(self.D, shape), jnp.broadcast_to(self.r, shape), shape)
        return self.loc + radius[..., None] * _direction(k_u, n, shape)

    def log_prob(self, value):
        n = self.event_shape[0]
        sq = jnp.sum((value - self.loc) ** 2, axis=-1)
        log_norm = 0.5 * n * jnp.log(jnp.pi) + gammaln(0.5 * self.D) - gammaln(0.5 * (n + self.D))
        log_norm = log_norm - self.D * jnp.log(self.r)
        return -0.5 * (n + self.D) * jnp.log(sq + self.r**2) - log_norm


@gendsl.model
def pfgmpp_perturb(sigma, y, D):
    """The PFGM++ sampler as a program: ``x = y + r sqrt(B/(1-B)) u``, ``B ~ Beta(N/2, D/2)``, ``u`` uniform.

    Sites: ``B`` (Beta), ``direction`` (a standard normal in ``R^N``, normalized to
    ``u``) and the deterministic ``x_t``. ``r = sigma sqrt(D)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import pfgmpp_perturb
        >>> tr = jax.jit(pfgmpp_perturb.simulate)(jax.random.key(0), 1.0, jnp.zeros(3), 8.0)
        >>> sorted(tr.choices), tr.deterministics["x_t"].shape
        (['B', 'direction'], (3,))
    """
    y = jnp.asarray(y)
    n = y.shape[-1]
    b = gendsl.sample("B", ndist.Beta(0.5 * n, 0.5 * D))
    g = gendsl.sample("direction", ndist.Normal(jnp.zeros(n), 1.0).to_event(1))
    radius = pfgmpp_r(sigma, D) * jnp.sqrt(b / (1.0 - b))
    return gendsl.deterministic("x_t", y + radius * g / jnp.linalg.norm(g))


def pfgmpp_kernel(D):
    """The kernel program ``kernel(sigma, y)`` for ``D`` augmented dimensions (``None``: the Gaussian limit).

    It draws the single site ``x_t`` from ``PFGMPPKernel(y, sigma sqrt(D), D)``,
    or from ``N(y, sigma^2 I)`` when ``D`` is None, so ``kernel_score`` and
    ``denoising_score_matching`` apply to it.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import kernel_score, pfgmpp_kernel
        >>> x, s = kernel_score(pfgmpp_kernel(4.0))(jax.random.key(0), 1.0, jnp.zeros(2))
        >>> bool(jnp.allclose(s, -(2 + 4) * x / (x @ x + 4.0), rtol=1e-5))
        True
    """
    if D is not None and not isinstance(D, jax.core.Tracer) and not D > 0:
        raise ValueError(f"pfgmpp_kernel: D must be a positive number of augmented dimensions or None, got {D!r}")

    @gendsl.model
    def kernel(sigma, y):
        y = jnp.asarray(y)
        if D is None:
            return gendsl.sample("x_t", ndist.Normal(y, sigma).to_event(1))
        return gendsl.sample("x_t", PFGMPPKernel(y, pfgmpp_r(sigma, D), D))

    kernel.__name__ = f"pfgmpp_kernel(D={D})"
    return kernel


def pfgmpp_objective(
    denoiser, *, D, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, name: str = "pfgmpp"
) -> Expectation:
    """The PFGM++ training objective: minus EDM's weighted denoising loss under the PFGM++ kernel.

    ``sigma ~ LogNormal(p_mean, p_std)``, ``x = y + (PFGM++ kernel draw with
    r = sigma sqrt(D))``, loss ``lambda(sigma) ||D(x, sigma) - y||^2`` with
    ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``; the objective is
    its negative mean over the batch; ``D=None`` is EDM's Gaussian case. Derived with
    ``denoising_objective`` from ``pfgmpp_kernel(D)``.

    Args:
        denoiser: gendsl model ``denoiser(x, sigma)`` (one data point).
        D: augmented dimensions, or None for the Gaussian (D -> inf) limit.
        sigma_data, p_mean, p_std: EDM's data scale and noise-level distribution.
        name: the address of the objective's draws (its ``objective_key``).

    Returns:
        An ``Expectation`` of ``F(params, y_batch)``.

    Example:
        >>> import jax, jax.numpy as jnp, gendsl
        >>> from gendsl.inference.diffusion import pfgmpp_objective
        >>> @gendsl.model
        ... def d(x, sigma):
        ...     return gendsl.param("w", 1.0) * x
        >>> obj = pfgmpp_objective(d, D=128)
        >>> float(jax.jit(obj.estimate)(jax.random.key(0), {"w": 0.5}, jnp.zeros((64, 2)))) < 0
        True
    """
    weight = lambda s: (s**2 + sigma_data**2) / (s * sigma_data) ** 2  # noqa: E731
    return denoising_objective(
        pfgmpp_kernel(D), denoiser, time=ndist.LogNormal(p_mean, p_std), weight=weight, name=name
    )
