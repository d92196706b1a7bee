"""Drift metrics for generations of images in a joint image-text embedding space (CLIP).

Every function takes L2-normalised embeddings as (N, D) arrays, works in float64 and returns
plain floats, so that the numbers are computed in the embedding space, never in t-SNE coordinates.
"""

from __future__ import annotations

import warnings

import numpy as np

from evaluation.metrics import frechet_distance, precision_recall
from runtime.settings import SettingsError


def check_generations(generations: tuple[int, ...]) -> None:
    """Refuse an empty --generations list or one that names a generation twice."""
    if not generations:
        raise SettingsError("--generations is empty")
    if len(set(generations)) != len(generations):
        raise SettingsError(f"--generations {generations} lists a generation twice")


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows divided by their Euclidean norm, in float32 (x / ||x||_2)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} embedding(s) are all zeros; cannot normalise")
    return embeddings / norms


def _as_float64(embeddings: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < min_rows:
        raise ValueError(f"{name}: expected an (N, D) array with N >= {min_rows}, "
                         f"got shape {array.shape}")
    return array


def mean_cosine(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """Mean cosine of each image with its own caption, mean_i <x_i, t_i> (inputs normalised).

    Not CLIPScore: see ``clipscore`` for the number papers report.
    """
    images = _as_float64(image_embeddings, "image_embeddings")
    texts = _as_float64(text_embeddings, "text_embeddings")
    if images.shape != texts.shape:
        raise ValueError(f"images {images.shape} and captions {texts.shape} are not paired")
    return float(np.mean(np.sum(images * texts, axis=1)))


def clipscore(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """CLIPScore as torchmetrics computes it: max(100 * mean_i cos(x_i, t_i), 0).

    torchmetrics documents 100 * max(cos, 0) and clamps the mean; Hessel et al. 2021 define
    CLIP-S = 2.5 * max(cos, 0) per pair. The three agree (up to the factor 100 / 2.5) whenever
    every pair has a non-negative cosine, as trained CLIP models give for real image-caption pairs.
    """
    return max(100.0 * mean_cosine(image_embeddings, text_embeddings), 0.0)


def mean_pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """Diversity: mean of 1 - cos(x_i, x_j) over all pairs i < j (inputs normalised).

    For unit vectors this equals n/(n-1) (1 - ||mean x||^2), which is also the trace of the
    unbiased covariance: diversity and total variance are one number on the sphere.
    """
    x = _as_float64(embeddings, "embeddings", min_rows=2)
    n = x.shape[0]
    gram = x @ x.T
    off_diagonal_sum = gram.sum() - np.trace(gram)
    return float(1.0 - off_diagonal_sum / (n * (n - 1)))


def centre_distance(embeddings_a: np.ndarray, embeddings_b: np.ndarray) -> float:
    """Euclidean distance between the mean embeddings, ||mean(a) - mean(b)||_2."""
    a = _as_float64(embeddings_a, "embeddings_a")
    b = _as_float64(embeddings_b, "embeddings_b")
    return float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)))


def modality_gap(text_embeddings: np.ndarray, image_embeddings: np.ndarray) -> float:
    """Caption-to-image gap ||mean(t) - mean(x)||_2, normalised inputs (Liang et al. 2022)."""
    return centre_distance(text_embeddings, image_embeddings)


def total_variance(embeddings: np.ndarray) -> float:
    """Total variance: trace of the unbiased covariance, sum_d var(x_d) (ddof = 1)."""
    x = _as_float64(embeddings, "embeddings", min_rows=2)
    return float(x.var(axis=0, ddof=1).sum())


def frechet(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance of Gaussian fits, ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    ``metrics.frechet_distance`` computes it; its warning about fewer samples than dimensions is
    silenced here because every caller reports the sample counts beside the value.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fréchet distance on", category=UserWarning)
        return float(frechet_distance(feats_a, feats_b))


def split_half_frechet(reference: np.ndarray, other: np.ndarray, seed: int
                       ) -> tuple[float, float, int]:
    """Fréchet distance at equal sample counts, with its same-distribution floor.

    ``reference`` and ``other`` are paired row by row (same prompts). A seeded permutation splits
    the rows into halves A and B; returns (FD(reference[A], other[B]), FD(reference[A],
    reference[B]), |A|): disjoint prompts on both sides, so the floor is what the value would be
    with no drift at this sample count.
    """
    reference = _as_float64(reference, "reference", min_rows=4)
    other = _as_float64(other, "other", min_rows=4)
    if reference.shape != other.shape:
        raise ValueError(f"reference {reference.shape} and other {other.shape} are not paired")
    order = np.random.default_rng(seed).permutation(reference.shape[0])
    half = reference.shape[0] // 2
    first, second = order[:half], order[half:2 * half]
    return (frechet(reference[first], other[second]),
            frechet(reference[first], reference[second]), half)


def reference_drift(reference: np.ndarray, images: np.ndarray, k: int = 3) -> dict[str, float]:
    """Drift against reality: a generation's image embeddings against real images' (the
    reference set): distance of the means, Fréchet distance, and improved precision and recall
    (k-NN balls, Kynkäänniemi et al. 2019; precision: generated images inside the real manifold,
    recall: real images inside the generated one). A generation that is the reference itself
    gets 0, 0, 1 and 1."""
    reference = _as_float64(reference, "reference", min_rows=k + 1)
    images = _as_float64(images, "images", min_rows=k + 1)
    return {"centre_distance_to_reference": centre_distance(reference, images),
            "frechet_to_reference": frechet(reference, images),
            **{f"{name}_to_reference": value
               for name, value in precision_recall(reference, images, k).items()},
            "n_reference": len(reference)}
