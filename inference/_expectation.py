"""Objectives as programs: ``sim``, ``density``, ``repeat``, ``expectation``.

An objective is a Python function ``F(params, *args) -> scalar`` that draws
from models with ``sim`` and scores choices with ``density``. ``expectation(F)``
stands for ``E[F]`` over every random choice ``sim`` makes, and derives an
unbiased estimator of its gradient from each site's strategy.

How the gradient estimator is derived (a surrogate whose gradient is unbiased):

* REPARAM sites keep the pathwise gradient of their value.
* REINFORCE sites are stopped; the surrogate adds ``(log q - sg(log q)) * sg(F - b)``
  (the DiCE "magic box" at first order, with a baseline ``b``).
* ENUM and MVD sites are handled by *re-execution*: the objective is run again
  with the site's value substituted (vmapped over the substitutions). Keys are
  derived from addresses, so a re-execution reproduces every draw made before
  the site exactly: it is the continuation of the program at that site. An
  unbatched ENUM site is summed exactly, ``sum_k q(k) S(z = k)``; a batched one,
  and every MVD site, adds ``sum_j c_j * sg(F_j)`` over its branches
  (see ``_branches``).

Everything is traced once, so the estimator runs under ``jit``, ``vmap`` and
``lax.scan`` like any JAX function.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.primitives import Messenger

import gendsl
from gendsl._address import address_hash, as_key, join, site_key
from gendsl._seed import seed
from gendsl._trace import Recorder
from gendsl.inference._branches import branches, enumerate_values
from gendsl.inference._provenance import costs, score_site
from gendsl.inference._strategies import Enum, EstimatorError, Reinforce, Reparam, resolve

__all__ = ["Expectation", "baselines", "density", "expectation", "repeat", "sim"]

sg = jax.lax.stop_gradient


@dataclasses.dataclass
class Override:
    """Element ``index`` of the site ``address`` replaced by ``value``.

    ``path`` holds the particle indices of enclosing ``repeat`` calls; the
    override applies in the particle the path names (``active`` tracks that).
    """

    address: str
    index: Any
    value: Any
    path: tuple = ()
    active: Any = True


@dataclasses.dataclass
class Branches:
    address: str
    index: Any
    value: Any
    carrier: Any
    path: tuple = ()


class _Run:
    """The record of one execution of an objective."""

    def __init__(self, key, overrides, *, prefix="", exact_allowed=True, track=False):
        self.key = key
        self.overrides = overrides
        self.prefix = prefix
        self.exact_allowed = exact_allowed
        self.track = track  # tag REINFORCE values for dependency tracking (see _provenance)
        self.reinforce: dict[str, Any] = {}
        self.strategies: dict[str, Reinforce] = {}
        self.site_group: dict[str, str] = {}  # site address -> enclosing repeat address
        self.group_baselines: dict[str, Any] = {}
        self.branches: list[Branches] = []
        self.exact: list[tuple[str, Any]] = []
        self.enum_logq: dict[str, Any] = {}
        self._count = 0

    def child_address(self, kind: str, name: str | None) -> str:
        if name is None:
            name = f"{kind}{self._count}"
            self._count += 1
        return join(self.prefix, name)


_RUNS: list[_Run] = []


def _current(what: str) -> _Run:
    if not _RUNS:
        raise gendsl.GendslError(
            f"{what} draws random choices, so it must run inside an objective: wrap the function "
            "in gendsl.inference.expectation(f) and call .estimate(key, ...) or .grad(key, ...)"
        )
    return _RUNS[-1]


class _active:
    def __init__(self, run):
        self.run = run

    def __enter__(self):
        _RUNS.append(self.run)

    def __exit__(self, *exc):
        _RUNS.remove(self.run)


def sim(model, *, name: str | None = None) -> Callable[..., tuple[dict, jax.Array]]:
    """Sample a model inside an objective: ``sim(model)(*args) -> (choices, log_density)``.

    Every latent site is drawn with its gradient strategy. The log density is
    ``log q(choices)``, differentiable in the model's parameters.

    Args:
        model: a ``gendsl.Model`` (or a NumPyro model function).
        name: the address of this draw within the objective (default: ``sim0``,
            ``sim1``, ... in program order).

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, sim
        >>> @gendsl.model
        ... def q(mu):
        ...     gendsl.sample("z", dist.Normal(mu, 1.0))
        >>> mean_z = expectation(lambda mu: sim(q)(mu)[0]["z"])
        >>> float(mean_z.grad(jax.random.key(0), 0.5))
        1.0
    """
    if hasattr(model, "sim_in_objective"):  # marginal(...), normalize(...)
        return functools.partial(model.sim_in_objective, name)
    model = gendsl.model(model)

    def run(*args, **kwargs):
        tr = simulate_in_objective(model, name, args, kwargs)
        return tr.latents, tr.score

    return run


def simulate_in_objective(model, name, args, kwargs, *, score_paths=True) -> gendsl.Trace:
    """Run ``model`` inside the current objective, each latent site with its strategy.

    With ``score_paths=False``, the log density of a REINFORCE site enters the trace without
    its gradient in the distribution's parameters (the value is unchanged). That gradient,
    ``∇θ log q(z; θ)`` at the drawn ``z``, has expectation zero; an objective in which ``log q``
    enters linearly (the ELBO) may drop it, which removes its variance (as Pyro's and NumPyro's
    ``TraceGraph_ELBO`` do). Sites inside nested ``gendsl.scan`` loops keep it.
    """
    ctx = _current("sim(model)")
    address = ctx.child_address("sim", name)
    rec = Recorder()
    with _SimSites(ctx, address, score_paths=score_paths), rec, seed(key=site_key(ctx.key, address)):
        retval = model.fn(*args, **kwargs)
    return rec.trace(retval)


def density(model) -> Callable[..., jax.Array]:
    """The log density of given choices: ``density(model)(choices, *args)``.

    Deterministic and differentiable (in the choices and the parameters); the
    same as ``model.assess``.

    Example:
        >>> import gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import density
        >>> @gendsl.model
        ... def p():
        ...     gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> round(float(density(p)({"z": 0.0})), 4)
        -0.9189
    """
    if hasattr(model, "density_in_objective"):  # marginal(...): a random, unbiased estimate
        return model.density_in_objective
    model = gendsl.model(model)
    return model.assess


def repeat(n: int, fn: Callable, *, name: str | None = None) -> Callable:
    """``n`` independent executions of ``fn`` inside an objective, vectorized.

    ``repeat(n, f)(*args)`` returns ``f(*args)`` stacked along a new leading
    axis, each execution with its own randomness (particles). Inside an
    objective, use it instead of ``jax.vmap`` so that the estimator keeps track
    of the sites in every particle.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, repeat, sim
        >>> @gendsl.model
        ... def q():
        ...     gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> draws = expectation(lambda _: repeat(3, lambda: sim(q)()[0]["z"])().sum())
        >>> draws.estimate(jax.random.key(0), None).shape
        ()
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"repeat: n must be a positive int, got {n!r}")

    def run(*args, **kwargs):
        parent = _current("repeat(n, fn)")
        address = parent.child_address("repeat", name)
        base_key = jax.random.fold_in(parent.key, address_hash(address))
        mine = [o for o in parent.overrides if o.path]
        static: dict[str, Any] = {}

        def one(i, overrides):
            child = _Run(
                jax.random.fold_in(base_key, i), [], prefix=address, exact_allowed=False, track=parent.track
            )
            child.overrides = [
                Override(o.address, o.index, o.value, o.path[1:], jnp.logical_and(o.active, o.path[0] == i))
                for o in overrides
            ]
            with _active(child):
                out = fn(*args, **kwargs)
            static["strategies"] = child.strategies
            static["groups"] = child.site_group
            static["branches"] = [(b.address, len(b.path)) for b in child.branches]
            return out, child.reinforce, [(b.index, b.value, b.carrier, b.path) for b in child.branches]

        out, reinforce, found = jax.vmap(one, in_axes=(0, None))(jnp.arange(n), mine)
        for address_, lq in reinforce.items():
            # Keep one score per particle, so that a per-particle baseline (VIMCO) can pair with it.
            parent.reinforce[address_] = lq
            parent.site_group[address_] = static["groups"].get(address_, address)
        parent.strategies.update(static["strategies"])
        for (address_, _), (index, value, carrier, path) in zip(static["branches"], found, strict=False):
            particle = jnp.broadcast_to(jnp.arange(n)[:, None], index.shape)
            flat = [particle.reshape(-1), *(p.reshape(-1) for p in path)]
            parent.branches.append(
                Branches(address_, index.reshape(-1), value.reshape(-1), carrier.reshape(-1), tuple(flat))
            )
        return out

    return run


def baselines(name: str, values) -> None:
    """Per-particle baselines for the REINFORCE sites of ``repeat(..., name=name)``.

    Inside an objective, after ``w = repeat(k, f, name=name)()``, call
    ``baselines(name, b)`` with ``b`` of shape ``(k,)``: the score of every
    REINFORCE site drawn in particle ``i`` is then paired with ``F - b[i]``
    instead of its strategy's baseline. ``b[i]`` must not depend on particle
    ``i``'s draws (for example a leave-one-out function of the others, as in
    VIMCO), or the estimator is biased; it is stopped from gradients here.

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import REINFORCE, baselines, expectation, repeat, sim
        >>> @gendsl.model
        ... def q(p):
        ...     return gendsl.sample("b", dist.Bernoulli(p), strategy=REINFORCE)
        >>> def f(p):
        ...     draws = repeat(2, lambda: sim(q)(p)[0]["b"], name="pair")()
        ...     baselines("pair", jnp.stack([draws[1], draws[0]]))  # the other particle's draw
        ...     return draws.mean()
        >>> g = expectation(f).grad(jax.random.key(0), 0.5)
    """
    ctx = _current("baselines(...)")
    ctx.group_baselines[join(ctx.prefix, name)] = sg(jnp.asarray(values))


class _SimSites(Messenger):
    """Applies each latent site's gradient strategy during ``sim``."""

    def __init__(self, run: _Run, address: str, score_paths: bool = True) -> None:
        super().__init__()
        self.run = run
        self.address = address
        self.score_paths = score_paths
        self.loop_strategies: dict[str, Any] = {}

    def _strategy(self, msg, address):
        return resolve(msg["infer"].get("strategy"), msg["fn"], address)

    def loop_site(self, probe) -> None:
        """Called by ``gendsl.scan`` for each site of a loop body, at every step.

        REINFORCE, ENUM and MVD sites are stopped from pathwise gradients. ENUM
        and MVD sites get a post-sampling hook that applies this run's
        overrides at the matching step, or else lists the site's branches for
        this step; the loop emits them stacked over steps, and the replayed
        site registers them (see ``postprocess_message``).
        """
        if probe["is_observed"]:
            return
        address = join(self.address, probe["name"])
        strategy = self._strategy(probe, address)
        if isinstance(strategy, Reparam):
            return
        self.loop_strategies[address] = strategy
        probe["stop_gradient"] = True
        if isinstance(strategy, Reinforce):
            if self.run.track and strategy.track_dependencies:
                loops = len(probe.get("loop_steps", ()))
                batch_ndim = len(probe["fn"].batch_shape)

                def tag(msg):
                    msg["value"] = score_site(msg["value"], address=address, loops=loops, batch_ndim=batch_ndim)

                probe.setdefault("post", []).append(tag)
            if not self.score_paths and len(probe.get("loop_steps", ())) == 1:

                def stop(msg):
                    # The loop records log q without its θ-gradient; the score goes out as an extra.
                    score = msg["fn"].log_prob(msg["value"])
                    msg["fn"] = jax.tree_util.tree_map(sg, msg["fn"])
                    return score

                probe.setdefault("post", []).append(stop)
            return
        steps = probe.get("loop_steps", ())
        if len(steps) != 1:
            raise EstimatorError(
                f"site '{address}': {type(strategy).__name__} inside nested gendsl.scan loops is not "
                "supported yet; use REINFORCE for this site"
            )
        t = steps[0]
        fn = probe["fn"]
        per_step = math.prod(tuple(fn.batch_shape) + tuple(fn.event_shape))
        mine = [o for o in self.run.overrides if o.address == address and not o.path]

        def post(msg):
            value = sg(msg["value"])
            if mine:
                flat = value.reshape(-1)
                for o in mine:
                    hit = jnp.logical_and(o.active, o.index // per_step == t)
                    new = flat.at[o.index % per_step].set(jnp.asarray(o.value, flat.dtype))
                    flat = jnp.where(hit, new, flat)
                msg["value"] = flat.reshape(jnp.shape(value))
                return None
            msg["value"] = value
            key = jax.random.fold_in(msg["kwargs"]["rng_key"], 1)
            return branches(address, msg["fn"], value, strategy, key)

        probe.setdefault("post", []).append(post)

    def postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        address = join(self.address, msg["name"])
        if msg["infer"].get("loop") is not None:
            # Checked inside the loop already; the replayed site's distribution
            # only carries the stacked log density.
            strategy = self.loop_strategies.get(address)
            if strategy is not None:
                self._loop_site_replayed(msg, address, strategy)
            return
        fn = msg["fn"]
        strategy = self._strategy(msg, address)
        if isinstance(strategy, Reparam):
            return
        run = self.run
        value = sg(msg["value"])
        if isinstance(strategy, Reinforce):
            score = fn.log_prob(value)
            if run.track and strategy.track_dependencies:
                batch_ndim = jnp.ndim(score) if jnp.shape(value)[: jnp.ndim(score)] == jnp.shape(score) else -1
                value = score_site(value, address=address, loops=0, batch_ndim=batch_ndim)
            msg["value"] = value
            run.reinforce[address] = score
            run.strategies[address] = strategy
            if not self.score_paths:
                msg["fn"] = jax.tree_util.tree_map(sg, fn)  # the recorded log q: same value, no θ-gradient
            return
        mine = [o for o in run.overrides if o.address == address and not o.path]
        if mine:
            flat = value.reshape(-1)
            for o in mine:
                flat = jnp.where(o.active, flat.at[o.index].set(jnp.asarray(o.value, flat.dtype)), flat)
            value = flat.reshape(jnp.shape(value))
            run.enum_logq[address] = jnp.sum(fn.log_prob(value))
        elif isinstance(strategy, Enum) and run.exact_allowed and jnp.size(value) == 1 and fn.event_shape == ():
            run.exact.append((address, enumerate_values(address, fn)))
        else:
            key = jax.random.fold_in(msg["kwargs"]["rng_key"], 1)
            index, vals, carrier = branches(address, fn, value, strategy, key)
            run.branches.append(Branches(address, index, vals, carrier))
        msg["value"] = value


    def _loop_site_replayed(self, msg, address, strategy) -> None:
        """A loop site after the loop: register its score or its stacked branches."""
        if isinstance(strategy, Reinforce):
            extras = msg.get("gendsl_loop_extras")  # the score, when the loop's log q is stopped
            score = msg["fn"].log_prob(msg["value"]) if extras is None else extras
            self.run.reinforce[address] = score  # (steps, ...) per element
            self.run.strategies[address] = strategy
            return
        extras = msg.get("gendsl_loop_extras")
        if extras is None:
            return  # overridden in this run: the value is final
        index, value, carrier = extras  # each (steps, branches per step)
        per_step = math.prod(jnp.shape(msg["value"])[1:])
        steps = jnp.arange(index.shape[0])[:, None]
        flat_index = (steps * per_step + index).reshape(-1)
        self.run.branches.append(Branches(address, flat_index, value.reshape(-1), carrier.reshape(-1)))


# ----------------------------------------------------------------------------- driver


def _scalar(f) -> jax.Array:
    f = jnp.asarray(f)
    if f.shape != ():
        raise ValueError(
            f"an objective must return a scalar, got shape {f.shape}; reduce it (e.g. .sum() or .mean())"
        )
    return f


def _execute(fn, args, kwargs, key, overrides, track=False):
    run = _Run(key, overrides, track=track)
    with _active(run):
        f = _scalar(fn(*args, **kwargs))
    return run, f


def _tracked_execute(fn, args, kwargs, key, overrides):
    """``_execute`` through a jaxpr, with each tracked REINFORCE site's paired cost ``Q``.

    The objective is traced once with its REINFORCE values tagged, the jaxpr is analysed (see
    ``_provenance``) and evaluated, so nothing runs twice. The run's arrays come back as outputs
    of the jaxpr; its static parts (addresses, strategies) from the trace.
    """
    box = {}

    def traced():
        run, f = _execute(fn, args, kwargs, key, overrides, track=True)
        box["run"] = run
        branches_ = [(b.index, b.value, b.carrier, b.path) for b in run.branches]
        return f, (run.reinforce, branches_, run.enum_logq, run.group_baselines)

    closed, shapes = jax.make_jaxpr(traced, return_shape=True)()
    run = box["run"]
    outputs, q = costs(closed, run.reinforce)
    f, (run.reinforce, found, run.enum_logq, run.group_baselines) = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(shapes), outputs
    )
    run.branches = [Branches(b.address, *arrays) for b, arrays in zip(run.branches, found, strict=True)]
    return run, f, q


def _tracked_sites(run) -> bool:
    return any(
        run.strategies[a].track_dependencies and run.group_baselines.get(run.site_group.get(a)) is None
        for a in run.reinforce
    )


def _baseline(strategy: Reinforce, address, ema, loo, args):
    b = strategy.baseline
    if b is None:
        return 0.0
    if callable(b):
        return b(*args)
    if b == "ema":
        return ema.get(address, 0.0)
    if b == "loo":
        return 0.0 if loo is None else loo
    return float(b)


def _surrogate(fn, args, kwargs, key, overrides, ema, statics):
    """``(surrogate, value, score terms, enum log q)`` of one execution; see the module docstring.

    The score terms map each REINFORCE site to ``(log q - sg(log q), Q)``, per element of the
    site; ``Q`` is the cost its score is paired with: the part of the objective that depends on
    the element (dependency tracking), or the whole objective.
    """
    run, f = _execute(fn, args, kwargs, key, overrides)
    statics.update(run.strategies)
    if run.exact:
        address, support = run.exact[0]

        def branch(v):
            inner = [*overrides, Override(address, 0, v)]
            s, value, terms, logq = _surrogate(fn, args, kwargs, key, inner, ema, statics)
            for a, (dlq, q) in terms.items():
                s = s + jnp.sum(dlq * sg(q - _baseline(statics[a], a, ema, None, args)))
            return s, value, logq[address]

        s, values, logq = jax.vmap(branch)(support)
        weight = jnp.exp(logq)
        return jnp.sum(weight * s), jnp.sum(weight * values), {}, run.enum_logq
    q = {}
    if _tracked_sites(run):
        run, f, q = _tracked_execute(fn, args, kwargs, key, overrides)
    s = f
    for b in run.branches:

        def rerun(index, value, *path, b=b):
            inner = [*overrides, Override(b.address, index, value, path)]
            return _execute(fn, args, kwargs, key, inner)[1]

        values = jax.vmap(rerun)(b.index, b.value, *b.path)
        s = s + jnp.sum(b.carrier * sg(values))
    terms = {}
    for a, lq in run.reinforce.items():
        group = run.group_baselines.get(run.site_group.get(a))
        dlq = lq - sg(lq)
        if group is not None:
            # Per-particle baselines: the term is complete here.
            group = jnp.reshape(group, group.shape + (1,) * (dlq.ndim - group.ndim))
            s = s + jnp.sum(dlq * sg(f - group))
        else:
            terms[a] = (dlq, q[a] if run.strategies[a].track_dependencies else f)
    return s, f, terms, run.enum_logq


def _estimate(fn, args, kwargs, key, ema, samples):
    """Mean surrogate, mean value, the sites' strategies and their mean paired costs.

    With ``samples > 1`` replicates, ``"loo"`` baselines are the other replicates' mean cost.
    """
    statics: dict[str, Reinforce] = {}
    keys = jax.random.split(key, samples)

    def replicate(k):
        s, value, terms, _ = _surrogate(fn, args, kwargs, k, [], ema, statics)
        return s, value, terms

    if samples == 1:
        # No vmap for a single replicate: a batch axis of size one makes XLA:CPU
        # transpose every matmul output (measured in benchmarks/vae_step.py).
        s, values, terms = jax.tree_util.tree_map(lambda a: a[None], replicate(keys[0]))
    else:
        s, values, terms = jax.vmap(replicate)(keys)
    total = s
    mean_costs = {}
    for address, (dlq, q) in terms.items():
        strategy = statics[address]
        loo = (jnp.sum(q, axis=0) - q) / (samples - 1) if samples > 1 else None
        b = _baseline(strategy, address, ema, loo, args)
        signal = sg(q - b)
        signal = jnp.reshape(signal, signal.shape + (1,) * (dlq.ndim - signal.ndim))
        total = total + jnp.sum(dlq * signal, axis=tuple(range(1, dlq.ndim)))
        mean_costs[address] = jnp.mean(q, axis=0)
        if callable(strategy.baseline):
            # A learned baseline is fitted to the site's cost by least squares. The cost is
            # stopped in this term, so its gradient reaches only the baseline's parameters.
            fit = jnp.broadcast_to(sg(q) - strategy.baseline(*args), jnp.shape(q))
            total = total - 0.5 * jnp.sum(fit**2, axis=tuple(range(1, jnp.ndim(q))))
    return jnp.mean(total), jnp.mean(values), statics, mean_costs


class Expectation:
    """``E[F(params, *args)]`` over the random choices of ``F``; create it with ``expectation``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, sim
        >>> @gendsl.model
        ... def q(mu):
        ...     gendsl.sample("z", dist.Normal(mu, 1.0))
        >>> square = expectation(lambda mu: sim(q)(mu)[0]["z"] ** 2)  # E = mu^2 + 1
        >>> value, grad = jax.jit(square.value_and_grad)(jax.random.key(0), 2.0)
    """

    def __init__(self, fn: Callable, models: tuple = ()) -> None:
        self.fn = fn
        self.models = tuple(gendsl.model(m) for m in models)
        functools.update_wrapper(self, fn, updated=[])

    def init_params(self, key, *args, **kwargs) -> tuple[dict, dict]:
        """Initial parameters of the models the objective was declared with, and their constraints.

        Raises:
            ValueError: two models declare a parameter of the same name, or the
                objective was declared without models.
        """
        if not self.models:
            raise ValueError(
                "this objective does not know its models: declare them with "
                "expectation(f, models=(model, guide)), or pass initial params explicitly"
            )
        params, constraints = {}, {}
        for i, m in enumerate(self.models):
            p, c = m.init_with_constraints(jax.random.fold_in(as_key(key), i), *args, **kwargs)
            clash = sorted(set(p) & set(params))
            if clash:
                raise ValueError(
                    f"parameters {clash} are declared by two models of this objective; give the "
                    "model's and the guide's parameters different names"
                )
            params.update(p)
            constraints.update(c)
        return params, constraints

    def estimate(self, key, *args, samples: int = 1, **kwargs) -> jax.Array:
        """An unbiased estimate of the expectation (the mean of ``samples`` draws)."""
        return _estimate(self.fn, args, kwargs, as_key(key), {}, _check_samples(samples))[1]

    def value_and_grad(self, key, params, *args, samples: int = 1, **kwargs):
        """Unbiased estimates of the expectation and of its gradient in ``params``.

        Args:
            key: PRNG key.
            params: the pytree to differentiate (the first argument of ``F``).
            *args, **kwargs: further arguments of ``F``.
            samples: number of independent replicates averaged; with more than
                one, REINFORCE sites with ``baseline="loo"`` use the others' mean.
        """
        value, grads, _ = self.value_and_grad_with_baselines(key, params, *args, samples=samples, **kwargs)
        return value, grads

    def grad(self, key, params, *args, samples: int = 1, **kwargs):
        """An unbiased estimate of the gradient in ``params``."""
        return self.value_and_grad(key, params, *args, samples=samples, **kwargs)[1]

    def surrogate(self, key, params, *args, samples: int = 1, **kwargs) -> tuple[jax.Array, jax.Array]:
        """``(surrogate, value)``: a scalar whose gradient in ``params`` is the unbiased gradient estimate.

        ``value_and_grad`` differentiates this. Differentiate it yourself to combine
        estimates first: for one estimate per data point, ``jax.grad`` of the mean of
        ``jax.vmap(surrogate)`` over the data sums the gradients inside the backward pass,
        whereas ``jax.vmap(value_and_grad)`` materializes one gradient per data point
        (10x slower for AIR on XLA:CPU, ``benchmarks/air.py``). EMA baselines are read
        as zero and not updated here (``value_and_grad_with_baselines`` threads them).

        Example:
            >>> import jax, gendsl, gendsl.distributions as dist
            >>> from gendsl.inference import expectation, sim
            >>> @gendsl.model
            ... def q(mu):
            ...     gendsl.sample("z", dist.Normal(mu, 1.0))
            >>> square = expectation(lambda mu: sim(q)(mu)[0]["z"] ** 2)
            >>> g = jax.grad(lambda mu: square.surrogate(jax.random.key(0), mu)[0])(2.0)
            >>> bool(g == square.grad(jax.random.key(0), 2.0))
            True
        """
        s, value, _, _ = _estimate(self.fn, (params, *args), kwargs, as_key(key), {}, _check_samples(samples))
        return s, value

    def value_and_grad_with_baselines(self, key, params, *args, baselines=None, samples: int = 1, **kwargs):
        """``value_and_grad`` that also threads EMA baselines: returns ``(value, grads, baselines)``."""
        samples = _check_samples(samples)
        ema = dict(baselines or {})
        key = as_key(key)

        table: dict[str, Reinforce] = {}  # the sites' strategies, static: filled while tracing

        def surrogate(p):
            s, value, statics, mean_costs = _estimate(self.fn, (p, *args), kwargs, key, ema, samples)
            table.update(statics)
            return s, (value, mean_costs)

        (_, (value, mean_costs)), grads = jax.value_and_grad(surrogate, has_aux=True)(params)
        new = dict(ema)
        for address, strategy in table.items():
            if isinstance(strategy.baseline, str) and strategy.baseline == "ema" and address in mean_costs:
                cost = sg(mean_costs[address])
                old = ema.get(address, cost)
                new[address] = strategy.decay * old + (1 - strategy.decay) * cost
        return value, grads, new


def _check_samples(samples) -> int:
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    return samples


def expectation(fn: Callable, *, models: tuple = ()) -> Expectation:
    """Mark ``fn``'s expected value as an objective.

    ``fn(params, *args)`` may draw with ``sim`` and ``repeat`` and score with
    ``density``; the result supports ``estimate``, ``grad`` and
    ``value_and_grad``, all unbiased and all usable under ``jit``/``vmap``.

    Args:
        fn: the integrand, ``fn(params, *args) -> scalar``.
        models: the models whose parameters ``params`` holds, so that
            ``init_params`` (and ``SVI.init``) can initialize them.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import expectation, sim, ENUM
        >>> @gendsl.model
        ... def q(p):
        ...     gendsl.sample("b", dist.Bernoulli(p), strategy=ENUM)
        >>> obj = expectation(lambda p: sim(q)(p)[0]["b"] * 3.0)
        >>> value, grad = obj.value_and_grad(jax.random.key(0), 0.25)
        >>> round(float(value), 4), round(float(grad), 4)
        (0.75, 3.0)
    """
    return Expectation(fn, models)
