"""Perturbation kernels and interpolation paths as programs; the training targets derived from them.

A *path* is a gendsl program ``path(t, datum)`` whose site ``x_t`` (a sample or
``gendsl.deterministic`` site) is the interpolant at time ``t``; every random
choice inside it (the noise endpoint, a latent ``gamma(t) z`` term) must be
reparameterized. Because gendsl derives each site's key from its address, running
the program again with the same key and another ``t`` reuses the same noise, so
``t -> x_t`` is a differentiable function and the velocity target is its
``jax.jvp`` in ``t`` (flow matching, rectified flow, stochastic interpolants).

A *kernel* is a program ``kernel(t, x0)`` whose only random choice is the sample
site ``x_t ~ k(. | x0, t)``; the denoising-score-matching target
``grad_x log k(x_t | x0)`` is ``jax.grad`` of the program's own log density
(``Model.assess``), so a new kernel needs no hand-derived target.

Conventions (decided here, used by every objective and sampler of this package):

* flow time runs from ``t = 0`` (noise) to ``t = 1`` (data), as in rectified flow
  and Lipman et al.'s flow matching;
* an objective is a gendsl ``Expectation`` of the quantity to maximize (the
  *negative* regression loss), averaged over the data points of the batch, and is
  trained by ``gendsl.inference.SVI`` like the variational objectives; its random
  choices come from the objective's own key (``objective_key``); the network is a
  gendsl model ``net(x, t)`` holding its parameters with ``gendsl.module``, applied
  to one data point (it is ``vmap``-ed over the batch), and the objective's
  ``init=`` initializes it on one data point;
* the time (or noise level) of each data point is drawn from ``time``, a NumPyro
  distribution (``Uniform(0, 1)`` by default; EDM's log-normal for noise levels);
* the path or kernel program is fixed: only the network's parameters are trained
  (a learned schedule would need the path's parameters in the objective too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as ndist

import gendsl
from gendsl import handlers
from gendsl.inference import EstimatorError, Reparam, expectation
from gendsl.inference._expectation import Expectation
from gendsl.inference.diffusion._objective_key import objective_key

__all__ = [
    "denoising_objective",
    "denoising_score_matching",
    "flow_matching",
    "kernel_score",
    "linear_path",
    "path_velocity",
    "stochastic_interpolant",
    "trig_path",
]


def _site_value(program, site: str, key, args) -> tuple[jax.Array, dict]:
    """Run ``program`` with address-based keys; the value at ``site`` and the program's sample sites."""
    tr = handlers.trace(handlers.seed(program.fn, key=key)).get_trace(*args)
    if site not in tr:
        raise gendsl.AddressError(
            f"{_name(program)}: expected a site '{site}' holding x_t, but the program visits "
            f"{sorted(tr)}; name the interpolant's site '{site}' or pass site=..."
        )
    sites = {a: m for a, m in tr.items() if m["type"] == "sample" and not m["is_observed"]}
    return tr[site]["value"], sites


def _name(program) -> str:
    return f"program '{getattr(program, '__name__', program)}'"


def _check_reparam(program, sites: dict, purpose: str) -> None:
    for address, msg in sites.items():
        fn, strategy = msg["fn"], msg["infer"].get("strategy")
        if isinstance(strategy, str) and strategy.lower() == "reparam":
            strategy = None
        if not fn.has_rsample or not (strategy is None or isinstance(strategy, Reparam)):
            why = f"{type(fn).__name__} has no reparameterized sampler" if not fn.has_rsample else (
                f"its strategy is {strategy!r}"
            )
            raise EstimatorError(
                f"{_name(program)}, site '{address}': {purpose} needs every random choice to be a "
                f"differentiable function of its noise (REPARAM), but {why}; use a reparameterizable "
                "distribution (Normal, Beta, ...) or pass the value in as an argument"
            )


def path_velocity(path, *, site: str = "x_t") -> Callable:
    """The interpolant and its velocity target, derived from a path program.

    Args:
        path: a gendsl program ``path(t, *args)`` with a site ``site`` (a sample
            or deterministic site) holding ``x_t``; its random choices must be
            reparameterized.
        site: the address of ``x_t``.

    Returns:
        ``f(key, t, *args) -> (x_t, dx_t/dt)``: the velocity is ``jax.jvp`` of
        ``t -> x_t`` with the program's noise (its key) held fixed.

    Raises:
        EstimatorError: a random choice of the path is not reparameterized (the
            message names the site).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import linear_path, path_velocity
        >>> x1 = jnp.array([2.0, -1.0])
        >>> x_t, v = path_velocity(linear_path)(jax.random.key(0), 0.3, x1)
        >>> x0 = (x_t - 0.3 * x1) / 0.7                  # the noise endpoint
        >>> bool(jnp.allclose(v, x1 - x0, atol=1e-5))    # rectified flow: v = x1 - x0
        True
    """
    path = gendsl.model(path)

    def velocity(key, t, *args):
        t = jnp.asarray(t, jnp.result_type(float))
        found: dict = {}

        def x_of(t):
            value, sites = _site_value(path, site, key, (t, *args))
            found.update(sites)
            return value

        x_t, v = jax.jvp(x_of, (t,), (jnp.ones_like(t),))
        _check_reparam(path, found, "the velocity target d x_t / dt")
        return x_t, v

    return velocity


def kernel_score(kernel, *, site: str = "x_t") -> Callable:
    """A draw from a perturbation kernel and its score target, derived from the kernel program.

    Args:
        kernel: a gendsl program ``kernel(t, *args)`` whose only random choice
            is the sample site ``site``, ``x_t ~ k(. | args, t)``.
        site: the address of ``x_t``.

    Returns:
        ``f(key, t, *args) -> (x_t, grad_x log k(x_t | args, t))``, the gradient
        taken by ``jax.grad`` of ``kernel.assess``.

    Raises:
        EstimatorError: ``site`` is not a sample site, or the kernel draws other
            random choices (then ``x_t``'s density is not the program's density).

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference.diffusion import kernel_score
        >>> @gendsl.model
        ... def vp(t, x0):   # x_t ~ N(a x0, s^2)
        ...     a, s = jnp.cos(t), jnp.sin(t)
        ...     gendsl.sample("x_t", dist.Normal(a * x0, s).to_event(1))
        >>> x0 = jnp.array([1.0, 2.0])
        >>> x_t, score = kernel_score(vp)(jax.random.key(0), 0.5, x0)
        >>> exact = -(x_t - jnp.cos(0.5) * x0) / jnp.sin(0.5) ** 2
        >>> bool(jnp.allclose(score, exact, rtol=1e-5))
        True
    """
    kernel = gendsl.model(kernel)

    def score(key, t, *args):
        value, sites = _site_value(kernel, site, key, (t, *args))
        if site not in sites:
            raise EstimatorError(
                f"{_name(kernel)}: the score target needs the density of '{site}', so '{site}' must be "
                "a latent sample site (gendsl.sample), not a deterministic or observed site"
            )
        others = sorted(set(sites) - {site})
        if others:
            raise EstimatorError(
                f"{_name(kernel)}: the score of k(x_t | x0) needs x_t's density in closed form, but the "
                f"kernel also draws {others}; sample '{site}' directly from one distribution with a "
                "log_prob (for PFGM++ use gendsl.inference.diffusion.PFGMPPKernel)"
            )
        target = jax.grad(lambda x: kernel.assess({site: x}, t, *args))(value)
        return value, target

    return score


# -- the objective ----------------------------------------------------------------------------


def _batch_size(data) -> int:
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("a diffusion/flow objective needs a batch of data with a leading axis, got an empty pytree")
    return leaves[0].shape[0]


def _per_point(fn, key, t, data):
    keys = jax.random.split(key, t.shape[0])
    return jax.vmap(fn)(keys, t, data)


def _net_init(net, draw, time):
    """``init(key, data, *args)`` for an objective whose parameters are those of a per-data-point network.

    The objective is called with a whole batch, which the network never sees: it is
    initialized on one data point's ``x_t`` at a typical time.
    """

    def init(key, data, *args, **kwargs):
        datum = jax.tree_util.tree_map(lambda a: a[0], data)
        t = jnp.asarray(time.mean, jnp.result_type(float))
        t = jnp.where(jnp.isfinite(t), t, 1.0)
        # Only the shape of x_t matters to initialize the network: no need to run the sampler.
        shape = jax.eval_shape(lambda d, a: draw(jax.random.key(0), t, d, *a), datum, args)
        x_t = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
        return net.init_with_constraints(key, x_t, t)

    return init


def _sq(a, b):
    d = a - b
    return jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=-1)


def _weights(weight, t):
    return jnp.ones_like(t) if weight is None else jax.vmap(weight)(t)


def flow_matching(
    path,
    velocity,
    *,
    site: str = "x_t",
    time: ndist.Distribution | None = None,
    weight: Callable | None = None,
    name: str = "flow_matching",
) -> Expectation:
    """The flow-matching objective of a path program: ``-E w(t) ||v(x_t, t) - d x_t/dt||^2``.

    With ``linear_path`` this is rectified flow / conditional flow matching; with
    ``trig_path`` a variance-preserving path; with ``stochastic_interpolant`` the
    velocity target includes the latent term's ``gamma'(t) z``.

    Args:
        path: program ``path(t, datum)`` with site ``site`` (see ``path_velocity``).
        velocity: the network, a gendsl model ``velocity(x, t)`` (one data point).
        site: the address of ``x_t`` in ``path``.
        time: distribution of ``t`` (default ``Uniform(0, 1)``).
        weight: optional ``w(t)``.
        name: the address of the objective's draws (its ``objective_key``).

    Returns:
        An ``Expectation`` of ``F(params, data)``; ``data`` has a leading batch axis
        (a pytree: e.g. ``(noise, data)`` pairs for reflow).

    Example:
        >>> import jax, jax.numpy as jnp, gendsl
        >>> from gendsl.inference.diffusion import flow_matching, linear_path
        >>> @gendsl.model
        ... def v(x, t):                      # a "network" with one parameter
        ...     return gendsl.param("w", jnp.zeros(2)) + 0.0 * x * t
        >>> data = jnp.full((4096, 2), 3.0)   # E[x1 - x0] = 3: the best constant velocity
        >>> fm = flow_matching(linear_path, v)
        >>> g = fm.grad(jax.random.key(0), {"w": jnp.zeros(2)}, data)["w"]
        >>> bool(jnp.allclose(g, 6.0, atol=0.2))   # d/dw of -E||w - (x1 - x0)||^2 at w = 0
        True
    """
    target = path_velocity(path, site=site)
    time = ndist.Uniform(0.0, 1.0) if time is None else time
    net = gendsl.model(velocity)

    return _regression(name, net, time, weight, target)


def denoising_score_matching(
    kernel,
    score,
    *,
    site: str = "x_t",
    time: ndist.Distribution | None = None,
    weight: Callable | None = None,
    name: str = "dsm",
) -> Expectation:
    """Denoising score matching with a kernel program: ``-E w(t) ||s(x_t, t) - grad log k(x_t|x0)||^2``.

    Args:
        kernel: program ``kernel(t, x0)`` with the single random choice ``site``.
        score: the network, a gendsl model ``score(x, t)`` (one data point).
        site: the address of ``x_t`` in ``kernel``.
        time: distribution of ``t`` (default ``Uniform(0, 1)``).
        weight: ``w(t)``; ``sigma(t)^2`` makes the loss scale-free for Gaussian kernels.
        name: the address of the objective's draws (its ``objective_key``).

    Returns:
        An ``Expectation`` of ``F(params, x0_batch)``.

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference.diffusion import denoising_score_matching
        >>> @gendsl.model
        ... def ve(t, x0):
        ...     gendsl.sample("x_t", dist.Normal(x0, t).to_event(1))
        >>> @gendsl.model
        ... def s(x, t):                      # the exact score of N(0, 1 + t^2) data
        ...     return -x / (1.0 + t**2) + 0.0 * gendsl.param("c", 0.0)
        >>> dsm = denoising_score_matching(ve, s, time=dist.Uniform(0.5, 1.0), weight=lambda t: t**2)
        >>> x0 = jax.random.normal(jax.random.key(1), (4096, 2))
        >>> value = jax.jit(dsm.estimate)(jax.random.key(0), {"c": 0.0}, x0)
        >>> -1.4 < float(value) < -1.15   # irreducible: -E t^2 d (1/t^2 - 1/(1+t^2)) = -1.287
        True
    """
    target = kernel_score(kernel, site=site)
    time = ndist.Uniform(0.0, 1.0) if time is None else time
    net = gendsl.model(score)

    return _regression(name, net, time, weight, target)


def denoising_objective(
    kernel,
    denoiser,
    *,
    site: str = "x_t",
    time: ndist.Distribution | None = None,
    weight: Callable | None = None,
    name: str = "denoising",
) -> Expectation:
    """The x0-prediction (denoising) objective of a kernel program: ``-E w(t) ||D(x_t, t) - x0||^2``.

    Its minimizer is ``D(x, t) = E[x0 | x_t = x]`` for any kernel, Gaussian or not
    (PFGM++ trains this way); ``x_t`` is drawn by running the kernel program.

    Args:
        kernel: program ``kernel(t, x0)`` with a site ``site`` (sample or
            deterministic) holding ``x_t``.
        denoiser: the network, a gendsl model ``denoiser(x, t)`` (one data point).
        site: the address of ``x_t``.
        time: distribution of ``t`` (for noise levels: EDM's ``LogNormal(-1.2, 1.2)``).
        weight: ``w(t)``; EDM's is ``(t^2 + s^2) / (t s)^2`` for data scale ``s``.
        name: the address of the objective's draws (its ``objective_key``).

    Returns:
        An ``Expectation`` of ``F(params, x0_batch)``.

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference.diffusion import denoising_objective
        >>> @gendsl.model
        ... def ve(sigma, x0):
        ...     gendsl.sample("x_t", dist.Normal(x0, sigma).to_event(1))
        >>> @gendsl.model
        ... def d(x, sigma):                  # the Bayes denoiser for N(0, I) data
        ...     return x / (1.0 + sigma**2) + gendsl.param("b", 0.0)
        >>> objective = denoising_objective(ve, d, time=dist.Uniform(1.0, 1.0 + 1e-6))
        >>> x0 = jax.random.normal(jax.random.key(1), (8192, 2))
        >>> value = jax.jit(objective.estimate)(jax.random.key(0), {"b": 0.0}, x0)
        >>> bool(jnp.abs(value + 1.0) < 0.05)   # -d * Var[x0 | x_t] = -2 * 1/2
        True
    """
    kernel = gendsl.model(kernel)
    time = ndist.Uniform(0.0, 1.0) if time is None else time
    net = gendsl.model(denoiser)

    def draw(key, t, x0, *args):
        return _site_value(kernel, site, key, (t, x0, *args))[0]

    return _regression(name, net, time, weight, lambda *a: (draw(*a), a[2]))  # the target is x0 itself


def _regression(name, net, time, weight, draw_and_target) -> Expectation:
    """``-E w(t) ||net(x_t, t) - target||^2``: ``draw_and_target(key, t, x0, *args) -> (x_t, target)``."""

    def objective(params, data, *args):
        k_t, k_draw = jax.random.split(objective_key(name))
        t = time.sample(k_t, (_batch_size(data),))
        x_t, target = _per_point(lambda k, ti, d: draw_and_target(k, ti, d, *args), k_draw, t, data)
        pred = jax.vmap(net.bind(params))(x_t, t)
        return -jnp.mean(_weights(weight, t) * _sq(pred, target))

    objective.__name__ = name
    return expectation(objective, models=(net,), init=_net_init(net, lambda *a: draw_and_target(*a)[0], time))


# -- library paths ---------------------------------------------------------------------------


def _noise(x1) -> Any:
    x1 = jnp.asarray(x1)
    return gendsl.sample("x0", ndist.Normal(jnp.zeros_like(x1), 1.0).to_event(x1.ndim))


@gendsl.model
def linear_path(t, x1):
    """Rectified flow / conditional OT path ``x_t = (1 - t) x0 + t x1``, ``x0 ~ N(0, I)``.

    The derived velocity target is ``x1 - x0``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import linear_path
        >>> tr = linear_path.simulate(jax.random.key(0), 1.0, jnp.ones(2))
        >>> bool(jnp.allclose(tr.deterministics["x_t"], 1.0))
        True
    """
    x0 = _noise(x1)
    return gendsl.deterministic("x_t", (1.0 - t) * x0 + t * x1)


@gendsl.model
def trig_path(t, x1):
    """Variance-preserving (trigonometric) path ``x_t = cos(pi t / 2) x0 + sin(pi t / 2) x1``.

    The derived velocity target is ``(pi / 2) (cos(pi t / 2) x1 - sin(pi t / 2) x0)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import trig_path
        >>> tr = trig_path.simulate(jax.random.key(0), 0.0, jnp.ones(2))
        >>> bool(jnp.allclose(tr.deterministics["x_t"], tr.choices["x0"]))
        True
    """
    x0 = _noise(x1)
    a = 0.5 * jnp.pi * t
    return gendsl.deterministic("x_t", jnp.cos(a) * x0 + jnp.sin(a) * x1)


def stochastic_interpolant(alpha: Callable, beta: Callable, gamma: Callable):
    """A stochastic interpolant ``x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z`` (Albergo et al. 2023).

    ``x0 ~ N(0, I)`` and the latent ``z ~ N(0, I)`` are sample sites of the
    program, so the derived velocity target is
    ``alpha'(t) x0 + beta'(t) x1 + gamma'(t) z``, every derivative by ``jax.jvp``.

    Args:
        alpha, beta, gamma: scalar functions of ``t`` (e.g. ``1 - t``, ``t``,
            ``sqrt(2 t (1 - t))``); ``gamma`` should vanish at both ends.

    Returns:
        A path program ``path(t, x1)`` with sites ``x0``, ``z`` and ``x_t``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import path_velocity, stochastic_interpolant
        >>> path = stochastic_interpolant(lambda t: 1 - t, lambda t: t, lambda t: t * (1 - t))
        >>> x_t, v = path_velocity(path)(jax.random.key(0), 0.25, jnp.zeros(3))
        >>> v.shape
        (3,)
    """

    @gendsl.model
    def interpolant(t, x1):
        x0 = _noise(x1)
        x1 = jnp.asarray(x1)
        z = gendsl.sample("z", ndist.Normal(jnp.zeros_like(x1), 1.0).to_event(x1.ndim))
        return gendsl.deterministic("x_t", alpha(t) * x0 + beta(t) * x1 + gamma(t) * z)

    return interpolant
