"""Autoguides: guides built from the model's latent sites.

Every autoguide finds the model's continuous latent sites by running the model abstractly
(``jax.eval_shape``, with its messages hidden from every outer handler) on the arguments the
guide is called with, and maps each site's unconstrained space onto its support with
``biject_to(support)`` (``exp`` for a positive site, stick-breaking for a simplex, ...).
``AutoGuide`` holds that shared part; the subclasses only say how to draw the unconstrained
values:

* ``AutoNormal``: one independent normal per element, inside the model's plates.
* ``AutoDelta``: a point mass per site, inside the model's plates (MAP with ``elbo``).
* ``AutoMultivariateNormal``: a full-rank normal over all latents, drawn site by site from its
  exact conditionals, so the guide's density is exact at any choices (``density(guide)``,
  ``elbo(..., estimator="stl")`` and wake-phase objectives work).
* ``AutoLowRankMultivariateNormal``: the same with a covariance ``F Fᵀ + diag(s²)``.

Flow guides live in ``_autoguide_flows.py``. The joint guides (full rank, low rank, flows)
couple elements across the model's plates, so they draw each site as one event outside its
plates; per-data-point objectives (``iwelbo(..., plate=...)``) need ``AutoNormal``.

Why gendsl has its own guides next to NumPyro's ``numpyro.infer.autoguide``: NumPyro's
``AutoNormal`` and ``AutoDelta`` do run as gendsl guides (see ``docs/inference.md``), but the
joint ones draw an auxiliary site ``_auto_latent`` that the model does not have, which gendsl's
objectives reject, and all of them keep parameters in NumPyro's own initialization pass.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from numpyro.distributions import biject_to, constraints
from numpyro.distributions.transforms import ReshapeTransform

import gendsl
import gendsl.distributions as dist
from gendsl import handlers

__all__ = ["AutoDelta", "AutoGuide", "AutoLowRankMultivariateNormal", "AutoMultivariateNormal", "AutoNormal"]


class Latent(NamedTuple):
    """A latent site as an autoguide sees it.

    Attributes:
        name: the site's address.
        transform: the bijection from unconstrained space onto the site's support.
        ushape: the shape of the unconstrained value.
        batch_shape: the batch shape of the model's distribution.
        plates: ``(name, size, dim)`` of each plate around the site.
    """

    name: str
    transform: Any
    ushape: tuple
    batch_shape: tuple
    plates: list

    @property
    def size(self) -> int:
        return int(np.prod(self.ushape, dtype=int))


class AutoGuide(gendsl.Model):
    """The base of gendsl's autoguides: site discovery and the bijections onto each support.

    A subclass implements ``_guide(*args, **kwargs)`` with ``self._latents(args, kwargs)``.
    It is a ``gendsl.Model``: ``simulate``, ``assess``, ``init``, ``bind`` and every objective
    work on it unchanged.

    Args:
        model: the model (a ``gendsl.Model`` or a function of ``sample`` calls).
        prefix: the parameter names' prefix.
    """

    def __init__(self, model, *, prefix: str = "auto") -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"{type(self).__name__}: prefix must be a non-empty str, got {prefix!r}")
        self.model = gendsl.model(model)
        self.prefix = prefix
        super().__init__(self._guide)
        self.__name__ = f"{type(self).__name__}({getattr(self.model, '__name__', 'model')})"

    def __repr__(self) -> str:
        return f"<gendsl.inference.{type(self).__name__} of {self.model!r}>"

    def _guide(self, *args, **kwargs) -> None:
        raise NotImplementedError

    def _latents(self, args: tuple, kwargs: dict) -> list[Latent]:
        """The model's latent sites on these arguments, in execution order."""
        who = type(self).__name__
        found: list[Latent] = []

        def run():
            # Improper priors (``ImproperUniform``) cannot be sampled: give every continuous
            # latent the image of 0 instead; only shapes and supports are read here.
            model = handlers.substitute(handlers.seed(self.model.fn, key=0), substitute_fn=_zero_of_support)
            trace = handlers.trace(model).get_trace(*args, **kwargs)
            found.clear()
            for name, site in trace.items():
                if site["type"] != "sample" or site["is_observed"]:
                    continue
                fn = site["fn"]
                if fn.is_discrete:
                    raise gendsl.GendslError(
                        f"{who}: site '{name}' is discrete; a continuous guide needs continuous latents "
                        "(write a guide for it, or marginalize it with ENUM in your own guide)"
                    )
                if "/" in name:
                    raise gendsl.GendslError(
                        f"{who}: site '{name}' is inside gendsl.scan, which the autoguides do not cover; "
                        "write a guide"
                    )
                shape = tuple(jnp.shape(site["value"]))
                plates = []
                for frame in site["cond_indep_stack"]:
                    if -frame.dim <= len(shape) and shape[frame.dim] != frame.size:
                        raise gendsl.GendslError(
                            f"{who}: site '{name}' is in the subsampled plate '{frame.name}'; the autoguides "
                            "keep one value per element of the full plate only without subsampling"
                        )
                    plates.append((frame.name, frame.size, frame.dim))
                transform = biject_to(fn.support)
                ushape = tuple(transform.inverse_shape(shape))
                found.append(Latent(name, transform, ushape, tuple(fn.batch_shape), plates))
            return 0

        with handlers.block():
            jax.eval_shape(run)
        if not found:
            raise gendsl.GendslError(f"{who}: the model has no latent sites to infer")
        return list(found)


def _zero_of_support(site: dict):
    if site["type"] != "sample" or site.get("is_observed") or site["fn"].is_discrete:
        return None
    fn = site["fn"]
    shape = fn.shape(site["kwargs"].get("sample_shape", ()))
    transform = biject_to(fn.support)
    return transform(jnp.zeros(transform.inverse_shape(shape)))


class AutoNormal(AutoGuide):
    """The mean-field normal guide of ``model``: one independent normal per latent element.

    Like NumPyro's ``AutoNormal``, with these differences: every site keeps its address and
    its plates (so per-data-point bounds such as ``iwelbo(..., plate="data")`` apply); the
    locations start at 0 in unconstrained space (the midpoint of an interval, 1 for a positive
    site) rather than at a draw from the prior; the parameters are named ``auto_loc.<site>``
    and ``auto_scale.<site>``. It covers models whose latents are continuous, outside
    ``gendsl.scan`` loops, and not in subsampled plates; each of those is an error that names
    the site.

    Args:
        model: the model (a ``gendsl.Model`` or a function of ``sample`` calls).
        init_scale: the initial scale of every normal (in unconstrained space).
        prefix: the parameter names' prefix.

    Example:
        >>> import jax, optax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import SVI, AutoNormal, elbo
        >>> @gendsl.model
        ... def model(x):
        ...     mu = gendsl.sample("mu", dist.Normal(0.0, 10.0))
        ...     with gendsl.plate("data", x.shape[0]):
        ...         gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> x = jax.numpy.array([1.8, 2.3, 2.9, 1.6, 2.4])
        >>> guide = AutoNormal(model)
        >>> result = SVI(elbo(model, guide), optax.adam(0.05)).run(jax.random.key(0), 2000, x, progress=False)
        >>> abs(float(result.params["auto_loc.mu"]) - 11.0 / 5.01) < 0.1  # the posterior mean, 2.196
        True
    """

    def __init__(self, model, *, init_scale: float = 0.1, prefix: str = "auto") -> None:
        self.init_scale = _positive("AutoNormal", "init_scale", init_scale)
        super().__init__(model, prefix=prefix)

    def _guide(self, *args, **kwargs) -> None:
        for site in self._latents(args, kwargs):
            loc = gendsl.param(f"{self.prefix}_loc.{site.name}", jnp.zeros(site.ushape))
            scale = gendsl.param(f"{self.prefix}_scale.{site.name}", jnp.full(site.ushape, self.init_scale),
                                 constraint=constraints.positive)
            event_dims = len(site.ushape) - len(site.batch_shape)
            base = dist.Normal(loc, scale).to_event(max(event_dims, 0))
            with _plates(site.plates):
                gendsl.sample(site.name, dist.TransformedDistribution(base, site.transform))


class AutoDelta(AutoGuide):
    """A point mass at a learned value of every latent site: with ``elbo``, MAP estimation.

    The guide's density is 0 at its own point, so ``elbo(model, AutoDelta(model))`` is
    ``log p(x, z)`` at ``z = T(auto_loc.<site>)`` (``T`` the bijection onto the site's support):
    SVI on it finds the maximum a posteriori point in the model's own (constrained)
    coordinates, as NumPyro's ``AutoDelta`` does. Sites keep their plates.

    Args:
        model: the model.
        prefix: the parameter names' prefix; the parameters are ``<prefix>_loc.<site>``,
            unconstrained (``0`` is the midpoint of an interval, 1 for a positive site).

    Example:
        >>> import jax, optax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import SVI, AutoDelta, elbo
        >>> @gendsl.model
        ... def model():
        ...     gendsl.sample("s", dist.Gamma(3.0, 2.0))   # mode (3 - 1) / 2 = 1
        >>> guide = AutoDelta(model)
        >>> result = SVI(elbo(model, guide), optax.adam(0.05)).run(jax.random.key(0), 500, progress=False)
        >>> round(float(guide.bind(result.params).simulate(jax.random.key(1)).choices["s"]), 3)
        1.0
    """

    def _guide(self, *args, **kwargs) -> None:
        for site in self._latents(args, kwargs):
            loc = gendsl.param(f"{self.prefix}_loc.{site.name}", jnp.zeros(site.ushape))
            value = site.transform(loc)
            event_dim = jnp.ndim(value) - len(site.batch_shape)
            with _plates(site.plates):
                gendsl.sample(site.name, dist.Delta(value, event_dim=event_dim))


class _JointNormal(AutoGuide):
    """A normal ``N(loc, L Lᵀ)`` over the concatenated unconstrained latents, drawn site by site.

    With ``L`` lower triangular, ``u = loc + L ε`` makes the block of site ``k`` depend on the
    earlier blocks only through their noise ``ε_<k``: given them, it is ``N(loc_k + L_k,<k ε_<k,
    L_kk L_kkᵀ)``. Drawing each site from that conditional (and recovering its ``ε_k`` from its
    value) gives the joint density exactly, whatever values the earlier sites were given.
    """

    def __init__(self, model, *, init_scale: float = 0.1, prefix: str = "auto") -> None:
        self.init_scale = _positive(type(self).__name__, "init_scale", init_scale)
        super().__init__(model, prefix=prefix)

    def _loc_and_tril(self, dim: int) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def _guide(self, *args, **kwargs) -> None:
        sites = self._latents(args, kwargs)
        loc, tril = self._loc_and_tril(sum(s.size for s in sites))
        noise: list[jax.Array] = []
        start = 0
        for site in sites:
            block = slice(start, start + site.size)
            cond_loc = loc[block]
            if start:
                cond_loc = cond_loc + tril[block, :start] @ jnp.concatenate(noise)
            block_tril = tril[block, block]
            base = dist.MultivariateNormal(cond_loc, scale_tril=block_tril)
            fn = dist.TransformedDistribution(base, [ReshapeTransform(site.ushape, (site.size,)), site.transform])
            value = gendsl.sample(site.name, fn)
            u = jnp.reshape(site.transform.inv(value), (site.size,))
            noise.append(jsl.solve_triangular(block_tril, u - cond_loc, lower=True))
            start += site.size


class AutoMultivariateNormal(_JointNormal):
    """A full-rank normal guide over all latents (in unconstrained space).

    The Cholesky factor is ``L = diag(s) (I + W)`` with ``W`` strictly lower triangular
    (parameter ``<prefix>_tril``, initially 0) and ``s`` positive through a softplus
    (``<prefix>_scale``, initially ``init_scale``); the mean is ``<prefix>_loc`` (initially 0).
    Scaling the off-diagonal part by ``s`` keeps a fresh guide narrow and makes each Adam step
    on ``W`` a relative change of the scale, so the fit is stable at the usual learning rates
    even in hundreds of dimensions (a plain factor whose every entry moves by the learning rate
    per step inflates a 500-dimensional guide's scale by orders of magnitude).

    Each site is drawn from its exact conditional given the earlier sites, so the guide's
    density is exact at any choices: ``density(guide)``, ``elbo(..., estimator="stl")``, and
    objectives that score given choices under the guide all work. The sites are drawn as one
    event each, outside the model's plates.

    Args:
        model: the model.
        init_scale: the initial scale of every coordinate (in unconstrained space).
        prefix: the parameter names' prefix.

    Example:
        >>> import jax, jax.numpy as jnp, optax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import SVI, AutoMultivariateNormal, elbo
        >>> @gendsl.model
        ... def model():
        ...     a = gendsl.sample("a", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("b", dist.Normal(a, 0.5))   # corr(a, b) = 0.89
        >>> guide = AutoMultivariateNormal(model)
        >>> result = SVI(elbo(model, guide), optax.adam(0.02)).run(jax.random.key(0), 3000, progress=False)
        >>> draws = jax.jit(guide.bind(result.params).repeat(20_000).simulate)(jax.random.key(1)).choices
        >>> round(float(jnp.corrcoef(draws["a"], draws["b"])[0, 1]), 1)
        0.9
    """

    def _loc_and_tril(self, dim: int) -> tuple[jax.Array, jax.Array]:
        loc = gendsl.param(f"{self.prefix}_loc", jnp.zeros(dim))
        scale = gendsl.param(f"{self.prefix}_scale", jnp.full(dim, self.init_scale),
                             constraint=constraints.softplus_positive)
        lower = gendsl.param(f"{self.prefix}_tril", jnp.zeros((dim, dim)))
        return loc, scale[:, None] * (jnp.eye(dim) + jnp.tril(lower, -1))


class AutoLowRankMultivariateNormal(_JointNormal):
    """A normal guide with covariance ``F Fᵀ + diag(s²)`` over all latents (unconstrained space).

    ``F`` (``<prefix>_cov_factor``, ``dim × rank``) starts as small random numbers (a zero
    factor is a stationary point of the expected objective); ``s`` (``<prefix>_scale``) is
    positive through a softplus and starts at ``init_scale``. Sites are drawn from their exact
    conditionals as in ``AutoMultivariateNormal``, which needs the Cholesky factor of the
    covariance: ``O(dim³)`` per evaluation, cheap below a few thousand latents; the point of
    the low rank here is fewer parameters (``dim · rank`` rather than ``dim²``) and a prior-like
    structure, not speed.

    Args:
        model: the model.
        rank: the rank of ``F``; default ``round(sqrt(dim))``, as NumPyro.
        init_scale: the initial ``s``.
        prefix: the parameter names' prefix.

    Example:
        >>> import jax, jax.numpy as jnp, optax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import SVI, AutoLowRankMultivariateNormal, elbo
        >>> @gendsl.model
        ... def model():
        ...     a = gendsl.sample("a", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("b", dist.Normal(a, 0.5))
        >>> guide = AutoLowRankMultivariateNormal(model, rank=1)
        >>> result = SVI(elbo(model, guide), optax.adam(0.05)).run(jax.random.key(0), 1000, progress=False)
        >>> draws = jax.jit(guide.bind(result.params).repeat(20_000).simulate)(jax.random.key(1)).choices
        >>> round(float(jnp.corrcoef(draws["a"], draws["b"])[0, 1]), 1)
        0.9
    """

    def __init__(self, model, *, rank: int | None = None, init_scale: float = 0.1, prefix: str = "auto") -> None:
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"AutoLowRankMultivariateNormal: rank must be a positive int, got {rank!r}")
        self.rank = rank
        super().__init__(model, init_scale=init_scale, prefix=prefix)

    def _loc_and_tril(self, dim: int) -> tuple[jax.Array, jax.Array]:
        rank = self.rank or max(1, round(dim**0.5))
        loc = gendsl.param(f"{self.prefix}_loc", jnp.zeros(dim))
        scale = gendsl.param(f"{self.prefix}_scale", jnp.full(dim, self.init_scale),
                             constraint=constraints.softplus_positive)
        size = 0.1 * self.init_scale
        factor = gendsl.param(f"{self.prefix}_cov_factor",
                              lambda key: size * jax.random.normal(key, (dim, rank)))
        return loc, jnp.linalg.cholesky(factor @ factor.T + jnp.diag(scale**2))


def _positive(who: str, what: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{who}: {what} must be positive, got {value!r}")
    return float(value)


class _plates:
    """Enter the model's plates around a guide site (outermost first)."""

    def __init__(self, plates: list) -> None:
        self.plates = [gendsl.plate(name, size, dim=dim) for name, size, dim in reversed(plates)]

    def __enter__(self):
        for p in self.plates:
            p.__enter__()

    def __exit__(self, *exc):
        for p in reversed(self.plates):
            p.__exit__(*exc)
