"""KID, Vendi, intra-class FID, the classifier accuracy score and the bootstrap intervals, each
against a naive implementation of its formula or a known answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg

from dataio.data_sources import load_dataset
from evaluation import metrics, scoring


def naive_kid(a: np.ndarray, b: np.ndarray, subsets: int, m: int, seed: int):
    """The unbiased MMD^2 of the cubic kernel, as double loops over its formula, on the subsets
    torch-fidelity draws (RandomState(seed): a subset of a, then of b, per round)."""
    d = a.shape[1]
    rng = np.random.RandomState(seed)

    def k(x, y):
        return (float(np.dot(x, y)) / d + 1.0) ** 3

    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        within = sum(k(x[i], x[j]) + k(y[i], y[j])
                     for i, j in itertools.product(range(m), range(m)) if i != j)
        between = sum(k(x[i], y[j]) for i, j in itertools.product(range(m), range(m)))
        values.append(within / (m * (m - 1)) - 2.0 * between / m ** 2)
    return float(np.mean(values)), float(np.std(values))


def test_kernel_distance_matches_the_estimator_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 5)), rng.normal(0.5, 1.2, size=(30, 5))
    got = metrics.kernel_distance(a, b, subsets=4, subset_size=12, seed=3)
    assert got == pytest.approx(naive_kid(a, b, 4, 12, 3), rel=1e-10)
    # Unbiased: about zero between two samples of one distribution, clearly positive between
    # two distributions (larger sets, so that the subset noise is small).
    x, y, z = rng.normal(size=(400, 5)), rng.normal(size=(400, 5)), rng.normal(0.5, 1.2, (400, 5))
    same, _ = metrics.kernel_distance(x, y, subsets=20, subset_size=200, seed=0)
    other, _ = metrics.kernel_distance(x, z, subsets=20, subset_size=200, seed=0)
    assert other > 0.3 and abs(same) < other / 20


def test_kernel_distance_caps_the_subset_size_with_a_warning():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(15, 3)), rng.normal(size=(25, 3))
    with pytest.warns(UserWarning, match="subset size capped at 15"):
        got = metrics.kernel_distance(a, b, subsets=2, subset_size=1000, seed=0)
    assert got == pytest.approx(naive_kid(a, b, 2, 15, 0), rel=1e-10)


def test_vendi_score_known_answers_and_the_n_by_n_definition():
    assert metrics.vendi_score(np.tile([[1.0, 2.0, 3.0]], (7, 1))) == pytest.approx(1.0)
    orthonormal = scipy.linalg.qr(np.random.default_rng(2).normal(size=(6, 6)))[0][:4] * 3.0
    assert metrics.vendi_score(orthonormal) == pytest.approx(4.0)
    x = np.random.default_rng(3).normal(size=(25, 6))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(unit @ unit.T / len(x))  # K/n, the paper's n x n form
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    naive = float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))
    assert metrics.vendi_score(x) == pytest.approx(naive, rel=1e-9)
    with pytest.raises(ValueError, match="zero vector"):
        metrics.vendi_score(np.vstack([x, np.zeros(6)]))


def test_intra_class_frechet_distance_is_the_mean_of_per_class_distances():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1, 2], 40)
    real = rng.normal(size=(120, 3)) + labels[:, None]
    fake = rng.normal(size=(120, 3)) + 1.0  # every class drawn round class 1's centre
    expected = np.mean([metrics.frechet_distance(fake[labels == c], real[labels == c])
                        for c in range(3)])
    got = metrics.intra_class_frechet_distance(fake, labels, real, labels)
    assert got == pytest.approx(expected)
    assert got > metrics.frechet_distance(fake, real)  # the classes are mixed up: intra sees it
    assert metrics.intra_class_frechet_distance(real, labels, real, labels) == pytest.approx(
        0.0, abs=1e-9)
    with pytest.raises(ValueError, match="a class has 1 sample"):
        metrics.intra_class_frechet_distance(fake[:81], labels[:81], real, labels)


def test_intra_class_frechet_distance_with_fewer_samples_than_dimensions_needs_shrinkage():
    """Ten samples of a class in 16 dimensions: the sample covariance is singular, so the
    distance is refused unless Ledoit-Wolf covariances are asked for; those are scikit-learn's
    estimate of each class, and the distance is the Fréchet distance of those Gaussians."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 10)
    real = rng.normal(size=(20, 16)) + labels[:, None]
    fake = rng.normal(size=(20, 16)) * 1.5
    with pytest.raises(ValueError, match="a class has 10 samples, no more than the 16"):
        metrics.intra_class_frechet_distance(fake, labels, real, labels)
    got = metrics.intra_class_frechet_distance(fake, labels, real, labels, shrinkage=True)
    expected = []
    for c in (0, 1):
        f, r = fake[labels == c], real[labels == c]
        cf, cr = LedoitWolf().fit(f).covariance_, LedoitWolf().fit(r).covariance_
        root = np.real(scipy.linalg.sqrtm(cf @ cr))
        expected.append(np.sum((f.mean(0) - r.mean(0)) ** 2) + np.trace(cf + cr - 2 * root))
    assert got == pytest.approx(np.mean(expected), rel=1e-6)
    values = scoring.class_metrics(real, labels, fake, labels, scoring.ScoringSettings(
        bootstrap=0))
    assert values["intra_fid_class_count"] == 10 and values["intra_fid_covariance"] == "ledoit-wolf"
    assert values["intra_fid"] == pytest.approx(got)


def test_classifier_accuracy_score_learns_real_classes_and_not_shuffled_ones():
    data = load_dataset("digits")
    real, correct = metrics.classifier_accuracy_score(data.x_train, data.y_train, data.x_test,
                                                      data.y_test, seed=0)
    assert real > 0.85 and correct.shape == data.y_test.shape and correct.mean() == real
    shuffled = np.random.default_rng(0).permutation(data.y_train)
    chance, _ = metrics.classifier_accuracy_score(data.x_train, shuffled, data.x_test,
                                                  data.y_test, seed=0)
    assert chance < 0.3


def naive_prdc(real: np.ndarray, fake: np.ndarray, weights: np.ndarray, kp: int, kd: int):
    """The four metrics with each fake point counted ``weights`` times and both sets' radii
    those of the full sets: brute-force distances."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    r_p = np.sort(d_rr, axis=1)[:, kp]
    r_d = np.sort(d_rr, axis=1)[:, kd]
    r_f = np.sort(d_ff, axis=1)[:, kp]
    drawn = weights > 0
    return {"precision": float(weights @ (d_fr <= r_p[None]).any(axis=1)) / len(fake),
            "density": float(weights @ (d_fr <= r_d[None]).sum(axis=1)) / (kd * len(fake)),
            "coverage": float(np.mean((d_fr[drawn] <= r_d[None]).any(axis=0))),
            "recall": float(np.mean((d_fr[drawn] <= r_f[drawn][:, None]).any(axis=0)))}


def test_prdc_bootstrap_replicates_recount_the_full_sets_balls():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.3, 1.1, size=(50, 3))
    got = metrics.precision_recall_density_coverage(real, fake, 3, 5, resamples=6, seed=7)
    full = naive_prdc(real, fake, np.ones(len(fake)), 3, 5)
    replicates = [naive_prdc(real, fake, np.bincount(index, minlength=len(fake)), 3, 5)
                  for index in metrics.bootstrap_indices(len(fake), 6, 7)]
    for name in ("precision", "recall", "density", "coverage"):
        assert got[name] == pytest.approx(full[name])
        expected = metrics.normal_interval(full[name], [r[name] for r in replicates], bounds=(
            0.0, np.inf if name == "density" else 1.0))
        assert got[f"{name}_ci95"] == pytest.approx(expected)
        assert got[f"{name}_ci95"][0] <= got[name] <= got[f"{name}_ci95"][1]
    assert "precision_ci95" not in metrics.precision_recall_density_coverage(real, fake)


def test_bootstrap_intervals_hold_the_estimate_and_shrink_as_n_grows():
    widths = []
    for n in (200, 3200):
        x = np.random.default_rng(n).normal(size=(n, 4))
        y = np.random.default_rng(n + 1).normal(size=(n, 4))
        estimate = metrics.frechet_distance(x, y)
        low, high = metrics.bootstrap_interval(lambda i, x=x, y=y: metrics.frechet_distance(
            x[i], y), n, estimate, resamples=10, seed=0)
        assert low <= estimate <= high
        prdc = metrics.precision_recall_density_coverage(y, x, resamples=10, seed=0)
        widths.append((high - low, prdc["recall_ci95"][1] - prdc["recall_ci95"][0]))
    assert widths[1][0] < widths[0][0] / 2 and widths[1][1] < widths[0][1] / 2
