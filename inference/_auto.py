"""AUTO: choose each site's gradient strategy by measuring gradient variance x time.

A site marked ``strategy=AUTO`` (or ``"auto"``, or by a rule of
``gendsl.handlers.strategy``, or ``gendsl fit --strategy auto``) gets its strategy from a
measurement at the starting parameters, before training: ``choose_strategies`` (which
``SVI.init`` calls when its objective has AUTO sites) times and estimates the gradient
variance of every *admissible* candidate and keeps the one with the lowest
``variance x seconds`` (the variance per second of compute: the variance after a fixed
time budget of averaged estimates).

How it decides:

1. **Find the AUTO sites.** The objective is traced once with every AUTO site at a
   placeholder (REINFORCE without baseline); at each site every candidate is checked there,
   on the site's distribution: ``check`` (REPARAM needs a reparameterized sampler, ENUM a
   finite support), the branches of ENUM and MVD (MVD covers Bernoulli, Categorical, Normal,
   Poisson, Geometric), ENUM's support size against ``max_support``, and biased candidates
   (``Relaxed``) are refused. An inadmissible candidate is skipped with its reason, in the
   report: never used.
2. **Group the sites.** Sites with the same admissible candidates are decided together (one
   strategy for the group, as ``rules={"z_pres_*": S}`` writes it); ``per_site=True`` decides
   each site alone. Groups are decided one after another in program order; a group not yet
   decided sits at its first admissible candidate (in the order of ``candidates``), a
   decided one at its choice.
3. **Measure each candidate of a group** in the whole objective, compiled once: the gradient
   at the fixed parameters for ``repeats`` keys on each minibatch of ``batches`` (the same
   keys and minibatches for every candidate), candidates interleaved call by call so that
   they share the machine's load. *Variance*: the mean over parameters of the
   per-parameter variance over keys (averaged over minibatches: the estimator's variance,
   not the minibatch's), with a standard error. *Time*: the median of the
   timed calls (one gradient estimate, compiled, ``block_until_ready``, the candidates' calls
   back to back after one untimed call; the statistics are computed between rounds). EMA baselines of
   REINFORCE sites are first warmed up for ``warmup`` estimates at the fixed parameters and
   keep moving during the measurement, as in a run after its first steps; a learned
   baseline is measured as it starts (untrained, so pessimistically).
4. **Pick** the lowest ``variance x time``. A variance below ``1e-9`` times the mean squared
   gradient is float rounding of an exact gradient (ENUM on a plate of independent sites,
   MVD on a lone Bernoulli in the ELBO) and counts as 0; ties go to the faster candidate.

The measurement costs one compilation per candidate and group (seconds for a small
model, tens of seconds for AIR on two CPU cores) plus ``repeats`` estimates per
minibatch. Timings are noisy: between candidates whose products are close the choice can
change from run to run; ``StrategyChoice.rows`` shows the figures. Every candidate is
unbiased, so any choice gives the same expected gradient.

``choose_strategies`` returns a ``StrategyChoice``: the strategy at each site address
(``strategies``), the table of figures (``rows``, ``table()``), and the objective with the
choice applied (``objective``; ``assign(objective, strategies)`` applies a recorded choice
again without measuring).

Design notes. AUTO is a *deferred* strategy: the site handler asks every strategy to
``select`` the one that handles the site (``_strategies.resolve``), and ``Auto.select``
answers from the assignment that the running objective carries (``_strategies.deferred_choice``),
by the site's address inside the objective (``sim0/z``, as the estimator names it). ``assign`` wraps the objective's
function so that the assignment is active while that function runs: the choice is part of
the objective, fixed when it is traced, and nothing outside it changes (``SVI`` only swaps
its objective for the assigned one at the first ``init``). Variances are of the gradient in
the parameters as the objective sees them (constrained, as ``benchmarks/grad_variance.py``
measures), the same parameterization for every candidate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as nd

from gendsl.inference._enum import ENUM, Enum
from gendsl.inference._estimator import value_and_grad
from gendsl.inference._expectation import Expectation
from gendsl.inference._mvd import MVD, MeasureValued
from gendsl.inference._params import init_params
from gendsl.inference._reexecution import ReExecuted, elements
from gendsl.inference._reinforce import REINFORCE, Reinforce
from gendsl.inference._relaxed import Relaxed
from gendsl.inference._strategies import REPARAM, AutoUnresolved, EstimatorError, Reparam, Strategy, deferred_choice
from gendsl.internal import as_key

__all__ = ["AUTO", "Auto", "AutoUnresolved", "StrategyChoice", "StrategyRow", "assign", "choose_strategies"]

DEFAULT_CANDIDATES: tuple[Strategy, ...] = (REPARAM, ENUM, MVD, REINFORCE)
EXACT = 1e-9  # variance / mean squared gradient below this: float rounding of an exact gradient


@dataclasses.dataclass(frozen=True)
class Auto(Strategy, name="auto"):
    """Choose this site's strategy by measurement (see the module docstring).

    ``SVI.init`` chooses when its objective has AUTO sites; ``choose_strategies`` does it
    explicitly, with every option. Estimating an objective with an unresolved AUTO site
    (``objective.grad``) is an error that says so.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import AUTO, ENUM, REINFORCE, choose_strategies, elbo
        >>> @gendsl.model
        ... def p():
        ...     z = gendsl.sample("z", dist.Bernoulli(0.3))
        ...     gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=3.0)
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Bernoulli(logits=gendsl.param("theta", -1.0)), strategy=AUTO)
        >>> choice = choose_strategies(elbo(p, q), jax.random.key(0), candidates=(ENUM, REINFORCE), repeats=8)
        >>> choice.labels()  # exact (variance 0) beats REINFORCE's noise
        {'sim0/z': 'ENUM'}
        >>> [(r.candidate, r.exact, r.chosen) for r in choice.rows]
        [('ENUM', True, True), ('REINFORCE', False, False)]

    With ``SVI(elbo(p, q), optimizer).init(key)`` the same happens at ``init`` (with the default
    candidates), and ``svi.strategy_choice`` is the ``StrategyChoice``.
    """

    def select(self, fn: nd.Distribution, address: str) -> Strategy:
        context = deferred_choice.get()
        if context is None:
            raise AutoUnresolved(
                f"site '{address}' has strategy AUTO, which is chosen by measurement before training: "
                "SVI(objective, optimizer).init(key, *args) chooses it, or call "
                "gendsl.inference.choose_strategies(objective, key, *args) and use its .objective"
            )
        return context.select(fn, address)


AUTO = Auto()


def _is_auto(strategy: Any) -> bool:
    return isinstance(strategy, Auto)


def label(strategy: Strategy) -> str:
    """A short name of a strategy for reports: ``ENUM``, ``MVD``, ``REPARAM``, ``REINFORCE``, or its repr."""
    if strategy == REINFORCE:
        return "REINFORCE"
    if isinstance(strategy, Reinforce):
        parts = [f"baseline={strategy.baseline!r}"] if strategy.baseline != "ema" else []
        parts += ["track_dependencies=False"] if not strategy.track_dependencies else []
        parts += [f"decay={strategy.decay}"] if strategy.decay != 0.9 and strategy.baseline == "ema" else []
        return f"REINFORCE({', '.join(parts)})"
    for name, kind in (("ENUM", Enum), ("MVD", MeasureValued), ("REPARAM", Reparam)):
        if type(strategy) is kind:
            return name
    return repr(strategy)


# ----------------------------------------------------------------------------- site resolution


class _Discovery:
    """Records the AUTO sites of one trace and which candidates each admits."""

    def __init__(self, candidates: Sequence[Strategy], max_support: int) -> None:
        self.candidates = tuple(candidates)
        self.max_support = max_support
        self.sites: dict[str, dict] = {}

    def select(self, fn: nd.Distribution, address: str) -> Strategy:
        if address not in self.sites:
            base, shape = elements(fn)
            reasons = {i: _inadmissible(c, fn, address, self.max_support) for i, c in enumerate(self.candidates)}
            self.sites[address] = {"family": type(base).__name__, "shape": shape, "reasons": reasons}
        return _PLACEHOLDER


_PLACEHOLDER = Reinforce(baseline=None, track_dependencies=False)  # admissible everywhere, cheapest to trace


class _Assignment:
    """Hands each AUTO site its assigned strategy."""

    def __init__(self, strategies: dict[str, Strategy]) -> None:
        self.strategies = strategies

    def select(self, fn: nd.Distribution, address: str) -> Strategy:
        if address not in self.strategies:
            raise AutoUnresolved(
                f"site '{address}' has strategy AUTO but no strategy was chosen for it (chosen: "
                f"{sorted(self.strategies)}); the objective reached a site that the measurement did not see, "
                "e.g. under other arguments: call choose_strategies again with these arguments"
            )
        return self.strategies[address]


@contextlib.contextmanager
def _active(context):
    token = deferred_choice.set(context)
    try:
        yield
    finally:
        deferred_choice.reset(token)


def _inadmissible(candidate: Strategy, fn: nd.Distribution, address: str, max_support: int) -> str | None:
    """Why ``candidate`` cannot handle the site without bias (None: admissible). Runs inside a trace."""
    if isinstance(candidate, Auto):
        return "AUTO is not a candidate of itself"
    if isinstance(candidate, Relaxed) or getattr(candidate, "allow_bias", False):
        return "biased (a relaxation); AUTO compares unbiased estimators only"
    try:
        candidate.check(fn, address)
        if isinstance(candidate, ReExecuted):
            key = jax.random.key(0)
            candidate._branches(address, fn, jax.lax.stop_gradient(fn.sample(key)), key)
    except EstimatorError as err:
        return str(err).removeprefix(f"site '{address}': ").split("; use ")[0]
    if isinstance(candidate, Enum):
        base, _ = elements(fn)
        size = int(base.enumerate_support(expand=False).reshape(-1).shape[0])
        if size > max_support:
            return f"support of {size} values is larger than max_support={max_support}"
    return None


def assign(objective: Expectation, strategies: dict[str, Strategy]) -> Expectation:
    """``objective`` with its AUTO sites at the given strategies, by site address (``"sim0/z"``).

    Use it to apply a recorded ``StrategyChoice.strategies`` again without measuring.

    Raises:
        TypeError: a value is not a ``Strategy``.
    """
    table = dict(strategies)
    for address, s in table.items():
        if not isinstance(s, Strategy) or _is_auto(s):
            raise TypeError(f"assign: site '{address}' needs a gradient strategy other than AUTO, got {s!r}")
    context = _Assignment(table)
    inner = objective.fn

    def fn(*args, **kwargs):
        with _active(context):
            return inner(*args, **kwargs)

    return Expectation(fn, objective.models, objective.init)


def _split(params):
    """The differentiable part of ``params`` (floats as arrays) and the rest."""
    diff, static = eqx.partition(params, eqx.is_inexact_array_like)
    return jax.tree_util.tree_map(jnp.asarray, diff), static


def auto_sites(objective: Expectation, params: Any, *args, candidates=DEFAULT_CANDIDATES, max_support: int = 128,
               samples: int = 1, per_point: bool = False, **kwargs) -> dict[str, dict]:
    """The AUTO sites of ``objective`` by address: family, shape and each candidate's inadmissibility reason."""
    discovery = _Discovery(candidates, max_support)
    diff, static = _split(params)

    def run(d):
        fn = objective.fn
        with _active(discovery):
            return value_and_grad(lambda p, *a, **kw: fn(eqx.combine(p, static), *a, **kw), d, args, kwargs,
                                  jax.random.key(0), {}, samples, per_point=per_point)[0]

    jax.eval_shape(run, diff)
    return discovery.sites


# ----------------------------------------------------------------------------- the report


@dataclasses.dataclass(frozen=True)
class StrategyRow:
    """One line of the report: a candidate at a group of sites, measured or skipped.

    Attributes:
        sites: the site addresses the candidate was put at (together).
        candidate: its name (``ENUM``, ``MVD``, ``REINFORCE``, ...).
        variance: mean over parameters of the per-parameter variance of one gradient estimate
            (None when skipped).
        variance_se: its standard error over the keys.
        seconds: median time of one compiled gradient estimate.
        product: ``variance x seconds`` (0 when the variance is float rounding of an exact gradient).
        exact: the variance is below ``1e-9`` times the mean squared gradient.
        chosen: the candidate picked for these sites.
        reason: why it was skipped (None when measured).
    """

    sites: tuple[str, ...]
    candidate: str
    variance: float | None = None
    variance_se: float | None = None
    seconds: float | None = None
    product: float | None = None
    exact: bool = False
    chosen: bool = False
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class StrategyChoice:
    """What ``choose_strategies`` chose, and the figures it chose from.

    Attributes:
        strategies: the chosen strategy at each AUTO site, by address.
        rows: the report, one ``StrategyRow`` per candidate and group of sites.
        objective: the objective with the choice applied.
    """

    strategies: dict[str, Strategy]
    rows: tuple[StrategyRow, ...]
    objective: Expectation = dataclasses.field(repr=False, compare=False)

    def labels(self) -> dict[str, str]:
        """The chosen strategies' short names by site address."""
        return {a: label(s) for a, s in self.strategies.items()}

    def table(self) -> str:
        """The report as a Markdown table."""
        lines = ["| sites | candidate | variance | ms / estimate | variance x s | choice |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows:
            sites = ", ".join(r.sites)
            if r.reason is not None:
                lines.append(f"| {sites} | {r.candidate} | | | | skipped: {r.reason} |")
                continue
            var = f"{r.variance:.4g} ± {r.variance_se:.2g}"
            product = "0 (exact)" if r.exact else f"{r.product:.3g}"
            lines.append(f"| {sites} | {r.candidate} | {var} | {r.seconds * 1e3:.3f} | {product} | "
                         f"{'**chosen**' if r.chosen else ''} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ----------------------------------------------------------------------------- measuring


class _Measured:
    """One assignment compiled, its EMA baselines warmed up, and its measurements so far."""

    def __init__(self, objective, strategies, diff, static, batches, kwargs, samples, per_point, warmup, key):
        fn = assign(objective, strategies).fn

        def grad(d, k, args, ema):
            _, g, new = value_and_grad(lambda p, *a, **kw: fn(eqx.combine(p, static), *a, **kw), d, args, kwargs, k,
                                       ema, samples, per_point=per_point)
            return g, new

        jitted = jax.jit(grad)
        traced = jitted.trace(diff, key, batches[0], {})
        shapes = traced.out_info[1]
        self.ema = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        if shapes:  # EMA baselines: compile for their structure, then warm them up
            traced = jitted.trace(diff, key, batches[0], self.ema)
        self.call = traced.lower().compile()
        for k in jax.random.split(jax.random.fold_in(key, 1), warmup if shapes else 0):
            self.ema = self.call(diff, k, batches[0], self.ema)[1]
        self.reset(len(batches))

    def reset(self, n_batches: int) -> _Measured:
        """Forget earlier measurements (the EMA baselines keep their state)."""
        self.moments = [_Moments() for _ in range(n_batches)]
        self.times: list[float] = []
        return self

    def timed(self, diff, key, args):
        """One gradient estimate, timed (the EMA baselines move on, as in a run)."""
        t0 = time.perf_counter()
        g, self.ema = jax.block_until_ready(self.call(diff, key, args, self.ema))
        self.times.append(time.perf_counter() - t0)
        return g

    def record(self, b: int, g) -> None:
        leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(g)]
        self.moments[b].add(np.concatenate(leaves) if leaves else np.zeros(0))

    def figures(self) -> tuple[float, float, float, bool]:
        """``(variance, its standard error, seconds, exact)``, the variance averaged over minibatches."""
        stats = [m.figures() for m in self.moments]
        variance = float(np.mean([v for v, _, _ in stats]))
        se = float(np.sqrt(np.sum([e**2 for _, e, _ in stats]))) / len(stats)
        square = float(np.mean([q for _, _, q in stats]))
        exact = variance <= EXACT * max(square, np.finfo(np.float64).tiny)
        return variance, se, float(np.median(self.times)), exact


class _Moments:
    """Streaming moments of gradient draws (memory: three gradients, whatever the number of draws).

    The variance (mean over parameters of the per-parameter variance) comes from Welford's
    update; its standard error from the spread of ``|g_2k - g_2k+1|^2 / 2``, independent
    unbiased estimates of it from disjoint pairs of draws (conservative: half the information).
    """

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.last, self.pairs = 0, 0.0, 0.0, None, []

    def add(self, g: np.ndarray) -> None:
        self.n += 1
        delta = g - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (g - self.mean)
        if self.last is None:
            self.last = g
        else:
            self.pairs.append(np.mean((g - self.last) ** 2) / 2 if g.size else 0.0)
            self.last = None

    def figures(self) -> tuple[float, float, float]:
        """``(variance, standard error, mean squared mean gradient)``."""
        size = max(np.size(self.m2), 1)
        variance = float(np.sum(self.m2) / size / (self.n - 1))
        se = float(np.std(self.pairs, ddof=1) / np.sqrt(len(self.pairs))) if len(self.pairs) > 1 else float("nan")
        return variance, se, float(np.sum(np.square(self.mean)) / size)


def _check_concrete(tree, what: str) -> None:
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree)):
        raise AutoUnresolved(
            f"AUTO strategies are chosen by running the objective on concrete {what}, but they are traced "
            "here (inside jit or vmap): call gendsl.inference.choose_strategies(objective, key, *args) outside "
            "the transformation and use its .objective"
        )


def choose_strategies(
    objective: Expectation,
    key,
    *args,
    params: Any = None,
    candidates: Sequence[Strategy] = DEFAULT_CANDIDATES,
    batches: Sequence[tuple] | None = None,
    repeats: int = 64,
    warmup: int = 50,
    max_support: int = 128,
    per_site: bool = False,
    samples: int = 1,
    per_point: bool = False,
    **kwargs,
) -> StrategyChoice:
    """Choose the strategy of every AUTO site of ``objective`` by gradient variance x time.

    See the module docstring for the procedure.

    Args:
        objective: an objective with AUTO sites (``elbo(model, guide)`` whose guide marks them).
        key: PRNG key (parameter initialization and the measurement's keys).
        *args, **kwargs: the objective's arguments (a minibatch), when ``batches`` is not given.
        params: the (constrained) parameters to measure at; default ``init_params(objective, key, *args)``.
        candidates: the strategies to compare, in order of preference before measuring (an
            undecided group sits at its first admissible one).
        batches: minibatches to measure on, each a tuple of the objective's positional
            arguments (all of one shape); default ``[args]``.
        repeats: gradient estimates per candidate and minibatch (at least 4).
        warmup: estimates that warm EMA baselines up before measuring.
        max_support: ENUM is inadmissible at a site with a larger support.
        per_site: decide each site alone instead of each group of sites with the same
            admissible candidates.
        samples, per_point: as in ``SVI`` (replicates per estimate; the objective applied to
            each data point of the first argument and summed).

    Returns:
        The ``StrategyChoice``; with no AUTO site, an empty one whose ``objective`` is ``objective``.

    Raises:
        AutoUnresolved: the arguments or parameters are traced (inside ``jit``).
        ValueError: bad options.
    """
    if not isinstance(objective, Expectation):
        raise TypeError(f"choose_strategies: expected a gendsl.inference objective, got {type(objective).__name__}")
    if not isinstance(repeats, int) or repeats < 4:
        raise ValueError(f"choose_strategies: repeats must be an int >= 4 (a variance and its error), got {repeats!r}")
    if not candidates or not all(isinstance(c, Strategy) for c in candidates):
        raise ValueError(f"choose_strategies: candidates must be gradient strategies, got {candidates!r}")
    if batches is not None and args:
        raise ValueError("choose_strategies: give the arguments either positionally or as batches=[args, ...]")
    batches = [tuple(b) for b in batches] if batches is not None else [args]
    if not batches:
        raise ValueError("choose_strategies: batches is empty")
    key = as_key(key)
    _check_concrete((key, params, batches, kwargs), "key, arguments and parameters")
    k_init, k_measure = jax.random.split(key)
    if params is None:
        params = init_params(objective, k_init, *batches[0], **kwargs)[0]
    diff, static = _split(params)
    candidates = tuple(candidates)

    sites = auto_sites(objective, params, *batches[0], candidates=candidates, max_support=max_support,
                       samples=samples, per_point=per_point, **kwargs)
    if not sites:
        return StrategyChoice({}, (), objective)
    groups: dict[tuple, list[str]] = {}
    for address, info in sites.items():
        ok = tuple(i for i in range(len(candidates)) if info["reasons"][i] is None)
        groups.setdefault((address,) if per_site else ok, []).append(address)
    current = {}
    for addresses in groups.values():
        for a in addresses:
            ok = [i for i in range(len(candidates)) if sites[a]["reasons"][i] is None]
            current[a] = candidates[ok[0]] if ok else _PLACEHOLDER  # REINFORCE is always admissible

    rows: list[StrategyRow] = []
    cache: dict[tuple, _Measured] = {}
    keys = jax.random.split(k_measure, repeats)
    for addresses in groups.values():
        ok = [i for i in range(len(candidates)) if all(sites[a]["reasons"][i] is None for a in addresses)]
        skipped: dict[tuple, list[str]] = {}  # (candidate, reason) -> sites
        for a in addresses:
            for i, reason in sites[a]["reasons"].items():
                if reason is not None:
                    skipped.setdefault((i, reason), []).append(a)
        trials, measured = [], []
        for i in ok:
            trial = {**current, **{a: candidates[i] for a in addresses}}
            tag = tuple(sorted((a, repr(s)) for a, s in trial.items()))
            if tag not in cache:
                try:
                    cache[tag] = _Measured(objective, trial, diff, static, batches, kwargs, samples, per_point,
                                           warmup, k_measure)
                except EstimatorError as err:  # what only the whole program shows (e.g. nested loops)
                    skipped.setdefault((i, str(err)), []).extend(addresses)
                    continue
            trials.append(i)
            measured.append(cache[tag].reset(len(batches)))
        if not measured:
            raise EstimatorError(f"sites {addresses}: no candidate among {[label(c) for c in candidates]} is "
                                 "admissible; add REINFORCE (admissible at every site)")
        for r in range(repeats):
            for b, batch in enumerate(batches):
                # Rotate the order, so that candidates share the machine's load, and time the calls back to
                # back: the statistics (host work on every parameter) run afterwards. One untimed call first
                # warms the caches that this host work cleared (as the steps of a run find them).
                order = [measured[(j + r) % len(measured)] for j in range(len(measured))]
                jax.block_until_ready(order[-1].call(diff, keys[r], batch, order[-1].ema))
                draws = [m.timed(diff, keys[r], batch) for m in order]
                for m, g in zip(order, draws, strict=True):
                    m.record(b, g)
        figures = [m.figures() for m in measured]
        products = [(0.0 if exact else var * t, t) for var, _, t, exact in figures]
        best = min(range(len(trials)), key=lambda j: products[j])
        for a in addresses:
            current[a] = candidates[trials[best]]
        for j, (i, (var, se, t, exact)) in enumerate(zip(trials, figures, strict=True)):
            rows.append(StrategyRow(tuple(addresses), label(candidates[i]), var, se, t, products[j][0], exact,
                                    j == best))
        for (i, reason), where in skipped.items():
            rows.append(StrategyRow(tuple(where), label(candidates[i]), reason=reason))
    return StrategyChoice(dict(current), tuple(rows), assign(objective, current))
