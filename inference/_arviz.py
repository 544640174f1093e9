"""Export posterior draws of a fitted guide to ``arviz.InferenceData``.

NumPyro's ``Predictive`` gives draws but SVI has no ArviZ export; this fills the
gap. Loop addresses contain ``/``, which netCDF forbids in variable names, so
``"chain/x"`` is exported as ``"chain.x"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import numpy as np

import gendsl
from gendsl.internal import as_key

if TYPE_CHECKING:
    import arviz as az

__all__ = ["to_inference_data"]


def _name(address: str) -> str:
    return address.replace("/", ".")


def to_inference_data(
    guide,
    params: dict,
    *args,
    key,
    num_samples: int = 1000,
    model=None,
    **kwargs,
) -> az.InferenceData:
    """Draws of the guide's latents (and, with ``model``, observed data and log-likelihoods).

    Args:
        guide: the fitted guide.
        params: the fitted (constrained) parameters, e.g. ``SVIRunResult.params``.
        *args, **kwargs: the programs' arguments (the data).
        key: PRNG key for the draws.
        num_samples: draws (one chain).
        model: the model; if given, the result also has ``observed_data``, a
            ``log_likelihood`` group (each observed site's pointwise log density
            at each draw, as ``arviz.loo`` expects), and the model's
            ``gendsl.deterministic`` sites in the posterior group.

    Returns:
        An ``InferenceData`` with a ``posterior`` group of shape ``(1, num_samples, ...)``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import to_inference_data
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("mu", dist.Normal(gendsl.param("m", 1.0), 0.1))
        >>> idata = to_inference_data(q, {"m": 2.0}, key=jax.random.key(0), num_samples=500)
        >>> round(float(idata.posterior["mu"].mean()), 1)
        2.0
    """
    import arviz as az  # imported here: it takes about a second, and most programs never export

    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"to_inference_data: num_samples must be a positive int, got {num_samples!r}")
    key = as_key(key)
    k_guide, k_model = jax.random.split(key)
    guide = gendsl.model(guide).bind(params)
    draws = jax.jit(lambda k: guide.repeat(num_samples).simulate(k, *args, **kwargs).latents)(k_guide)
    posterior = {_name(a): np.asarray(v)[None] for a, v in draws.items()}
    groups = {"posterior": posterior}
    if model is not None:
        bound = gendsl.model(model).bind(params)

        def score(k, choices):
            tr, _ = bound.generate(k, choices, *args, **kwargs)
            return tr.log_probs, {a: tr.choices[a] for a in tr.observed}, tr.deterministics

        keys = jax.random.split(k_model, num_samples)
        log_probs, observed, deterministics = jax.jit(jax.vmap(score))(keys, draws)
        posterior.update({_name(a): np.asarray(v)[None] for a, v in deterministics.items()})
        groups["observed_data"] = {_name(a): np.asarray(v[0]) for a, v in observed.items()}
        groups["log_likelihood"] = {_name(a): np.asarray(log_probs[a])[None] for a in observed}
    return az.from_dict(**groups)
