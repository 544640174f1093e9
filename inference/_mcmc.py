"""NUTS on a gendsl model, returning ArviZ ``InferenceData`` with sampling diagnostics.

A gendsl model is a NumPyro model (``tests/core/test_numpyro_interop.py``), so this runs
NumPyro's ``MCMC(NUTS(model))`` on it unchanged and converts the result with
``arviz.from_numpyro``: the ``posterior`` group (latents and ``gendsl.deterministic`` sites),
``sample_stats`` (``diverging``, ``lp``, ``acceptance_rate``, ``n_steps``, ``tree_depth``,
``step_size``), ``log_likelihood`` and ``observed_data``. R-hat and ESS are then
``arviz.summary`` / ``arviz.rhat`` / ``arviz.ess`` of the result.

Chains default to ``chain_method="vectorized"``: one compiled program advances every chain
(``vmap``), which works on a single CPU or GPU and compiles once. NumPyro's ``"parallel"``
needs one device per chain (on CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count``);
``"sequential"`` runs the chains one after another with the same compiled kernel, and is the
cheaper choice when the chains' trajectory lengths differ a lot (a vectorized step waits for
the longest tree of all chains).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax

import gendsl
from gendsl.internal import as_key

if TYPE_CHECKING:
    import arviz as az

__all__ = ["nuts", "CHAIN_METHODS"]

#: The ways chains can run (NumPyro's ``chain_method``).
CHAIN_METHODS = ("vectorized", "sequential", "parallel")

_EXTRA_FIELDS = ("diverging", "potential_energy", "num_steps", "accept_prob", "adapt_state.step_size")


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"nuts: {name} must be an int >= {minimum}, got {value!r}")
    return value


def nuts(
    model,
    key,
    *args,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    chain_method: str = "vectorized",
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    params=None,
    **kwargs,
) -> az.InferenceData:
    """Sample a gendsl model's posterior with NUTS (NumPyro) and return it as ArviZ ``InferenceData``.

    Args:
        model: a ``@gendsl.model`` (or a plain NumPyro model function) with observed sites.
        key: PRNG key (a new-style key or a raw ``uint32[2]`` key).
        *args, **kwargs: the model's arguments (the data).
        num_chains: independent chains (at least 2 for R-hat).
        num_warmup: warm-up (adaptation) iterations per chain, discarded.
        num_samples: draws per chain kept after warm-up.
        chain_method: ``"vectorized"`` (default: all chains in one compiled program),
            ``"sequential"`` or ``"parallel"`` (one device per chain), as in NumPyro.
        target_accept_prob: the step-size adaptation's target acceptance probability, in (0, 1);
            raise it (0.9, 0.95) when there are divergences.
        max_tree_depth: the largest trajectory doubling depth.
        dense_mass: adapt a dense mass matrix instead of a diagonal one.
        params: values of the model's ``gendsl.param`` sites (the model is bound to them);
            None leaves them at their initial values.

    Returns:
        ``InferenceData`` with ``posterior`` (``chain`` x ``draw`` x ...), ``sample_stats``
        (``diverging`` among others), ``log_likelihood`` and ``observed_data`` groups.
        Addresses with ``/`` are named with ``.`` (netCDF forbids ``/``).

    Raises:
        ValueError: a setting out of range.

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import nuts
        >>> @gendsl.model
        ... def m(x):
        ...     mu = gendsl.sample("mu", dist.Normal(0.0, 10.0))
        ...     with gendsl.plate("data", x.shape[0]):
        ...         gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> idata = nuts(m, jax.random.key(0), jnp.full(100, 3.0), num_chains=2, num_warmup=200,
        ...              num_samples=300)
        >>> round(float(idata.posterior["mu"].mean()), 1), int(idata.sample_stats["diverging"].sum())
        (3.0, 0)
    """
    import arviz as az  # imported here: it takes about a second
    from numpyro.infer import MCMC, NUTS

    _positive("num_chains", num_chains)
    _positive("num_warmup", num_warmup, 0)
    _positive("num_samples", num_samples)
    _positive("max_tree_depth", max_tree_depth)
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"nuts: chain_method must be one of {', '.join(CHAIN_METHODS)}, got {chain_method!r}")
    if not 0.0 < float(target_accept_prob) < 1.0:
        raise ValueError(f"nuts: target_accept_prob must be in (0, 1), got {target_accept_prob!r}")
    if chain_method == "parallel" and num_chains > jax.local_device_count():
        raise ValueError(
            f"nuts: chain_method='parallel' needs one device per chain ({num_chains}); there are "
            f"{jax.local_device_count()}: use 'vectorized' or 'sequential'"
        )
    fn = gendsl.model(model)
    if params is not None:
        fn = fn.bind(params)
    kernel = NUTS(fn, target_accept_prob=float(target_accept_prob), max_tree_depth=max_tree_depth,
                  dense_mass=dense_mass)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=False)
    mcmc.run(as_key(key), *args, extra_fields=_EXTRA_FIELDS, **kwargs)
    idata = az.from_numpyro(mcmc)
    for group in idata.groups():
        dataset = idata[group]
        renames = {name: name.replace("/", ".") for name in dataset.data_vars if "/" in name}
        if renames:
            idata[group] = dataset.rename(renames)
    return idata
