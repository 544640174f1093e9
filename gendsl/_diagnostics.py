"""Per-site, per-dimension diagnostics of a trained guide: KL to the prior, collapse, passive variables.

``collapse_report`` runs the guide and then the model at the guide's draws, reads each latent
site's two distributions from the traces (``Trace.site_distribution``; loop sites through
``Recorder(loop_distributions=True)``, which only these diagnostics switch on), and reduces the
per-element KL over the site's plates, which hold the data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.handlers as nh
from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution, kl_divergence

from gendsl._errors import GendslError
from gendsl._handlers import seed
from gendsl._scan import ScanSite
from gendsl._trace import Recorder, Trace
from gendsl.metrics import active_units

__all__ = [
    "SiteCollapse",
    "collapse_report",
    "drop_passive",
    "passive_variables",
    "representation_correlation",
]


class SiteCollapse(NamedTuple):
    """One latent site's row of ``collapse_report``; arrays are over the site's latent dimensions.

    Attributes:
        kl: data-averaged ``KL(q(z_j | x) ‖ p(z_j | ·))`` per dimension, in nats.
        kl_se: its standard error over the data points and guide draws.
        analytic: whether ``kl`` is closed-form (NumPyro's ``kl_divergence``) or Monte Carlo.
        mean_variance: ``Var_x E_q[z_j | x]`` per dimension (None without a plate of >= 2 points).
        active: ``mean_variance > active_threshold`` (Burda et al. 2016), or None as above.
        collapsed: ``kl < kl_threshold``.
    """

    kl: np.ndarray
    kl_se: np.ndarray
    analytic: bool
    mean_variance: np.ndarray | None
    active: np.ndarray | None
    collapsed: np.ndarray

    @property
    def n_collapsed(self) -> int:
        """How many dimensions collapsed to the prior."""
        return int(np.sum(self.collapsed))


def collapse_report(
    model: Any,
    guide: Any,
    params: dict,
    *args,
    key: Any,
    num_samples: int = 16,
    kl_threshold: float = 0.01,
    active_threshold: float = 0.01,
    **kwargs,
) -> dict[str, SiteCollapse]:
    """Per latent site and dimension: data-averaged KL to the prior, active units, collapsed flags.

    For each latent site ``a`` of the guide, the per-element ``KL(q(z_a | ·) ‖ p(z_a | ·))`` is
    averaged over ``num_samples`` guide draws and over the site's plates (the data); the other
    dimensions (event, non-plate batch, and a ``gendsl.scan`` loop's step axis first) are the
    latent dimensions reported. The model's distribution is the one at the guide's draws, so a
    hierarchical prior ``p(z1 | z2)`` is read at the guide's ``z2``.

    The KL is closed-form where NumPyro's ``kl_divergence`` has the pair (after unwrapping
    ``to_event``, ``expand`` and masks: masks are ignored) and the model draws no latent before
    ``a`` that the guide draws after it (the closed form given a later draw would be biased);
    otherwise it is the Monte Carlo ``log q(z) - log p(z)`` at the guide's draws. Thresholds:
    collapsed iff ``KL < kl_threshold`` (0.01 nats), active iff ``Var_x E_q[z_j | x] >
    active_threshold`` (0.01, ``gendsl.metrics.active_units``).

    Args:
        model: the model (a ``gendsl.Model`` or a function of ``gendsl.sample`` calls).
        guide: the guide, over the model's latent sites.
        params: parameters of both (``gendsl.param`` / ``gendsl.module`` by name).
        *args, **kwargs: the arguments of model and guide (the data).
        key: a PRNG key.
        num_samples: guide draws per data point.
        kl_threshold: the KL below which a dimension counts as collapsed.
        active_threshold: the variance of the posterior mean above which a dimension is active.

    Returns:
        ``{address: SiteCollapse}`` for the guide's latent sites, in the guide's order.

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.diagnostics import collapse_report
        >>> @gendsl.model
        ... def p(x):
        ...     with gendsl.plate("data", x.shape[0]):
        ...         z = gendsl.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...         gendsl.sample("x", dist.Normal(z[:, 0], 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     with gendsl.plate("data", x.shape[0]):
        ...         loc = jnp.stack([x / 2, jnp.zeros_like(x)], -1)
        ...         gendsl.sample("z", dist.Normal(loc, jnp.array([0.7, 1.0])).to_event(1))
        >>> report = collapse_report(p, q, {}, jnp.linspace(-2, 2, 50), key=jax.random.key(0))
        >>> report["z"].collapsed, report["z"].active
        (array([False,  True]), array([ True, False]))
    """
    info: dict[str, dict] = {}

    def once(k):
        kq, kp = jax.random.split(k)
        q = _run(guide, params, kq, args, kwargs, {})
        p = _run(model, params, kp, args, kwargs, {**q.latents, **q.subsamples})
        return {a: _site(q, p, a, info.setdefault(a, {})) for a in q.latents}

    keys = jax.random.split(key, num_samples)
    draws = jax.device_get(jax.jit(jax.vmap(once))(keys))
    return {a: _reduce(a, *draws[a], info[a], kl_threshold, active_threshold) for a in draws}


def _run(model: Any, params: dict, key, args, kwargs, values: dict) -> Trace:
    rec = Recorder(loop_distributions=True)
    with rec, seed(key=key), nh.substitute(data={**params, **values}):
        retval = getattr(model, "fn", model)(*args, **kwargs)
    return rec.trace(retval)


def _site(q: Trace, p: Trace, address: str, info: dict) -> tuple[jax.Array, jax.Array]:
    """Per-element KL and guide mean of one site (unreduced), noting static facts in ``info``."""
    q_fn, p_fn = q.site_distribution(address)[0], p.site_distribution(address)[0]
    z = q.choices[address]
    info["analytic"] = _order_allows_closed_form(q, p, address)
    if not isinstance(q_fn, ScanSite):
        info["plates"], info["loop"] = dict(q.site_plates).get(address, ()), False
        info["batch_ndim"] = len(q_fn.batch_shape)
        return _elements(q_fn, p_fn, z, info)
    if q_fn.step_fn is None or not isinstance(p_fn, ScanSite) or p_fn.step_fn is None:
        raise GendslError(
            f"collapse_report: loop site '{address}' has no per-step distributions on both sides; the guide and "
            "the model must draw it in a gendsl.scan of the same name"
        )
    info["plates"], info["loop"] = q_fn.step_plates, True

    def step(qf, pf, zt):
        info["batch_ndim"] = len(qf.batch_shape)
        return _elements(qf, pf, zt, info)

    return jax.vmap(step)(q_fn.step_fn, p_fn.step_fn, z)


def _order_allows_closed_form(q: Trace, p: Trace, address: str) -> bool:
    # A model draw before `address` that the guide makes after it would make p(z_a | .) depend on
    # z_a itself: the closed form at that draw is not the expected log-ratio.
    q_order = [a for a in q.choices if a not in q.observed]
    later = set(q_order[q_order.index(address) + 1 :])
    for b in p.choices:
        if b == address:
            return True
        if b in later:
            return False
    return True


def _factors(fn: Any) -> Any:
    """The distribution whose log density is per element: without ``to_event``, ``expand`` and masks."""
    while isinstance(fn, Independent | ExpandedDistribution | MaskedDistribution):
        fn = fn.base_dist
    return fn


def _elements(q_fn: Any, p_fn: Any, z: jax.Array, info: dict) -> tuple[jax.Array, jax.Array]:
    qb, pb = _factors(q_fn), _factors(p_fn)
    if len(qb.event_shape) != len(pb.event_shape):
        qb, pb = q_fn, p_fn  # e.g. a full-covariance prior: one KL per event
    shape = jnp.shape(z)[: jnp.ndim(z) - len(qb.event_shape)]
    kl = None
    if info["analytic"]:
        try:
            kl = kl_divergence(qb, pb)
        except NotImplementedError:
            info["analytic"] = False
    if kl is None:
        kl = qb.log_prob(z) - pb.log_prob(z)
    try:
        mean = q_fn.mean
    except NotImplementedError:
        mean = z
    return jnp.broadcast_to(kl, shape), jnp.broadcast_to(mean, jnp.shape(z))


def _reduce(address, kl, mean, info, kl_threshold, active_threshold) -> SiteCollapse:
    """Average over draws (axis 0) and the site's plates; keep the latent dimensions."""
    offset = 2 if info["loop"] else 1  # the draws axis, and a loop's step axis
    axes = [offset + info["batch_ndim"] + dim for _, dim in info["plates"]]
    kl, mean = np.asarray(kl, np.float64), np.asarray(mean, np.float64)
    kl = np.moveaxis(kl, [0, *axes], range(len(axes) + 1))
    n = int(np.prod(kl.shape[: len(axes) + 1]))
    kl = kl.reshape(n, *kl.shape[len(axes) + 1 :])
    kl_mean = kl.mean(axis=0)
    kl_se = kl.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full_like(kl_mean, np.nan)
    mean = np.moveaxis(mean.mean(axis=0), [a - 1 for a in axes], range(len(axes)))
    points = int(np.prod(mean.shape[: len(axes)]))
    dims = mean.shape[len(axes) :]
    if points < 2:
        variance = active = None
    else:
        flat = mean.reshape(points, -1)
        variance = flat.var(axis=0, ddof=1).reshape(dims)
        active = active_units(flat, threshold=active_threshold).reshape(dims)
    if np.any(~np.isfinite(kl_mean)):
        raise GendslError(f"collapse_report: site '{address}' has a non-finite KL; check the guide's support")
    return SiteCollapse(kl_mean, kl_se, info["analytic"], variance, active, kl_mean < kl_threshold)


def passive_variables(means, variances, *, mean_threshold: float = 0.01, variance_threshold: float = 0.8) -> np.ndarray:
    """Which latent variables are passive: their posterior stays at the prior ``N(0, 1)`` for every input.

    A variable is passive when, across the data, its posterior mean hardly moves
    (``Var_x μ_j(x) < mean_threshold``, 0.01: it is not an active unit) and its posterior variance
    stays near the prior's (``mean_x σ_j²(x) > variance_threshold``, 0.8). Such a variable carries no
    information about ``x`` and is noise in a sampled representation, yet its mean can still be
    correlated with the others' (Bonheme & Grzes, "Be More Active!"). A dimension with a still mean
    but a small variance is neither active nor passive (it is used as a constant).

    Args:
        means: ``(n, L)`` posterior means ``μ(x_i)``.
        variances: ``(n, L)`` posterior variances ``σ²(x_i)``.
        mean_threshold: the largest variance of the mean across the data of a passive variable.
        variance_threshold: the smallest data-averaged posterior variance of a passive variable.

    Returns:
        a boolean array ``(L,)``.

    Example:
        >>> import numpy as np
        >>> from gendsl.diagnostics import passive_variables
        >>> rng = np.random.default_rng(0)
        >>> means = rng.normal(size=(500, 3)) * np.array([1.0, 0.01, 0.01])
        >>> passive_variables(means, np.tile([0.1, 0.95, 0.2], (500, 1)))
        array([False,  True, False])
    """
    m, v = np.asarray(means, np.float64), np.asarray(variances, np.float64)
    if m.ndim != 2 or m.shape != v.shape or len(m) < 2:
        raise ValueError(
            f"passive_variables: means and variances must both be (n, L) with n >= 2, got {m.shape} and {v.shape}"
        )
    return (m.var(axis=0, ddof=1) < mean_threshold) & (v.mean(axis=0) > variance_threshold)


def representation_correlation(representation, variables=None) -> float:
    """Mean absolute Pearson correlation between pairs of latent variables of a representation.

    Pass the mean representation (``μ(x_i)``) or a sampled one (``z_i ~ q(z | x_i)``) to compare
    them; ``variables`` (a boolean mask or indices) restricts it to, e.g., the passive variables.
    For independent variables and ``n`` points it is about ``sqrt(2 / (π n))``.

    Args:
        representation: ``(n, L)``, one row per data point.
        variables: which columns to use (default all); at least two.

    Returns:
        the mean of ``|corr(z_i, z_j)|`` over pairs ``i < j``.

    Example:
        >>> import numpy as np
        >>> from gendsl.diagnostics import representation_correlation
        >>> z = np.random.default_rng(0).normal(size=(1000, 2))
        >>> round(representation_correlation(np.c_[z, z[:, :1]], [0, 2]), 6)
        1.0
    """
    r = np.asarray(representation, np.float64)
    if r.ndim != 2:
        raise ValueError(f"representation_correlation: expected (n, L) rows of points, got shape {r.shape}")
    if variables is not None:
        r = r[:, np.asarray(variables)]
    if r.shape[1] < 2 or len(r) < 3:
        raise ValueError(
            f"representation_correlation: need >= 2 variables and >= 3 points, got {r.shape}; select more variables"
        )
    corr = np.corrcoef(r, rowvar=False)
    return float(np.abs(corr[np.triu_indices_from(corr, k=1)]).mean())


def drop_passive(features, passive) -> np.ndarray:
    """The features without the passive variables' columns (for downstream tasks).

    Example:
        >>> import numpy as np
        >>> from gendsl.diagnostics import drop_passive
        >>> drop_passive(np.arange(6).reshape(2, 3), np.array([False, True, False]))
        array([[0, 2],
               [3, 5]])
    """
    f, mask = np.asarray(features), np.asarray(passive, bool)
    if f.ndim != 2 or mask.shape != (f.shape[1],):
        raise ValueError(f"drop_passive: features (n, L) and a mask (L,) expected, got {f.shape} and {mask.shape}")
    return f[:, ~mask]
