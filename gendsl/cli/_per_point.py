"""Per-data-point forms of the multi-particle objectives, written with the same constructs.

``iwelbo(model, guide, K)`` evaluated on a minibatch of ``B`` points draws ``K``
particles of the whole minibatch and takes one log-mean-exp of ``K`` joint
weights: the bound of the minibatch as a single observation, which approaches
the ELBO as ``B`` grows. The IWAE objective (Burda et al. 2016) is instead the
*sum over points* of each point's own bound. When every site of the model and
the guide lies in a plate over the data points, the per-point log weights are
the per-site log densities summed per point; these functions compute them with
``sim`` (drawing the guide, each site with its gradient strategy), ``repeat``
(the particles) and ``model.generate`` with every latent given (the per-point
densities, differentiable like ``density``), and take the log-mean-exp over
particles separately for each point. One batched computation: about as fast as
the joint bound (a ``jax.vmap`` of the gradient over points is 20x slower).

VIMCO's per-particle baselines have one value per particle, not per point and
particle, so ``vimco`` has no batched per-point form here; the command line
falls back to a ``jax.vmap`` of the gradient estimator over points for it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import gendsl
from gendsl import handlers
from gendsl.cli._errors import CLIError
from gendsl.inference import REPARAM, Expectation, expectation, repeat, sim

__all__ = ["per_point_objective", "PER_POINT"]

sg = jax.lax.stop_gradient

PER_POINT = ("iwelbo", "iwelbo-dreg", "renyi", "rws")


def _n(data) -> int:
    return jax.tree_util.tree_leaves(data)[0].shape[0]


def _per_point(m: gendsl.Model, choices: dict, data, n: int) -> jax.Array:
    """``log m(choices, data)`` per data point, shape ``(n,)``: every site must be in the data plate."""
    trace, _ = m.generate(jax.random.key(0), choices, data)  # every latent is given: the key is unused
    total = jnp.zeros(n)
    for address, lp in trace.log_probs.items():
        if jnp.ndim(lp) == 0 or jnp.shape(lp)[0] != n:
            raise CLIError(
                f"per-data-point objective: site '{address}' has log-density shape {jnp.shape(lp)}, not a leading "
                f"axis of the {n} data points; it must sit in a plate over the data (or pass --per-point off)"
            )
        total = total + jnp.reshape(lp, (n, -1)).sum(-1)
    return total


def per_point_objective(name: str, model, guide, particles: int, alpha: float = 0.5) -> Expectation:
    """The per-data-point form of ``iwelbo``, ``iwelbo-dreg``, ``renyi`` or ``rws`` (see the module docstring)."""
    p, q, k = gendsl.model(model), gendsl.model(guide), particles
    log_k = jnp.log(k)

    def log_weights(params, data, stop_guide=False):
        n = _n(data)
        guide_params = sg(params) if stop_guide else params

        def particle():
            z, _ = sim(q.bind(guide_params))(data)
            return _per_point(p.bind(params), z, data, n) - _per_point(q.bind(guide_params), z, data, n)

        return repeat(k, particle)()  # (K, n)

    if name == "iwelbo":

        def objective(params, data):
            return jnp.sum(jax.nn.logsumexp(log_weights(params, data), axis=0) - log_k)

    elif name == "renyi":

        def objective(params, data):
            lw = (1.0 - alpha) * log_weights(params, data)
            return jnp.sum(jax.nn.logsumexp(lw, axis=0) - log_k) / (1.0 - alpha)

    elif name == "iwelbo-dreg":
        q = gendsl.model(handlers.strategy(q.fn, rules=lambda address: REPARAM))  # DReG needs pathwise gradients

        def objective(params, data):
            n = _n(data)

            def particle():
                z, _ = sim(q.bind(params))(data)
                log_w = _per_point(p.bind(sg(params)), z, data, n) - _per_point(q.bind(sg(params)), z, data, n)
                return log_w, _per_point(p.bind(params), sg(z), data, n)

            log_w, log_p = repeat(k, particle)()
            value = jnp.sum(jax.nn.logsumexp(log_w, axis=0) - log_k)
            w = sg(jax.nn.softmax(log_w, axis=0))
            guide_part = jnp.sum(w**2 * (log_w - sg(log_w)))
            model_part = jnp.sum(w * (log_p - sg(log_p)))
            return sg(value) + guide_part + model_part

    elif name == "rws":

        def objective(params, data):
            n = _n(data)
            wake_p = jnp.sum(jax.nn.logsumexp(log_weights(params, data, stop_guide=True), axis=0) - log_k)

            def particle():
                z, _ = sim(q.bind(sg(params)))(data)
                log_w = _per_point(p.bind(sg(params)), z, data, n) - _per_point(q.bind(sg(params)), z, data, n)
                return log_w, _per_point(q.bind(params), sg(z), data, n)

            log_w, log_q = repeat(k, particle)()
            wake_q = jnp.sum(sg(jax.nn.softmax(log_w, axis=0)) * log_q)
            return wake_p + (wake_q - sg(wake_q))

    else:
        raise ValueError(f"no per-point form of {name!r}")
    objective.__name__ = f"{name}{k}_per_point"
    return expectation(objective, models=(p, q))
