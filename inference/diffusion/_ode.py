"""ODE sampling and exact likelihoods for flows and diffusions, solved with diffrax.

Everything takes a generic per-data-point vector field ``velocity(x, t, args)``
(``args`` carries the network's parameters, so one compiled sampler serves every
parameter value): a flow-matching velocity, a probability-flow ODE built from a
score (``probability_flow``) or EDM/PFGM++'s ``dx/dsigma = (x - D(x, sigma)) / sigma``
(``denoiser_velocity``). Time may run forwards or backwards (``t1 < t0``).

* ``ode_solve`` integrates a batch (leading axis) in one diffrax solve: a fixed
  grid (``steps`` or ``ts``; Heun by default) for sampling, or adaptive Tsit5.
* ``ode_log_likelihood`` integrates ``[x, log-det]`` per data point with the
  instantaneous change of variables ``d log p(x_t)/dt = -div v(x_t, t)``. The
  divergence is the exact trace of ``jax.jacfwd`` (cost ``O(dim)`` Jacobian-vector
  products: fine for the small dimensions it is meant for) or Hutchinson's
  estimate ``e^T (dv/dx) e`` with one Rademacher ``e`` held fixed along the path.

Both are pure functions: ``jax.jit`` them once (a test checks there is no
retracing across parameter values and inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp

__all__ = ["denoiser_velocity", "ode_log_likelihood", "ode_solve", "probability_flow"]


def probability_flow(score: Callable, drift: Callable, diffusion: Callable) -> Callable:
    """The probability-flow ODE of ``dx = f(x, t) dt + g(t) dW``: ``v = f - g^2 score / 2``.

    Args:
        score: ``score(x, t, args)``, an estimate of ``grad log p_t(x)``.
        drift: ``f(x, t)``.
        diffusion: ``g(t)``.

    Returns:
        ``velocity(x, t, args)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.inference.diffusion import probability_flow
        >>> beta = lambda t: 0.1 + 19.9 * t                     # VP SDE
        >>> v = probability_flow(lambda x, t, a: -x, lambda x, t: -0.5 * beta(t) * x, lambda t: jnp.sqrt(beta(t)))
        >>> abs(float(v(jnp.ones(1), 0.5, None)[0])) < 1e-5    # N(0, I) is stationary: v = 0
        True
    """

    def velocity(x, t, args):
        return drift(x, t) - 0.5 * diffusion(t) ** 2 * score(x, t, args)

    return velocity


def denoiser_velocity(denoiser: Callable) -> Callable:
    """EDM's (and PFGM++'s) ODE in the noise level: ``dx/dsigma = (x - D(x, sigma)) / sigma``.

    Args:
        denoiser: ``D(x, sigma, args)``, an estimate of ``E[x0 | x_sigma = x]``.

    Returns:
        ``velocity(x, sigma, args)``; integrate it from ``sigma_max`` down to ``sigma_min``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.inference.diffusion import denoiser_velocity
        >>> v = denoiser_velocity(lambda x, s, a: jnp.zeros_like(x))
        >>> float(v(jnp.full(2, 3.0), 1.5, None)[0])
        2.0
    """

    def velocity(x, sigma, args):
        return (x - denoiser(x, sigma, args)) / sigma

    return velocity


def _term(velocity, batched: bool):
    if batched:

        def field(t, x, args):
            return jax.vmap(lambda xi: velocity(xi, t, args))(x)

    else:

        def field(t, x, args):
            return velocity(x, t, args)

    return diffrax.ODETerm(field)


def _controller(t0, t1, steps, ts, rtol, atol):
    if ts is not None:
        # diffrax needs the grid's ends to equal t0 and t1 exactly; a computed grid is off by rounding.
        ts = jnp.asarray(ts).at[0].set(t0).at[-1].set(t1)
        return None, diffrax.StepTo(ts=ts)
    if steps is not None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"ode_solve: steps must be a positive int, got {steps!r}")
        return (t1 - t0) / steps, diffrax.ConstantStepSize()
    return (t1 - t0) / 100, diffrax.PIDController(rtol=rtol, atol=atol)


def ode_solve(
    velocity: Callable,
    x,
    t0: float,
    t1: float,
    *,
    args: Any = None,
    steps: int | None = None,
    ts=None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
):
    """Integrate ``dx/dt = velocity(x, t, args)`` from ``t0`` to ``t1`` for a batch of points.

    Args:
        velocity: the vector field of one data point.
        x: the initial points, with a leading batch axis.
        t0, t1: start and end times (``t1 < t0`` integrates backwards).
        args: passed to ``velocity`` (the network parameters).
        steps: a uniform grid of this many steps (Heun by default); or
        ts: an explicit grid from ``t0`` to ``t1`` (e.g. EDM's rho-spaced noise levels).
            Neither: adaptive Tsit5 with ``rtol``/``atol``.
        solver: any diffrax solver.
        max_steps: diffrax's step budget for adaptive solves.

    Returns:
        The points at ``t1``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import ode_solve
        >>> x1 = ode_solve(lambda x, t, a: a * x, jnp.ones((3, 2)), 0.0, 1.0, args=-1.0)  # x' = -x
        >>> bool(jnp.allclose(x1, jnp.exp(-1.0), rtol=1e-4))
        True
    """
    dt0, controller = _controller(t0, t1, steps, ts, rtol, atol)
    if solver is None:
        solver = diffrax.Tsit5() if isinstance(controller, diffrax.PIDController) else diffrax.Heun()
    sol = diffrax.diffeqsolve(
        _term(velocity, batched=True), solver, t0, t1, dt0, jnp.asarray(x), args=args,
        stepsize_controller=controller, max_steps=max_steps, saveat=diffrax.SaveAt(t1=True),
    )
    return sol.ys[0]


def _divergence(velocity, x, t, args, noise):
    f = lambda y: velocity(y, t, args)  # noqa: E731
    if noise is None:
        flat = x.reshape(-1)
        jac = jax.jacfwd(lambda y: f(y.reshape(x.shape)).reshape(-1))(flat)
        return f(x), jnp.trace(jac)
    # noise: (probes, *x.shape); one linearization, one JVP per probe, their mean estimates the trace.
    v, f_jvp = jax.linearize(f, x)
    jv = jax.vmap(f_jvp)(noise)
    return v, jnp.sum(noise * jv) / noise.shape[0]


def ode_log_likelihood(
    velocity: Callable,
    x,
    t_data: float,
    t_prior: float,
    prior_log_prob: Callable,
    *,
    args: Any = None,
    divergence: str = "exact",
    key=None,
    probes: int = 1,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    max_steps: int = 4096,
):
    """``log p(x)`` of the flow's data distribution, by the instantaneous change of variables.

    Integrates each point from ``t_data`` to ``t_prior`` together with
    ``int div v dt``; then ``log p(x) = prior_log_prob(x_prior) + int_{t_data}^{t_prior} div v dt``.

    Args:
        velocity: ``velocity(x, t, args)`` for one data point.
        x: data points, leading batch axis.
        t_data, t_prior: the times of the data and of the prior (1 and 0 for flow
            matching; 0 and T for a diffusion's probability flow).
        prior_log_prob: ``log p(x_prior)`` of one point.
        args: passed to ``velocity``.
        divergence: ``"exact"`` (trace of the Jacobian) or ``"hutchinson"`` (``probes``
            Rademacher probes per point, unbiased; needs ``key``).
        key: PRNG key for Hutchinson's probes.
        probes: Hutchinson probes per point; the divergence estimate is their mean (its
            variance falls as ``1 / probes``). The same probes are used along the whole path.
        solver, rtol, atol, steps, max_steps: as in ``ode_solve`` (adaptive Tsit5 by default).

    Returns:
        ``log p(x)`` per point, shape ``(batch,)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.scipy.stats import norm
        >>> from gendsl.inference.diffusion import ode_log_likelihood
        >>> # x_t = (1 + t) x0 with x0 ~ N(0, 1): v(x, t) = x / (1 + t), data at t = 1 are N(0, 4)
        >>> lp = ode_log_likelihood(lambda x, t, a: x / (1 + t), jnp.array([[0.5], [1.0]]), 1.0, 0.0,
        ...                         lambda z: norm.logpdf(z).sum())
        >>> bool(jnp.allclose(lp, norm.logpdf(jnp.array([0.5, 1.0]), scale=2.0), atol=1e-4))
        True
    """
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"ode_log_likelihood: divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if divergence == "hutchinson" and key is None:
        raise ValueError("ode_log_likelihood: divergence='hutchinson' needs key=... for its probe vectors")
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"ode_log_likelihood: probes must be a positive int, got {probes!r}")
    x = jnp.asarray(x)
    dt0, controller = _controller(t_data, t_prior, steps, None, rtol, atol)
    if solver is None:
        solver = diffrax.Tsit5() if isinstance(controller, diffrax.PIDController) else diffrax.Heun()

    def field(t, state, extra):
        y, _ = state
        probe, params = extra
        v, div = _divergence(velocity, y, t, params, probe)
        return v, div

    def one(xi, probe):
        state0 = (xi, jnp.zeros((), xi.dtype))
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), solver, t_data, t_prior, dt0, state0, args=(probe, args),
            stepsize_controller=controller, max_steps=max_steps, saveat=diffrax.SaveAt(t1=True),
        )
        y, integral = sol.ys[0][0], sol.ys[1][0]
        return prior_log_prob(y) + integral

    if divergence == "exact":
        return jax.vmap(lambda xi: one(xi, None))(x)
    noise = jax.random.rademacher(key, (x.shape[0], probes, *x.shape[1:]), dtype=x.dtype)
    return jax.vmap(one)(x, noise)
