"""DDPM (Ho et al. 2020) and DDIM (Song et al. 2021) as a gendsl program pair, with classifier-free guidance.

The forward noising chain (the guide) and the reverse chain (the model) are
ordinary programs over a time grid ``ts``; ``gendsl.inference.diffusion.diffusion_elbo``
derives the ELBO and the "simple" objectives from them. Both programs are written
for any variance-preserving schedule given as ``alpha_bar(t)`` (the signal
fraction of ``q(z_t | x) = N(sqrt(alpha_bar) x, 1 - alpha_bar)``), so the same
programs serve DDPM (integer times, a beta schedule) and discrete-time VDM
(``alpha_bar = sigmoid(-gamma(t))``, see ``gendsl.models.vdm``).

``DDPM`` implements ``gendsl.models.Trainable`` (``init_params``, ``sample``, ``evaluate``:
minus the derived ELBO in bits per dimension). Its ``objective`` takes the data as one
argument, ``xs`` or ``(xs, labels)`` (what ``SVI`` minibatches together), or as
``(xs, labels)`` spread over two arguments.

Discrete data (``DDPM(..., levels=256)``: data scaled to [-1, 1] on ``levels`` grey
levels) are evaluated with Ho et al.'s (2020, section 3.3) discretized decoder: the
probability under the decoder's Gaussian of the bin of width ``2 / (levels - 1)`` around
each value, the bins at -1 and 1 extended to -inf and inf. The bound is then of the
probability of the discrete data, comparable across models and with the papers' bits/dim.
Training is unchanged (the simple objective has no decoder term).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

import gendsl
import gendsl.distributions as dist
from gendsl import handlers
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

__all__ = [
    "DDPM",
    "discretized_gaussian_log_prob",
    "linear_alpha_bar",
    "to_x0",
    "vp_forward",
    "vp_posterior",
    "vp_reverse",
]


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


def discretized_gaussian_log_prob(x, loc, scale, levels: int) -> jax.Array:
    """``log P(x's bin)`` under ``N(loc, scale^2)``, summed over elements: Ho et al.'s discrete decoder.

    The data lie on the ``levels`` values ``-1 + 2 k / (levels - 1)``; the bin of each value
    is ``[v - h, v + h]`` with ``h = 1 / (levels - 1)``, the bin of -1 extended to -inf and
    that of 1 to inf, so that the bins' probabilities sum to one. ``x`` is read as its
    nearest value.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from scipy.stats import norm
        >>> log_prob = jax.jit(discretized_gaussian_log_prob, static_argnums=3)  # one compilation, not op by op
        >>> lp = log_prob(jnp.array([-1.0, 0.0]), 0.0, 1.0, 3)  # levels -1, 0, 1: bins (-inf, -0.5], [-0.5, 0.5]
        >>> round(float(lp), 4), round(float(np.log(norm.cdf(-0.5)) + np.log(norm.cdf(0.5) - norm.cdf(-0.5))), 4)
        (-2.1358, -2.1358)
    """
    if int(levels) < 2:
        raise ValueError(f"discretized_gaussian_log_prob: levels must be at least 2, got {levels}")
    h = 1.0 / (levels - 1)
    k = jnp.clip(jnp.round((jnp.asarray(x) + 1.0) / (2.0 * h)), 0, levels - 1)
    centre = 2.0 * h * k - 1.0
    lo = jnp.where(k == 0, -jnp.inf, (centre - h - loc) / scale)
    hi = jnp.where(k == levels - 1, jnp.inf, (centre + h - loc) / scale)
    # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): take the side where the bin lies in the lower
    # tail, then log Phi(hi) + log(1 - Phi(lo) / Phi(hi)) has no cancellation in the tails.
    flip = lo + hi > 0
    lo, hi = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    log_hi = log_ndtr(hi)
    return jnp.sum(log_hi + jnp.log(-jnp.expm1(log_ndtr(lo) - log_hi)))


def _normal(loc, scale, shape):
    return dist.Normal(loc, scale).expand(shape).to_event(len(shape))


FORMS = ("scan", "unrolled")


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def _schedule(alpha_bar: Callable) -> Callable:
    """``ts -> alpha_bar`` at every time of the grid, vectorized (a schedule may be written for scalars) and jitted.

    Jitted because ``diffusion_elbo`` recognizes a fixed schedule under compile-time evaluation: ops on a
    concrete grid would each be compiled on their own, this is one compiled call (inlined when traced).
    """
    return jax.jit(jax.vmap(alpha_bar))


def _forward_steps(alpha_bar: Callable) -> Callable:
    """``ts -> ((a, s) of steps 1..n-1, (a, s) of step n)``: ``q(z_k | z_{k-1}) = N(a_k z_{k-1}, s_k^2)``."""
    schedule = _schedule(alpha_bar)

    @jax.jit
    def steps(ts):
        ab = schedule(ts)
        ratio = ab / jnp.concatenate([jnp.ones_like(ab[:1]), ab[:-1]])  # alpha_{t|s}^2 of each step
        a, s = ratio**0.5, (1.0 - ratio) ** 0.5
        return (a[:-1], s[:-1]), (a[-1], s[-1])

    return steps


def vp_forward(alpha_bar: Callable, *, form: str = "scan") -> gendsl.Model:
    """The forward noising chain ``q(z_1 | x) q(z_2 | z_1) ...`` as a guide program ``guide(x, ts)``.

    Step ``k`` goes from time ``ts[k-1]`` (the data at time "0", ``alpha_bar = 1``)
    to ``ts[k]``: ``N(alpha_{t|s} z, 1 - alpha_{t|s}^2)``.

    Args:
        alpha_bar: the schedule, ``t -> alpha_bar_t``.
        form: ``"scan"`` (default): the states at ``ts[0..n-2]`` are drawn by one
            ``gendsl.scan`` (site ``"chain/z"``, stacked in time order; its body is traced
            once, the per-step ``alpha_{t|s}`` are its scanned inputs) and the state at the
            last time is the site ``"zT"`` (the reverse chain draws it from its prior).
            ``"unrolled"``: a Python loop, sites ``"z1"``, ..., ``"zn"`` (traced once per step:
            recognizing a 1,000-step chain takes tens of seconds).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> ab = linear_alpha_bar(10)
        >>> tr = vp_forward(lambda t: jnp.asarray(ab)[t]).simulate(jax.random.key(0), jnp.zeros(2), jnp.arange(1, 11))
        >>> {name: value.shape for name, value in tr.choices.items()}
        {'chain/z': (9, 2), 'zT': (2,)}
        >>> unrolled = vp_forward(lambda t: jnp.asarray(ab)[t], form="unrolled")
        >>> sorted(unrolled.simulate(jax.random.key(0), jnp.zeros(2), jnp.arange(1, 11)).choices)[:3]
        ['z1', 'z10', 'z2']
    """
    _check_form(form)
    forward_steps = _forward_steps(alpha_bar)

    @gendsl.model
    def guide(x, ts, *_):
        shape = jnp.shape(x)
        if form == "unrolled":
            z, prev = x, 1.0
            for k in range(len(ts)):
                ab = alpha_bar(ts[k])
                ratio = ab / prev  # ** 0.5 rather than jnp.sqrt: a concrete schedule stays numpy (cheap to trace)
                z = gendsl.sample(f"z{k + 1}", _normal(ratio**0.5 * z, (1.0 - ratio) ** 0.5, shape))
                prev = ab
            return z
        steps, (a_n, s_n) = forward_steps(ts)

        def step(z, a_s):
            return gendsl.sample("z", _normal(a_s[0] * z, a_s[1], shape)), None

        z, _ = gendsl.scan("chain", step, x, steps)
        return gendsl.sample("zT", _normal(a_n * z, s_n, shape))

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
    form: str = "scan",
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
        form: ``"scan"`` (default): the prior is the site ``"zT"`` and the reverse steps are
            one ``gendsl.scan(..., reverse=True)`` (site ``"chain/z"``, stacked in time order,
            as in ``vp_forward``'s scan form); ``"unrolled"``: sites ``"zn"``, ..., ``"z1"``.
            Pair it with a guide of the same form.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.models import TimeMLP
        >>> ab = linear_alpha_bar(10)
        >>> model = vp_reverse(lambda t: jnp.asarray(ab)[t], lambda k: TimeMLP(2, hidden=8, depth=1, key=k), (2,))
        >>> tr = model.simulate(jax.random.key(0), None, jnp.arange(1, 4))
        >>> {name: value.shape for name, value in tr.choices.items()}, tr.retval.shape
        ({'zT': (2,), 'chain/z': (2, 2), 'x': (2,)}, (2,))
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    _check_form(form)
    shape = tuple(shape)

    def reverse_step(module, z, t, ab_s, ab_t, cond):
        """``(mean, scale)`` of ``p(z_s | z_t)``."""
        x0 = to_x0(module(z, t * time_scale, *cond), z, ab_t, parameterization)
        mean, var = vp_posterior(x0, z, ab_s, ab_t)
        if variance == "beta":
            var = 1.0 - ab_t / ab_s
        return mean, jnp.sqrt(var)

    def decode(module, z, t_1, ab_1, x, cond):
        x0 = to_x0(module(z, t_1 * time_scale, *cond), z, ab_1, parameterization)
        if decoder_scale is None:
            scale = jnp.sqrt(1.0 - ab_1)
        else:
            scale = decoder_scale(t_1) if callable(decoder_scale) else decoder_scale
        return gendsl.sample("x", _normal(x0, scale, shape), obs=x)

    schedule = _schedule(alpha_bar)

    @gendsl.model
    def model(x, ts, *cond):
        module = gendsl.module("net", net)
        n = len(ts)
        if form == "unrolled":
            z = gendsl.sample(f"z{n}", _normal(0.0, 1.0, shape))
            for k in range(n - 1, 0, -1):
                mean, scale = reverse_step(module, z, ts[k], alpha_bar(ts[k - 1]), alpha_bar(ts[k]), cond)
                z = gendsl.sample(f"z{k}", _normal(mean, scale, shape))
            return decode(module, z, ts[0], alpha_bar(ts[0]), x, cond)
        ab = schedule(ts)
        z = gendsl.sample("zT", _normal(0.0, 1.0, shape))

        def step(z, inputs):
            t, ab_s, ab_t = inputs
            return gendsl.sample("z", _normal(*reverse_step(module, z, t, ab_s, ab_t, cond), shape)), None

        z, _ = gendsl.scan("chain", step, z, (jnp.asarray(ts)[1:], ab[:-1], ab[1:]), reverse=True)
        return decode(module, z, ts[0], ab[0], x, cond)

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
        alpha_bar: the schedule ``alpha_bar_0 = 1, ..., alpha_bar_T`` (default: DDPM's linear one).
        p_uncond: for a class-conditional model, the probability with which the
            training objective replaces a label by the "no condition" token
            (classifier-free guidance training).
        levels: for discrete data, scaled to [-1, 1] on ``levels`` grey levels
            (``-1 + 2 k / (levels - 1)``; 256 for 8-bit images): ``evaluate`` then
            bounds the probability of the discrete data with the discretized decoder
            (``discretized_gaussian_log_prob``). None: continuous data, Gaussian decoder.
        form: how the program pair writes the chains (see ``vp_forward``): ``"scan"`` (default;
            recognized in time independent of ``T``) or ``"unrolled"`` (one site per step; the
            same objectives and values, recognized in time proportional to ``T``).

    Attributes:
        model, guide: the program pair.
        elbo: the ``DiffusionELBO`` derived from them (Gaussian decoder).
        objective: the training objective, an ``Expectation`` of
            ``F(params, data)``: the derived simple objective (minus the mean squared
            error of the prediction) of a batch. ``data`` is ``xs``, or ``(xs, *cond)``
            with per-example conditions (labels, dropped with probability
            ``p_uncond``, or vectors); ``F(params, xs, *cond)`` is the same. Train it
            with ``gendsl.inference.SVI``, which minibatches a tuple's arrays together.

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
                 alpha_bar: np.ndarray | None = None, p_uncond: float = 0.0, levels: int | None = None,
                 form: str = "scan"):
        if levels is not None and (not isinstance(levels, (int, np.integer)) or levels < 2):
            raise ValueError(f"DDPM: levels must be an int >= 2 (the number of grey levels) or None, got {levels!r}")
        self.shape = tuple(shape)
        self.T = T
        self.parameterization = parameterization
        self.num_classes = num_classes
        self.levels = None if levels is None else int(levels)
        self.alpha_bar = linear_alpha_bar(T) if alpha_bar is None else np.asarray(alpha_bar)
        table = _lookup(self.alpha_bar)
        self.ts = np.arange(1, T + 1)
        if net is None:
            def net(k):
                return TimeMLP(self.shape, hidden=hidden, depth=depth, num_classes=num_classes, key=k)
        self._static = static_part(net)
        self.guide = vp_forward(table, form=form)
        self.model = vp_reverse(
            table, net, self.shape, parameterization=parameterization, variance=variance,
            decoder_scale=float(np.sqrt(1.0 - self.alpha_bar[1])), time_scale=1.0 / T, form=form,
        )
        self._prior = "zT" if form == "scan" else "z1"  # the prior's site on a one-time grid
        self.elbo = diffusion_elbo(self.model, self.guide, self.ts)
        self.p_uncond = p_uncond
        self.objective = self._objective()

    def init(self, key, *cond) -> dict:
        """Initial parameters ``{"net": ...}`` (``cond``: one example's condition, for a vector-conditioned net).

        The parameters of the reverse-chain program, initialized by running it on a one-step
        grid: its only parameters are the network's, which do not depend on the grid, and a
        one-step chain is traced in milliseconds where the derived ELBO's initialization
        traces the whole ``T``-step chain.
        """
        if self.num_classes is not None and not cond:
            cond = (0,)
        one = [jnp.asarray(c) for c in cond]
        return self.model.init(key, jnp.zeros(self.shape), self.ts[:1], *one)

    def init_params(self, key, data) -> dict:
        """The ``Trainable`` initial parameters; ``data`` is a batch, or ``(xs, *conds)`` for a conditional model."""
        _, *cond = data if isinstance(data, tuple) else (data,)
        return self.init(key, *(jnp.asarray(c)[0] for c in cond))

    def decoder(self, params, z1, *cond) -> tuple[jax.Array, jax.Array]:
        """The model's decoder ``p(x | z_1) = N(loc, scale^2)`` at the state ``z1`` of one data point.

        Read off the reverse-chain program itself (run on the first time alone, its
        state substituted), so it is the decoder that ``elbo`` scores with.

        Returns:
            ``(loc, scale)``, each of the data's event shape.
        """
        fn = handlers.substitute(self.model.bind(params).fn, data={self._prior: z1})
        tr = handlers.trace(handlers.seed(fn, key=jax.random.key(0))).get_trace(None, self.ts[:1], *cond)
        d = tr["x"]["fn"]
        while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
            d = d.base_dist
        return jnp.broadcast_to(d.loc, self.shape), jnp.broadcast_to(d.scale, self.shape)

    def terms(self, params, key, x, *cond) -> dict:
        """One draw of each term of the ELBO of one data point ``x``, with this model's decoder.

        ``prior_kl`` and ``step_kl`` (and the sampled ``step``) are ``elbo.terms`` with
        ``fold_in(key, 0)``; ``reconstruction`` is ``log p(x | z_1)`` at
        ``z_1 ~ q(z_1 | x)`` drawn with ``fold_in(key, 1)``, by the discretized decoder
        when the model has ``levels`` (the Gaussian decoder otherwise). The ELBO is
        ``reconstruction - prior_kl - (T - 1) * step_kl``.

        Returns:
            ``{"reconstruction", "prior_kl", "step_kl", "step"}``.
        """
        out = dict(self.elbo.terms(params, jax.random.fold_in(key, 0), x, *cond))
        chain = self.elbo.chain(params, x)
        noise = jax.random.normal(jax.random.fold_in(key, 1), jnp.shape(x), jnp.result_type(x))
        loc, scale = self.decoder(params, chain.A[0] * x + chain.B[0] + chain.S[0] * noise, *cond)
        if self.levels is None:
            out["reconstruction"] = jnp.sum(dist.Normal(loc, scale).log_prob(x))
        else:
            out["reconstruction"] = discretized_gaussian_log_prob(x, loc, scale, self.levels)
        return out

    def evaluate(self, params, data, key, *, samples: int = 1) -> dict:
        """Minus the ELBO of held-out ``data`` in bits per dimension, with its standard error.

        Each point's ELBO is estimated from ``terms`` (the derived Gaussian chain:
        closed-form KLs, one sampled reverse step and one draw of ``z_1``), averaged
        over ``samples`` draws with the keys ``jax.random.split(key, (n, samples))``;
        the value is their mean over the points and the standard error their spread
        over ``sqrt(n)``. With ``levels`` the decoder is discretized and this bounds
        the probability of the discrete data (``data`` on the grid in [-1, 1]);
        without, it bounds the continuous density of the data as scaled in training.
        ``data`` may be ``(xs, *conds)`` for a conditional model.

        Returns:
            ``{"bits_per_dim": (value, standard_error)}``.
        """
        xs, *cond = data if isinstance(data, tuple) else (data,)
        xs = jnp.asarray(xs)
        keys = jax.random.split(key, (xs.shape[0], samples))
        elbos = _per_point_elbo(self, params, keys, xs, tuple(jnp.asarray(c) for c in cond))
        value, se = mean_and_error(-np.asarray(elbos) / (np.prod(self.shape) * np.log(2.0)))
        return {"bits_per_dim": (value, se)}

    def _objective(self):
        simple = self.elbo.simple_objective(parameterization=self.parameterization)
        conditional = self.num_classes is not None

        def objective(params, data, *cond):
            xs, cond = _unpack(data, cond)
            if conditional:
                if not cond:
                    raise ValueError("DDPM.objective: this model is class-conditional; pass the data as (xs, labels)")
                labels = drop_condition(objective_key("condition_dropout"), cond[0], self.p_uncond, self.num_classes)
                cond = (labels, *cond[1:])
            return simple.fn(params, xs, *cond)

        def init(key, data, *cond, **kwargs):
            # The network's parameters from a one-step chain (``DDPM.init``): no constraints, and no
            # trace of the whole T-step chain, which SVI.init would otherwise make just to learn that.
            _, cond = _unpack(data, cond)
            return self.init(key, *(jnp.asarray(c)[0] for c in cond)), {}

        objective.__name__ = "ddpm_simple"
        return expectation(objective, models=simple.models, init=init)

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
        """``n`` samples by ancestral DDPM (``method="ddpm"`` or ``"ancestral"``) or DDIM (``steps`` even times).

        ``labels`` (one or ``n``) with ``guidance`` ``w`` for a class-conditional
        model (classifier-free guidance); ``cond`` for a vector-conditioned one.
        """
        eps_fn = self.eps
        if self.num_classes is not None:
            if labels is None:
                raise ValueError("DDPM.sample: this model is class-conditional; pass labels")
            eps_fn = guided(self.eps, guidance, self.num_classes)
            cond = (jnp.broadcast_to(jnp.asarray(labels), (n,)),)
        if method in ("ddpm", "ancestral"):
            return ddpm_sample(eps_fn, params, key, self.alpha_bar, (n, *self.shape), cond=cond)
        if method == "ddim":
            times = np.linspace(self.T, 0, (steps or self.T) + 1).round().astype(int)
            return ddim_sample(eps_fn, params, key, self.alpha_bar, times, (n, *self.shape), eta=eta, cond=cond)
        raise ValueError(f"method must be 'ddpm' (or 'ancestral') or 'ddim', got {method!r}")


def _unpack(data, cond: tuple) -> tuple:
    """``(xs, conds)`` of the objective's arguments: ``data`` alone, ``(xs, *conds)``, or ``xs, *conds``."""
    if isinstance(data, tuple):
        if cond:
            raise ValueError("DDPM.objective: pass the conditions inside the data tuple (xs, labels) or after xs, "
                             "not both")
        return data[0], tuple(data[1:])
    return data, tuple(cond)


@eqx.filter_jit
def _per_point_elbo(ddpm, params, keys, xs, cond):
    def one(ks, x, *c):
        def draw(k):
            t = ddpm.terms(params, k, x, *c)
            return t["reconstruction"] - t["prior_kl"] - (ddpm.elbo.n - 1) * t["step_kl"]

        return jnp.mean(jax.vmap(draw)(ks))

    return jax.vmap(one)(keys, xs, *cond)
