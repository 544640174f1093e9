"""Effect handlers.

gendsl models run on NumPyro's handler stack, so NumPyro's handlers apply to
them unchanged and are re-exported here: ``trace``, ``condition``,
``substitute``, ``replay``, ``block``, ``scale``, ``mask``, ``infer_config``,
``uncondition``.
gendsl adds:

* ``seed``: keys derived from each site's *address* rather than from program
  order (re-executing a program with one site changed reproduces the others);
* ``strategy``: attach a gradient strategy to sites by address pattern.

Order: handlers entered later sit closer to the model and see each site first;
a value set by an inner ``substitute`` is overridden by an outer one, as in NumPyro.

Example:
    >>> import jax, gendsl, gendsl.distributions as dist
    >>> from gendsl import handlers
    >>> def f():
    ...     return gendsl.sample("z", dist.Normal(0.0, 1.0))
    >>> tr = handlers.trace(handlers.condition(f, data={"z": 0.5})).get_trace()
    >>> tr["z"]["is_observed"], float(tr["z"]["value"])
    (True, 0.5)
"""

from numpyro.handlers import (
    block,
    condition,
    infer_config,
    mask,
    replay,
    scale,
    substitute,
    trace,
    uncondition,
)

from gendsl._handlers import seed, strategy

__all__ = [
    "block",
    "condition",
    "infer_config",
    "mask",
    "replay",
    "scale",
    "seed",
    "strategy",
    "substitute",
    "trace",
    "uncondition",
]
