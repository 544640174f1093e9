"""``AutoNormal``: a mean-field normal guide built from the model's latent sites.

Each continuous latent site ``a`` gets ``Normal(loc, scale)`` in unconstrained space (parameters
``auto_loc.a`` and ``auto_scale.a``), pushed through the bijection onto the site's support
(``exp`` for a positive site, stick-breaking for a simplex, ...), inside the same plates as the
model's site. The guide finds the sites by running the model abstractly (``jax.eval_shape``,
with its messages hidden from every outer handler) on the arguments it is called with.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from numpyro.distributions import biject_to, constraints

import gendsl
import gendsl.distributions as dist
from gendsl import handlers

__all__ = ["AutoNormal"]


class AutoNormal(gendsl.Model):
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
        if not init_scale > 0:
            raise ValueError(f"AutoNormal: init_scale must be positive, got {init_scale!r}")
        self.model = gendsl.model(model)
        self.init_scale = float(init_scale)
        self.prefix = prefix
        super().__init__(self._guide)
        self.__name__ = f"AutoNormal({getattr(self.model, '__name__', 'model')})"

    def __repr__(self) -> str:
        return f"<gendsl.inference.AutoNormal of {self.model!r}>"

    def _sites(self, args: tuple, kwargs: dict) -> list[tuple[str, Any, tuple, tuple, list]]:
        """``(address, bijection, unconstrained shape, batch shape, plates)`` of each latent site."""
        found: list = []

        def run():
            trace = handlers.trace(handlers.seed(self.model.fn, key=0)).get_trace(*args, **kwargs)
            found.clear()
            for name, site in trace.items():
                if site["type"] != "sample" or site["is_observed"]:
                    continue
                fn = site["fn"]
                if fn.is_discrete:
                    raise gendsl.GendslError(
                        f"AutoNormal: site '{name}' is discrete; a normal guide needs continuous latents "
                        "(write a guide for it, or marginalize it with ENUM in your own guide)"
                    )
                if "/" in name:
                    raise gendsl.GendslError(
                        f"AutoNormal: site '{name}' is inside gendsl.scan, which AutoNormal does not cover; "
                        "write a guide"
                    )
                shape = tuple(jnp.shape(site["value"]))
                plates = []
                for frame in site["cond_indep_stack"]:
                    if -frame.dim <= len(shape) and shape[frame.dim] != frame.size:
                        raise gendsl.GendslError(
                            f"AutoNormal: site '{name}' is in the subsampled plate '{frame.name}'; AutoNormal "
                            "keeps one normal per element of the full plate only without subsampling"
                        )
                    plates.append((frame.name, frame.size, frame.dim))
                transform = biject_to(fn.support)
                ushape = tuple(transform.inverse_shape(shape))
                found.append((name, transform, ushape, tuple(fn.batch_shape), plates))
            return 0

        with handlers.block():
            jax.eval_shape(run)
        if not found:
            raise gendsl.GendslError("AutoNormal: the model has no latent sites to infer")
        return list(found)

    def _guide(self, *args, **kwargs) -> None:
        for name, transform, ushape, batch_shape, plates in self._sites(args, kwargs):
            loc = gendsl.param(f"{self.prefix}_loc.{name}", jnp.zeros(ushape))
            scale = gendsl.param(f"{self.prefix}_scale.{name}", jnp.full(ushape, self.init_scale),
                                 constraint=constraints.positive)
            event_dims = len(ushape) - len(batch_shape)
            base = dist.Normal(loc, scale).to_event(max(event_dims, 0))
            with _plates(plates):
                gendsl.sample(name, dist.TransformedDistribution(base, transform))


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
