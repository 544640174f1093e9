"""The conditional VAE of Sohn, Lee and Yan (2015) as a gendsl model and guide.

Data come in a dict ``{"x": (n, x_dim), "y": ...}``, the observation and what it is conditioned on,
minibatched together by ``gendsl fit``. ``y`` is a vector per point (the top half of an image, for
the paper's structured-output task) or, with ``labels=True``, an integer class that the networks
read one-hot. The model is

* ``z ~ Normal(prior_net(y))``: the conditional prior, or ``Normal(0, I)`` with
  ``conditional_prior=False`` (the "CVAE on the label" of the digits baselines);
* ``x ~ Bernoulli(logits=decoder(z, y)).to_event(1)`` (or ``Normal(decoder(z, y), noise_scale)``),

both inside the plate ``"data"``; the guide is ``q(z | x, y) = Normal(encoder(x, y))``, REPARAM.
The networks are ``equinox.nn.MLP`` parameters ``"decoder"``, ``"encoder"`` and ``"prior_net"`` and
read concatenations in the order ``decoder([z, y])``, ``encoder([x, y])``; ``depth=0`` makes them
linear, which gives the linear-Gaussian CVAE with a closed-form ``log p(x | y)`` (the tests' ground
truth).

Objectives: :meth:`CVAE.elbo` is the weighted bound ``E_q log p(x|z,y) - β KL(q(z|x,y) ‖ p(z|y))``
(``gendsl.inference.elbo(beta=)``); :meth:`CVAE.gsnn` is the Gaussian stochastic neural network's
``E_{p(z|y)} log p(x|z,y)``, and :meth:`CVAE.hybrid` the paper's ``α·ELBO + (1-α)·GSNN``, both written
as user objectives with ``sim`` and ``density``: the library's estimators apply to them unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp

import gendsl
import gendsl.distributions as dist
from gendsl.inference import Expectation, density, elbo, expectation, sim

__all__ = ["CVAE"]

_MIN_SCALE = 1e-3  # keeps a Normal's scale away from 0 when a softplus output underflows


def _normal(out: jax.Array, latent: int) -> dist.Distribution:
    loc, raw = out[..., :latent], out[..., latent:]
    return dist.Normal(loc, jax.nn.softplus(raw) + _MIN_SCALE).to_event(1)


@dataclasses.dataclass(frozen=True)
class CVAE:
    """A conditional VAE: ``model(batch)``, ``guide(batch)`` and the prior ``prior(batch)`` on ``z``.

    Attributes:
        x_dim: the size of an observation ``x``.
        y_dim: the size of a condition ``y`` (with ``labels=True``, the number of classes).
        latent: the size of ``z``.
        hidden: the networks' hidden width.
        depth: the networks' hidden layers; 0 makes every network linear.
        conditional_prior: ``p(z | y) = Normal(prior_net(y))``; False: ``Normal(0, I)``.
        labels: ``y`` holds integer classes ``0..y_dim-1``, read one-hot.
        likelihood: ``"bernoulli"`` (logits from the decoder) or ``"normal"`` (the decoder is the mean).
        noise_scale: the standard deviation of the ``"normal"`` likelihood (fixed).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.models import CVAE
        >>> cvae = CVAE(x_dim=4, y_dim=3, latent=2, hidden=8)
        >>> batch = {"x": jnp.array([[0.0, 1.0, 1.0, 0.0]] * 5), "y": jnp.array([0, 1, 2, 0, 1])}
        >>> objective = cvae.hybrid(alpha=0.5)
        >>> from gendsl.inference import init_params
        >>> params, _ = init_params(objective, jax.random.key(0), batch)
        >>> sorted(params)
        ['decoder', 'encoder', 'prior_net']
        >>> value = objective.estimate(jax.random.key(1), params, batch)
        >>> value.shape, bool(jnp.isfinite(value))
        ((), True)
    """

    x_dim: int
    y_dim: int
    latent: int = 8
    hidden: int = 128
    depth: int = 1
    conditional_prior: bool = True
    labels: bool = True
    likelihood: str = "bernoulli"
    noise_scale: float = 1.0

    def __post_init__(self):
        if self.likelihood not in ("bernoulli", "normal"):
            raise ValueError(f"CVAE: likelihood must be 'bernoulli' or 'normal', got {self.likelihood!r}")

    def _mlp(self, name: str, n_in: int, n_out: int) -> eqx.nn.MLP:
        return gendsl.module(
            name, lambda k: eqx.nn.MLP(n_in, n_out, self.hidden, self.depth, activation=jnp.tanh, key=k)
        )

    def features(self, y: jax.Array) -> jax.Array:
        """What the networks read of ``y``: one-hot classes with ``labels=True``, else ``y`` itself."""
        if self.labels:
            return jax.nn.one_hot(y, self.y_dim)
        return jnp.reshape(y, (jnp.shape(y)[0], self.y_dim)).astype(jnp.float32)

    def _prior(self, y: jax.Array) -> dist.Distribution:
        if not self.conditional_prior:
            return dist.Normal(0.0, 1.0).expand([self.latent]).to_event(1)
        prior_net = self._mlp("prior_net", self.y_dim, 2 * self.latent)
        return _normal(jax.vmap(prior_net)(y), self.latent)

    @functools.cached_property
    def model(self) -> gendsl.Model:
        """``p(z | y) p(x | z, y)`` on a batch ``{"x", "y"}``."""

        def cvae_model(batch):
            y = self.features(batch["y"])
            decoder = self._mlp("decoder", self.latent + self.y_dim, self.x_dim)
            prior = self._prior(y)  # declared outside the plate: the networks are global parameters
            with gendsl.plate("data", y.shape[0]):
                z = gendsl.sample("z", prior)
                out = jax.vmap(decoder)(jnp.concatenate([z, y], axis=-1))
                if self.likelihood == "bernoulli":
                    likelihood = dist.Bernoulli(logits=out).to_event(1)
                else:
                    likelihood = dist.Normal(out, self.noise_scale).to_event(1)
                gendsl.sample("x", likelihood, obs=batch["x"])

        return gendsl.model(cvae_model)

    @functools.cached_property
    def guide(self) -> gendsl.Model:
        """``q(z | x, y)``, a diagonal Normal from the encoder (REPARAM)."""

        def cvae_guide(batch):
            y = self.features(batch["y"])
            encoder = self._mlp("encoder", self.x_dim + self.y_dim, 2 * self.latent)
            with gendsl.plate("data", y.shape[0]):
                out = jax.vmap(encoder)(jnp.concatenate([batch["x"], y], axis=-1))
                gendsl.sample("z", _normal(out, self.latent))

        return gendsl.model(cvae_guide)

    @functools.cached_property
    def prior(self) -> gendsl.Model:
        """``p(z | y)`` alone, with the model's parameter names (``"prior_net"``), so it shares them."""

        def cvae_prior(batch):
            y = self.features(batch["y"])
            prior = self._prior(y)
            with gendsl.plate("data", y.shape[0]):
                gendsl.sample("z", prior)

        return gendsl.model(cvae_prior)

    def elbo(self, *, beta: float = 1.0, kl: str = "mc") -> Expectation:
        """The weighted bound ``E_q log p(x|z,y) - β KL(q(z|x,y) ‖ p(z|y))``; see ``gendsl.inference.elbo``."""
        return elbo(self.model, self.guide, beta=beta, kl=kl)

    def gsnn(self) -> Expectation:
        """``E_{p(z|y)} log p(x | z, y)``: the GSNN objective, ``z`` drawn from the (conditional) prior."""
        return self.hybrid(alpha=0.0)

    def hybrid(self, alpha: float, *, beta: float = 1.0) -> Expectation:
        """Sohn et al.'s hybrid ``α·ELBO_β + (1-α)·GSNN``, a user objective of ``sim`` and ``density``.

        Args:
            alpha: the weight of the ELBO, in ``[0, 1]``; 0 is the GSNN alone, 1 the (weighted) ELBO.
            beta: the ELBO's KL weight.

        Raises:
            ValueError: ``alpha`` outside ``[0, 1]``.
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"CVAE.hybrid: alpha must be in [0, 1], got {alpha}")
        model, guide, prior = self.model, self.guide, self.prior

        def log_likelihood(params, z, log_prior, batch):
            # density(model) is log p(x, z | y); the prior's own log density at the same z leaves log p(x | z, y)
            return density(model.bind(params))(z, batch) - log_prior

        def objective(params, batch):
            value = 0.0
            if alpha > 0.0:
                z, log_q = sim(guide.bind(params), name="guide")(batch)
                log_prior = density(prior.bind(params))(z, batch)
                value = alpha * (log_likelihood(params, z, log_prior, batch) - beta * (log_q - log_prior))
            if alpha < 1.0:
                z, log_prior = sim(prior.bind(params), name="prior")(batch)
                value = value + (1.0 - alpha) * log_likelihood(params, z, log_prior, batch)
            return value

        objective.__name__ = f"cvae_hybrid_{alpha:g}"
        return expectation(objective, models=(model, guide))
