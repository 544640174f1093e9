"""The message keys gendsl adds to NumPyro's site messages, and the loop-site protocol.

A site message is NumPyro's dict (``type``, ``name``, ``fn``, ``value``, ``infer``, ...).
gendsl's core and the estimators in ``gendsl.inference`` communicate through the extra keys
below; they are declared here, once, so that a reader can find every one of them and so
that no module spells them as string literals of its own.

Loops (``gendsl.scan``) need a second channel. Inside ``lax.scan`` a site's message must not
reach the handlers outside the loop (they would store values that only exist inside the
trace of the loop body). The loop instead sends each outer handler a *probe*: a message-like
dict with the site's full address (``"loop/x"``), its distribution, and ``LOOP_STEPS``. A
handler that wants to act on loop sites implements ``LoopSiteHandler.loop_site(probe)``:
it may provide a value, mark the site observed, set ``infer`` entries, ask for the pathwise
gradient to be stopped (``STOP_GRADIENT``), or add post-sampling hooks (``POST``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ADDRESS",
    "CONTROL_FLOW_DONE",
    "INFER_LOOP",
    "INFER_LOOP_REVERSE",
    "INFER_STRATEGY",
    "KEEP_FN",
    "LOOP_EXTRAS",
    "LOOP_STEPS",
    "POST",
    "SCAN_INDEX",
    "STOP_GRADIENT",
    "LoopSiteHandler",
]

#: The address of a ``prng_key`` message (it has no ``name``), used to derive its key.
ADDRESS = "gendsl_address"
#: In a loop probe: the loop counters around the site, innermost loop first.
LOOP_STEPS = "gendsl_loop_steps"
#: In a loop probe or message: stop the pathwise gradient of the sampled value.
STOP_GRADIENT = "gendsl_stop_gradient"
#: In a loop probe or message: hooks ``hook(msg) -> per-step array | None`` run after the
#: site is sampled inside the loop; a hook may replace ``msg["value"]`` or ``msg["fn"]``, and
#: what it returns is stacked over steps and handed back as ``LOOP_EXTRAS``.
POST = "gendsl_post"
#: In a loop probe: keep each step's distribution; the replayed site's ``ScanSite`` then holds
#: them stacked over steps (``ScanSite.step_fn``). Off unless asked: it adds loop outputs.
KEEP_FN = "gendsl_keep_fn"
#: In a loop site's message after the loop: the stacked values its ``POST`` hooks returned.
LOOP_EXTRAS = "gendsl_loop_extras"
#: NumPyro's own marker of a site replayed after control flow (``substitute`` and
#: ``condition`` then leave it alone).
CONTROL_FLOW_DONE = "_control_flow_done"
#: NumPyro's key, in ``infer``, of the current step of a scan (its reparameterizers read it).
SCAN_INDEX = "_scan_current_index"
#: In ``msg["infer"]``: the site's gradient strategy (given meaning by ``gendsl.inference``).
INFER_STRATEGY = "strategy"
#: In ``msg["infer"]`` of a loop site replayed after the loop: the loop's address.
INFER_LOOP = "loop"
#: In ``msg["infer"]`` of a loop site replayed after the loop: whether the loop ran its steps
#: last to first (``gendsl.scan(..., reverse=True)``; the values are stacked by position either way).
INFER_LOOP_REVERSE = "loop_reverse"


@runtime_checkable
class LoopSiteHandler(Protocol):
    """A handler that acts on the sites of ``gendsl.scan`` loop bodies.

    ``gendsl.scan`` calls ``loop_site(probe)`` on every handler outside the loop that has
    the method, innermost first, for every sample site of the body (once, while the body is
    traced). Returning ``True`` ends the walk: handlers further out do not see the probe (as
    ``block`` hides a site). NumPyro's built-in handlers are adapted by ``gendsl.scan``
    itself.
    """

    def loop_site(self, probe: dict[str, Any]) -> bool | None:
        """Act on the probe of one loop-body site; ``True`` hides it from outer handlers."""
