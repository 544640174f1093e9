"""Test helpers for gendsl: random models and distributions, and statistical checks.

``models()`` draws small random models (a DAG of sample sites over several
distribution families, some inside a plate, some observed) and returns a
``ModelSpec`` that holds both the ``gendsl.Model`` and the description it was
built from; ``distributions()`` draws single distributions with valid random
parameters. Use them to state properties that every model must satisfy.
``assert_unbiased`` and ``draw_estimates`` test stochastic estimators against
their exact value, with a tolerance from the estimator's standard error.

Requires ``hypothesis`` (in the ``test`` extra). The sites' families are:

    >>> from gendsl.testing import FAMILIES
    >>> FAMILIES  # doctest: +NORMALIZE_WHITESPACE
    ('Normal', 'LogNormal', 'Gamma', 'Beta', 'Bernoulli', 'Categorical', 'Poisson',
     'MultivariateNormal', 'Dirichlet')

Example:
    >>> import jax, numpy as np
    >>> from hypothesis import given, settings
    >>> from gendsl.testing import models
    >>> @settings(max_examples=5, deadline=None, derandomize=True, database=None)
    ... @given(models())
    ... def generate_weight_is_observed_density(spec):
    ...     tr, w = jax.jit(spec.model.generate)(jax.random.key(1), {}, *spec.args)
    ...     observed = sum(tr.site_score(a) for a in spec.observed_sites)
    ...     np.testing.assert_allclose(w, observed, rtol=1e-5)
    >>> generate_weight_is_observed_density()
"""

from gendsl.testing._checks import assert_unbiased, draw_estimates
from gendsl.testing._models import FAMILIES, ModelSpec, SiteSpec, distributions, models

__all__ = [
    "FAMILIES",
    "ModelSpec",
    "SiteSpec",
    "assert_unbiased",
    "distributions",
    "draw_estimates",
    "models",
]
