"""DDPM (Ho et al. 2020) and DDIM (Song et al. 2021) as a gendsl program pair, with classifier-free guidance.

The forward noising chain (the guide) and the reverse chain (the model) are
ordinary programs over a time grid ``ts``; ``gendsl.inference.diffusion.diffusion_elbo``
derives the ELBO and the "simple" objectives from them. Both programs are written
for any variance-preserving schedule given as ``alpha_bar(t)`` (the signal
fraction of ``q(z_t | x) = N(sqrt(alpha_bar) x, 1 - alpha_bar)``), so the same
programs serve DDPM (integer times, a beta schedule) and discrete-time VDM
(``alpha_bar = sigmoid(-gamma(t))``, see ``gendsl.models.vdm``).

``DDPM`` implements ``gendsl.models.Trainable`` (``init_params``, ``sample``, ``evaluate``:
minus the derived ELBO in bits per dimension).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import gendsl
import gendsl.distributions as dist
from gendsl.inference import expectation
from gendsl.inference.diffusion import (
    ddim_sample,
    ddpm_sample,
    diffusion_elbo,
    drop_condition,
    guided,
    objective_key,
    vp_posterior,
)
from gendsl.models._nets import TimeMLP, static_part
from gendsl.models._protocol import mean_and_error

__all__ = ["DDPM", "linear_alpha_bar", "to_x0", "vp_forward", "vp_posterior", "vp_reverse"]


def linear_alpha_bar(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> np.ndarray:
    """``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` of DDPM's linear schedule, ``t = 0..T`` (``alpha_bar_0 = 1``).

    Example:
        >>> linear_alpha_bar(1000)[[0, 1, 1000]].round(5)
        array([1.000e+00, 9.999e-01, 4.000e-05])
    """
    betas = np.linspace(beta_1, beta_T, T, dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def to_x0(pred, z, alpha_bar_t, parameterization: str):
    """The x0 prediction implied by a network output in the ``eps``, ``x0`` or ``v`` parameterization (VP).

    Example:
        >>> from gendsl.models.ddpm import to_x0
        >>> float(to_x0(0.5, 1.0, 0.64, "eps"))   # (z - sqrt(1 - ab) eps) / sqrt(ab) = (1 - 0.3) / 0.8
        0.875
    """
    a, s = jnp.sqrt(alpha_bar_t), jnp.sqrt(1.0 - alpha_bar_t)
    if parameterization == "eps":
        return (z - s * pred) / a
    if parameterization == "x0":
        return pred
    if parameterization == "v":
        return a * z - s * pred
    raise ValueError(f"parameterization must be 'eps', 'x0' or 'v', got {parameterization!r}")


def _normal(loc, scale, shape):
    return dist.Normal(loc, scale).expand(shape).to_event(len(shape))


def vp_forward(alpha_bar: Callable) -> gendsl.Model:
    """The forward noising chain ``q(z_1 | x) q(z_2 | z_1) ...`` as a guide program ``guide(x, ts)``.

    Step ``k`` goes from time ``ts[k-1]`` (the data at time "0", ``alpha_bar = 1``)
    to ``ts[k]``: ``N(alpha_{t|s} z, 1 - alpha_{t|s}^2)``. Sites ``"z1"``, ..., ``"zn"``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> ab = linear_alpha_bar(10)
        >>> tr = vp_forward(lambda t: jnp.asarray(ab)[t]).simulate(jax.random.key(0), jnp.zeros(2), jnp.arange(1, 11))
        >>> sorted(tr.choices)[:3]
        ['z1', 'z10', 'z2']
    """

    @gendsl.model
    def guide(x, ts, *_):
        shape = jnp.shape(x)
        z, prev = x, 1.0
        for k in range(len(ts)):
            ab = alpha_bar(ts[k])
            ratio = ab / prev  # ** 0.5 rather than jnp.sqrt: a concrete schedule stays numpy (cheap to trace)
            z = gendsl.sample(f"z{k + 1}", _normal(ratio**0.5 * z, (1.0 - ratio) ** 0.5, shape))
            prev = ab
        return z

    return guide


def vp_reverse(
    alpha_bar: Callable,
    net: Callable,
    shape: tuple,
    *,
    parameterization: str = "eps",
    variance: str = "posterior",
    decoder_scale: float | Callable | None = None,
    time_scale: float = 1.0,
) -> gendsl.Model:
    """The reverse chain as a model program ``model(x, ts, *cond)``.

    ``z_n ~ N(0, I)``; for each earlier time ``s = ts[k-1] < t = ts[k]``,
    ``z_s ~ N(mu, sigma^2)`` with ``mu`` the posterior mean ``q(z_s | z_t, x0)`` at the
    network's x0 prediction; finally ``x ~ N(x0_hat(z_1, ts[0]), decoder_scale^2)``.

    Args:
        alpha_bar: the schedule, ``t -> alpha_bar_t``.
        net: ``key -> module`` (or a module): ``module(z, t * time_scale, *cond)``
            predicts eps, x0 or v.
        shape: the event shape of a data point (used when ``x`` is None, for sampling).
        parameterization: what the network predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        variance: ``"posterior"`` (sigma^2 = the posterior variance, as in VDM) or
            ``"beta"`` (sigma^2 = 1 - alpha_{t|s}^2, DDPM's beta_t).
        decoder_scale: the decoder's standard deviation (a float or ``t -> float``);
            default ``sqrt(1 - alpha_bar(ts[0]))``.
        time_scale: the network sees ``t * time_scale`` (``1/T`` for integer times).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.models import TimeMLP
        >>> ab = linear_alpha_bar(10)
        >>> model = vp_reverse(lambda t: jnp.asarray(ab)[t], lambda k: TimeMLP(2, hidden=8, depth=1, key=k), (2,))
        >>> tr = model.simulate(jax.random.key(0), None, jnp.arange(1, 4))
        >>> sorted(tr.choices), tr.retval.shape
        (['x', 'z1', 'z2', 'z3'], (2,))
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    shape = tuple(shape)

    @gendsl.model
    def model(x, ts, *cond):
        module = gendsl.module("net", net)
        n = len(ts)
        z = gendsl.sample(f"z{n}", _normal(0.0, 1.0, shape))
        for k in range(n - 1, 0, -1):
            s, t = ts[k - 1], ts[k]
            ab_s, ab_t = alpha_bar(s), alpha_bar(t)
            x0 = to_x0(module(z, t * time_scale, *cond), z, ab_t, parameterization)
            mean, var = vp_posterior(x0, z, ab_s, ab_t)
            if variance == "beta":
                var = 1.0 - ab_t / ab_s
            z = gendsl.sample(f"z{k}", _normal(mean, jnp.sqrt(var), shape))
        ab_1 = alpha_bar(ts[0])
        x0 = to_x0(module(z, ts[0] * time_scale, *cond), z, ab_1, parameterization)
        if decoder_scale is None:
            scale = jnp.sqrt(1.0 - ab_1)
        else:
            scale = decoder_scale(ts[0]) if callable(decoder_scale) else decoder_scale
        return gendsl.sample("x", _normal(x0, scale, shape), obs=x)

    return model


def _lookup(alpha_bar: np.ndarray) -> Callable:
    """``t -> alpha_bar[t]``: numpy for a concrete ``t`` (the guide's full grid), a JAX gather for a traced one."""
    as_np = np.asarray(alpha_bar, np.float32)
    as_jnp = jnp.asarray(as_np)

    def lookup(t):
        if isinstance(t, (int, np.integer, np.ndarray)):
            return as_np[t]
        return as_jnp[t]

    return lookup


class DDPM:
    """DDPM / DDIM with optional classifier-free guidance, on data of a fixed event shape.

    Args:
        shape: the event shape of a data point.
        T: number of diffusion steps.
        parameterization: the network predicts ``"eps"`` (DDPM), ``"x0"`` or ``"v"``.
        variance: reverse-step variance, ``"beta"`` (DDPM) or ``"posterior"``.
        num_classes: for a class-conditional model (labels ``0..num_classes-1``;
            ``num_classes`` means "no condition", used by guidance).
        hidden, depth: the size of the ``TimeMLP`` network.
        net: ``key -> module`` to use another network, called as ``net(z, t / T, *cond)``.
        p_uncond: for a class-conditional model, the probability with which the
            training objective replaces a label by the "no condition" token
            (classifier-free guidance training).

    Attributes:
        model, guide: the program pair.
        elbo: the ``DiffusionELBO`` derived from them.
        objective: the training objective, an ``Expectation`` of
            ``F(params, xs, *cond)``: the derived simple objective (minus the mean
            squared error of the prediction) of a batch ``xs`` with per-example
            conditions ``cond`` (labels, dropped with probability ``p_uncond``, or
            vectors). Train it with ``gendsl.inference.SVI``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from gendsl.inference import SVI
        >>> ddpm = DDPM((2,), T=50, hidden=32, depth=2)
        >>> xs = jax.random.normal(jax.random.key(0), (64, 2))
        >>> params = SVI(ddpm.objective, optax.adam(1e-3)).run(jax.random.key(1), 10, xs, progress=False).params
        >>> ddpm.sample(params, jax.random.key(2), 4, method="ddim", steps=10).shape
        (4, 2)
    """

    sample_options = ("method", "steps", "eta", "labels", "guidance")

    def __init__(self, shape, *, T: int = 1000, parameterization: str = "eps", variance: str = "beta",
                 num_classes: int | None = None, hidden: int = 128, depth: int = 3, net=None,
                 alpha_bar: np.ndarray | None = None, p_uncond: float = 0.0):
        self.shape = tuple(shape)
        self.T = T
        self.parameterization = parameterization
        self.num_classes = num_classes
        self.alpha_bar = linear_alpha_bar(T) if alpha_bar is None else np.asarray(alpha_bar)
        table = _lookup(self.alpha_bar)
        self.ts = np.arange(1, T + 1)
        if net is None:
            def net(k):
                return TimeMLP(self.shape, hidden=hidden, depth=depth, num_classes=num_classes, key=k)
        self._static = static_part(net)
        self.guide = vp_forward(table)
        self.model = vp_reverse(
            table, net, self.shape, parameterization=parameterization, variance=variance,
            decoder_scale=float(np.sqrt(1.0 - self.alpha_bar[1])), time_scale=1.0 / T,
        )
        self.elbo = diffusion_elbo(self.model, self.guide, self.ts)
        self.p_uncond = p_uncond
        self.objective = self._objective()

    def init(self, key, *cond) -> dict:
        """Initial parameters ``{"net": ...}`` (``cond``: one example's condition, for a vector-conditioned net).

        ``gendsl.inference.init_params(ddpm.objective, key, xs, *conds)[0]`` without a batch at hand.
        """
        if self.num_classes is not None and not cond:
            cond = (0,)
        batch = [jnp.asarray(c)[None] for c in cond]
        return self.elbo.init_params(key, jnp.zeros((1, *self.shape)), *batch)[0]

    def init_params(self, key, data) -> dict:
        """The ``Trainable`` initial parameters; ``data`` is a batch, or ``(xs, *conds)`` for a conditional model."""
        _, *cond = data if isinstance(data, tuple) else (data,)
        return self.init(key, *(jnp.asarray(c)[0] for c in cond))

    def evaluate(self, params, data, key, *, samples: int = 1) -> dict:
        """Minus the ELBO of held-out ``data`` in bits per dimension, with its standard error.

        Each point's ELBO is ``elbo.elbo`` (the derived Gaussian chain: closed-form KLs, one
        sampled reverse step, averaged over ``samples`` draws); the value is their mean and
        the standard error their spread over ``sqrt(n)``. The decoder is Gaussian, so this is
        the bound of the continuous density (data scaled as in training); ``data`` may be
        ``(xs, *conds)`` for a conditional model.

        Returns:
            ``{"bits_per_dim": (value, standard_error)}``.
        """
        xs, *cond = data if isinstance(data, tuple) else (data,)
        xs = jnp.asarray(xs)
        keys = jax.random.split(key, (xs.shape[0], samples))
        elbos = _per_point_elbo(self.elbo, params, keys, xs, tuple(jnp.asarray(c) for c in cond))
        value, se = mean_and_error(-np.asarray(elbos) / (np.prod(self.shape) * np.log(2.0)))
        return {"bits_per_dim": (value, se)}

    def _objective(self):
        simple = self.elbo.simple_objective(parameterization=self.parameterization)
        if self.num_classes is None:
            return simple

        def objective(params, xs, *cond):
            if not cond:
                raise ValueError("DDPM.objective: this model is class-conditional; pass labels after the data")
            labels = drop_condition(objective_key("condition_dropout"), cond[0], self.p_uncond, self.num_classes)
            return simple.fn(params, xs, labels, *cond[1:])

        return expectation(objective, models=simple.models, init=self.elbo.init_params)

    def eps(self, params, z, t, *cond):
        """The network's noise prediction at integer time ``t`` (converted from its parameterization)."""
        out = eqx.combine(params["net"], self._static)(z, t / self.T, *cond)
        ab = jnp.asarray(self.alpha_bar, jnp.float32)[t]
        if self.parameterization == "eps":
            return out
        x0 = to_x0(out, z, ab, self.parameterization)
        return (z - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)

    def sample(self, params, key, n: int, *, method: str = "ddpm", steps: int | None = None, eta: float = 0.0,
               labels=None, guidance: float = 0.0, cond: tuple = ()) -> jax.Array:
        """``n`` samples by ancestral DDPM or DDIM (``steps`` evenly spaced times).

        ``labels`` (one or ``n``) with ``guidance`` ``w`` for a class-conditional
        model (classifier-free guidance); ``cond`` for a vector-conditioned one.
        """
        eps_fn = self.eps
        if self.num_classes is not None:
            if labels is None:
                raise ValueError("DDPM.sample: this model is class-conditional; pass labels")
            eps_fn = guided(self.eps, guidance, self.num_classes)
            cond = (jnp.broadcast_to(jnp.asarray(labels), (n,)),)
        if method == "ddpm":
            return ddpm_sample(eps_fn, params, key, self.alpha_bar, (n, *self.shape), cond=cond)
        if method == "ddim":
            times = np.linspace(self.T, 0, (steps or self.T) + 1).round().astype(int)
            return ddim_sample(eps_fn, params, key, self.alpha_bar, times, (n, *self.shape), eta=eta, cond=cond)
        raise ValueError(f"method must be 'ddpm' or 'ddim', got {method!r}")


@eqx.filter_jit
def _per_point_elbo(elbo, params, keys, xs, cond):
    def one(ks, x, *c):
        return jnp.mean(jax.vmap(lambda k: elbo.elbo(params, k, x, *c))(ks))

    return jax.vmap(one)(keys, xs, *cond)
