"""evaluation/metrics.py against answers known independently: closed forms and constructed
point sets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import make_blobs

from evaluation import metrics


def samples_with_moments(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n points whose sample mean and unbiased covariance are exactly ``mean`` and ``cov``."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, len(mean)))
    raw -= raw.mean(axis=0)
    whitened = raw @ np.linalg.inv(np.linalg.cholesky(np.cov(raw, rowvar=False))).T
    return whitened @ np.linalg.cholesky(cov).T + mean


# ---------------------------------------------------------------- Fréchet distance
def test_frechet_distance_matches_closed_form_for_2d_gaussians() -> None:
    # For 2x2 matrices with positive eigenvalues, Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)).
    mean_a, mean_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    cov_a = np.array([[2.0, 0.8], [0.8, 1.0]])
    cov_b = np.array([[1.0, -0.5], [-0.5, 3.0]])
    product = cov_a @ cov_b
    trace_sqrt = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    a = samples_with_moments(mean_a, cov_a, 500, seed=1)
    b = samples_with_moments(mean_b, cov_b, 300, seed=2)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_diagonal_gaussians() -> None:
    # Commuting covariances: ||mu_a - mu_b||^2 + sum_i (sqrt(var_a_i) - sqrt(var_b_i))^2.
    rng = np.random.default_rng(0)
    var_a, var_b = rng.uniform(0.5, 4, 12), rng.uniform(0.5, 4, 12)
    mean_a, mean_b = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    a = samples_with_moments(mean_a, np.diag(var_a), 400, seed=3)
    b = samples_with_moments(mean_b, np.diag(var_b), 400, seed=4)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_correlated_data() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(800, 20)) @ rng.normal(size=(20, 20))
    b = rng.normal(size=(600, 20)) @ rng.normal(size=(20, 20)) + 0.5
    mean_a, cov_a = a.mean(0), np.cov(a, rowvar=False)
    mean_b, cov_b = b.mean(0), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_zero_for_identical_sets_and_invariant_to_order() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(size=(300, 16)).astype(np.float32) * 3 + 1
    b = rng.normal(size=(250, 16)) * 2
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    distance = metrics.frechet_distance(a, b)
    assert distance > 1.0
    shuffled = metrics.frechet_distance(a[rng.permutation(300)], b[rng.permutation(250)])
    assert shuffled == pytest.approx(distance, rel=1e-10)
    assert metrics.frechet_distance(b, a) == pytest.approx(distance, rel=1e-8)


def test_frechet_distance_warns_with_both_counts_when_covariance_is_singular() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(5, 10)), rng.normal(size=(7, 10))
    with pytest.warns(UserWarning, match=r"5 and 7 samples of 10 dimensions"):
        distance = metrics.frechet_distance(a, b)
    assert np.isfinite(distance) and distance >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.frechet_distance(rng.normal(size=(50, 10)), rng.normal(size=(50, 10)))


def test_frechet_distance_refuses_mismatched_dims_and_nan() -> None:
    with pytest.raises(ValueError, match="different dimensions"):
        metrics.frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    bad = np.ones((10, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.frechet_distance(bad, np.ones((10, 3)))


# ---------------------------------------------------------------- Inception-style score
def test_score_is_one_for_uniform_predictions() -> None:
    mean, std = metrics.inception_style_score(np.zeros((200, 10)))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("classes", [3, 10])
def test_score_equals_class_count_for_confident_balanced_predictions(classes: int) -> None:
    # One split holds every sample, whatever the shuffle: every class equally often.
    labels = np.arange(classes * 50) % classes
    logits = np.full((len(labels), classes), -1e4)
    logits[np.arange(len(labels)), labels] = 1e4  # large logits: log-softmax keeps them finite
    mean, std = metrics.inception_style_score(logits, splits=1)
    assert mean == pytest.approx(classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_score_is_one_when_every_prediction_is_the_same_class() -> None:
    logits = np.tile([8.0, 0.0, 0.0, 0.0], (100, 1))
    assert metrics.inception_style_score(logits)[0] == pytest.approx(1.0, abs=1e-12)


def test_score_refuses_fewer_samples_than_splits() -> None:
    with pytest.raises(ValueError, match="10 splits"):
        metrics.inception_style_score(np.zeros((5, 3)))


# ---------------------------------------------------------------- precision/recall/density/coverage
def squares(centres: np.ndarray) -> np.ndarray:
    """Four corners of a unit square around each centre: each point's 3rd neighbour is at sqrt 2."""
    corners = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    return (centres[:, None, :] + corners[None]).reshape(-1, 2)


def hexagons(centres: np.ndarray) -> np.ndarray:
    """Six corners of a unit hexagon around each centre: each point's 5th neighbour is at 2."""
    angles = np.arange(6) * np.pi / 3
    corners = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centres[:, None, :] + corners[None]).reshape(-1, 2)


CENTRES = np.array([[100.0 * i, 50.0 * (i % 3)] for i in range(10)])


def test_precision_recall_on_clusters_half_covered() -> None:
    real = squares(CENTRES)
    fake = squares(CENTRES[:5])  # exactly the real points of half of the clusters
    result = metrics.precision_recall(real, fake, k=3)
    assert result == {"precision": 1.0, "recall": 0.5}
    swapped = metrics.precision_recall(fake, real, k=3)
    assert swapped == {"precision": 0.5, "recall": 1.0}


def test_precision_recall_density_coverage_zero_when_fakes_are_far() -> None:
    real = squares(CENTRES)
    fake = squares(CENTRES + 1000.0)
    assert metrics.precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0}
    assert metrics.density_coverage(real, fake) == {"density": 0.0, "coverage": 0.0}


def test_density_and_coverage_with_fakes_at_hexagon_centres() -> None:
    # A fake at a hexagon's centre lies in all 6 real balls (radius 2, distance 1): density 6/5.
    real = hexagons(CENTRES)
    result = metrics.density_coverage(real, CENTRES[:4], k=5)
    assert result["density"] == pytest.approx(6 / 5)
    assert result["coverage"] == pytest.approx(0.4)
    assert metrics.density_coverage(real, CENTRES, k=5)["coverage"] == 1.0


def test_combined_prdc_equals_the_separate_functions() -> None:
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(400, 6)), rng.normal(size=(300, 6)) + 0.3
    combined = metrics.precision_recall_density_coverage(real, fake, 3, 5)
    separate = {**metrics.precision_recall(real, fake, 3),
                **metrics.density_coverage(real, fake, 5)}
    assert combined == separate
    assert 0.3 < combined["precision"] < 1 and 0.3 < combined["recall"] < 1


def test_prdc_refuses_too_few_points() -> None:
    with pytest.raises(ValueError, match="need more than 3 points"):
        metrics.precision_recall(np.zeros((3, 2)), np.ones((10, 2)))


# ---------------------------------------------------------------- embedding metrics
@pytest.fixture(scope="module")
def separated_clusters() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    features, labels = make_blobs(n_samples=600, centers=5, n_features=8, cluster_std=0.3,
                                  center_box=(-40, 40), random_state=0)
    return features[:400], labels[:400], features[400:], labels[400:]


def test_knn_and_probe_are_perfect_on_separated_clusters(separated_clusters) -> None:
    x_train, y_train, x_test, y_test = separated_clusters
    assert metrics.knn_accuracy(x_train, y_train, x_test, y_test, k=5) == 1.0
    assert metrics.linear_probe_accuracy(x_train, y_train, x_test, y_test) == 1.0
    # Shuffled training labels: the k-NN accuracy falls to about chance (1/5).
    shuffled = np.random.default_rng(0).permutation(y_train)
    assert metrics.knn_accuracy(x_train, shuffled, x_test, y_test, k=5) < 0.45


def test_kmeans_agreement_is_perfect_on_separated_clusters(separated_clusters) -> None:
    _, _, x_test, y_test = separated_clusters
    renamed = (y_test + 2) % 5  # ARI and NMI do not depend on the names of the classes
    assert metrics.kmeans_agreement(x_test, renamed, seed=0) == {"kmeans_ari": 1.0,
                                                                 "kmeans_nmi": 1.0}


def test_cluster_quality_separates_good_from_random_labels(separated_clusters) -> None:
    _, _, x_test, y_test = separated_clusters
    good = metrics.label_cluster_quality(x_test, y_test, silhouette_samples=100, seed=0)
    assert good["silhouette"] > 0.9 and good["davies_bouldin"] < 0.1
    assert good["calinski_harabasz"] > 1e3
    random_labels = np.random.default_rng(1).integers(0, 5, len(y_test))
    bad = metrics.label_cluster_quality(x_test, random_labels, silhouette_samples=100, seed=0)
    assert bad["silhouette"] < 0.1 and bad["davies_bouldin"] > 2
    again = metrics.label_cluster_quality(x_test, y_test, silhouette_samples=100, seed=0)
    assert again == good  # the silhouette subsample is seeded


def test_class_consistency_and_knn_predict() -> None:
    assert metrics.class_consistency(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    with pytest.raises(ValueError, match="one length"):
        metrics.class_consistency(np.array([0, 1]), np.array([0, 1, 2]))
    train = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    predicted = metrics.knn_predict(train, np.array([0, 0, 0, 1, 1, 1]),
                                    np.array([[0.05], [9.9]]), k=3)
    assert predicted.tolist() == [0, 1]
