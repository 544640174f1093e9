"""gendsl: a probabilistic-programming language for generative models, on JAX.

Write a model as a function of ``gendsl.sample`` calls, decorate it with
``@gendsl.model``, and use ``simulate`` / ``assess`` / ``generate``. Variational
objectives, gradient estimators and training live in ``gendsl.inference``.

Example:
    >>> import jax, gendsl, gendsl.distributions as dist
    >>> @gendsl.model
    ... def model(x):
    ...     mu = gendsl.sample("mu", dist.Normal(0.0, 10.0))
    ...     with gendsl.plate("data", x.shape[0]):
    ...         gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)
    >>> tr = model.simulate(jax.random.key(0), jax.numpy.zeros(5))
    >>> tr.log_probs["x"].shape
    (5,)
"""

from gendsl import distributions, handlers
from gendsl._errors import (
    AddressError,
    GendslError,
    MissingChoiceError,
    NoKeyError,
    ObservationError,
)
from gendsl._model import Model, VmapModel, model
from gendsl._primitives import (
    deterministic,
    factor,
    module,
    param,
    plate,
    prng_key,
    sample,
)
from gendsl._scan import scan
from gendsl._trace import Trace

__version__ = "0.1.0"

__all__ = [
    "AddressError",
    "GendslError",
    "MissingChoiceError",
    "Model",
    "NoKeyError",
    "ObservationError",
    "Trace",
    "VmapModel",
    "deterministic",
    "distributions",
    "factor",
    "handlers",
    "model",
    "module",
    "param",
    "plate",
    "prng_key",
    "sample",
    "scan",
    "__version__",
]
