"""Reading a chain program's states, unrolled or in a ``gendsl.scan``: the handler behind ``diffusion_elbo``.

A chain program (the forward guide or the reverse model of ``diffusion_elbo``) draws one
latent *state* per time. A state is either an ordinary latent site (``"z3"``) or one step of
a site of a ``gendsl.scan`` body (``"chain/z"`` at position ``i``: state ``"chain/z[i]"``).
``StateReader`` runs such a program once and records, per latent site in execution order,
the Normal each state was drawn from (loc and scale, broadcast to the state's shape), and may
substitute the states' values.

For a loop site it does both from inside the loop, through the ``LoopSiteHandler`` protocol
of ``gendsl.internal``: the probe of the body's site gets the value of the current step, and
a ``POST`` hook returns the step's loc and scale, which the loop stacks and hands back with
the replayed site as ``LOOP_EXTRAS``. The body is traced once, however many steps the loop
has: this is what makes recognizing a 4,000-step scanned chain cost what a 4-step one costs.

States are numbered by *position*: the states of the sites before a loop, then the loop's
positions ``0..m-1`` (its stacked order, which is its time order whether it runs forward or,
``reverse=True``, backward), then the sites after it. ``provide(index, step)`` is asked for
the value of the state at ``index`` (an int) for an ordinary site, and at ``index + step``
(``step`` the loop's traced counter) for a loop site's step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro.primitives import Messenger

import gendsl
from gendsl.internal import INFER_LOOP, INFER_LOOP_REVERSE, LOOP_EXTRAS, LOOP_STEPS, POST

__all__ = ["DiffusionStructureError", "LatentSite", "StateReader", "normal_parameters"]

_LOC, _SCALE = "diffusion_state_loc", "diffusion_state_scale"


class DiffusionStructureError(gendsl.GendslError, ValueError):
    """A program pair is not of the form a diffusion objective can be derived from; the message names the site.

    Example:
        >>> import gendsl, gendsl.distributions as dist
        >>> from gendsl.inference.diffusion import DiffusionStructureError, diffusion_elbo
        >>> @gendsl.model
        ... def guide(x, ts):
        ...     for k in range(len(ts)):
        ...         x = gendsl.sample(f"z{k + 1}", dist.Laplace(0.9 * x, 0.3))
        >>> try:
        ...     diffusion_elbo(guide, guide, ts=[1, 2]).chain({}, 0.0)
        ... except DiffusionStructureError as e:
        ...     print(str(e).split(":")[0])
        guide site 'z1' is Laplace, expected a Normal (possibly expanded / .to_event())
    """


def normal_parameters(fn, value, name: str, who: str) -> tuple[jax.Array, jax.Array]:
    """``(loc, scale)`` of a (possibly expanded / ``.to_event()``) Normal, broadcast to the value's shape."""
    d = fn
    while isinstance(d, (nd.Independent, nd.ExpandedDistribution)):
        d = d.base_dist
    if not isinstance(d, nd.Normal):
        raise DiffusionStructureError(
            f"{who} site '{name}' is {type(fn).__name__}, expected a Normal (possibly "
            "expanded / .to_event()): a diffusion ELBO is derived only for Gaussian-linear chains"
        )
    shape = jnp.shape(value)
    return jnp.broadcast_to(d.loc, shape), jnp.broadcast_to(d.scale, shape)


@dataclasses.dataclass
class LatentSite:
    """One latent site of a chain program and the Normal(s) its state(s) were drawn from.

    Attributes:
        name: the site's address.
        loc, scale: of its state (an ordinary site), or stacked over the loop's positions.
        steps: None for an ordinary site (one state), else the loop's length (one state per position).
        reverse: whether the loop ran its steps last to first.
    """

    name: str
    loc: jax.Array
    scale: jax.Array
    steps: int | None = None
    reverse: bool = False

    @property
    def count(self) -> int:
        return 1 if self.steps is None else self.steps

    def labels(self) -> list[str]:
        """The states' labels, by position: ``name``, or ``name[i]`` for a loop site."""
        return [self.name] if self.steps is None else [f"{self.name}[{i}]" for i in range(self.steps)]

    def executed(self, j: int) -> tuple[jax.Array, jax.Array]:
        """``(loc, scale)`` of the ``j``-th of this site's states to be drawn (0-based, execution order)."""
        if self.steps is None:
            return self.loc, self.scale
        i = self.steps - 1 - j if self.reverse else j
        return self.loc[i], self.scale[i]

    def summary(self) -> str:
        return self.name if self.steps is None else f"{self.name} ({self.steps} steps)"


class StateReader(Messenger):
    """Records a chain program's latent states (see the module docstring) and optionally substitutes them.

    Args:
        who: ``"guide"`` or ``"model"``, for messages.
        provide: ``(index, step) -> value | None`` (``step`` None outside loops), or None.

    Attributes (after a run):
        latents: the ``LatentSite``s in execution order.
        observed: ``(name, fn, in_loop)`` of each observed site.
        params: the names of the parameters the program declared.
    """

    def __init__(self, fn=None, *, who: str, provide: Callable[[int, Any], Any] | None = None) -> None:
        super().__init__(fn)
        self.who = who
        self.provide = provide
        self.latents: list[LatentSite] = []
        self.observed: list[tuple[str, Any, bool]] = []
        self.params: list[str] = []
        self._position = 0
        self._open_loop: str | None = None

    def __enter__(self):
        self.latents, self.observed, self.params = [], [], []
        self._position, self._open_loop = 0, None
        return super().__enter__()

    @property
    def count(self) -> int:
        return sum(site.count for site in self.latents)

    def labels(self) -> list[str]:
        return [label for site in self.latents for label in site.labels()]

    def process_message(self, msg) -> None:
        if msg["type"] == "param":
            self.params.append(msg["name"])
        elif self._is_state(msg) and msg["infer"].get(INFER_LOOP) is None and self.provide is not None:
            value = self.provide(self._position, None)
            if value is not None:
                msg["value"] = value

    def loop_site(self, probe: dict) -> None:
        """A site of a ``gendsl.scan`` body (see ``LoopSiteHandler``): its step's value and a loc/scale hook."""
        if probe["is_observed"]:
            return
        name, steps = probe["name"], probe.get(LOOP_STEPS, ())
        if len(steps) != 1:
            raise DiffusionStructureError(
                f"{self.who} site '{name}' is inside nested loops; a chain's states may be drawn in one "
                "gendsl.scan (one state per step), not in a loop inside a loop"
            )
        if self._open_loop is not None:
            raise DiffusionStructureError(
                f"{self.who} sites '{self._open_loop}' and '{name}' are drawn in one loop body; a chain's loop "
                "draws one state per step (one latent site in its body)"
            )
        self._open_loop = name
        if self.provide is not None:
            value = self.provide(self._position, steps[0])
            if value is not None:
                probe["value"] = value
        who = self.who

        def loc_and_scale(msg):
            loc, scale = normal_parameters(msg["fn"], msg["value"], name, who)
            return {_LOC: loc, _SCALE: scale}

        probe.setdefault(POST, []).append(loc_and_scale)

    def postprocess_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        in_loop = msg["infer"].get(INFER_LOOP) is not None
        if msg["is_observed"]:
            self.observed.append((msg["name"], msg["fn"], in_loop))
            return
        if not self._is_state(msg):
            return
        if in_loop:
            extras = msg.get(LOOP_EXTRAS)
            if not isinstance(extras, dict) or _LOC not in extras:
                raise DiffusionStructureError(
                    f"{self.who} site '{msg['name']}': the loop's per-step Normal was not handed back (another "
                    "handler's post-sampling hook replaced it); derive the diffusion objective outside it"
                )
            steps = int(jnp.shape(msg["value"])[0])
            site = LatentSite(msg["name"], extras[_LOC], extras[_SCALE], steps, bool(msg["infer"].get(
                INFER_LOOP_REVERSE, False)))
            self._open_loop = None
        else:
            site = LatentSite(msg["name"], *normal_parameters(msg["fn"], msg["value"], msg["name"], self.who))
        self.latents.append(site)
        self._position += site.count

    @staticmethod
    def _is_state(msg) -> bool:
        return msg["type"] == "sample" and not msg["is_observed"]


def stacked_provider(values: jax.Array) -> Callable[[int, Any], jax.Array]:
    """``provide`` for ``StateReader``: the states' values stacked on axis 0, by position."""

    def provide(index, step):
        if step is None:
            return values[index]
        return jax.lax.dynamic_index_in_dim(values, index + step, 0, keepdims=False)

    return provide
