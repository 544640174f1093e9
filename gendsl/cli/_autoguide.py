"""``guide = "auto"``: a mean-field normal guide built from the model's latent sites.

Each continuous latent site ``a`` of the model gets ``Normal(loc, scale)`` in
unconstrained space (parameters ``auto_loc.a`` and ``auto_scale.a``), pushed
through the bijection onto the site's support (``exp`` for a positive site,
stick-breaking for a simplex, ...). The locations start at 0 in unconstrained
space and the scales at 0.1. It is NumPyro's ``AutoNormal``, written with
gendsl's primitives so that every site keeps its address; it covers models with
continuous latents trained on the full data set (no ``--batch-size``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.distributions import biject_to, constraints

import gendsl
import gendsl.distributions as dist
from gendsl import handlers
from gendsl.cli._errors import CLIError

__all__ = ["auto_guide"]


def auto_guide(model: gendsl.Model, example, *, where: str) -> gendsl.Model:
    """The mean-field normal guide of ``model``, with latent shapes from a run on ``example``.

    Raises:
        CLIError: the model has a discrete latent, a site inside ``gendsl.scan``,
            or no latent at all.
    """
    trace = handlers.trace(handlers.seed(model.fn, key=jax.random.key(0))).get_trace(example)
    sites = []
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        fn = site["fn"]
        if fn.is_discrete:
            raise CLIError(f"{where}: guide = \"auto\" needs continuous latents, but site '{name}' is discrete; "
                           "write a guide")
        if "/" in name:
            raise CLIError(f"{where}: guide = \"auto\" does not cover sites inside gendsl.scan ('{name}'); "
                           "write a guide")
        shape = tuple(jnp.shape(site["value"]))
        transform = biject_to(fn.support)
        sites.append((name, transform, tuple(transform.inverse_shape(shape))))
    if not sites:
        raise CLIError(f"{where}: guide = \"auto\": the model has no latent sites to infer")

    @gendsl.model
    def guide(*args, **kwargs):
        for name, transform, ushape in sites:
            # 0 in unconstrained space: the midpoint of an interval, 1 for a positive site.
            loc = gendsl.param(f"auto_loc.{name}", jnp.zeros(ushape))
            scale = gendsl.param(f"auto_scale.{name}", jnp.full(ushape, 0.1), constraint=constraints.positive)
            base = dist.Normal(loc, scale).to_event(len(ushape))
            gendsl.sample(name, dist.TransformedDistribution(base, transform))

    return guide
