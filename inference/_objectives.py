"""The objectives library, each written with the same constructs a user has.

Every objective takes a model ``p`` and a guide ``q`` and returns an
``Expectation`` of ``F(params, *args)``: ``params`` is one dict holding the
parameters of both (``gendsl.param`` / ``gendsl.module`` names must differ),
``args`` are the arguments both programs receive (typically the data). A guide
may be a ``marginal(...)``, which is how the hierarchical bounds are built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import gendsl
from gendsl import handlers
from gendsl.inference import _kl
from gendsl.inference._expectation import Expectation, expectation
from gendsl.inference._language import baselines, density, repeat, scored_trace, sim, simulate_in_objective
from gendsl.inference._marginal import Marginal, marginal
from gendsl.inference._strategies import REPARAM

__all__ = [
    "common_plate",
    "diwhvi",
    "elbo",
    "hvi",
    "iwelbo",
    "iwhvi",
    "p_wake",
    "q_wake",
    "renyi",
    "rws",
    "sleep",
    "vimco",
]

sg = jax.lax.stop_gradient


def _program(x):
    return x if isinstance(x, Marginal) else gendsl.model(x)


def _models(*programs):
    out = []
    for x in programs:
        if isinstance(x, Marginal):
            out.append(x.model)
            if x.proposal is not None:
                out.append(x.proposal)
        else:
            out.append(x)
    return tuple(out)


# Per-data-point forms: with ``plate=None`` a log density is one number for the whole
# execution; with ``plate="data"`` it is a vector over the plate's elements, read from the
# trace's plate membership (``Trace.plate_log_density``, an error naming the site when a site
# lies outside the plate). The multi-particle formulas below then apply per element, with
# the log-mean-exp over particles on axis 0, and the sum over points last.


def _sim(q, plate, args, kwargs):
    """Draw the guide: ``(latents, log q)``, ``log q`` per element of ``plate`` when given."""
    if plate is None:
        return sim(q)(*args, **kwargs)
    tr = simulate_in_objective(q, None, args, kwargs)
    return tr.latents, tr.plate_log_density(plate)


def _density(m, z, plate, args, kwargs):
    """``log m(z, data)``, per element of ``plate`` when given."""
    if plate is None:
        return density(m)(z, *args, **kwargs)
    return scored_trace(m, z, args, kwargs).plate_log_density(plate)


def _log_weight(p, q, params, args, kwargs, plate=None, guide_params=None):
    guide_params = params if guide_params is None else guide_params
    z, log_q = _sim(q.bind(guide_params), plate, args, kwargs)
    return _density(p.bind(params), z, plate, args, kwargs) - log_q


def _check_plate(name, plate, q):
    if plate is not None and (not isinstance(plate, str) or isinstance(q, Marginal)):
        raise ValueError(f"{name}: plate= needs the name of a plate (a str) and a plain (not marginal) guide")


def elbo(model, guide, *, beta: float = 1.0, estimator: str = "score", kl: str = "mc") -> Expectation:
    """The evidence lower bound ``E_q[log p(x, z) - log q(z)]``.

    Args:
        model: the model ``p(x, z)``.
        guide: the guide ``q(z)``, or a ``marginal(...)`` of a richer guide.
        beta: weight of the KL term, ``E_q[log p(x|z)] - β KL(q || p(z))`` (β-VAE,
            PV-RNN's meta-prior, the CVAE paper's weighted bound); 1 is the ELBO.
            The likelihood is the model's observed sites, the prior its latent ones.
        estimator: ``"score"`` (the default estimators of every site) or
            ``"stl"`` (sticking the landing, Roeder et al. 2017: the guide's
            density is evaluated with stopped parameters, which removes the
            zero-mean score term; needs REPARAM at every guide site).
            With ``"score"``, the guide's REINFORCE, ENUM and MVD sites enter
            ``log q`` without their parameter gradient at the drawn value, whose
            expectation is zero (for REINFORCE as in Pyro's and NumPyro's
            ``TraceGraph_ELBO``); their score-function terms or re-executed
            branches carry the gradient. So ENUM in a plate of independent
            elements is exact from one sample. Valid because ``log q`` enters
            linearly; other objectives keep the term.
        kl: ``"mc"`` (the sampled log-ratio ``log p(z) - log q(z)`` at every site) or
            ``"analytic"``: at every latent site where NumPyro's ``kl_divergence`` has the
            guide's and the model's distributions in closed form, ``-KL(q ‖ p)`` in place of
            the sampled log-ratio (Pyro's and NumPyro's ``TraceMeanField_ELBO``, site by site):
            the same expectation with less variance. Under plates, ``handlers.mask``,
            ``handlers.scale`` and subsampling it is taken per element and scaled; any site
            strategy works with it. Sites without a closed form, and elements masked or
            scaled differently in the two programs, keep the Monte Carlo term (the rules:
            ``gendsl.inference._kl``). Works with both estimators (with ``"stl"``, the Monte
            Carlo sites' ``log q`` has stopped parameters, the KLs do not).

    Raises:
        ValueError: an unknown ``estimator`` or ``kl``, or ``kl="analytic"`` with a
            ``marginal(...)`` guide (its density is itself an estimate: no closed form).

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import elbo
        >>> @gendsl.model
        ... def p(x):
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("z", dist.Normal(gendsl.param("m", 0.0), 1.0))
        >>> objective = elbo(p, q)
        >>> value = jax.jit(lambda key: objective.estimate(key, {"m": 0.5}, 1.0, samples=10_000))(jax.random.key(0))
        >>> round(float(value), 2)  # exact: -1.67 at m = 0.5
        -1.67
        >>> analytic = elbo(p, q, kl="analytic")  # log p(x | z) - KL(q || p): less variance
        >>> value = jax.jit(lambda key: analytic.estimate(key, {"m": 0.5}, 1.0, samples=10_000))(jax.random.key(0))
        >>> round(float(value), 2)
        -1.67
    """
    if estimator not in ("score", "stl"):
        raise ValueError(f"elbo: estimator must be 'score' or 'stl', got {estimator!r}")
    if kl not in ("mc", "analytic"):
        raise ValueError(f"elbo: kl must be 'mc' or 'analytic', got {kl!r}")
    p, q = gendsl.model(model), _program(guide)
    if kl == "analytic" and isinstance(q, Marginal):
        raise ValueError(
            "elbo(kl='analytic'): the guide is a marginal(...), whose density is itself an estimate, so its "
            "sites have no closed-form KL; use kl='mc' (the default) with a marginal guide"
        )
    if estimator == "stl":
        q = _all_reparam(q, "elbo(estimator='stl')")

    def objective(params, *args, **kwargs):
        if isinstance(q, Marginal):
            z, log_q = sim(q.bind(params))(*args, **kwargs)
        else:
            tr = simulate_in_objective(q.bind(params), None, args, kwargs, score_paths=False)
            z, log_q = tr.latents, tr.score
            if kl == "analytic":
                q_stopped = q.bind(sg(params)) if estimator == "stl" else None
                return _analytic_elbo(p.bind(params), q_stopped, tr, beta, args, kwargs)
        if estimator == "stl":
            log_q = density(q.bind(sg(params)))(z, *args, **kwargs)
        if beta == 1.0:
            return density(p.bind(params))(z, *args, **kwargs) - log_q
        log_lik, log_prior = _split_density(p.bind(params), z, args, kwargs)
        return log_lik - beta * (log_q - log_prior)

    objective.__name__ = "elbo"
    return expectation(objective, models=_models(p, q))


def iwelbo(model, guide, particles: int, *, estimator: str = "score", plate: str | None = None) -> Expectation:
    """The importance-weighted bound ``E[log (1/K) sum_k p(x, z_k) / q(z_k)]`` (Burda et al. 2016).

    By default the ``K`` particles are whole executions: one weight per particle
    for all the data. For a model whose latents are all local to a data plate
    (a VAE), pass ``plate="data"`` to get the IWAE bound per data point,
    ``sum_i log (1/K) sum_k p(x_i, z_ik) / q(z_ik)``, which is tighter and is
    what the IWAE paper and NumPyro's ``RenyiELBO(alpha=0)`` compute.

    Args:
        model: the model.
        guide: the guide, or a ``marginal(...)`` (DIWHVI).
        particles: ``K``.
        estimator: ``"score"`` (default strategies) or ``"dreg"`` (doubly
            reparameterized, Tucker et al. 2019: guide gradients
            ``sum_k w̄_k² ∂ log w_k / ∂z_k ∂z_k/∂φ``; needs REPARAM at every guide site).
        plate: the name of a data plate for the per-data-point bound; every
            site of the model and the guide must be inside it (and the plate
            must not be subsampled). Works with both estimators.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import iwelbo
        >>> @gendsl.model
        ... def p(x):
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("z", dist.Normal(0.5 * x, 0.5**0.5))  # the exact posterior
        >>> value = jax.jit(iwelbo(p, q, 5).estimate)(jax.random.key(0), {}, 1.0)
        >>> round(float(value), 4)  # log p(x) = log N(1; 0, 2), exactly, with the exact posterior
        -1.5155
    """
    _check_particles("iwelbo", particles)
    if estimator not in ("score", "dreg"):
        raise ValueError(f"iwelbo: estimator must be 'score' or 'dreg', got {estimator!r}")
    p, q = gendsl.model(model), _program(guide)
    if estimator == "dreg":
        q = _all_reparam(q, "iwelbo(estimator='dreg')")
    _check_plate("iwelbo", plate, q)
    log_k = jnp.log(particles)

    def objective(params, *args, **kwargs):
        if estimator == "score":
            log_w = repeat(particles, lambda: _log_weight(p, q, params, args, kwargs, plate))()
            return jnp.sum(jax.nn.logsumexp(log_w, axis=0) - log_k)

        def particle():
            z, _ = sim(q.bind(params))(*args, **kwargs)
            # Both densities with stopped parameters: this log weight reaches the
            # guide only through the reparameterized z (the model's own gradient
            # is the separate, self-normalized term below).
            log_p = _density(p.bind(sg(params)), z, plate, args, kwargs)
            log_q = _density(q.bind(sg(params)), z, plate, args, kwargs)
            return log_p - log_q, _density(p.bind(params), sg(z), plate, args, kwargs)

        log_w, log_p_model = repeat(particles, particle)()
        value = jnp.sum(jax.nn.logsumexp(log_w, axis=0) - log_k)
        w = sg(jax.nn.softmax(log_w, axis=0))
        # Zero in value; gradient = DReG for the guide, sum_k w̄_k ∇θ log p for the model.
        guide_part = jnp.sum(w**2 * (log_w - sg(log_w)))
        model_part = jnp.sum(w * (log_p_model - sg(log_p_model)))
        return sg(value) + guide_part + model_part

    objective.__name__ = f"iwelbo{particles}"
    return expectation(objective, models=_models(p, q))


def vimco(model, guide, particles: int) -> Expectation:
    """IWELBO(K) with VIMCO's per-particle leave-one-out baselines (Mnih & Rezende 2016).

    The score of the REINFORCE sites of particle ``k`` is paired with
    ``L - L_{-k}``, where ``L_{-k}`` replaces ``log w_k`` by the mean of the
    other particles' log weights. Needs ``particles >= 2``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import REINFORCE, vimco
        >>> @gendsl.model
        ... def p():
        ...     z = gendsl.sample("z", dist.Bernoulli(0.3))
        ...     gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=3.0)
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Bernoulli(logits=gendsl.param("t", -1.0)), strategy=REINFORCE)
        >>> g = jax.jit(vimco(p, q, 4).grad)(jax.random.key(0), {"t": -1.0})
    """
    _check_particles("vimco", particles)
    if particles < 2:
        raise ValueError("vimco: the leave-one-out baselines need particles >= 2")
    p, q = gendsl.model(model), _program(guide)

    def objective(params, *args, **kwargs):
        log_w = repeat(particles, lambda: _log_weight(p, q, params, args, kwargs), name="vimco")()
        k = particles
        others_mean = (jnp.sum(log_w) - log_w) / (k - 1)
        # L_{-k}: log-mean-exp of the weights with w_k replaced by the others' geometric mean.
        replaced = jnp.where(jnp.eye(k, dtype=bool), others_mean[:, None], log_w[None, :])
        loo = jax.nn.logsumexp(replaced, axis=1) - jnp.log(k)
        baselines("vimco", loo)
        return jax.nn.logsumexp(log_w) - jnp.log(k)

    objective.__name__ = f"vimco{particles}"
    return expectation(objective, models=_models(p, q))


def renyi(model, guide, alpha: float, particles: int, *, plate: str | None = None) -> Expectation:
    """The Rényi variational bound ``1/(1-α) log E_q[(p/q)^(1-α)]`` with ``K`` samples (Li & Turner 2016).

    ``alpha = 0`` is IWELBO(K); ``alpha -> 1`` tends to the ELBO.

    Args:
        model, guide: the programs.
        alpha: ``α ≠ 1``.
        particles: ``K``.
        plate: the name of a data plate for the per-data-point bound (the sum over points
            of each point's own bound), as in ``iwelbo``; every site must be inside it.

    Example:
        >>> import gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import renyi
        >>> @gendsl.model
        ... def p():
        ...     gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> objective = renyi(p, p, alpha=0.5, particles=3)
    """
    _check_particles("renyi", particles)
    if alpha == 1.0:
        raise ValueError("renyi: alpha = 1 is the ELBO; use elbo(model, guide)")
    p, q = gendsl.model(model), _program(guide)
    _check_plate("renyi", plate, q)

    def objective(params, *args, **kwargs):
        log_w = repeat(particles, lambda: _log_weight(p, q, params, args, kwargs, plate))()
        return jnp.sum(jax.nn.logsumexp((1 - alpha) * log_w, axis=0) - jnp.log(particles)) / (1 - alpha)

    objective.__name__ = f"renyi{alpha}"
    return expectation(objective, models=_models(p, q))


def hvi(model, guide, keep, *, proposal=None) -> Expectation:
    """Hierarchical VI: the ELBO of the marginal ``q(keep)`` of a guide with auxiliary sites.

    ``elbo(model, marginal(guide, keep, proposal=proposal, particles=1))``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import hvi
        >>> @gendsl.model
        ... def p():
        ...     gendsl.sample("x", dist.Normal(0.0, 1.0))
        >>> @gendsl.model
        ... def q():
        ...     u = gendsl.sample("u", dist.Normal(0.0, 1.0))      # auxiliary
        ...     gendsl.sample("x", dist.Normal(u, gendsl.param("s", 1.0)))
        >>> value = jax.jit(lambda key: hvi(p, q, ["x"]).estimate(key, {"s": 1.0}, samples=1000))(jax.random.key(0))
    """
    return elbo(model, marginal(guide, keep, proposal=proposal, particles=1))


def iwhvi(model, guide, keep, particles: int, *, proposal=None) -> Expectation:
    """Importance-weighted HVI (Sobolev & Vetrov 2019): ``elbo`` of ``marginal(..., particles=m)``.

    Example:
        >>> import gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import iwhvi
        >>> @gendsl.model
        ... def q():
        ...     u = gendsl.sample("u", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(u, 1.0))
        >>> objective = iwhvi(q, q, keep=["x"], particles=5)  # q as its own model: the bound is <= 0
    """
    return elbo(model, marginal(guide, keep, proposal=proposal, particles=particles))


def diwhvi(model, guide, keep, outer: int, inner: int, *, proposal=None) -> Expectation:
    """Doubly importance-weighted HVI: ``iwelbo(outer)`` of ``marginal(..., particles=inner)``.

    Example:
        >>> import gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import diwhvi
        >>> @gendsl.model
        ... def q():
        ...     u = gendsl.sample("u", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(u, 1.0))
        >>> objective = diwhvi(q, q, keep=["x"], outer=5, inner=5)
    """
    return iwelbo(model, marginal(guide, keep, proposal=proposal, particles=inner), outer)


def p_wake(model, guide, particles: int) -> Expectation:
    """Reweighted wake-sleep, model update (Bornschein & Bengio 2015).

    IWELBO(K) with the guide's parameters stopped: its gradient in the model's
    parameters is ``sum_k w̄_k ∇θ log p(x, z_k)``. Train the model with it and the
    guide with ``q_wake`` (two optimizers, or one objective that adds both).

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import p_wake
        >>> @gendsl.model
        ... def p():
        ...     z = gendsl.sample("z", dist.Normal(gendsl.param("mu", 0.0), 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=1.0)
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(gendsl.param("m", 0.0), 1.0))
        >>> g = jax.jit(p_wake(p, q, 5).grad)(jax.random.key(0), {"mu": 0.0, "m": 0.0})
        >>> float(g["m"])  # the guide is left alone
        0.0
    """
    _check_particles("p_wake", particles)
    p, q = gendsl.model(model), _program(guide)

    def objective(params, *args, **kwargs):
        log_w = repeat(particles, lambda: _log_weight(p, q, params, args, kwargs, guide_params=sg(params)))()
        return jax.nn.logsumexp(log_w) - jnp.log(particles)

    objective.__name__ = f"p_wake{particles}"
    return expectation(objective, models=_models(p, q))


def q_wake(model, guide, particles: int) -> Expectation:
    """Reweighted wake-sleep, guide update: ``sum_k sg(w̄_k) log q(sg(z_k))``.

    Its gradient, ``sum_k w̄_k ∇φ log q(z_k)``, is the self-normalized estimate
    of ``-∇φ KL(p(z|x) || q(z))``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import q_wake
        >>> @gendsl.model
        ... def p():
        ...     z = gendsl.sample("z", dist.Normal(gendsl.param("mu", 0.0), 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=1.0)
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(gendsl.param("m", 0.0), 1.0))
        >>> g = jax.jit(q_wake(p, q, 5).grad)(jax.random.key(0), {"mu": 0.0, "m": 0.0})
        >>> float(g["mu"])  # the model is left alone
        0.0
    """
    _check_particles("q_wake", particles)
    p, q = gendsl.model(model), gendsl.model(guide)

    def objective(params, *args, **kwargs):
        def particle():
            z, log_q_draw = sim(q.bind(sg(params)))(*args, **kwargs)
            log_w = density(p.bind(sg(params)))(z, *args, **kwargs) - log_q_draw
            return log_w, density(q.bind(params))(sg(z), *args, **kwargs)

        log_w, log_q = repeat(particles, particle)()
        return jnp.sum(sg(jax.nn.softmax(log_w)) * log_q)

    objective.__name__ = f"q_wake{particles}"
    return expectation(objective, models=_models(p, q))


def rws(model, guide, particles: int, *, plate: str | None = None) -> Expectation:
    """Reweighted wake-sleep in one objective: ``p_wake`` for the model, ``q_wake`` for the guide.

    The value is ``p_wake``'s (IWELBO(K)); ``q_wake`` enters only through its
    gradient (it is added as ``t - sg(t)``), which reaches only the guide's
    parameters, while ``p_wake``'s reaches only the model's. One optimizer
    can therefore train both.

    Args:
        model, guide: the programs.
        particles: ``K``.
        plate: the name of a data plate: each data point gets its own importance weights
            and self-normalization (the per-data-point form), as in ``iwelbo``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import p_wake, q_wake, rws
        >>> @gendsl.model
        ... def p():
        ...     z = gendsl.sample("z", dist.Normal(gendsl.param("mu", 0.0), 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=1.0)
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(gendsl.param("m", 0.0), 1.0))
        >>> params, key = {"mu": 0.0, "m": 0.0}, jax.random.key(0)
        >>> g = jax.jit(rws(p, q, 5).grad)(key, params)  # the same particles as each phase alone:
        >>> bool(g["mu"] == jax.jit(p_wake(p, q, 5).grad)(key, params)["mu"])
        True
        >>> bool(g["m"] == jax.jit(q_wake(p, q, 5).grad)(key, params)["m"])
        True
    """
    _check_particles("rws", particles)
    p, q = gendsl.model(model), gendsl.model(guide)
    _check_plate("rws", plate, q)

    def objective(params, *args, **kwargs):
        # One set of particles serves both phases, as in reweighted wake-sleep.
        def particle():
            z, log_q_draw = _sim(q.bind(sg(params)), plate, args, kwargs)
            log_w = _density(p.bind(params), z, plate, args, kwargs) - log_q_draw
            return log_w, _density(q.bind(params), sg(z), plate, args, kwargs)

        log_w, log_q = repeat(particles, particle)()
        guide_term = jnp.sum(sg(jax.nn.softmax(log_w, axis=0)) * log_q)
        value = jnp.sum(jax.nn.logsumexp(log_w, axis=0) - jnp.log(particles))
        return value + (guide_term - sg(guide_term))

    objective.__name__ = f"rws{particles}"
    return expectation(objective, models=_models(p, q))


def sleep(model, guide, observed: str) -> Expectation:
    """The sleep phase of wake-sleep: ``E_{(z, x) ~ p}[log q(z | x)]``.

    The model is run forward with its observed site ``observed`` sampled
    instead of observed; the sampled value replaces the guide's first argument.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import sleep
        >>> @gendsl.model
        ... def p(x):
        ...     z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...     gendsl.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("z", dist.Normal(gendsl.param("a", 0.0) * x, 1.0))
        >>> g = jax.jit(sleep(p, q, observed="x").grad)(jax.random.key(0), {"a": 0.0}, 1.0)
    """
    p, q = gendsl.model(model), gendsl.model(guide)

    def objective(params, *args, **kwargs):
        dream, _ = sim(handlers.uncondition(p.bind(sg(params))))(*args, **kwargs)
        if observed not in dream:
            raise gendsl.AddressError(f"sleep: the model has no site '{observed}'; it has {sorted(dream)}")
        x = sg(dream.pop(observed))
        z = {a: sg(v) for a, v in dream.items()}
        return density(q.bind(params))(z, x, *args[1:], **kwargs)

    objective.__name__ = "sleep"
    return expectation(objective, models=_models(p, q))


def _analytic_elbo(p, q_stopped, guide_trace, beta, args, kwargs):
    """``log p(x | z) + β (Σ log p(z) - Σ log q(z))`` with closed-form KLs where valid (``_kl``).

    ``q_stopped`` is the guide with stopped parameters for ``estimator="stl"`` (the Monte Carlo
    sites' ``log q`` is rescored with it), else None.
    """
    model_trace = scored_trace(p, guide_trace.latents, args, kwargs)
    log_q = None if q_stopped is None else scored_trace(q_stopped, guide_trace.latents, args, kwargs).log_probs
    log_lik = sum((jnp.sum(model_trace.log_probs[a]) for a in model_trace.observed), jnp.zeros(()))
    return log_lik + beta * _kl.log_ratio(guide_trace, model_trace, log_q=log_q)


def _check_particles(name, particles):
    if not isinstance(particles, int) or particles < 1:
        raise ValueError(f"{name}: particles must be a positive int, got {particles!r}")


def _all_reparam(q, what):
    if isinstance(q, Marginal):
        raise ValueError(f"{what} needs a plain guide, not a marginal")
    return gendsl.model(handlers.strategy(q.fn, rules=lambda address: REPARAM))


def _split_density(p, z, args, kwargs):
    """``(log p(observed | z), log p(z))`` from one assessment of the model."""
    trace = scored_trace(p, z, args, kwargs)
    log_lik = sum((jnp.sum(trace.log_probs[a]) for a in trace.observed), jnp.zeros(()))
    return log_lik, trace.score - log_lik


def common_plate(model, guide, *args, key=0, **kwargs) -> str:
    """The one plate that holds every site of ``model`` and ``guide``: the ``plate=`` of a per-point bound.

    The guide is run once and the model scored at its draws; the plates are read from the
    traces' plate membership (``Trace.site_plates``), not guessed from array shapes.

    Raises:
        gendsl.AddressError: no plate holds every site (the error names a site outside the
            others' plates, e.g. a global latent), or several do (the error names them: pass
            one as ``plate=``).

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import common_plate
        >>> @gendsl.model
        ... def p(x):
        ...     with gendsl.plate("data", x.shape[0]):
        ...         z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        ...         gendsl.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     with gendsl.plate("data", x.shape[0]):
        ...         gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> common_plate(p, q, jax.numpy.zeros(4))
        'data'
    """
    q_trace = jax.eval_shape(lambda: gendsl.model(guide).simulate(key, *args, **kwargs))
    p_trace = _eval_generate(model, q_trace, key, args, kwargs)
    common = None
    for trace, who in ((p_trace, "model"), (q_trace, "guide")):
        for address, plates in trace.site_plates:
            names = {name for name, _ in plates}
            if common is not None and not (common & names):
                raise gendsl.AddressError(
                    f"no plate holds every site: the {who}'s site '{address}' is in plates {sorted(names) or 'none'}, "
                    f"the others in {sorted(common)}; a per-data-point bound needs every latent and observed site "
                    "inside one data plate (use the bound of the whole data instead)"
                )
            common = names if common is None else common & names
    if not common:
        raise gendsl.AddressError("no plate holds every site of the model and the guide; a per-data-point bound "
                                  "needs one data plate around every site")
    if len(common) > 1:
        raise gendsl.AddressError(f"every site is inside each of the plates {sorted(common)}; the per-data-point "
                                  "plate is ambiguous: pass the data plate's name as plate=")
    return next(iter(common))


def _eval_generate(model, q_trace, key, args, kwargs):
    choices = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), q_trace.latents)
    return jax.eval_shape(lambda c: gendsl.model(model).generate(key, c, *args, **kwargs)[0], choices)
