"""DiffuseVAE (Pandey et al. 2022): a VAE, then a diffusion model conditioned on the VAE's reconstruction.

Stage 1 is an ordinary gendsl program pair (a Gaussian VAE: ``z ~ N(0, I)``,
``x ~ N(decoder(z), sigma^2)``; guide ``q(z | x)`` from an encoder) whose objective is
``gendsl.inference.elbo``. Stage 2 is a ``DDPM`` (trained on its derived simple
objective, ``ddpm.objective``) whose network also sees the
reconstruction ``x_hat = decoder(z)``, ``z ~ q(z | x)`` ("formulation 1" of the
paper); sampling draws ``z`` from the prior, decodes it and refines the decoded
mean with the conditional diffusion model. (Conditioning on ``decoder(E[z | x])``
instead trains on conditions more concentrated than the sampling-time ones; on
a 4-dimensional Gaussian test that left the samples' covariance 0.17 off.)

``DiffuseVAE`` implements ``gendsl.models.Trainable`` with parameters
``{"vae": ..., "ddpm": ...}`` and one objective for both stages (see
``DiffuseVAE.objective``); ``fit_vae`` and ``ddpm.objective`` still train them one
after the other, as in the paper.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gendsl
import gendsl.distributions as dist
from gendsl import handlers
from gendsl.inference import SVI, elbo, expectation
from gendsl.inference.diffusion import objective_key
from gendsl.models._nets import TimeMLP, static_part
from gendsl.models._protocol import mean_and_error, mmd_with_error
from gendsl.models.ddpm import DDPM

__all__ = ["DiffuseVAE"]


class DiffuseVAE:
    """The two-stage model on vectors of ``dim`` elements.

    Args:
        dim: data dimension.
        latent: VAE latent dimension.
        hidden: width of the VAE's and the diffusion network's hidden layers.
        T: diffusion steps.

    Attributes:
        vae_model, vae_guide: the stage-1 programs (called with a batch ``x``).
        vae_elbo: ``elbo(vae_model, vae_guide)``, an ``Expectation`` of
            ``F(vae_params, xs)``: the ELBO of the batch (a sum over its points).
        ddpm: the stage-2 ``DDPM``, conditioned on a reconstruction vector; its
            training objective is ``ddpm.objective``, an ``Expectation`` of
            ``F(ddpm_params, (xs, reconstructions))``.
        objective: both stages in one ``Expectation`` of ``F(params, xs)`` (see the property).

    Example:
        >>> import jax, optax
        >>> from gendsl.inference import SVI
        >>> from gendsl.models import DiffuseVAE
        >>> m = DiffuseVAE(4, latent=2, hidden=16, T=20)
        >>> x = jax.random.normal(jax.random.key(0), (32, 4))
        >>> params = m.init_params(jax.random.key(1), x)
        >>> sorted(params), sorted(params["vae"])
        (['ddpm', 'vae'], ['decoder', 'encoder', 'log_scale'])
        >>> # Both stages in one run: SVI(m.objective, optax.adam(1e-3)).run(key, steps, x, params=...)
        >>> jax.eval_shape(lambda p: m.sample(p, jax.random.key(2), 5, steps=5), params).shape
        (5, 4)
    """

    sample_options = ("steps",)

    def __init__(self, dim: int, *, latent: int = 8, hidden: int = 128, T: int = 1000):
        self.dim, self.latent = dim, latent

        def decoder_init(k):
            return eqx.nn.MLP(latent, dim, hidden, 2, activation=jax.nn.silu, key=k)

        def encoder_init(k):
            return eqx.nn.MLP(dim, 2 * latent, hidden, 2, activation=jax.nn.silu, key=k)

        self._decoder_static = static_part(decoder_init)
        self._encoder_static = static_part(encoder_init)

        @gendsl.model
        def vae_model(x):
            decoder = gendsl.module("decoder", decoder_init)
            log_scale = gendsl.param("log_scale", jnp.zeros(()))
            with gendsl.plate("data", x.shape[0]):
                z = gendsl.sample("z", dist.Normal(0.0, 1.0).expand([latent]).to_event(1))
                gendsl.sample("x", dist.Normal(jax.vmap(decoder)(z), jnp.exp(log_scale)).to_event(1), obs=x)

        @gendsl.model
        def vae_guide(x):
            encoder = gendsl.module("encoder", encoder_init)
            out = jax.vmap(encoder)(x)
            with gendsl.plate("data", x.shape[0]):
                gendsl.sample("z", dist.Normal(out[:, :latent], jax.nn.softplus(out[:, latent:]) + 1e-3).to_event(1))

        self.vae_model, self.vae_guide = vae_model, vae_guide
        self.vae_elbo = elbo(vae_model, vae_guide)
        self.ddpm = DDPM((dim,), T=T, net=lambda k: TimeMLP(dim, hidden=hidden, depth=3, cond_dim=dim, key=k))
        self._objective = self._joint_objective()

    @property
    def objective(self):
        """Both stages in one objective: an ``Expectation`` of ``F({"vae": ..., "ddpm": ...}, xs)``.

        ``F = vae_elbo(vae, xs) / len(xs) + ddpm.objective(ddpm, (xs, stop_gradient(x_hat)))``:
        the VAE's ELBO per point plus the DDPM's simple objective on reconstructions
        ``x_hat = decoder(z)``, ``z ~ q(z | x)`` (the noise drawn with
        ``objective_key("diffusevae_reconstruction")``).

        This is a one-run variant of the paper's two stages (VAE first, then the DDPM
        on the trained VAE's reconstructions), with the same gradient for each stage's
        parameters in expectation: the DDPM term sees the VAE only through the stopped
        reconstruction, so the gradient in the VAE's parameters is exactly the ELBO's
        (stage 1), and the ELBO does not involve the DDPM, so the gradient in the DDPM's
        parameters is stage 2's, with conditions drawn from the current VAE. The only
        difference is the schedule: stage 2 sees the VAE while it still trains, and once
        the VAE has converged the run is stage 2 itself.
        """
        return self._objective

    def _joint_objective(self):
        vae_elbo, simple = self.vae_elbo, self.ddpm.objective

        def diffusevae(params, xs):
            vae_term = vae_elbo.fn(params["vae"], xs) / jnp.shape(xs)[0]
            key = objective_key("diffusevae_reconstruction")
            x_hat = jax.lax.stop_gradient(self.reconstruct(params["vae"], xs, key))
            return vae_term + simple.fn(params["ddpm"], (xs, x_hat))

        def init(key, xs, **kwargs):
            return self.init_params(key, xs), {}

        return expectation(diffusevae, init=init)

    def init_params(self, key, data) -> dict:
        """The ``Trainable`` initial parameters ``{"vae": ..., "ddpm": ...}`` (``data``: a batch, for shapes)."""
        xs = jnp.asarray(data[0] if isinstance(data, tuple) else data)[:1]
        k_vae, k_ddpm = jax.random.split(key)
        vae = dict(self.vae_model.init(jax.random.fold_in(k_vae, 0), xs))
        vae.update(self.vae_guide.init(jax.random.fold_in(k_vae, 1), xs))
        return {"vae": vae, "ddpm": self.ddpm.init(k_ddpm, jnp.zeros(self.dim))}

    def fit_vae(self, key, xs, *, steps: int = 2000, lr: float = 3e-3, batch_size: int | None = None) -> dict:
        """Stage 1 alone: train the VAE with gendsl's ``SVI`` on the ELBO; returns its parameters."""
        svi = SVI(self.vae_elbo, optax.adam(lr))
        return svi.run(key, steps, xs, batch_size=batch_size, progress=False).params

    def reconstruct(self, vae_params, xs, key=None) -> jax.Array:
        """``decoder(z)`` for a batch with ``z ~ q(z | x)`` (or ``z = E[z | x]`` without a key): stage 2's condition.

        Sampled ``z`` make the training conditions distributed like the sampling-time
        conditions ``decoder(z), z ~ N(0, I)`` (when the aggregate posterior matches the
        prior); the posterior means are more concentrated than the prior.
        """
        encoder = eqx.combine(vae_params["encoder"], self._encoder_static)
        out = jax.vmap(encoder)(xs)
        z = out[:, : self.latent]
        if key is not None:
            z = z + (jax.nn.softplus(out[:, self.latent :]) + 1e-3) * jax.random.normal(key, z.shape)
        return self.decode(vae_params, z)

    def decode(self, vae_params, z) -> jax.Array:
        """The VAE decoder's means ``decoder(z)`` of a batch of latents ``z`` (``(n, latent)``).

        With ``z ~ N(0, I)`` these are the VAE's own samples (as means), which ``sample`` refines.
        """
        return jax.vmap(eqx.combine(vae_params["decoder"], self._decoder_static))(z)

    def sample(self, *args, steps: int = 50) -> jax.Array:
        """``z ~ N(0, I)``, ``x_hat = decoder(z)``, then DDIM (``steps``) conditioned on ``x_hat``.

        Called as ``sample(params, key, n)`` (the ``Trainable`` form, ``params =
        {"vae": ..., "ddpm": ...}``) or ``sample(vae_params, ddpm_params, key, n)``.
        """
        if len(args) == 3:
            (params, key, n), vae = args, args[0]["vae"]
            ddpm = params["ddpm"]
        elif len(args) == 4:
            vae, ddpm, key, n = args
        else:
            raise TypeError(f"DiffuseVAE.sample(params, key, n) or (vae_params, ddpm_params, key, n); got {len(args)} "
                            "positional arguments")
        k_z, k_x = jax.random.split(key)
        x_hat = self.decode(vae, jax.random.normal(k_z, (n, self.latent)))
        return self.ddpm.sample(ddpm, k_x, n, method="ddim", steps=steps, cond=(x_hat,))

    def evaluate(self, params, data, key, *, samples: int = 1, steps: int = 50) -> dict:
        """Bounds on the negative log-likelihood of held-out ``data`` and the MMD of samples, with standard errors.

        DiffuseVAE's generative model is ``z ~ N(0, I)``, then the reverse chain of the
        DDPM conditioned on ``decoder(z)``. Its likelihood has no closed form, but
        ``log p(x) >= E_q(z|x)[log p(z) - log q(z | x) + ELBO_ddpm(x | decoder(z))]``
        (the VAE's encoder as the proposal for ``z``, the DDPM's derived ELBO inside), a
        bound of the same kind as DDPM's and VDM's ``bits_per_dim``. Beside it, minus the
        VAE's own ELBO on the same draws of ``z``: what the diffusion stage gains over
        the VAE's Gaussian decoder, as a difference of bounds. The bounds are of the
        ancestral ``T``-step chain; the MMD scores what ``sample`` (DDIM with ``steps``)
        actually draws, against the data (``mmd_with_error``), the sample-quality side
        that the paper reports with FID.

        Per point, ``samples`` draws of ``z`` (``vae_guide.simulate`` with the keys
        ``jax.random.split(k_bound, (n, samples))``, ``k_bound, k_sample = split(key)``)
        are averaged; the standard errors are the points' spread over ``sqrt(n)``.

        Returns:
            ``{"nll_bound": (nats per point, se), "vae_nll_bound": (nats per point, se),
            "mmd": (squared MMD, se)}``.
        """
        xs = jnp.asarray(data[0] if isinstance(data, tuple) else data)
        k_bound, k_sample = jax.random.split(key)
        keys = jax.random.split(k_bound, (xs.shape[0], samples))
        full, vae = _bounds(self, params, keys, xs)
        out = {"nll_bound": mean_and_error(-np.asarray(full)), "vae_nll_bound": mean_and_error(-np.asarray(vae))}
        out["mmd"] = mmd_with_error(np.asarray(self.sample(params, k_sample, xs.shape[0], steps=steps)), np.asarray(xs))
        return out

    def _point_bounds(self, params, key, x) -> tuple[jax.Array, jax.Array]:
        """One draw of (the full model's ELBO, the VAE's ELBO) of one point, on the same ``z ~ q(z | x)``."""
        vae = params["vae"]
        k_z, k_ddpm = jax.random.split(key)
        q = self.vae_guide.bind(vae).simulate(k_z, x[None])
        p = gendsl.model(handlers.condition(self.vae_model, data=q.choices)).bind(vae).simulate(k_z, x[None])
        ddpm_elbo = self.ddpm.elbo.elbo(params["ddpm"], k_ddpm, x, self.decode(vae, q.choices["z"])[0])
        return jnp.sum(p.log_probs["z"]) + ddpm_elbo - q.score, p.score - q.score


@eqx.filter_jit
def _bounds(model: DiffuseVAE, params, keys, xs):
    def one(ks, x):
        full, vae = jax.vmap(lambda k: model._point_bounds(params, k, x))(ks)
        return jnp.mean(full), jnp.mean(vae)

    return jax.vmap(one)(keys, xs)
