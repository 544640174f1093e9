"""gendsl.metrics against closed forms: each metric's value for a known pair of laws, its null (two samples of
one law) and a shift it must detect, with tolerances from the estimator's own standard error (replicates)."""

import pathlib
import re

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import gendsl.metrics as metrics

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def replicate(statistic, reps: int, seed: int) -> tuple[float, float, float]:
    """Mean, its standard error and the per-replicate standard deviation of ``statistic(rng)``."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng) for _ in range(reps)])
    sd = values.std(ddof=1)
    return float(values.mean()), float(sd / np.sqrt(reps)), float(sd)


def test_moved_functions_are_reexported_from_models():
    import gendsl.models
    import gendsl.models.flow_matching

    for name in ("mmd", "energy_distance"):
        assert getattr(gendsl.models, name) is getattr(metrics, name)
        assert getattr(gendsl.models.flow_matching, name) is getattr(metrics, name)


# --- energy distance and MMD ---------------------------------------------------------------------------


def mean_abs_normal(mu, s):
    """E|N(mu, s^2)|."""
    return s * np.sqrt(2 / np.pi) * np.exp(-(mu**2) / (2 * s**2)) + mu * (1 - 2 * scipy.stats.norm.cdf(-mu / s))


def test_energy_distance_of_a_shift_equals_the_closed_form():
    # N(0, 1) against N(delta, 1): 2 E|N(delta, 2)| - 2 E|N(0, 2)|.
    delta = 0.5
    exact = 2 * mean_abs_normal(delta, np.sqrt(2)) - 2 * mean_abs_normal(0.0, np.sqrt(2))
    mean, se, _ = replicate(
        lambda r: metrics.energy_distance(r.normal(size=(300, 1)), delta + r.normal(size=(300, 1))), 20, 0
    )
    assert abs(mean - exact) < 4 * se


def test_energy_distance_null_is_zero_and_a_shift_is_detected():
    null_mean, null_se, null_sd = replicate(
        lambda r: metrics.energy_distance(r.normal(size=(300, 2)), r.normal(size=(300, 2))), 20, 1
    )
    assert abs(null_mean) < 4 * null_se  # unbiased: exactly 0 in expectation
    rng = np.random.default_rng(2)
    assert metrics.energy_distance(rng.normal(size=(300, 2)), 0.3 + rng.normal(size=(300, 2))) > 4 * null_sd


def gaussian_mmd(delta_sq: float, d: int, bandwidth: float) -> float:
    """MMD^2 of N(0, I) and N(delta, I) with a Gaussian kernel: E k over differences N(mu, 2I) in closed form."""
    scale = (bandwidth**2 / (bandwidth**2 + 2)) ** (d / 2)
    return 2 * scale * (1 - np.exp(-delta_sq / (2 * (bandwidth**2 + 2))))


def test_mmd_of_a_shift_equals_the_closed_form_and_its_null_is_zero():
    delta = np.array([0.6, 0.0])
    mean, se, _ = replicate(
        lambda r: metrics.mmd(r.normal(size=(300, 2)), delta + r.normal(size=(300, 2)), bandwidth=1.0), 20, 3
    )
    assert abs(mean - gaussian_mmd(0.36, 2, 1.0)) < 4 * se
    null_mean, null_se, null_sd = replicate(
        lambda r: metrics.mmd(r.normal(size=(300, 2)), r.normal(size=(300, 2)), bandwidth=1.0), 20, 4
    )
    assert abs(null_mean) < 4 * null_se
    rng = np.random.default_rng(5)
    assert metrics.mmd(rng.normal(size=(300, 2)), 0.3 + rng.normal(size=(300, 2)), bandwidth=1.0) > 4 * null_sd


# --- sliced Wasserstein ---------------------------------------------------------------------------------


def test_sliced_wasserstein_in_one_dimension_is_the_exact_wasserstein_distance():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 1)), rng.exponential(size=(170, 1))  # unequal sizes: merged quantile grid
    w1 = metrics.sliced_wasserstein(x, y, key=jax.random.key(0), projections=4, p=1)
    assert w1 == pytest.approx(scipy.stats.wasserstein_distance(x[:, 0], y[:, 0]), rel=1e-10)
    assert metrics.sliced_wasserstein(x, x + 0.7, key=jax.random.key(1)) == pytest.approx(0.7, rel=1e-10)


def test_sliced_wasserstein_null_is_its_known_bias():
    # Two n-samples of U(0, 1): E W_2^2 = (2/n) sum_i Var U_(i) = 1 / (3 (n + 1)) (order statistics are Beta).
    n = 200
    mean, se, _ = replicate(
        lambda r: (
            metrics.sliced_wasserstein(r.uniform(size=(n, 1)), r.uniform(size=(n, 1)), key=jax.random.key(0)) ** 2
        ),
        40,
        6,
    )
    assert abs(mean - 1 / (3 * (n + 1))) < 4 * se


def test_sliced_wasserstein_of_a_shift_in_two_dimensions():
    # N(0, I) against N(delta, I): in direction theta the shift keeps the sorted pairs, so it adds
    # (theta . delta)^2 - 2 (theta . delta)(theta . (mean_x - mean_y)) to the same samples' W_2^2; the second
    # term has mean 0, and E (theta . delta)^2 = |delta|^2 / d for theta uniform on the circle.
    delta = np.array([1.0, 0.5])

    def excess(r):
        x, y, key = r.normal(size=(500, 2)), r.normal(size=(500, 2)), jax.random.key(int(r.integers(1 << 30)))
        return (
            metrics.sliced_wasserstein(x, y + delta, key=key, projections=64) ** 2
            - metrics.sliced_wasserstein(x, y, key=key, projections=64) ** 2
        )

    mean, se, _ = replicate(excess, 20, 7)
    assert abs(mean - (delta**2).sum() / 2) < 4 * se
    null_mean, _, null_sd = replicate(
        lambda r: metrics.sliced_wasserstein(r.normal(size=(500, 2)), r.normal(size=(500, 2)), key=jax.random.key(0)),
        20,
        8,
    )
    rng = np.random.default_rng(9)
    shifted = metrics.sliced_wasserstein(
        rng.normal(size=(500, 2)), rng.normal(size=(500, 2)) + np.array([0.3, 0.0]), key=jax.random.key(0)
    )
    assert shifted > null_mean + 4 * null_sd


# --- Fréchet distance -----------------------------------------------------------------------------------


def exact_moments(rng, n, mean, cov):
    """n points whose sample mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_is_the_gaussian_w2_formula():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 0.0])
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    c1, c2 = a @ a.T + 0.1 * np.eye(3), b @ b.T + 0.1 * np.eye(3)  # do not commute
    # FID's usual form, through the (non-symmetric) product's square root.
    exact = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    x, y = exact_moments(rng, 400, mu1, c1), exact_moments(rng, 300, mu2, c2)
    assert metrics.frechet_distance(x, y) == pytest.approx(exact, rel=1e-8)
    # In a feature map: the first two coordinates of 3-D points.
    assert metrics.frechet_distance(x, y, features=lambda p: p[:, :2]) == pytest.approx(
        metrics.frechet_distance(x[:, :2], y[:, :2]), rel=1e-12
    )


def test_frechet_distance_null_is_its_first_order_bias_and_a_shift_is_detected():
    # Same law N(0, I_d): E|mean_x - mean_y|^2 = 2 d / n, and near C = I the covariance term is
    # |C_x - C_y|_F^2 / 4 to second order, whose mean is d (d + 1) / (2 (n - 1)).
    n, d = 1000, 2
    mean, se, sd = replicate(lambda r: metrics.frechet_distance(r.normal(size=(n, d)), r.normal(size=(n, d))), 30, 10)
    assert abs(mean - (2 * d / n + d * (d + 1) / (2 * (n - 1)))) < 4 * se
    rng = np.random.default_rng(11)
    assert (
        metrics.frechet_distance(rng.normal(size=(n, d)), rng.normal(size=(n, d)) + np.array([0.3, 0.0]))
        > mean + 4 * sd
    )


def test_pca_features_keep_the_leading_directions():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2000, 3)) * np.array([5.0, 1.0, 0.1])
    features = metrics.pca_features(data, dims=1)(data)
    assert features.shape == (2000, 1)
    assert abs(np.corrcoef(features[:, 0], data[:, 0])[0, 1]) > 0.99


# --- k-NN precision and recall --------------------------------------------------------------------------


def test_knn_precision_recall_exact_cases():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 2))
    assert metrics.knn_precision_recall(real, real[::-1].copy()) == (1.0, 1.0)  # the same points
    assert metrics.knn_precision_recall(real, real + 100.0) == (0.0, 0.0)  # disjoint supports


def two_clusters(r, n):
    return np.concatenate([r.normal(size=(n, 2)), r.normal(size=(n, 2)) + np.array([50.0, 0.0])])


def test_knn_precision_equals_recall_under_the_null_and_a_dropped_mode_halves_recall():
    def scores(r):
        real = two_clusters(r, 250)
        null = metrics.knn_precision_recall(real, two_clusters(r, 250))
        dropped = metrics.knn_precision_recall(real, r.normal(size=(250, 2)))  # the first mode only, same density
        return np.array([null[0] - null[1], dropped[0] - null[0], dropped[1] - null[1] / 2, null[0]])

    rng = np.random.default_rng(12)
    values = np.array([scores(rng) for _ in range(12)])
    mean, se = values.mean(0), values.std(0, ddof=1) / np.sqrt(len(values))
    # Null: one law, one size, so precision and recall have one expectation. Dropping a mode leaves
    # precision as it was and covers half of the real points as well as before.
    assert np.all(np.abs(mean[:3]) < 4 * se[:3]), (mean, se)
    assert mean[3] > 0.5


def test_knn_precision_detects_samples_off_the_data():
    def precisions(r):
        real = r.normal(size=(400, 2))
        return metrics.knn_precision_recall(real, r.normal(size=(400, 2)))[0], metrics.knn_precision_recall(
            real, r.normal(size=(400, 2)) + np.array([3.0, 0.0])
        )[0]

    rng = np.random.default_rng(13)
    values = np.array([precisions(rng) for _ in range(10)])
    difference = values[:, 0] - values[:, 1]
    assert difference.mean() > 4 * difference.std(ddof=1) / np.sqrt(len(difference))


# --- C2ST -----------------------------------------------------------------------------------------------


def test_c2st_null_is_chance_and_a_shift_reaches_the_bayes_accuracy():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(1000, 1))
    accuracy, se = metrics.c2st(x, rng.normal(size=(1000, 1)), key=jax.random.key(0), hidden=0)
    assert abs(accuracy - 0.5) < 4 * se
    # N(0, 1) against N(delta, 1), equal priors: the Bayes classifier thresholds at delta / 2, accuracy
    # Phi(delta / 2); logistic regression is that classifier up to its fitted threshold.
    delta = 1.5
    accuracy, se = metrics.c2st(x, delta + rng.normal(size=(1000, 1)), key=jax.random.key(1), hidden=0)
    assert abs(accuracy - scipy.stats.norm.cdf(delta / 2)) < 4 * se


def test_c2st_network_detects_a_change_of_scale():
    rng = np.random.default_rng(15)
    x, y = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
    accuracy, se = metrics.c2st(x, y, key=jax.random.key(0))
    assert abs(accuracy - 0.5) < 4 * se
    accuracy, se = metrics.c2st(x, 2 * y, key=jax.random.key(0))  # same mean: needs the hidden layer
    assert accuracy > 0.5 + 4 * se


# --- memorization ratio ---------------------------------------------------------------------------------


def test_memorization_ratio_null_and_copies():
    # Samples of the data's law: the nearest of the union of both sets is a training point with probability
    # n_train / (n_train + n_held_out). A model that copies a share c of its samples adds c of the rest.
    n_train, n_held = 600, 300
    null = n_train / (n_train + n_held)

    def fractions(r):
        train, held = r.normal(size=(n_train, 4)), r.normal(size=(n_held, 4))
        fresh = r.normal(size=(800, 4))
        copies = train[r.integers(n_train, size=400)] + 1e-3 * r.normal(size=(400, 4))
        return (
            metrics.memorization_ratio(fresh, train, held)[0],
            metrics.memorization_ratio(np.concatenate([fresh[:400], copies]), train, held)[0],
        )

    rng = np.random.default_rng(16)
    values = np.array([fractions(rng) for _ in range(10)])
    mean, se = values.mean(0), values.std(0, ddof=1) / np.sqrt(len(values))
    assert abs(mean[0] - null) < 4 * se[0]
    assert abs(mean[1] - (0.5 + 0.5 * null)) < 4 * se[1]
    assert mean[1] - mean[0] > 4 * np.hypot(*se)


def test_memorization_ratio_threshold_counts_near_copies_only():
    rng = np.random.default_rng(17)
    train, held = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
    fraction, se = metrics.memorization_ratio(rng.normal(size=(500, 8)), train, held, threshold=1 / 3)
    assert fraction < 0.02 and se < 0.01  # 8-D nearest neighbours are rarely 3x nearer on one side
    assert metrics.memorization_ratio(train[:100] + 1e-3, train, held, threshold=1 / 3) == (1.0, 0.0)


# --- InfoMEC --------------------------------------------------------------------------------------------


def grid_factors(*levels, repeats):
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in levels], indexing="ij"), -1).reshape(-1, len(levels))
    return np.tile(grid, (repeats, 1))


def test_info_mec_of_the_factors_themselves_is_one():
    factors = grid_factors(4, 5, 6, repeats=5)
    scores = metrics.info_mec(factors.astype(float), factors)
    # Every combination equally often: the factors are independent, so nmi is exactly the identity.
    np.testing.assert_allclose(scores["nmi"], np.eye(3), atol=1e-12)
    assert scores["infom"] == pytest.approx(1.0) and scores["infoc"] == pytest.approx(1.0)
    assert scores["infoe"] > 0.98  # separable: the unpenalized fit only approaches CE = 0
    assert scores["active"].all()


def test_info_mec_hand_computed_two_by_two():
    # z1 = s1, z2 = s1 + s2 for independent fair bits: I(s1; z2) = H(z2) - H(z2 | s1) = 1.5 - 1 bits, so
    # nmi = [[1, 1/2], [0, 1/2]]; InfoM = ((1 + 1/2) / 2 - 1/2) / (1/2) = 1/2, InfoC = ((2/3 + 1) / 2 - 1/2) / (1/2).
    factors = grid_factors(2, 2, repeats=25)
    latents = np.stack([factors[:, 0], factors.sum(1)], 1).astype(float)
    scores = metrics.info_mec(latents, factors)
    np.testing.assert_allclose(scores["nmi"], [[1.0, 0.5], [0.0, 0.5]], atol=1e-12)
    assert scores["infom"] == pytest.approx(0.5) and scores["infoc"] == pytest.approx(2 / 3)


def test_info_mec_rotation_lowers_modularity_not_explicitness():
    factors = grid_factors(4, 5, 6, repeats=5)
    standardized = (factors - factors.mean(0)) / factors.std(0)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated = metrics.info_mec(standardized @ rotation, factors)
    plain = metrics.info_mec(standardized, factors)
    assert rotated["infom"] < 0.5 and rotated["infoc"] < 0.5
    # A rotation keeps what a linear read-out can get: InfoE is unchanged up to the fit.
    assert abs(rotated["infoe"] - plain["infoe"]) < 0.05


def test_info_mec_null_nmi_is_the_binning_bias():
    # Latents independent of the factors: the plug-in MI is biased by (levels - 1)(bins - 1) / (2 n) nats.
    rng = np.random.default_rng(18)
    n, bins = 5000, 20
    factors = rng.integers(4, size=(n, 2))
    scores = metrics.info_mec(rng.normal(size=(n, 3)), factors, bins=bins, steps=50)
    bias = 3 * (bins - 1) / (2 * n) / np.log(4)
    nmi = scores["nmi"].ravel()
    assert abs(nmi.mean() - bias) < 4 * nmi.std(ddof=1) / np.sqrt(nmi.size)


# --- active units ---------------------------------------------------------------------------------------


def test_active_units_of_a_linear_gaussian_encoder():
    # x = W z + 0.5 eps with W's columns 1 and 3 zero: the exact posterior mean (W'W + 0.25 I)^-1 W' x is 0
    # in those dimensions (the prior's mean) and moves with x in the others.
    rng = np.random.default_rng(19)
    w = rng.normal(size=(6, 4)) * np.array([1.0, 0.0, 0.3, 0.0])
    x = rng.normal(size=(2000, 4)) @ w.T + 0.5 * rng.normal(size=(2000, 6))
    means = x @ np.linalg.solve(w.T @ w + 0.25 * np.eye(4), w.T).T
    assert metrics.active_units(means).tolist() == [True, False, True, False]


def test_active_units_threshold_is_on_the_variance():
    u = np.random.default_rng(20).normal(size=500)
    u = (u - u.mean()) / u.std(ddof=1)  # sample variance exactly 1
    means = u[:, None] * np.array([2.0, 0.2, 0.11, 0.09, 0.0])  # variances 4, 0.04, 0.0121, 0.0081, 0
    assert metrics.active_units(means).tolist() == [True, True, True, False, False]
    assert metrics.active_units(means, threshold=0.05).sum() == 1


# --- errors and the docs page ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.mmd(np.zeros((5, 2)), np.zeros((5, 3)), bandwidth=1.0), r"one shape: got x \(5, 2\)"),
        (lambda: metrics.c2st(np.zeros((5, 2)), np.zeros((6, 2)), key=jax.random.key(0)), "got 5 and 6"),
        (lambda: metrics.info_mec(np.zeros((5, 2)), np.zeros(5)), r"factors must be \(n, F\)"),
        (lambda: metrics.active_units(np.zeros(5)), r"means must be \(n, L\)"),
        (lambda: metrics.knn_precision_recall(np.zeros((5, 2)), np.zeros((5, 2)), k=5), "k must be between"),
        (lambda: metrics.energy_distance(np.zeros((1, 2)), np.zeros((5, 2))), "at least 2 points"),
    ],
)
def test_bad_input_is_a_one_line_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_docs_metrics_md_example_runs():
    (block,) = re.findall(r"```python\n(.*?)```", (DOCS / "metrics.md").read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(block, str(DOCS / "metrics.md"), "exec"), namespace)
    assert namespace["accuracy"] > 0.5 + 4 * namespace["se"]
