"""Variational Diffusion Models (Kingma et al. 2021): continuous-time ELBO, learned schedule, discrete decoder.

``VDM`` is an ``equinox.Module`` holding the noise-prediction network and the
schedule ``gamma(t)`` (fixed ``LinearSchedule`` or learned ``LearnedSchedule``, optionally
with VDM's variance-minimizing update of its shape). For data on a grid of levels the network
can instead predict a prior over the levels (``denoiser="levels"``), and it can be conditioned
on a data augmentation's index (``augmentations``, evaluated at the identity).
Its training objective ``VDM.objective`` is an ``Expectation`` of the ELBO (nats per
data point, from ``gendsl.inference.diffusion.vdm_terms``, ``gamma'`` by ``jax.jvp``)
of a batch with ``levels`` grey levels; ``bits_per_dim`` reports it in bits.

The discrete-time version of the same model is the program pair
``vp_reverse`` / ``vp_forward`` with ``alpha_bar(t) = sigmoid(-gamma(t))``:
``VDM.discrete_pair(T)`` builds it and ``diffusion_elbo`` derives its ELBO, whose
``T -> inf`` limit is the continuous loss.

``VDM`` implements ``gendsl.models.Trainable``; the module is its own parameters, so
``init_params`` returns it and ``sample`` / ``evaluate`` take a trained module as ``params``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from gendsl.inference import expectation
from gendsl.inference.diffusion import (
    LearnedSchedule,
    LinearSchedule,
    ddpm_sample,
    diffusion_elbo,
    discrete_decoder_log_prob,
    objective_key,
    vdm_terms,
)
from gendsl.models._nets import TimeConv, TimeMLP
from gendsl.models._protocol import mean_and_error as _mean_and_error

__all__ = ["VDM", "from_levels", "to_levels"]


def from_levels(x_int, levels: int) -> jax.Array:
    """Integer levels ``0..levels-1`` to VDM's values ``2 (k + 1/2) / levels - 1`` in (-1, 1).

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.models.vdm import from_levels
        >>> [round(float(v), 4) for v in from_levels(jnp.array([0, 8, 16]), 17)]
        [-0.9412, 0.0, 0.9412]
    """
    return 2.0 * (jnp.asarray(x_int, jnp.float32) + 0.5) / levels - 1.0


def to_levels(x, levels: int) -> jax.Array:
    """The nearest level of values in (-1, 1) (inverse of ``from_levels``).

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.models.vdm import to_levels
        >>> to_levels(jnp.array([-1.0, 0.01, 0.95]), 17)
        Array([ 0,  8, 16], dtype=int32)
    """
    return jnp.clip(jnp.round((x + 1.0) * levels / 2.0 - 0.5), 0, levels - 1).astype(jnp.int32)


class VDM(eqx.Module):
    """A VDM on vectors of ``dim`` elements with ``levels`` grey levels.

    Args:
        dim: the number of elements of a data point (64 for 8x8 images).
        levels: the number of grey levels (17 for scikit-learn's digits).
        learned_schedule: a ``LearnedSchedule`` instead of the linear one.
        gamma_min, gamma_max: the schedule's initial endpoints.
        hidden, depth: the ``TimeMLP`` noise-prediction network.
        fourier: exponents ``k`` of extra input features ``sin, cos(2^k pi z)``.
        conv: a small residual CNN (``TimeConv``, ``hidden`` channels) instead of the MLP (square images).
        denoiser: ``"eps"``: the network predicts the noise. ``"levels"``: it predicts, per
            element, logits of a prior over the ``levels`` grey levels, and the noise prediction
            is that of the posterior mean ``E[x | z_t]`` under this prior times the exact
            Gaussian likelihood ``q(z_t | x = v_k)`` of each level. Near ``t = 0`` the
            likelihood pins the level down, so the network need not learn to round
            ``z_t`` to the grid (which costs an ``"eps"`` MLP most of its bits on digits);
            the last layer starts at zero (a uniform prior). Any prediction gives a valid ELBO.
        augmentations: condition the network on the index of a data augmentation (``0`` the
            identity, up to ``augmentations - 1``): distribution augmentation (Jun et al. 2020).
            The objective then takes ``(xs_int, indices)``; data given alone is index 0, so
            ``bits_per_dim``, ``evaluate`` and ``sample`` concern the unaugmented data, and the
            bound stays a bound on its likelihood whatever the augmentations are (flips included).
        variance_gradient: train a learned schedule's shape to minimize the variance of the
            continuous-time diffusion term (VDM's update, ``vdm_terms(variance_gradient=True)``);
            the ELBO's value and its gradient in the network and the endpoints are unchanged.
        key: PRNG key.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from gendsl.models import VDM
        >>> vdm = VDM(4, levels=17, hidden=16, depth=1, key=jax.random.key(0))
        >>> x = jnp.array([[0, 5, 16, 8], [1, 1, 2, 3]])
        >>> params, static = eqx.partition(vdm, eqx.is_inexact_array)
        >>> def loss(p, key):   # minus the ELBO, per data point; differentiated through the module's arrays
        ...     return -vdm.objective.surrogate(key, eqx.combine(p, static), x)[0]
        >>> grads = jax.jit(jax.grad(loss))(params, jax.random.key(1))   # one compilation, not op by op
        >>> vdm.bits_per_dim(jax.random.key(2), x).shape
        ()
        >>> # The level grid built into the denoiser, and a learned schedule trained by VDM's
        >>> # variance-minimizing update (benchmarks/diffusion_digits.py's configurations):
        >>> levels = VDM(4, levels=17, hidden=16, depth=1, denoiser="levels", learned_schedule=True,
        ...              variance_gradient=True, key=jax.random.key(0))
    """

    sample_options = ("steps",)

    net: eqx.Module
    schedule: eqx.Module
    dim: int = eqx.field(static=True)
    levels: int = eqx.field(static=True)
    gamma_range: tuple = eqx.field(static=True)
    fourier: tuple = eqx.field(static=True)
    denoiser: str = eqx.field(static=True)
    variance_gradient: bool = eqx.field(static=True)
    augmentations: int = eqx.field(static=True)

    def __init__(self, dim: int, *, levels: int = 17, learned_schedule: bool = False, gamma_min: float = -13.3,
                 gamma_max: float = 5.0, hidden: int = 256, depth: int = 3, fourier: tuple = (), conv: bool = False,
                 denoiser: str = "eps", variance_gradient: bool = False, augmentations: int = 0, key):
        if denoiser not in ("eps", "levels"):
            raise ValueError(f"VDM: denoiser is 'eps' (noise prediction) or 'levels' (level logits), got {denoiser!r}")
        k_net, k_sched = jax.random.split(key)
        self.dim, self.levels = dim, levels
        self.gamma_range = (gamma_min, gamma_max)
        self.fourier = tuple(fourier)
        self.denoiser, self.variance_gradient, self.augmentations = denoiser, variance_gradient, augmentations
        per_element = levels if denoiser == "levels" else 1
        if conv:
            if self.fourier or augmentations:
                raise ValueError("VDM: Fourier features and augmentations need the MLP (conv=False)")
            side = round(dim**0.5)
            if side * side != dim:
                raise ValueError(f"VDM(conv=True) needs square images; dim {dim} is not a square")
            self.net = TimeConv(side, channels=hidden, depth=depth, out_channels=per_element, key=k_net)
        else:
            out_shape = (dim,) if per_element == 1 else (dim, per_element)
            self.net = TimeMLP((dim * (1 + 2 * len(self.fourier)),), out_shape=out_shape, hidden=hidden, depth=depth,
                               num_classes=augmentations or None, key=k_net)
        if denoiser == "levels":
            # Zero logits: the prior over levels starts uniform, so training starts from the exact
            # posterior mean of independent uniform pixels rather than from noise.
            last = (lambda m: m.last) if conv else (lambda m: m.layers[-1])
            self.net = eqx.tree_at(lambda m: (last(m).weight, last(m).bias), self.net,
                                   (jnp.zeros_like(last(self.net).weight), jnp.zeros_like(last(self.net).bias)))
        if learned_schedule:
            self.schedule = LearnedSchedule(gamma_min, gamma_max, key=k_sched)
        else:
            self.schedule = LinearSchedule(gamma_min, gamma_max)

    def eps(self, z, gamma, augmentation=None):
        """The noise prediction; the network sees gamma rescaled to [0, 1] by the initial endpoints (as VDM),
        and ``sin, cos(2^k pi z)`` for ``k`` in ``fourier`` (VDM's Fourier features: fine scales of z);
        with ``augmentations``, the augmentation's index (None: 0, the unaugmented data)."""
        lo, hi = self.gamma_range
        feats = [z] + [f(2.0**k * jnp.pi * z) for k in self.fourier for f in (jnp.sin, jnp.cos)]
        if self.augmentations:
            label = 0 if augmentation is None else augmentation
            out = self.net(jnp.concatenate(feats), (gamma - lo) / (hi - lo), label)
        else:
            out = self.net(jnp.concatenate(feats), (gamma - lo) / (hi - lo))
        if self.denoiser == "eps":
            return out
        # The posterior over each element's level: the network's prior logits plus the exact
        # log-likelihood log q(z_t | x = v_k) (up to a constant), then eps_hat of its mean.
        alpha, var = jnp.sqrt(jax.nn.sigmoid(-gamma)), jax.nn.sigmoid(gamma)
        values = 2.0 * (jnp.arange(self.levels) + 0.5) / self.levels - 1.0
        log_lik = -0.5 * (z[:, None] - alpha * values) ** 2 / var
        x_hat = jax.nn.softmax(out + log_lik, axis=-1) @ values
        return (z - alpha * x_hat) / jnp.sqrt(var)

    def terms(self, key, x_int, *, T: int = 0, t=None, augmentation=None) -> dict:
        """``vdm_terms`` of one data point of integer levels (nats), with an explicit key."""
        x = from_levels(x_int, self.levels)
        eps = self.eps if augmentation is None else (lambda z, gamma: self.eps(z, gamma, augmentation))

        def decoder(z0, gamma0):
            return discrete_decoder_log_prob(z0, x_int, gamma0, self.levels)

        return vdm_terms(eps, self.schedule, key, x, decoder_log_prob=decoder, T=T, antithetic_t=t,
                         variance_gradient=self.variance_gradient and not T)

    @property
    def objective(self):
        """The training objective: an ``Expectation`` of ``F(vdm, xs_int, *, T=0)``, the mean ELBO in nats.

        The parameters are the module itself (``vdm``). Times are stratified over the
        batch (VDM's low-discrepancy sampler: ``t_i = (u + i / B) mod 1``), which keeps
        the estimate unbiased; ``T > 0`` is the discrete-time ELBO with ``T`` steps.
        """
        return _OBJECTIVE

    def bits_per_dim(self, key, xs_int, *, samples: int = 1, T: int = 0) -> jax.Array:
        """Minus the ELBO in bits per dimension over ``xs_int``, averaged over ``samples`` draws."""
        nats = -self.objective.estimate(key, self, xs_int, samples=samples, T=T)
        return nats / (self.dim * math.log(2.0))

    def init_params(self, key, data) -> VDM:
        """The ``Trainable`` parameters: the module itself (its arrays were drawn by its constructor's key)."""
        del key, data
        return self

    def evaluate(self, params: VDM, data, key, *, samples: int = 1, T: int = 0) -> dict:
        """Minus the ELBO in bits per dimension of held-out integer ``data``, with its standard error.

        The value is ``params.bits_per_dim(key, data, samples=samples, T=T)`` exactly (same
        stratified times and keys); the standard error is the spread of the per-point
        estimates over ``sqrt(n)``, which stratification of the times only makes smaller.

        Returns:
            ``{"bits_per_dim": (value, standard_error)}``.
        """
        data = tuple(map(jnp.asarray, data)) if isinstance(data, (tuple, list)) else jnp.asarray(data)
        n = jax.tree_util.tree_leaves(data)[0].shape[0]  # (images, augmentation indices) or images
        weights = jnp.full(n, 1.0 / n)
        # The objective is scalar; its gradient in per-point weights is each point's ELBO
        # under exactly the estimate's keys (the weights do not touch the randomness).
        mean, per_point = _per_point(key, params, data, weights, samples, T)
        _, se = _mean_and_error(-per_point / (self.dim * math.log(2.0)))
        return {"bits_per_dim": (float(-mean / (self.dim * math.log(2.0))), se)}

    def sample(self, *args, steps: int = 200) -> jax.Array:
        """``n`` samples (integer levels) by ancestral sampling on ``steps`` equal time steps.

        Called as ``vdm.sample(key, n)`` (this module's parameters) or, the ``Trainable``
        form, ``vdm.sample(params, key, n)`` with ``params`` a trained ``VDM``.
        """
        params, (key, n) = (args[0], args[1:]) if isinstance(args[0], VDM) else (self, args)
        return params._sample(key, n, steps)

    def _sample(self, key, n: int, steps: int) -> jax.Array:
        grid = np.linspace(0.0, 1.0, steps + 1)
        alpha_bar = jax.nn.sigmoid(-jax.vmap(self.schedule)(jnp.asarray(grid, jnp.float32)))
        z0 = ddpm_sample(_vdm_eps, (self, steps), key, alpha_bar, (n, self.dim), variance="posterior")
        return to_levels(z0 / jnp.sqrt(alpha_bar[0]), self.levels)

    def discrete_pair(self, T: int):
        """The discrete-time program pair with this model's network and (fixed) schedule, and its derived ELBO.

        Returns:
            ``(elbo, params)``: a ``DiffusionELBO`` on the grid ``0, 1/T, ..., 1``
            and the parameters ``{"net": ...}`` for it (data in (-1, 1)).

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from gendsl.models import VDM
            >>> elbo, params = VDM(3, hidden=8, depth=1, key=jax.random.key(0)).discrete_pair(10)
            >>> jax.jit(elbo.objective().estimate)(jax.random.key(1), params, jnp.zeros((4, 3))).shape
            ()
        """
        from gendsl.models.ddpm import vp_forward, vp_reverse

        schedule = self.schedule

        def alpha_bar(t):
            return jax.nn.sigmoid(-schedule(t))

        model = vp_reverse(
            alpha_bar,
            lambda k: _GammaNet(self),
            (self.dim,),
            variance="posterior",
            decoder_scale=lambda t0: jnp.sqrt(jax.nn.sigmoid(schedule(t0)) / jax.nn.sigmoid(-schedule(t0))),
        )
        params = {"net": eqx.filter(_GammaNet(self), eqx.is_inexact_array)}
        return diffusion_elbo(model, vp_forward(alpha_bar), np.linspace(0.0, 1.0, T + 1)), params


class _GammaNet(eqx.Module):
    """The VDM network called with a time: it sees the rescaled gamma(t), as in continuous time."""

    vdm: VDM

    def __call__(self, z, t):
        return self.vdm.eps(z, self.vdm.schedule(t))


def _vdm_eps(params, z, t):
    vdm, steps = params
    return vdm.eps(z, vdm.schedule(t / steps))


def _elbos(vdm: VDM, xs_int, *, T: int = 0) -> jax.Array:
    """Each point's ELBO estimate, with times stratified over the batch."""
    if isinstance(xs_int, (tuple, list)):
        if not vdm.augmentations:
            raise ValueError("VDM: data given as (images, augmentation indices) needs VDM(augmentations=...)")
        xs_int, augs = xs_int
    else:
        augs = jnp.zeros(jnp.shape(xs_int)[0], jnp.int32)
    b = jnp.shape(xs_int)[0]
    k_u, k_rest = jax.random.split(objective_key("vdm"))
    ts = jnp.mod(jax.random.uniform(k_u, ()) + jnp.arange(b) / b, 1.0)
    keys = jax.random.split(k_rest, b)
    augment = vdm.augmentations > 0
    terms = jax.vmap(lambda k, x, t, a: vdm.terms(k, x, T=T, t=t, augmentation=a if augment else None))(
        keys, xs_int, ts, augs)
    return terms["reconstruction"] - terms["prior_kl"] - terms["diffusion"]


def _elbo(vdm: VDM, xs_int, *, T: int = 0) -> jax.Array:
    return jnp.mean(_elbos(vdm, xs_int, T=T))


_OBJECTIVE = expectation(_elbo)
_WEIGHTED = expectation(lambda vdm, xs, w, *, T=0: jnp.sum(w * _elbos(vdm, xs, T=T)))


@eqx.filter_jit
def _per_point(key, vdm, xs, weights, samples, T):
    """The weighted mean ELBO and its gradient in the weights: each point's ELBO."""
    mean, grad = jax.value_and_grad(lambda w: _WEIGHTED.estimate(key, vdm, xs, w, samples=samples, T=T))(weights)
    return mean, grad
