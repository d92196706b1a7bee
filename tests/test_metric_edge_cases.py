"""Known answers for the metric edge cases of issue 13: ties in the k-NN ball metrics, the
Inception-style score's shuffle-then-split convention, mean cosine against CLIPScore."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance
import torch

from evaluation import metrics
from evaluation.generation_metrics import clipscore, mean_cosine

# Two points, each repeated four times: the case (a collapsed generator has such ties).
DUPLICATED = np.repeat([[0.13, -0.13, 0.64], [0.1, -0.54, 0.36]], 4, axis=0)


def naive_prdc(real: np.ndarray, fake: np.ndarray, k_precision: int, k_density: int
               ) -> dict[str, float]:
    """PRDC on closed balls from full distance matrices (SciPy's cdist), no shortcuts."""
    real_real = scipy.spatial.distance.cdist(real, real)
    fake_fake = scipy.spatial.distance.cdist(fake, fake)
    fake_real = scipy.spatial.distance.cdist(fake, real)
    # Column 0 of each sorted row is the point itself (distance 0).
    radius_p = np.sort(real_real, axis=1)[:, k_precision]
    radius_d = np.sort(real_real, axis=1)[:, k_density]
    radius_fake = np.sort(fake_fake, axis=1)[:, k_precision]
    in_density = fake_real <= radius_d[None, :]
    return {"precision": float(np.mean((fake_real <= radius_p[None, :]).any(axis=1))),
            "recall": float(np.mean((fake_real <= radius_fake[:, None]).any(axis=0))),
            "density": float(in_density.sum() / (k_density * len(fake))),
            "coverage": float(np.mean(in_density.any(axis=0)))}


def test_prdc_of_duplicated_points_counts_ties_inside_the_closed_balls() -> None:
    # With k = 3 every point's 3rd neighbour is one of its own copies: radius 0. Each fake lies
    # (at distance 0) in the 4 balls of its copies: precision = recall = coverage = 1, density
    # 8 * 4 / (3 * 8) = 4/3.
    expected = {"precision": 1.0, "recall": 1.0, "density": 4 / 3, "coverage": 1.0}
    result = metrics.precision_recall_density_coverage(DUPLICATED, DUPLICATED, 3, 3)
    assert result == pytest.approx(expected, abs=1e-12)
    assert metrics.precision_recall(DUPLICATED, DUPLICATED, 3) == {"precision": 1.0,
                                                                    "recall": 1.0}
    assert metrics.density_coverage(DUPLICATED, DUPLICATED, 3) == pytest.approx(
        {"density": 4 / 3, "coverage": 1.0}, abs=1e-12)
    np.testing.assert_array_equal(metrics.knn_radii(DUPLICATED, 3), np.zeros(8))
    # k = 5 reaches the other point, at the same distance from all four copies: the closed balls
    # of radius d hold all 8 fakes each: density 8 * 8 / (5 * 8).
    distance = np.linalg.norm(DUPLICATED[0] - DUPLICATED[4])
    np.testing.assert_allclose(metrics.knn_radii(DUPLICATED, 5), distance, rtol=1e-15)
    assert metrics.density_coverage(DUPLICATED, DUPLICATED, 5)["density"] == pytest.approx(1.6)


def test_prdc_of_a_collapsed_generator_on_copies_of_real_points() -> None:
    rng = np.random.default_rng(3)
    real = rng.normal(size=(60, 5))
    fake = np.repeat(real[:1], 30, axis=0)  # every fake is the first real point
    result = metrics.precision_recall_density_coverage(real, fake, 3, 5)
    assert result["precision"] == 1.0  # each fake is the centre of a real ball
    # The fakes' radius is 0: only the real point they copy is inside a fake ball.
    assert result["recall"] == pytest.approx(1 / 60)
    assert result == pytest.approx(naive_prdc(real, fake, 3, 5), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prdc_agrees_with_full_distance_matrices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(300, 7))
    # Half the fakes are exact copies of real points (ties), half are shifted draws.
    fake = np.concatenate([real[rng.choice(300, 100)], rng.normal(size=(100, 7)) + 0.4])
    assert metrics.precision_recall_density_coverage(real, fake, 3, 5) == pytest.approx(
        naive_prdc(real, fake, 3, 5), abs=1e-12)


def test_prdc_is_the_same_when_distances_are_computed_in_small_blocks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    real = np.repeat(rng.normal(size=(40, 6)), 3, axis=0)
    fake = np.concatenate([real[::2], rng.normal(size=(50, 6))])
    whole = metrics.precision_recall_density_coverage(real, fake, 3, 5)
    monkeypatch.setattr(metrics, "DISTANCE_BLOCK_ENTRIES", 37)  # a few rows, a few pairs
    assert metrics.precision_recall_density_coverage(real, fake, 3, 5) == whole
    assert whole == pytest.approx(naive_prdc(real, fake, 3, 5), abs=1e-12)


# ---------------------------------------------------------------- Inception-style score
def torch_fidelity_score(logits: np.ndarray, splits: int, seed: int) -> tuple[float, float]:
    """torch-fidelity's isc_features_to_metric, written out: shuffle with
    np.random.RandomState(seed), splits at i*N//splits, softmax in float64, std with ddof 0."""
    count = len(logits)
    shuffled = torch.from_numpy(logits[np.random.RandomState(seed).permutation(count)]).double()
    p, log_p = shuffled.softmax(dim=1), shuffled.log_softmax(dim=1)
    scores = []
    for index in range(splits):
        rows = slice(index * count // splits, (index + 1) * count // splits)
        q = p[rows].mean(dim=0, keepdim=True)
        kl = (p[rows] * (log_p[rows] - q.log())).sum(dim=1).mean().exp().item()
        scores.append(kl)
    return float(np.mean(scores)), float(np.std(scores))


def class_grouped_logits(count: int = 1003, classes: int = 10) -> np.ndarray:
    """Confident, balanced predictions sorted by class: consecutive splits see one class each."""
    labels = np.sort(np.arange(count) % classes)
    logits = np.random.default_rng(5).normal(size=(count, classes))
    logits[np.arange(count), labels] += 12.0
    return logits


def test_score_shuffles_before_splitting_as_torch_fidelity_does() -> None:
    logits = class_grouped_logits()
    for seed in (0, 2020):
        mean, std = metrics.inception_style_score(logits, splits=10, seed=seed)
        reference = torch_fidelity_score(logits, 10, seed)
        assert mean == pytest.approx(reference[0], rel=1e-12)
        assert std == pytest.approx(reference[1], rel=1e-9, abs=1e-12)
    # Balanced confident predictions score near the class count once shuffled; unshuffled,
    # each split of consecutive rows holds (almost) one class and would score near 1.
    assert mean > 9.0
    unshuffled = torch_fidelity_score(logits[np.argsort(
        np.random.RandomState(0).permutation(len(logits)))], 10, 0)
    assert unshuffled[0] < 1.5


def test_score_split_boundaries_and_seed() -> None:
    # 1003 rows in 10 splits: torch-fidelity's boundaries i*N//splits (sizes 100 and 101).
    logits = np.random.default_rng(6).normal(size=(1003, 4)) * 3
    assert metrics.inception_style_score(logits, 10, seed=7) == pytest.approx(
        torch_fidelity_score(logits, 10, 7), rel=1e-12)
    assert metrics.inception_style_score(logits, 10, seed=7) != \
        metrics.inception_style_score(logits, 10, seed=8)


# ---------------------------------------------------------------- mean cosine and CLIPScore
def test_mean_cosine_and_clipscore_on_constructed_pairs() -> None:
    angles = np.array([0.0, np.pi / 3, np.pi / 2, 2 * np.pi / 3])  # cosines 1, 0.5, 0, -0.5
    images = np.tile([1.0, 0.0, 0.0], (4, 1))
    texts = np.stack([np.cos(angles), np.sin(angles), np.zeros(4)], axis=1)
    assert mean_cosine(images, texts) == pytest.approx(0.25)
    # torchmetrics: max(100 * mean cosine, 0) (the clamp is applied to the mean).
    assert clipscore(images, texts) == pytest.approx(25.0)
    assert clipscore(images, -texts) == 0.0  # mean cosine -0.25, clamped
    # Against a loop over the pairs, written as torchmetrics computes it.
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 0.5
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    loop = max(sum(100 * float(x @ y) for x, y in zip(a, b, strict=True)) / 20, 0.0)
    assert clipscore(a, b) == pytest.approx(loop, rel=1e-12)
