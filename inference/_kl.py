"""Closed-form KL terms of the ELBO: ``elbo(model, guide, kl="analytic")``.

The ELBO is ``E_q[log p(x | z)] + Σ_a E_q[log p(z_a | ·) - log q(z_a | ·)]`` over the latent
sites ``a``. Given everything the guide drew before ``a``, the expectation of site ``a``'s
log-ratio is ``-KL(q_a ‖ p_a)`` (the tower rule). Where NumPyro registers that KL in closed
form (``numpyro.distributions.kl_divergence``), the objective uses it in place of the sampled
log-ratio: same expectation, none of the log-ratio's sampling noise. This is NumPyro's and
Pyro's ``TraceMeanField_ELBO``, decided site by site.

A site keeps the Monte Carlo log-ratio (``site_terms`` says why) when:

* either side is not a NumPyro distribution (a ``gendsl.scan`` loop site), the event shapes
  differ, ``kl_divergence`` has no closed form for the pair, or the KL's shape does not match
  the site's log densities (a model site that is one event where the guide's is a batch);
* the model draws a latent before ``a`` that the guide draws after it: the model's
  distribution at ``a`` may then depend on a draw that itself depends on ``z_a``, and the KL
  given the guide's earlier draws would be biased. A warning names the site; reorder the
  guide to draw in the model's order;
* a ``MaskedDistribution`` sits inside another distribution (``.mask(m).to_event(1)``), where
  the mask would be summed into the event: NumPyro's KL of two masked distributions takes
  the intersection of their masks, which is not the ELBO's term when the masks differ.

Masks from ``handlers.mask`` (a top-level ``MaskedDistribution``) and scales
(``handlers.scale``, a subsampled plate's ``N/B``) are handled per element of the site: an
element masked on both sides contributes nothing; unmasked on both sides with equal scales
``s``, ``-s · KL``; otherwise (masked or scaled differently on the two sides, whose
expectation is not a KL) its sampled log-ratio.

Gradient strategies need nothing special. The KL of a site is a function of the guide's
parameters and of the upstream draws that its and the model's distributions depend on: it
is differentiated exactly in the parameters, pathwise through REPARAM parents, and the
score-function and re-execution terms of REINFORCE, ENUM and MVD parents pair with it as with
any other cost. At the site itself, constant in the site's draw, it adds nothing to the
site's own score or enumeration terms in expectation. The guide's distribution is read as
it was drawn from (``Trace.site_distribution``), before a strategy stopped its parameters.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, MaskedDistribution, kl_divergence

import gendsl

__all__ = ["ANALYTIC", "log_ratio", "site_terms"]

ANALYTIC = "analytic"


def log_ratio(guide: gendsl.Trace, model: gendsl.Trace, *, log_q: dict | None = None) -> jax.Array:
    """``Σ log p(z_a) - Σ log q(z_a)`` over the latent sites, with ``-KL(q_a ‖ p_a)`` where it is valid.

    Args:
        guide: the guide's trace as ``sim`` recorded it (its sites' distributions readable).
        model: the model's trace at the guide's draws.
        log_q: each guide site's log density to use for the Monte Carlo sites (default the
            trace's; ``estimator="stl"`` passes the guide rescored with stopped parameters).

    Returns:
        The prior-minus-guide part of the ELBO: every latent site of the model, minus every
        site of the guide (sites the guide has and the model lacks count on the guide's side).
    """
    log_q = guide.log_probs if log_q is None else log_q
    kinds = site_terms(guide, model)
    total = jnp.zeros(())
    for address, lq in log_q.items():
        if kinds.get(address) == ANALYTIC:
            total = total + _analytic_term(guide, model, address, lq)
        else:
            total = total - jnp.sum(lq)
    for address, lp in model.log_probs.items():
        if address not in model.observed and kinds.get(address) != ANALYTIC:
            total = total + jnp.sum(lp)
    return total


def site_terms(guide: gendsl.Trace, model: gendsl.Trace) -> dict[str, str]:
    """How each latent site of the guide enters: ``"analytic"``, or why it stays Monte Carlo.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference._kl import site_terms
        >>> @gendsl.model
        ... def p():
        ...     gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("w", dist.LogNormal(0.0, 1.0))
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(0.5, 0.3))
        ...     gendsl.sample("w", dist.Gamma(2.0, 1.0))
        >>> guide_trace = q.simulate(jax.random.key(0))
        >>> model_trace, _ = p.generate(jax.random.key(1), guide_trace.latents)
        >>> site_terms(guide_trace, model_trace)["z"]
        'analytic'
        >>> site_terms(guide_trace, model_trace)["w"]
        'no closed-form KL(Gamma || LogNormal) in numpyro.distributions.kl_divergence'
    """
    guide_order = list(guide.log_probs)
    model_latents = [a for a in model.log_probs if a not in model.observed]
    model_set = set(model_latents)
    kinds = {}
    for address in guide_order:
        if address in guide.observed:
            continue
        if address not in model_set:
            kinds[address] = "not a latent site of the model"
            continue
        kinds[address] = _pair_kind(guide, model, address)
        if kinds[address] != ANALYTIC:
            continue
        drawn_before = set(guide_order[: guide_order.index(address)])
        late = [a for a in model_latents[: model_latents.index(address)] if a not in drawn_before]
        if late:
            kinds[address] = f"the model draws {late} before it, the guide after it"
            warnings.warn(
                f"elbo(kl='analytic'): site '{address}' keeps the Monte Carlo log-ratio: the model draws "
                f"{late} before it but the guide draws them after it, so its KL given the guide's earlier "
                "draws would be biased; draw the guide's sites in the model's order to use the closed form",
                stacklevel=2,
            )
    return kinds


def _pair_kind(guide: gendsl.Trace, model: gendsl.Trace, address: str) -> str:
    q_fn, _ = guide.site_distribution(address)
    p_fn, _ = model.site_distribution(address)
    if not (isinstance(q_fn, Distribution) and isinstance(p_fn, Distribution)):
        return "not a NumPyro distribution on both sides (e.g. a gendsl.scan loop site)"
    (q_base, _), (p_base, _) = _unmask(q_fn), _unmask(p_fn)
    if _has_mask(q_base) or _has_mask(p_base):
        return "a mask inside the distribution (e.g. .mask(m).to_event(1)); use handlers.mask around the site"
    if q_fn.event_shape != p_fn.event_shape:
        return f"event shapes differ: guide {q_fn.event_shape}, model {p_fn.event_shape}"
    kl = _kl(q_base, p_base)
    if kl is None:
        return (
            f"no closed-form KL({type(q_base).__name__} || {type(p_base).__name__}) in "
            "numpyro.distributions.kl_divergence"
        )
    shapes = (jnp.shape(guide.log_probs[address]), jnp.shape(model.log_probs[address]))
    if shapes[0] != shapes[1] or not _broadcasts(jnp.shape(kl), shapes[0]):
        return f"the KL's shape {jnp.shape(kl)} does not match the site's log densities {shapes}"
    return ANALYTIC


def _analytic_term(guide, model, address, lq) -> jax.Array:
    """``Σ_elements`` of the site's ELBO term with the closed form where masks and scales agree."""
    q_fn, q_scale = guide.site_distribution(address)
    p_fn, p_scale = model.site_distribution(address)
    (q_base, q_mask), (p_base, p_mask) = _unmask(q_fn), _unmask(p_fn)
    kl = jnp.broadcast_to(_kl(q_base, p_base), jnp.shape(lq))
    scale = 1.0 if q_scale is None else q_scale
    if q_mask is True and p_mask is True and _same_static(q_scale, p_scale):
        return -jnp.sum(scale * kl)
    # Per element: the closed form where both sides weigh the element alike; the sampled
    # log-ratio elsewhere (zero where both sides mask it: masked log densities are zero).
    agree = jnp.logical_and(q_mask, p_mask) & (jnp.asarray(scale) == jnp.asarray(1.0 if p_scale is None else p_scale))
    agree = jnp.broadcast_to(agree, jnp.shape(lq))
    sampled = model.log_probs[address] - lq
    return jnp.sum(jnp.where(agree, -scale * kl, sampled))


def _kl(q: Distribution, p: Distribution) -> Any:
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def _unmask(fn) -> tuple[Any, Any]:
    """``(base, mask)`` of a distribution wrapped by ``MaskedDistribution``s (``mask`` True if none)."""
    mask = True
    while isinstance(fn, MaskedDistribution):
        inner = fn._mask
        mask = inner if mask is True else (mask if inner is True else jnp.logical_and(mask, inner))
        fn = fn.base_dist
    return fn, mask


def _has_mask(fn) -> bool:
    while fn is not None:
        if isinstance(fn, MaskedDistribution):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def _same_static(a, b) -> bool:
    """Whether two site scales are known to be equal without tracing (None is 1)."""
    a, b = (1.0 if a is None else a), (1.0 if b is None else b)
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        return a is b
    return bool(np.shape(a) == np.shape(b) and np.all(np.asarray(a) == np.asarray(b)))


def _broadcasts(shape, target) -> bool:
    try:
        return tuple(np.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except ValueError:
        return False
