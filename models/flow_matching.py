"""Flow matching and rectified flow (Lipman et al. 2023; Liu et al. 2023), with a reflow step.

The path is a gendsl program (``linear_path`` by default: rectified flow), the
training objective is derived from it by ``gendsl.inference.diffusion.flow_matching`` (the
velocity target is ``jax.jvp`` of the path in ``t``), sampling integrates the learned
ODE from ``N(0, I)`` at ``t = 0`` to the data at ``t = 1`` with diffrax, and the
exact log-likelihood comes from the instantaneous change of variables.

**Reflow** (Liu et al.'s "rectify" step): draw noise ``z``, push it through the
trained flow to ``x = ODE(z)``, and train a new flow on the *coupled* pairs
``(z, x)`` with ``coupling_path`` (``x_t = (1 - t) z + t x``). The new flow's paths
are straighter, so few-step sampling gets better; ``straightness`` measures it.

``FlowMatching`` implements ``gendsl.models.Trainable``; its ``evaluate`` reports the exact
negative log-likelihood (``log_prob``) and, for 2-D data, the MMD against held-out points.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.scipy.stats import norm

import gendsl
from gendsl.inference import SVI, init_params
from gendsl.inference.diffusion import flow_matching, linear_path, ode_log_likelihood, ode_solve
from gendsl.metrics import energy_distance, mmd  # re-exported: they lived here before gendsl.metrics
from gendsl.models._nets import TimeMLP
from gendsl.models._protocol import density_metrics, divergence_options

__all__ = ["FlowMatching", "coupling_path", "energy_distance", "mmd"]


@gendsl.model
def coupling_path(t, pair):
    """The straight path between given endpoints, ``x_t = (1 - t) x0 + t x1``: reflow's path.

    ``pair = (x0, x1)``; there is no random choice (the coupling is the data).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference.diffusion import path_velocity
        >>> from gendsl.models import coupling_path
        >>> _, v = path_velocity(coupling_path)(jax.random.key(0), 0.3, (jnp.zeros(2), jnp.ones(2)))
        >>> v.tolist()
        [1.0, 1.0]
    """
    x0, x1 = pair
    return gendsl.deterministic("x_t", (1.0 - t) * x0 + t * x1)


def _velocity_net(dim: int, hidden: int, depth: int):
    @gendsl.model
    def velocity(x, t):
        # Flow times are in [0, 1]: time frequencies up to 100 suffice.
        net = gendsl.module("velocity", lambda k: TimeMLP(dim, hidden=hidden, depth=depth, max_frequency=100.0, key=k))
        return net(x, t)

    return velocity


class FlowMatching:
    """A flow-matching model of ``dim``-dimensional data.

    Args:
        dim: data dimension.
        path: a path program ``path(t, datum)`` (``linear_path``: rectified flow;
            ``trig_path``, ``stochastic_interpolant(...)``, or your own).
        hidden, depth: the velocity MLP's width and number of hidden layers.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.models import FlowMatching
        >>> fm = FlowMatching(2, hidden=16, depth=1)
        >>> data = 0.5 * jax.random.normal(jax.random.key(0), (256, 2)) + 1.0
        >>> params = fm.fit(jax.random.key(1), data, steps=200, batch_size=64, lr=1e-2)
        >>> x = fm.sample(params, jax.random.key(2), 1000, steps=20)
        >>> bool(jnp.all(jnp.abs(x.mean(0) - 1.0) < 0.3))
        True
    """

    sample_options = ("steps",)

    def __init__(self, dim: int, *, path=linear_path, hidden: int = 128, depth: int = 3):
        self.dim = dim
        self.path = path
        self.net = _velocity_net(dim, hidden, depth)
        self.objective = flow_matching(path, self.net)

    def velocity(self, x, t, params):
        """The learned velocity of one point (the ``velocity(x, t, args)`` form of ``ode_solve``)."""
        return self.net.bind(params)(x, t)

    def fit(
        self, key, data, steps: int, *, batch_size: int = 256, lr: float = 1e-3, params=None, progress: bool = False
    ) -> dict:
        """Train with Adam (cosine decay) on minibatches of ``data``; returns the parameters.

        ``data`` is an array ``(n, dim)`` (or, for reflow, a pair of them); ``params``
        warm-starts from earlier parameters.
        """
        svi = SVI(self.objective, optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05)))
        state = svi.init(key, jax.tree_util.tree_map(lambda a: a[:batch_size], data), params=params)
        result = svi.run(key, steps, data, batch_size=batch_size, state=state, progress=progress)
        return result.params

    def sample(self, params, key, n: int, *, steps: int = 100, solver=None):
        """``n`` draws: noise at ``t = 0`` integrated to ``t = 1`` (Heun, ``steps`` uniform steps)."""
        z = jax.random.normal(key, (n, self.dim))
        return self.transport(params, z, steps=steps, solver=solver)

    def transport(self, params, z, *, steps: int = 100, solver=None):
        """Push noise ``z`` (``(n, dim)``) through the flow to ``t = 1``."""
        return _transport(self.velocity, params, z, steps, solver)

    def log_prob(self, params, x, **options):
        """Exact ``log p(x)`` per point (``ode_log_likelihood`` from ``t = 1`` to the ``N(0, I)`` prior at 0)."""
        prior = lambda z: jnp.sum(norm.logpdf(z))  # noqa: E731
        return ode_log_likelihood(self.velocity, x, 1.0, 0.0, prior, args=params, **options)

    def init_params(self, key, data) -> dict:
        """The ``Trainable`` initial parameters (the velocity network, initialized on one data point)."""
        return init_params(self.objective, key, jax.tree_util.tree_map(lambda a: a[:1], data))[0]

    def evaluate(self, params, data, key, *, probes: int | None = None, **options) -> dict:
        """Exact negative log-likelihood of held-out ``data`` (``log_prob``), and the MMD for 2-D data.

        ``probes``: None for the exact divergence, or the number of Hutchinson probes per point
        (``divergence_options``); ``options`` go to ``ode_log_likelihood`` (tolerances).
        Returns ``density_metrics``: ``{"nll": (nats per point, standard error),
        "bits_per_dim": ..., ["mmd": (value, standard error)]}``.
        """
        key, options = divergence_options(key, probes, options)

        def draw(k, n):
            return self.sample(params, k, n)

        return density_metrics(lambda x: self.log_prob(params, x, **options), data, key, draw)

    def reflow(self, params, key, n: int, steps: int, *, ode_steps: int = 100, batch_size: int = 256,
               lr: float = 1e-3) -> tuple[FlowMatching, dict]:
        """One rectify step: couple ``n`` noise draws with their images and train a new flow on the pairs.

        Returns ``(new_model, new_params)``; the new model uses ``coupling_path`` and
        starts from ``params``.
        """
        k_z, k_fit = jax.random.split(key)
        z = jax.random.normal(k_z, (n, self.dim))
        x = self.transport(params, z, steps=ode_steps)
        new = FlowMatching.__new__(FlowMatching)
        new.dim, new.path, new.net = self.dim, coupling_path, self.net
        new.objective = flow_matching(coupling_path, self.net)
        return new, new.fit(k_fit, (z, x), steps, batch_size=batch_size, lr=lr, params=params)

    def straightness(self, params, key, n: int = 1000, *, steps: int = 100) -> float:
        """``E int_0^1 ||v(x_t, t) - (x_1 - x_0)||^2 dt`` along the flow's own paths (0: straight)."""
        z = jax.random.normal(key, (n, self.dim))
        return float(_straightness(self.velocity, params, z, steps))


@eqx.filter_jit
def _transport(velocity: Callable, params, z, steps, solver):
    return ode_solve(velocity, z, 0.0, 1.0, args=params, steps=steps, solver=solver)


@eqx.filter_jit
def _straightness(velocity: Callable, params, z, steps):
    dt = 1.0 / steps

    def body(x, t):
        v = jax.vmap(lambda xi: velocity(xi, t, params))(x)
        return x + dt * v, v

    x1, vs = jax.lax.scan(body, z, jnp.arange(steps) * dt)
    return jnp.mean(jnp.sum((vs - (x1 - z)) ** 2, -1))
