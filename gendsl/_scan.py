"""``gendsl.scan``: loops whose random choices are traced once, as one ``lax.scan``.

A Python ``for`` loop over ``sample`` calls unrolls into one site per step: a
1,000-step chain becomes 1,000 sites and a 1,000-fold larger program.
``gendsl.scan(name, body, init, xs)`` instead traces ``body`` once inside
``lax.scan``. The site ``"x"`` of the body gets the indexed address
``"name/x"``; its value and log density are stacked along a leading step axis.

How it interacts with the handler stack:

* Inside the loop, a ``_ScanFrame`` handler sits on top of the stack and stops
  every message: handlers outside the loop must not see (and store) values that
  only exist inside ``lax.scan``. The frame itself plays the part of the outer
  handlers that provide values or metadata: it sends a *probe* with the full
  address (``"name/x"``) to every outer handler that implements
  ``LoopSiteHandler.loop_site`` (gendsl's handlers and the estimators; NumPyro's
  ``substitute``/``condition``/``replay``/``block``/``infer_config`` through an
  adapter table) and slices stacked data at the current step. Step ``t`` draws
  with ``fold_in(loop_key, t)``, then per address.
* After the loop, each site is sent once through the outer stack with its
  stacked value and log density ("replayed"), so that ``trace``, ``scale``,
  ``mask``, enclosing plates and NumPyro's inference see an ordinary site.
  Replayed messages carry ``_control_flow_done`` so that NumPyro's
  ``substitute``/``condition`` do not apply a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.handlers as nh
from numpyro.distributions import Distribution
from numpyro.primitives import _PYRO_STACK, Messenger, apply_stack

from gendsl._address import join, site_key
from gendsl._errors import AddressError, GendslError, NoKeyError
from gendsl._messages import (
    ADDRESS,
    CONTROL_FLOW_DONE,
    INFER_LOOP,
    INFER_LOOP_REVERSE,
    KEEP_FN,
    LOOP_EXTRAS,
    LOOP_STEPS,
    POST,
    SCAN_INDEX,
    STOP_GRADIENT,
    LoopSiteHandler,
)
from gendsl._primitives import request_key
from gendsl._trace import _check_observation

__all__ = ["scan"]


def scan(
    name: str,
    body: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    *,
    unroll: int = 1,
    reverse: bool = False,
) -> tuple[Any, Any]:
    """A loop over ``jax.lax.scan`` whose sample sites get indexed addresses.

    Args:
        name: the loop's address; the body's site ``"x"`` becomes ``"name/x"``.
        body: ``(carry, x) -> (carry, y)``, as for ``lax.scan``; may call
            ``sample``, ``plate``, ``deterministic`` and nested ``scan``.
        init: the initial carry.
        xs: per-step inputs (leading axis = steps), or None.
        length: the number of steps when ``xs`` is None.
        unroll: passed to ``lax.scan``.
        reverse: run the steps from the last to the first, as ``lax.scan(reverse=True)``:
            step ``t`` still reads ``xs[t]`` and its values are stacked at position ``t``,
            so a reverse chain (``z_{t+1} -> z_t``) stacks its states in time order, at
            the same positions as the forward chain that draws them from ``z_t`` (and the
            two pair by address). Keys depend on the position ``t``.

    Returns:
        ``(final_carry, stacked_ys)``, as ``lax.scan``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> @gendsl.model
        ... def walk(n):
        ...     def step(x, _):
        ...         x = gendsl.sample("x", dist.Normal(x, 1.0))
        ...         return x, x
        ...     return gendsl.scan("walk", step, 0.0, length=n)[1]
        >>> tr = walk.simulate(jax.random.key(0), 1000)
        >>> tr.choices["walk/x"].shape
        (1000,)
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"scan: expected a non-empty str address, got {name!r}")
    n = _length(name, xs, length)
    outer = list(reversed(_PYRO_STACK))  # innermost first, as apply_stack visits them
    key = request_key(name)
    sites: dict[str, dict] = {}  # static metadata of the body's sites, filled while tracing

    def step(carry, inputs):
        t, x = inputs
        step_key = None if key is None else jax.random.fold_in(key, t)
        frame = _ScanFrame(name, t, step_key, outer, sites)
        with frame:
            carry, y = body(carry, x)
        return carry, (y, frame.values, frame.log_probs, frame.extras, frame.fns)

    steps = jnp.arange(n)
    carry, (ys, values, log_probs, extras, fns) = jax.lax.scan(
        step, init, (steps, xs), length=n, unroll=unroll, reverse=reverse
    )
    for site, meta in sites.items():
        _replay_site(name, site, meta, values[site], log_probs.get(site), extras.get(site), reverse, fns.get(site))
    return carry, ys


def _length(name: str, xs: Any, length: int | None) -> int:
    leaves = jax.tree_util.tree_leaves(xs)
    if length is None and not leaves:
        raise ValueError(f"scan '{name}': give xs (per-step inputs) or length=number of steps")
    if leaves:
        n = jnp.shape(leaves[0])[0]
        if length is not None and length != n:
            raise ValueError(f"scan '{name}': length={length} but xs has {n} steps")
        return n
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"scan '{name}': length must be a positive int, got {length!r}")
    return length


def _at_step(value: Any, t) -> Any:
    # One dynamic_slice indexed by the loop counter itself (no negative-index arithmetic):
    # the estimators' dependency analysis reads it as "this step's element".
    return jax.tree_util.tree_map(lambda v: jax.lax.dynamic_index_in_dim(v, t, 0, keepdims=False), value)


class _Stacked:
    """A value taken from data keyed by full address: it still has loop axes."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _block(h: nh.block, probe: dict) -> bool:
    return bool(h.hide_fn(probe))


def _substitute(h: nh.substitute, probe: dict) -> None:
    if h.data is not None:
        if probe["name"] in h.data:
            probe["value"] = _Stacked(h.data[probe["name"]])
    elif h.substitute_fn is not None:
        value = h.substitute_fn(probe)
        if value is not None:
            probe["value"] = value


def _condition(h: nh.condition, probe: dict) -> None:
    value = None
    if h.data is not None:
        if probe["name"] in h.data:
            value = _Stacked(h.data[probe["name"]])
    elif h.condition_fn is not None:
        value = h.condition_fn(probe)
    if value is not None:
        probe["value"] = value
        probe["is_observed"] = True


def _replay(h: nh.replay, probe: dict) -> None:
    site = h.trace.get(probe["name"])
    if site is not None and site["type"] == "sample" and not probe["is_observed"]:
        probe["value"] = _Stacked(site["value"])


def _infer_config(h: nh.infer_config, probe: dict) -> None:
    h.process_message(probe)


# NumPyro's built-in handlers that provide values or metadata, adapted to the loop-site
# protocol. Every other handler takes part by implementing ``LoopSiteHandler.loop_site``.
_NUMPYRO_ADAPTERS: dict[type, Callable[[Any, dict], bool | None]] = {
    nh.block: _block,
    nh.substitute: _substitute,
    nh.condition: _condition,
    nh.replay: _replay,
    nh.infer_config: _infer_config,
}


def _resolve(handlers: list, probe: dict) -> None:
    """Let the outer handlers act on ``probe`` (innermost first; see ``gendsl._messages``)."""
    for h in handlers:
        if isinstance(h, LoopSiteHandler):
            done = h.loop_site(probe)
        else:
            adapter = next((a for t, a in _NUMPYRO_ADAPTERS.items() if isinstance(h, t)), None)
            done = None if adapter is None else adapter(h, probe)
        if done:
            return


class _ScanFrame(Messenger):
    """Handles the messages of one loop step; see the module docstring."""

    def __init__(self, prefix, t, key, outer, sites) -> None:
        super().__init__()
        self.prefix = prefix
        self.t = t
        self.key = key
        self.outer = outer
        self.sites = sites
        self.values: dict[str, Any] = {}
        self.log_probs: dict[str, jax.Array] = {}
        self.extras: dict[str, Any] = {}
        self.fns: dict[str, Any] = {}  # per-step distributions, only for sites whose probe set KEEP_FN
        self._unnamed = 0

    def loop_site(self, probe: dict) -> bool:
        """Resolve a probe from a nested loop: prefix it, ask our outer handlers, slice."""
        inner_name = probe["name"]
        probe["name"] = join(self.prefix, inner_name)
        probe[LOOP_STEPS] = (*probe.get(LOOP_STEPS, ()), self.t)
        _resolve(self.outer, probe)
        probe["name"] = inner_name
        if isinstance(probe["value"], _Stacked):
            probe["value"] = _Stacked(_at_step(probe["value"].value, self.t))
        return True  # the handlers outside this loop were asked above

    def process_message(self, msg) -> None:
        kind = msg["type"]
        msg["stop"] = True  # nothing inside the loop may reach the outer handlers
        if kind == "sample":
            self._process_sample(msg)
        elif kind in ("prng_key", "plate", "control_flow"):
            if msg["kwargs"].get("rng_key") is None and msg.get("value") is None:
                address = msg.get(ADDRESS) or msg.get("name")
                if address is None:
                    address = f"#{kind}{self._unnamed}"
                    self._unnamed += 1
                if self.key is not None:
                    msg["kwargs"]["rng_key"] = site_key(self.key, address)
        elif kind == "param":
            raise GendslError(
                f"param '{msg['name']}' is created inside scan '{self.prefix}'; create "
                "parameters (gendsl.param / gendsl.module) before the loop and close over them"
            )

    def _process_sample(self, msg) -> None:
        address = join(self.prefix, msg["name"])
        if msg.get(CONTROL_FLOW_DONE):
            return  # a nested loop's replayed site: value already final
        # The key comes first: value providers such as NumPyro's init strategies
        # sample from the site's distribution and need it.
        if msg["value"] is None and msg["kwargs"].get("rng_key") is None and self.key is not None:
            msg["kwargs"]["rng_key"] = site_key(self.key, msg["name"])
        probe = {
            "type": "sample",
            "name": address,
            "fn": msg["fn"],
            "args": (),
            "kwargs": msg["kwargs"],
            "value": None,
            "is_observed": msg["is_observed"],
            # NumPyro's substitute_fn-based reparameterizers read this to slice a
            # stacked value at the current step (as for numpyro's own scan).
            "infer": {**msg["infer"], SCAN_INDEX: self.t},
            "cond_indep_stack": msg["cond_indep_stack"],
            LOOP_STEPS: (self.t,),  # innermost first; enclosing loops append theirs
        }
        _resolve(self.outer, probe)
        value = probe["value"]
        if isinstance(value, _Stacked):
            value = _at_step(value.value, self.t)
        if value is not None:
            msg["value"] = value
            msg["is_observed"] = probe["is_observed"]
        probe["infer"].pop(SCAN_INDEX, None)
        msg["infer"] = probe["infer"]
        msg[STOP_GRADIENT] = probe.get(STOP_GRADIENT, False)
        msg[POST] = probe.get(POST, ())
        if msg["value"] is None and msg["kwargs"].get("rng_key") is None:
            raise NoKeyError(
                f"sample site '{address}' needs a random key but none is in scope: use "
                "model.simulate(key, ...) or gendsl.handlers.seed"
            )
        if msg["is_observed"]:
            _check_observation(address, msg["value"], msg["fn"])
        if probe.get(KEEP_FN):
            # As drawn from: after the body's plates broadcast it, before a strategy's hook
            # swaps in a copy with stopped parameters.
            self.fns[msg["name"]] = msg["fn"]

    def postprocess_message(self, msg) -> None:
        kind = msg["type"]
        if kind not in ("sample", "deterministic"):
            return
        name = msg["name"]
        if msg.get(STOP_GRADIENT):
            msg["value"] = jax.lax.stop_gradient(msg["value"])
        if name in self.values:
            raise AddressError(
                f"address '{join(self.prefix, name)}' is used by two sites in one step of "
                f"scan '{self.prefix}'; give each site of the loop body a unique name"
            )
        if kind == "deterministic":
            self.values[name] = msg["value"]
            self.sites.setdefault(name, {"type": "deterministic"})
            return
        # Post-sampling hooks of outer handlers (estimators): they may replace the
        # value (re-execution) and return per-step arrays, emitted as loop outputs.
        for hook in msg.get(POST, ()):
            extra = hook(msg)
            if extra is not None:
                self.extras[name] = extra
        self.values[name] = msg["value"]
        fn = msg["fn"]
        lp = fn.log_prob(msg["value"])
        if msg.get("scale") is not None:
            lp = lp * msg["scale"]
        self.log_probs[name] = lp
        self.sites.setdefault(
            name,
            {
                "type": "sample",
                "is_observed": msg["is_observed"],
                "infer": dict(msg["infer"]),
                "support": fn.support,
                "plates": tuple((f.name, f.dim) for f in msg.get("cond_indep_stack") or ()),
            },
        )


class ScanSite(Distribution):
    """The distribution of a replayed loop site: its stacked per-step log density.

    ``log_prob`` returns the log density computed inside the loop, where each
    step's distribution depended on earlier steps; it is only meaningful at the
    value the loop used, which is the value the replayed site carries.

    Attributes:
        step_fn: each step's distribution, its leaves stacked over steps (map over
            axis 0, e.g. with ``jax.vmap``, to get one step's); None unless a handler
            outside the loop asked for it (``Recorder(loop_distributions=True)``).
        step_plates: the plates inside the loop body around the site and their
            dimensions in one step's batch shape, as ``((plate, dim), ...)``.
    """

    pytree_data_fields = ("value", "step_log_prob", "step_fn")
    pytree_aux_fields = ("_support", "step_plates")

    def __init__(self, value, step_log_prob, support, step_fn=None, step_plates=()):
        self.value = value
        self.step_log_prob = step_log_prob
        self._support = support
        self.step_fn = step_fn
        self.step_plates = step_plates
        batch_ndim = jnp.ndim(step_log_prob)
        shape = jnp.shape(value)
        super().__init__(batch_shape=shape[:batch_ndim], event_shape=shape[batch_ndim:])

    @property
    def support(self):
        return self._support

    def sample(self, key, sample_shape=()):
        return jnp.broadcast_to(self.value, tuple(sample_shape) + jnp.shape(self.value))

    def log_prob(self, value):
        return self.step_log_prob


def _replay_site(
    loop: str, name: str, meta: dict, value: Any, log_prob: Any, extras: Any = None, reverse: bool = False,
    step_fn: Any = None,
) -> None:
    """Send one loop site, stacked over steps, through the handlers outside the loop."""
    if not _PYRO_STACK:
        return
    address = join(loop, name)
    if meta["type"] == "deterministic":
        msg = {
            "type": "deterministic",
            "name": address,
            "value": value,
            "cond_indep_stack": [],
            CONTROL_FLOW_DONE: True,
        }
        apply_stack(msg)
        return
    msg = {
        "type": "sample",
        "name": address,
        "fn": ScanSite(value, log_prob, meta["support"], step_fn, meta["plates"]),
        "args": (),
        "kwargs": {"rng_key": None, "sample_shape": ()},
        "value": value,
        "scale": None,
        "is_observed": meta["is_observed"],
        "intermediates": [],
        "cond_indep_stack": [],
        "infer": {**meta["infer"], INFER_LOOP: loop, INFER_LOOP_REVERSE: bool(reverse)},
        CONTROL_FLOW_DONE: True,
        LOOP_EXTRAS: extras,
    }
    apply_stack(msg)
