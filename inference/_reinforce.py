"""REINFORCE: the score-function gradient, with baselines and dependency tracking.

The site's value is stopped from pathwise gradients and its ``log q`` registered in the
execution; the estimator driver adds ``(log q - sg(log q)) * sg(Q - b)`` to the surrogate,
where ``Q`` is the cost paired with the site (the whole objective, or with dependency
tracking only the part that depends on the site, see ``_provenance``) and ``b`` the baseline.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gendsl.inference._provenance import score_site
from gendsl.inference._strategies import Site, Strategy
from gendsl.internal import LOOP_EXTRAS, LOOP_STEPS, POST, STOP_GRADIENT

__all__ = ["REINFORCE", "Reinforce"]

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Reinforce(Strategy, name="reinforce"):
    """Score-function gradient with a baseline.

    Args:
        baseline: ``None`` (no baseline); a number (a constant baseline);
            ``"ema"`` (exponential moving average of past objective values,
            carried in the SVI state; zero in a one-off estimate); or ``"loo"``
            (leave-one-out: the mean of the other replicates when the estimate
            averages ``samples > 1`` independent replicates). Every one of these
            is independent of the current sample, so the estimator stays unbiased.
            With dependency tracking, the baseline is per element of the site and
            is subtracted from the element's own cost: an EMA or LOO baseline is
            kept per element, a callable may return an array that broadcasts
            against the site's elements (e.g. one baseline per data point) and
            is fitted to the elements' costs.
        decay: the EMA decay.
        track_dependencies: pair the site's score only with the parts of the
            objective that depend on it (found from the program's jaxpr; see
            ``gendsl.inference._provenance``): per data point in a plate, per
            step and later steps in a loop. ``False`` pairs every element's
            score with the whole objective, which is also unbiased but has more
            variance (for comparison and debugging).

    Example:
        >>> from gendsl.inference import Reinforce
        >>> Reinforce(baseline="loo")
        Reinforce(baseline='loo', decay=0.9, track_dependencies=True)
    """

    baseline: Any = "ema"
    decay: float = 0.9
    track_dependencies: bool = True

    def __post_init__(self):
        b = self.baseline
        ok = b is None or callable(b) or isinstance(b, (int, float)) or b in ("ema", "loo")
        if not ok:
            raise ValueError(
                f"Reinforce: baseline must be None, a number, 'ema', 'loo' or a callable "
                f"(params, *args) -> scalar, got {b!r}"
            )
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"Reinforce: decay must be in [0, 1), got {self.decay}")
        if not isinstance(self.track_dependencies, bool):
            raise ValueError(f"Reinforce: track_dependencies must be True or False, got {self.track_dependencies!r}")

    # -- at the site ---------------------------------------------------------------------

    def sample_site(self, site: Site, msg: dict) -> None:
        fn, value = msg["fn"], sg(msg["value"])
        score = fn.log_prob(value)
        if site.execution.track and self.track_dependencies:
            batch_ndim = jnp.ndim(score) if jnp.shape(value)[: jnp.ndim(score)] == jnp.shape(score) else -1
            value = score_site(value, address=site.address, loops=0, batch_ndim=batch_ndim)
        msg["value"] = value
        site.execution.add_score(site.address, score, self)
        if not site.score_paths:
            msg["fn"] = jax.tree_util.tree_map(sg, fn)  # the recorded log q: same value, no θ-gradient

    def loop_site(self, site: Site, probe: dict) -> None:
        probe[STOP_GRADIENT] = True
        loops = len(probe.get(LOOP_STEPS, ()))
        if site.execution.track and self.track_dependencies:
            batch_ndim = len(probe["fn"].batch_shape)

            def tag(msg):
                msg["value"] = score_site(msg["value"], address=site.address, loops=loops, batch_ndim=batch_ndim)

            probe.setdefault(POST, []).append(tag)
        if not site.score_paths and loops == 1:

            def stop(msg):
                # The loop records log q without its θ-gradient; the score goes out as an extra.
                score = msg["fn"].log_prob(msg["value"])
                msg["fn"] = jax.tree_util.tree_map(sg, msg["fn"])
                return score

            probe.setdefault(POST, []).append(stop)

    def loop_site_done(self, site: Site, msg: dict) -> None:
        extras = msg.get(LOOP_EXTRAS)  # the score, when the loop's log q is stopped
        score = msg["fn"].log_prob(msg["value"]) if extras is None else extras
        site.execution.add_score(site.address, score, self)  # (steps, ...) per element

    # -- in the estimator ----------------------------------------------------------------

    def baseline_value(self, address: str, ema: dict, loo: Any, args: tuple) -> Any:
        """The baseline subtracted from the site's paired cost (independent of the draw)."""
        b = self.baseline
        if b is None:
            return 0.0
        if callable(b):
            return b(*args)
        if b == "ema":
            return ema.get(address, 0.0)
        if b == "loo":
            return 0.0 if loo is None else loo
        return float(b)

    def baseline_fit(self, cost: jax.Array, args: tuple) -> jax.Array:
        """A term whose gradient fits a learned (callable) baseline to ``cost`` by least squares.

        The cost is stopped, so the gradient reaches only the baseline's parameters; zero for
        every other kind of baseline.
        """
        if not callable(self.baseline):
            return jnp.zeros(jnp.shape(cost)[:1])
        fit = jnp.broadcast_to(sg(cost) - self.baseline(*args), jnp.shape(cost))
        return -0.5 * jnp.sum(fit**2, axis=tuple(range(1, jnp.ndim(cost))))

    def next_ema(self, old: Any, cost: jax.Array) -> Any:
        """The updated EMA baseline after seeing ``cost``, or None when the baseline is not an EMA."""
        if not (isinstance(self.baseline, str) and self.baseline == "ema"):
            return None
        cost = sg(cost)
        old = cost if old is None else old
        return self.decay * old + (1 - self.decay) * cost


REINFORCE = Reinforce()
