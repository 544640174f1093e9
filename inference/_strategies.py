"""Gradient strategies: how the derivative of an expectation flows through one site.

A strategy is attached to a sample site with ``gendsl.sample(..., strategy=S)`` or from
outside with ``gendsl.handlers.strategy(model, rules={"z*": S})``. Registered names are
accepted as shorthand: ``"reparam"``, ``"reinforce"``, ``"enum"``, ``"mvd"``, ``"relaxed"``,
``"auto"``.

============  ==========================================================  ==========================
strategy      gradient                                                     sites
============  ==========================================================  ==========================
REPARAM       pathwise, through the sampled value (implicit               ``has_rsample`` (Normal,
              reparameterization for Gamma, Beta, Dirichlet)               Gamma, Beta, Dirichlet...)
REINFORCE     score function ``(f - b) ∇ log q`` with a baseline ``b``    any
ENUM          exact sum over the support for an unbatched site; for a     finite support
              batched site, the local expectation per element
MVD           measure-valued derivative (weak derivative pairs)           Bernoulli, Categorical,
                                                                           Normal, Poisson, Geometric
Relaxed       Gumbel-softmax (binary Concrete) relaxation: *biased*,      Bernoulli
              refused unless ``allow_bias=True``
AUTO          one of the above, chosen by measuring gradient variance x   any
              time at the starting parameters (``_auto``)
============  ==========================================================  ==========================

The default is REPARAM where the distribution supports it, otherwise REINFORCE with an
exponential-moving-average baseline.

**A strategy carries its behaviour.** The site handler (``_sites``) resolves a site's
strategy and makes one call on it; everything a strategy does lives in its class:

* ``select(fn, address)``: the strategy that handles the site: itself, except for a deferred
  choice (``AUTO`` answers with the strategy chosen for the address);
* ``check(fn, address)``: refuse a site it cannot handle without bias (``EstimatorError``
  naming the site and the fix);
* ``sample_site(site, msg)``: a site drawn by ``sim``, after sampling: stop or replace the
  value, register score terms or branches in ``site.execution``;
* ``loop_site(site, probe)`` / ``loop_site_done(site, msg)``: the same for a site of a
  ``gendsl.scan`` body, once while the body is traced (through the probe's
  ``STOP_GRADIENT`` and ``POST`` hooks) and once for the stacked site after the loop.

Adding a strategy is one subclass in one file: ``class Mine(Strategy, name="mine")``
registers the shorthand ``"mine"`` too.
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any, ClassVar

from numpyro.distributions import Distribution

from gendsl import GendslError
from gendsl.inference._execution import Execution

__all__ = ["REPARAM", "AutoUnresolved", "EstimatorError", "Reparam", "Site", "Strategy", "deferred_choice", "resolve"]


class EstimatorError(GendslError, ValueError):
    """A site's gradient cannot be estimated without bias with the chosen strategy."""


class AutoUnresolved(EstimatorError):
    """A site whose strategy is chosen by measurement (``AUTO``) was reached before the choice was made."""


#: While an objective that carries a choice for its deferred sites runs (``AUTO``, see
#: ``gendsl.inference._auto.assign``), the object whose ``select(fn, address)`` answers for them;
#: None otherwise. It lives here, in the module that every strategy module imports by its full
#: name, so that every copy of a strategy class reads the same one (pytest's doctest collection
#: imports ``inference/`` a second time, as the package ``inference``).
deferred_choice: contextvars.ContextVar = contextvars.ContextVar("gendsl_deferred_choice", default=None)


@dataclasses.dataclass(frozen=True)
class Site:
    """What a strategy is told about the site it handles.

    Attributes:
        address: the site's address inside the objective (``sim0/z``, ``repeat0/sim0/z``).
        execution: the record of the running execution (see ``_execution``).
        score_paths: False when the objective lets the site record ``log q`` without its
            zero-mean gradient in the distribution's parameters at the drawn value: valid where
            ``log q`` enters the objective linearly (the ELBO). REINFORCE, ENUM and MVD sites
            honour it; a pathwise (REPARAM) site keeps the term (dropping it there is
            ``elbo(estimator="stl")``, a separate choice).
    """

    address: str
    execution: Execution
    score_paths: bool = True


class Strategy:
    """Base class of gradient strategies; see the module docstring for the interface.

    The base implementation is the pathwise gradient: nothing to do at any site.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import Strategy, expectation, sim
        >>> class Frozen(Strategy, name="frozen"):  # no gradient through the site (biased!)
        ...     def sample_site(self, site, msg):
        ...         msg["value"] = jax.lax.stop_gradient(msg["value"])
        >>> @gendsl.model
        ... def q(mu):
        ...     gendsl.sample("z", dist.Normal(mu, 1.0), strategy="frozen")
        >>> float(expectation(lambda mu: sim(q)(mu)[0]["z"]).grad(jax.random.key(0), 1.0))
        0.0
    """

    registry: ClassVar[dict[str, Strategy]] = {}

    def __init_subclass__(cls, name: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            # The shorthand names the default-configured strategy.
            Strategy.registry[name.lower()] = cls

    def select(self, fn: Distribution, address: str) -> Strategy:
        """The strategy that handles the site: ``self``, or the one a deferred choice (``AUTO``) made."""
        return self

    def check(self, fn: Distribution, address: str) -> None:
        """Raise ``EstimatorError`` if this strategy cannot handle a site with distribution ``fn``."""

    def sample_site(self, site: Site, msg: dict) -> None:
        """Handle a latent site drawn by ``sim``, after it was sampled (``msg["value"]`` is set)."""

    def loop_site(self, site: Site, probe: dict) -> None:
        """Handle a latent site of a ``gendsl.scan`` body, before it is sampled (see ``gendsl.internal``)."""

    def loop_site_done(self, site: Site, msg: dict) -> None:
        """Handle the stacked loop site after the loop (its ``LOOP_EXTRAS`` hold what ``POST`` hooks returned)."""


@dataclasses.dataclass(frozen=True)
class Reparam(Strategy, name="reparam"):
    """Pathwise gradient through a reparameterized sample."""

    def check(self, fn: Distribution, address: str) -> None:
        if not fn.has_rsample:
            raise EstimatorError(
                f"site '{address}': REPARAM needs a reparameterizable distribution, but "
                f"{type(fn).__name__} has none; use strategy=ENUM (finite support), MVD or REINFORCE"
            )


REPARAM = Reparam()


def _named(name: str, address: str) -> Strategy:
    cls = Strategy.registry.get(name.lower())
    if cls is None:
        raise EstimatorError(
            f"site '{address}': unknown strategy {name!r}; use one of {sorted(Strategy.registry)} "
            "or a gendsl.inference strategy object"
        )
    return cls()


def resolve(strategy: Any, fn: Distribution, address: str) -> Strategy:
    """The strategy to use at ``address`` (default, name or object), checked against its distribution."""
    if strategy is None:
        strategy = REPARAM if fn.has_rsample else _named("reinforce", address)
    elif isinstance(strategy, str):
        strategy = _named(strategy, address)
    if not isinstance(strategy, Strategy):
        raise EstimatorError(
            f"site '{address}': expected a gradient strategy (REPARAM, REINFORCE, ENUM, MVD, or a "
            f"gendsl.inference.Strategy), got {strategy!r}"
        )
    strategy = strategy.select(fn, address)
    strategy.check(fn, address)
    return strategy
