"""The surface of the core that gendsl's sister packages build on (``gendsl.inference``, ``gendsl.models``).

Users do not need anything here. It is declared, in the spirit of ``equinox.internal``, so that
the protocol between the language and the estimators is written down in one place: whatever
``gendsl.inference`` and ``gendsl.models`` use from the core is either public (``gendsl.*``) or
listed below, and nothing outside ``gendsl/`` imports a private ``gendsl._*`` module.

* Executions: ``Recorder`` (the handler that records a ``Trace``), ``RequireValues`` (fails on
  a latent site without a value, as ``assess`` does), ``missing_choice``, ``assess_trace`` (the
  trace ``Model.assess`` scores), ``init_models`` (several models' parameters from one compiled
  program), ``shared_subsamples`` (every subsampled plate of one name draws
  the same indices: how a guide's and a model's plates agree inside an objective).
* Addresses and keys: ``join`` (the address of a site in a scope), ``address_hash``,
  ``site_key`` (the key of an address), ``as_key`` (a key or an int seed as a key).
* ``site_log_prob_p``: the identity primitive that marks one site's log density as one cost
  term in a jaxpr (the estimators' dependency analysis recognizes it).
* The message keys and the ``LoopSiteHandler`` protocol of ``gendsl._messages``.

Example:
    >>> import jax, gendsl, gendsl.distributions as dist
    >>> from gendsl.internal import Recorder, seed
    >>> rec = Recorder()
    >>> with rec, seed(key=jax.random.key(0)):
    ...     _ = gendsl.sample("z", dist.Normal(0.0, 1.0))
    >>> sorted(rec.trace(None).choices)
    ['z']
"""

from gendsl._address import address_hash, as_key, join, site_key
from gendsl._handlers import seed, shared_subsamples, strategy
from gendsl._messages import (
    ADDRESS,
    CONTROL_FLOW_DONE,
    INFER_LOOP,
    INFER_LOOP_REVERSE,
    INFER_STRATEGY,
    LOOP_EXTRAS,
    LOOP_STEPS,
    POST,
    SCAN_INDEX,
    STOP_GRADIENT,
    LoopSiteHandler,
)
from gendsl._model import RequireValues, assess_trace, init_models, missing_choice
from gendsl._trace import Recorder, site_log_prob_p

__all__ = [
    "ADDRESS",
    "CONTROL_FLOW_DONE",
    "INFER_LOOP",
    "INFER_LOOP_REVERSE",
    "INFER_STRATEGY",
    "LOOP_EXTRAS",
    "LOOP_STEPS",
    "POST",
    "SCAN_INDEX",
    "STOP_GRADIENT",
    "LoopSiteHandler",
    "Recorder",
    "RequireValues",
    "address_hash",
    "as_key",
    "assess_trace",
    "init_models",
    "join",
    "missing_choice",
    "seed",
    "shared_subsamples",
    "site_key",
    "site_log_prob_p",
    "strategy",
]
