"""S37's closed-form check: a linear CVAE collapses exactly the latents whose Σ_{y|x} eigenvalue is ≤ σ²."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "collapse_linear.py"


def _example():
    spec = importlib.util.spec_from_file_location("collapse_linear", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_population_eigenvalue_is_within_20_percent_of_sigma2():
    ex = _example()
    for rho in ex.RHOS:
        eigenvalues = ex.conditional_eigenvalues(ex.covariance(rho))
        assert np.all(np.abs(eigenvalues - ex.SIGMA2) > 0.2 * ex.SIGMA2), (rho, eigenvalues)
    # Stronger input-output correlation shrinks Σ_{y|x}: more collapse is predicted at ρ = 0.9.
    counts = [int(np.sum(ex.conditional_eigenvalues(ex.covariance(r)) <= ex.SIGMA2)) for r in ex.RHOS]
    assert counts == [3, 3, 3, 6]


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.6, 0.9])
def test_collapsed_count_equals_eigenvalues_below_sigma2(rho):
    row = _example().measure(rho)
    assert row["measured"] == row["predicted"], row
    # The flag is not marginal: collapsed latents are far below 0.01 nats, the used ones far above.
    kl = np.sort(row["kl"])
    assert kl[row["predicted"] - 1] < 1e-3 and kl[row["predicted"]] > 0.05, kl
