"""Metrics every stage reports: distribution distances, scores, k-NN balls, embedding quality.

One implementation per metric, so that a training stage (a GAN reporting its FID) and
``evaluate.py`` compute the same number. The maths is in float64; the estimators come from
scikit-learn and SciPy, this module wires them and documents what each number means.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# A negative eigenvalue of S_a^(1/2) S_b S_a^(1/2) (PSD in exact arithmetic) larger than this share
# of the largest one is not rounding: the covariances are broken, and we say so.
NEGATIVE_EIGENVALUE_TOLERANCE = 1e-6


def _as_feature_matrix(features: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a (samples, dims) matrix, got shape {array.shape}")
    if len(array) < 2:
        raise ValueError(f"{name}: need at least 2 samples, got {len(array)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return array


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divisor N - 1) of the rows of ``features``, in float64."""
    array = _as_feature_matrix(features, "features")
    return array.mean(axis=0), np.cov(array, rowvar=False, ddof=1).reshape(array.shape[1], -1)


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray, eps: float = 1e-6) -> float:
    """Tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i), lambda_i the eigenvalues of S_a S_b.

    S_a S_b has the same eigenvalues as the symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2), whose
    eigenvalues ``eigvalsh`` returns real; rounding leaves tiny negatives, clipped to 0. When the
    decomposition fails or is not finite, ``eps * I`` is added to both covariances (as in the FID
    reference code); a clearly negative eigenvalue raises instead of giving a wrong number.
    """
    identity = np.eye(len(cov_a))
    for offset in (0.0, eps):
        try:
            values, vectors = scipy.linalg.eigh(cov_a + offset * identity)
            root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
            product = root_a @ (cov_b + offset * identity) @ root_a
            eigenvalues = scipy.linalg.eigvalsh((product + product.T) / 2.0)
        except (np.linalg.LinAlgError, ValueError):
            continue
        if not np.isfinite(eigenvalues).all():
            continue
        scale = max(float(eigenvalues.max()), 1e-12)
        if eigenvalues.min() < -NEGATIVE_EIGENVALUE_TOLERANCE * scale:
            raise ValueError(f"covariance product has a negative eigenvalue "
                             f"{eigenvalues.min():.3g} (largest {scale:.3g}): the covariances "
                             f"are not positive semidefinite")
        return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    raise ValueError(f"the square root of the covariance product is not finite, even with "
                     f"eps={eps} added to both covariances")


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (Heusel et al. 2017, "FID").

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with unbiased covariances in float64.
    Fewer samples than dimensions make a covariance singular: a warning names both counts.
    """
    a = _as_feature_matrix(features_a, "features_a")
    b = _as_feature_matrix(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets have different dimensions: {a.shape[1]} and {b.shape[1]}")
    dims = a.shape[1]
    if min(len(a), len(b)) <= dims:
        warnings.warn(f"Fréchet distance on {len(a)} and {len(b)} samples of {dims} dimensions: "
                      f"a covariance from no more samples than dimensions is singular; compare "
                      f"only values computed with the same sample counts", stacklevel=2)
    return frechet_distance_of_gaussians(*gaussian_statistics(a), *gaussian_statistics(b), eps)


def frechet_distance_of_gaussians(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray,
                                  cov_b: np.ndarray, eps: float = 1e-6) -> float:
    """``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two Gaussians' statistics."""
    mean_term = float(np.sum((mean_a - mean_b) ** 2))
    trace_term = float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * trace_sqrt_product(cov_a, cov_b,
                                                                                     eps)
    # Rounding can leave a tiny negative value for identical sets; the distance itself is >= 0.
    return max(mean_term + trace_term, 0.0)


def ledoit_wolf_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf shrinkage covariance of the rows of ``features`` (Ledoit & Wolf
    2004, scikit-learn's estimator): the sample covariance shrunk toward a scaled identity by the
    amount that minimises the expected squared error, well conditioned with fewer samples than
    dimensions, where the sample covariance is singular."""
    from sklearn.covariance import LedoitWolf

    array = _as_feature_matrix(features, "features")
    return array.mean(axis=0), LedoitWolf().fit(array).covariance_


def inception_style_score(logits: np.ndarray, splits: int = 10, seed: int = 0
                          ) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) from classifier logits (Salimans et al. 2016), mean and std.

    torch-fidelity's split convention: the rows are shuffled with
    ``np.random.RandomState(seed).permutation`` (splits of consecutive rows would score logits
    grouped by class near 1 whatever their quality), split i holds rows ``i*N//splits`` to
    ``(i+1)*N//splits``, and the std over splits has ddof 0. p(y|x) comes from log-softmax in
    float64, p(y) is the mean of p(y|x) within a split (10 splits by convention). 1 for uniform
    predictions, the number of classes for confident predictions spread evenly over the classes.
    """
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"logits: expected (samples, classes), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("logits: hold NaN or infinite values")
    count = len(array)
    if count < splits:
        raise ValueError(f"logits: {count} samples cannot be cut into {splits} splits")
    array = array[np.random.RandomState(seed).permutation(count)]
    scores = []
    for index in range(splits):
        part = array[index * count // splits:(index + 1) * count // splits]
        log_p_y_given_x = scipy.special.log_softmax(part, axis=1)
        log_p_y = scipy.special.logsumexp(log_p_y_given_x, axis=0) - np.log(len(part))
        kl = np.sum(np.exp(log_p_y_given_x) * (log_p_y_given_x - log_p_y), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# Rows of a distance block computed at once (a block is about 64 MB of float64).
DISTANCE_BLOCK_ENTRIES = 8_000_000
# Safety factor on the rounding-error bound of |a|^2 + |b|^2 - 2 a.b (see _fast_sq_distances).
ROUNDING_BOUND_FACTOR = 8.0


def _exact_sq_distances(a: np.ndarray, a_rows: np.ndarray, b: np.ndarray,
                        b_rows: np.ndarray) -> np.ndarray:
    """sum_d (a[a_rows[p], d] - b[b_rows[p], d])^2 for each pair p, element by element.

    The one exact distance of the k-NN ball metrics: a pair gives the same bits whichever
    function asks, in either order and in any chunk, and identical points give exactly 0.
    """
    distances = np.empty(len(a_rows))
    step = max(1, DISTANCE_BLOCK_ENTRIES // a.shape[1])
    for start in range(0, len(a_rows), step):
        part = slice(start, start + step)
        difference = a[a_rows[part]] - b[b_rows[part]]
        distances[part] = np.sum(difference * difference, axis=1)
    return distances


def _fast_sq_distances(points: np.ndarray, centres: np.ndarray, point_norms: np.ndarray,
                       centre_norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances by the matrix product |a|^2 + |b|^2 - 2 a.b, and per row of points a
    bound on their rounding error.

    Each of the three terms is a sum of D products, so its rounding error is at most about
    D * eps * (|a|^2 + |b|^2) (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1);
    the bound is that times ROUNDING_BOUND_FACTOR, with the largest |b|^2 of the centres.
    """
    squared = points @ centres.T
    squared *= -2.0
    squared += point_norms[:, None]
    squared += centre_norms[None, :]
    bound = (ROUNDING_BOUND_FACTOR * (points.shape[1] + 2) * np.finfo(np.float64).eps) * (
        point_norms + centre_norms.max())
    return squared, bound


def _row_blocks(rows: int, columns: int) -> list[slice]:
    step = max(1, DISTANCE_BLOCK_ENTRIES // max(columns, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _knn_sq_radii(features: np.ndarray, ks: list[int]) -> list[np.ndarray]:
    """Exact squared distance from each point to its k-th nearest other point, for each k.

    The fast distances pick the candidates: every point whose exact distance can be among the
    k + 1 smallest of a row (the point itself, at exactly 0, is one of them); the radius is then
    the (k + 1)-th smallest exact distance, so duplicated points get radius 0 exactly.
    """
    k_max = max(ks)
    if len(features) <= k_max:
        raise ValueError(f"k-NN radii with k={k_max} need more than {k_max} points, "
                         f"got {len(features)}")
    norms = np.einsum("ij,ij->i", features, features)
    radii = [np.zeros(len(features)) for _ in ks]
    # A point with k or more exact duplicates has radius 0 (a collapsed generator): skip it.
    _, copy_of, copies = np.unique(features, axis=0, return_inverse=True, return_counts=True)
    open_rows = np.flatnonzero(copies[copy_of.ravel()] <= k_max)
    for block in _row_blocks(len(open_rows), len(features)):
        block_rows = open_rows[block]
        squared, bound = _fast_sq_distances(features[block_rows], features, norms[block_rows],
                                            norms)
        kth = np.partition(squared, k_max, axis=1)[:, k_max]
        rows, columns = np.nonzero(squared <= (kth + 2.0 * bound)[:, None])
        exact = _exact_sq_distances(features, block_rows[rows], features, columns)
        order = np.lexsort((exact, rows))
        starts = np.searchsorted(rows[order], np.arange(len(block_rows)))
        for radius, k in zip(radii, ks, strict=True):
            radius[block_rows] = exact[order][starts + k]
    return radii


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set (ties exact)."""
    array = _as_feature_matrix(features, "features")
    return np.sqrt(_knn_sq_radii(array, [k])[0])


def _ball_counts(fake: np.ndarray, real: np.ndarray, radii: list[tuple[str, np.ndarray]],
                 pairs: list[list[tuple[np.ndarray, np.ndarray]]] | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Closed-ball memberships on the fake-by-real distance matrix, one pass for all radii.

    Each entry of ``radii`` is ("real", squared radius per real point: balls round the real
    points) or ("fake", squared radius per fake point: balls round the fake points). For each,
    returns (per fake point: how many pairs hold, per real point: how many pairs hold), a pair
    (fake j, real i) holding when d(j, i)^2 <= its ball's squared radius. A pair whose fast
    distance is within its rounding bound of the radius is decided on the exact distance, the
    computation the radii came from, so ties (duplicated points, a collapsed generator) count as
    inside, as the closed balls of Kynkäänniemi et al. 2019 say. With ``pairs`` (one empty list
    per radius), the (fake rows, real columns) of the pairs inside are appended to it, block by
    block: what a bootstrap over the fake points needs to recount without new distances.
    """
    fake_norms = np.einsum("ij,ij->i", fake, fake)
    real_norms = np.einsum("ij,ij->i", real, real)
    counts = [(np.zeros(len(fake), np.int64), np.zeros(len(real), np.int64)) for _ in radii]
    for block in _row_blocks(len(fake), len(real)):
        squared, bound = _fast_sq_distances(fake[block], real, fake_norms[block], real_norms)
        for index, ((per_fake, per_real), (centres, radius)) in enumerate(
                zip(counts, radii, strict=True)):
            limit = radius[None, :] if centres == "real" else radius[block][:, None]
            margin = np.subtract(squared, limit)
            inside = margin <= 0.0
            rows, columns = np.nonzero(np.abs(margin, out=margin) <= bound[:, None])
            if len(rows):
                exact = _exact_sq_distances(fake, rows + block.start, real, columns)
                limits = radius[columns] if centres == "real" else radius[block][rows]
                inside[rows, columns] = exact <= limits
            per_fake[block] += np.count_nonzero(inside, axis=1)
            per_real += np.count_nonzero(inside, axis=0)
            if pairs is not None:
                inside_rows, inside_columns = np.nonzero(inside)
                pairs[index].append((inside_rows + block.start, inside_columns))
    return counts


def _checked_pair(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real = _as_feature_matrix(real, "real")
    fake = _as_feature_matrix(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features have different dimensions: {real.shape[1]} "
                         f"and {fake.shape[1]}")
    return real, fake


def precision_recall_density_coverage(real: np.ndarray, fake: np.ndarray, k_precision: int = 3,
                                      k_density: int = 5, resamples: int = 0,
                                      seed: int = 0) -> dict[str, Any]:
    """All four of ``precision_recall`` (k=3) and ``density_coverage`` (k=5), sharing passes.

    With ``resamples`` > 0 each also gets ``<name>_ci95``: a 95% bootstrap interval over the fake
    points (``normal_interval``). Each replicate draws the fake points with replacement and
    recounts the same balls: both sets' k-NN radii stay those of the full sets (a duplicated
    fake point would otherwise shrink its own ball to nothing), so precision and density weigh
    the fake points by how often they are drawn, and a real point counts as covered (recalled)
    when a drawn fake point lies in its ball (it lies in a drawn fake point's ball)."""
    real, fake = _checked_pair(real, fake)
    radii_precision, radii_density = _knn_sq_radii(real, [k_precision, k_density])
    (radii_fake,) = _knn_sq_radii(fake, [k_precision])
    pairs: list[list[tuple[np.ndarray, np.ndarray]]] | None = \
        [[], [], []] if resamples > 0 else None
    (in_precision, _), (in_density, covered), (_, in_recall) = _ball_counts(
        fake, real, [("real", radii_precision), ("real", radii_density), ("fake", radii_fake)],
        pairs)
    values: dict[str, Any] = {
        "precision": float(np.mean(in_precision > 0)),
        "recall": float(np.mean(in_recall > 0)),
        "density": float(in_density.sum() / (k_density * len(fake))),
        "coverage": float(np.mean(covered > 0))}
    if pairs is None:
        return values
    density_pairs, recall_pairs = (tuple(np.concatenate(part) for part in zip(*found, strict=True))
                                   for found in pairs[1:])
    replicates: dict[str, list[float]] = {name: [] for name in values}
    for index in bootstrap_indices(len(fake), resamples, seed):
        drawn = np.bincount(index, minlength=len(fake))
        replicates["precision"].append(float(drawn @ (in_precision > 0)) / len(fake))
        replicates["density"].append(float(drawn @ in_density) / (k_density * len(fake)))
        for name, (rows, columns) in (("coverage", density_pairs), ("recall", recall_pairs)):
            hits = np.bincount(columns, weights=drawn[rows], minlength=len(real))
            replicates[name].append(float(np.mean(hits > 0)))
    for name, draws in replicates.items():
        values[f"{name}_ci95"] = normal_interval(
            values[name], draws, bounds=(0.0, np.inf if name == "density" else 1.0))
    return values


# ---------------------------------------------------------------- intervals
def bootstrap_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) indices drawn with replacement from range(n), seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def normal_interval(estimate: float, replicates: list[float] | np.ndarray,
                    level: float = 0.95,
                    bounds: tuple[float, float] = (-np.inf, np.inf)) -> list[float]:
    """The normal-approximation bootstrap interval estimate +- z sd(replicates) (Efron &
    Tibshirani 1993, ch. 13), z = 1.96 for 95%, cut to the metric's range ``bounds`` (a share
    stays in [0, 1]): with few replicates (10 by default here) their spread is a steadier
    estimate than their percentiles, and the interval holds the estimate."""
    replicates = np.asarray(replicates, dtype=np.float64)
    if len(replicates) < 2 or not np.isfinite(replicates).all():
        raise ValueError(f"a bootstrap interval needs at least 2 finite replicates, got "
                         f"{replicates.tolist()}")
    half = float(scipy.stats.norm.ppf(0.5 + level / 2)) * float(np.std(replicates, ddof=1))
    return [max(estimate - half, bounds[0]), min(estimate + half, bounds[1])]


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, estimate: float,
                       resamples: int = 10, seed: int = 0,
                       bounds: tuple[float, float] = (-np.inf, np.inf)) -> list[float]:
    """95% interval of ``statistic(indices)`` over bootstrap draws of the n samples it is
    computed on (``statistic(np.arange(n))`` is the estimate), by ``normal_interval``."""
    return normal_interval(estimate, [statistic(index)
                                      for index in bootstrap_indices(n, resamples, seed)],
                           bounds=bounds)


# ---------------------------------------------------------------- kernel, diversity, classes
def kernel_distance(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) as torch-fidelity computes it: mean and
    standard deviation (ddof 0) over ``subsets`` pairs of random subsets, drawn without
    replacement with ``np.random.RandomState(seed)``, of the unbiased MMD^2 with the cubic
    polynomial kernel k(x, y) = (x.y / d + 1)^3:
        MMD^2 = sum_{i != j} [k(a_i, a_j) + k(b_i, b_j)] / (m (m - 1))
                - 2 sum_{i, j} k(a_i, b_j) / m^2.
    The subset size m is capped at the smaller set, with a warning."""
    a = _as_feature_matrix(features_a, "features_a")
    b = _as_feature_matrix(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets have different dimensions: {a.shape[1]} and {b.shape[1]}")
    m = subset_size
    if min(len(a), len(b)) < m:
        m = min(len(a), len(b))
        warnings.warn(f"KID subsets of {subset_size} from {len(a)} and {len(b)} samples: "
                      f"subset size capped at {m}", stacklevel=2)
    d = a.shape[1]
    rng = np.random.RandomState(seed)
    mmd = np.empty(subsets)
    for index in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        within = (x @ x.T / d + 1.0) ** 3 + (y @ y.T / d + 1.0) ** 3
        between = (x @ y.T / d + 1.0) ** 3
        mmd[index] = ((within.sum() - np.trace(within)) / (m * (m - 1))
                      - 2.0 * between.sum() / m ** 2)
    return float(mmd.mean()), float(mmd.std())


def vendi_score(features: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine-similarity kernel: exp(-sum_i l_i log
    l_i), l_i the eigenvalues of K/n, K_jk = cos(x_j, x_k). K/n = X X^T / n for the unit rows X
    has the nonzero eigenvalues of X^T X / n (d x d), which are computed instead: the same
    number at the cost of a d x d problem. 1 for n copies of one vector, n for n orthogonal
    vectors: the effective number of distinct samples."""
    array = _as_feature_matrix(features, "features")
    norms = np.linalg.norm(array, axis=1)
    if (norms == 0).any():
        raise ValueError(f"features: {int((norms == 0).sum())} zero vector(s), whose cosine "
                         f"similarity is undefined")
    unit = array / norms[:, None]
    eigenvalues = np.clip(scipy.linalg.eigvalsh(unit.T @ unit / len(unit)), 0.0, None)
    positive = eigenvalues[eigenvalues > 0]
    return float(np.exp(-np.sum(positive * np.log(positive))))


def smallest_class(labels_a: np.ndarray, labels_b: np.ndarray) -> int:
    """The fewest samples any class of ``labels_b`` has in either set (0 when one is absent)."""
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    return int(min(min(np.sum(labels_a == c), np.sum(labels_b == c)) for c in np.unique(labels_b)))


def intra_class_frechet_distance(features_a: np.ndarray, labels_a: np.ndarray,
                                 features_b: np.ndarray, labels_b: np.ndarray,
                                 shrinkage: bool = False) -> float:
    """Mean over the classes of b of the Fréchet distance between the class's features in a and
    in b (PyTorch-StudioGAN's intra-class FID, for conditional generators: a the generated
    samples with the classes asked for, b the real ones). Every class of b must have at least
    two samples in each set; a class with no more samples than dimensions has a singular sample
    covariance, so such sets are refused unless ``shrinkage`` asks for Ledoit-Wolf covariances
    (``ledoit_wolf_statistics``) for every class, a stated change of estimator."""
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    a = _as_feature_matrix(features_a, "features_a")
    b = _as_feature_matrix(features_b, "features_b")
    if len(labels_a) != len(a) or len(labels_b) != len(b):
        raise ValueError("each feature set needs one label per row")
    fewest = smallest_class(labels_a, labels_b)
    if fewest < 2:
        raise ValueError(f"a class has {fewest} sample(s) in one set; intra-class FID needs at "
                         f"least 2 of every class in both sets")
    if fewest <= a.shape[1] and not shrinkage:
        raise ValueError(f"a class has {fewest} samples, no more than the {a.shape[1]} "
                         f"dimensions: its covariance is singular; ask for shrinkage "
                         f"(Ledoit-Wolf) covariances")
    statistics = ledoit_wolf_statistics if shrinkage else gaussian_statistics
    return float(np.mean([frechet_distance_of_gaussians(*statistics(a[labels_a == label]),
                                                        *statistics(b[labels_b == label]))
                          for label in np.unique(labels_b)]))


def classifier_accuracy_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                              y_test: np.ndarray, hidden: int = 128, epochs: int = 10,
                              seed: int = 0) -> tuple[float, np.ndarray]:
    """Classification accuracy score (Ravuri & Vinyals 2019): a small classifier trained on
    images with their classes, tested on the real test images; trained on generated images with
    the classes asked for it measures how much class information they carry, beside the same
    classifier trained on as many real images. The classifier is scikit-learn's MLP (one hidden
    layer of ``hidden`` ReLU units, Adam, ``epochs`` passes) on [0, 1] pixels. Returns the
    accuracy and each test image's correctness (for an interval over the test images)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    def flat(images: np.ndarray) -> np.ndarray:
        return np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0

    model = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=epochs, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed budget of passes
        model.fit(flat(x_train), np.asarray(y_train))
    correct = model.predict(flat(x_test)) == np.asarray(y_test)
    return float(correct.mean()), correct


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) on closed k-NN balls.

    precision = share of fake points inside at least one ball B(real_i, NND_k(real_i));
    recall = share of real points inside at least one ball B(fake_j, NND_k(fake_j)).
    Radii and point-to-centre distances come from one exact computation (see ``_ball_counts``).
    """
    real, fake = _checked_pair(real, fake)
    (radii_real,) = _knn_sq_radii(real, [k])
    (radii_fake,) = _knn_sq_radii(fake, [k])
    (in_real_balls, _), (_, in_fake_balls) = _ball_counts(
        fake, real, [("real", radii_real), ("fake", radii_fake)])
    return {"precision": float(np.mean(in_real_balls > 0)),
            "recall": float(np.mean(in_fake_balls > 0))}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) on the closed k-NN balls of the real points.

    density = 1/(k M) sum_j sum_i 1[fake_j in B(real_i, NND_k(real_i))] (about 1 when the sets
    match, above 1 when fakes crowd dense real regions); coverage = share of real points whose
    nearest fake lies inside their own ball. Closed balls (``<=``), where the ``prdc`` package
    uses open ones (``<``): the two differ only on ties, such as duplicated points.
    """
    real, fake = _checked_pair(real, fake)
    (radii,) = _knn_sq_radii(real, [k])
    ((in_real_balls, covered),) = _ball_counts(fake, real, [("real", radii)])
    return {"density": float(in_real_balls.sum() / (k * len(fake))),
            "coverage": float(np.mean(covered > 0))}


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray, k: int = 5) -> float:
    """Accuracy on test of a k-NN classifier (Euclidean, majority vote) fitted on train."""
    classifier = KNeighborsClassifier(n_neighbors=k).fit(train_features, train_labels)
    return float(classifier.score(test_features, test_labels))


def linear_probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                          test_features: np.ndarray, test_labels: np.ndarray,
                          max_iter: int = 1000) -> float:
    """Test accuracy of multinomial logistic regression on standardised features (fit on train)."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        # An unconverged probe still gives a valid (slightly pessimistic) accuracy.
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        warnings.filterwarnings("ignore", message=".*lbfgs failed to converge.*")
        probe.fit(train_features, train_labels)
    return float(probe.score(test_features, test_labels))


def kmeans_agreement(features: np.ndarray, labels: np.ndarray, seed: int = 0,
                     n_init: int = 10) -> dict[str, float]:
    """k-means with k = number of classes; ARI (Hubert & Arabie 1985) and NMI against the labels."""
    n_clusters = len(np.unique(labels))
    clusters = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(
        np.asarray(features, dtype=np.float64))
    return {"kmeans_ari": float(adjusted_rand_score(labels, clusters)),
            "kmeans_nmi": float(normalized_mutual_info_score(labels, clusters))}


def label_cluster_quality(features: np.ndarray, labels: np.ndarray, silhouette_samples: int = 5000,
                          seed: int = 0) -> dict[str, float]:
    """Silhouette, Calinski-Harabasz and Davies-Bouldin of the true classes, in the features' space.

    Silhouette (Rousseeuw 1987) uses a seeded subsample of ``silhouette_samples`` points when the
    set is larger. The values depend on the space's scale and dimension: compare them only
    between sets in the same space. An index that is undefined for these points is NaN, never a
    best score (scikit-learn returns Davies-Bouldin 0 and Calinski-Harabasz 1 for a constant
    set): see ``cluster_quality_undefined`` for the reasons.
    """
    features = np.asarray(features, dtype=np.float64)
    undefined = cluster_quality_undefined(features, labels)
    sample_size = silhouette_samples if 0 < silhouette_samples < len(features) else None
    values = {"silhouette": np.nan, "calinski_harabasz": np.nan, "davies_bouldin": np.nan}
    if "silhouette" not in undefined:
        values["silhouette"] = float(silhouette_score(features, labels, sample_size=sample_size,
                                                      random_state=seed))
    if "calinski_harabasz" not in undefined:
        values["calinski_harabasz"] = float(calinski_harabasz_score(features, labels))
    if "davies_bouldin" not in undefined:
        values["davies_bouldin"] = float(davies_bouldin_score(features, labels))
    return values


def cluster_quality_undefined(features: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """Which of silhouette, Calinski-Harabasz and Davies-Bouldin are undefined here, and why.

    All three need 2 to N - 1 classes and points that are not all equal; Calinski-Harabasz divides
    by the within-class dispersion, Davies-Bouldin by the distances between class centres.
    """
    features = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    names = ("silhouette", "calinski_harabasz", "davies_bouldin")
    if not 2 <= len(classes) <= len(features) - 1:
        return dict.fromkeys(names, f"{len(classes)} class(es) among {len(features)} points")
    if np.ptp(features, axis=0).max(initial=0.0) == 0:
        return dict.fromkeys(names, "every point is the same vector")
    reasons = {}
    centres = np.stack([features[labels == c].mean(axis=0) for c in classes])
    within = sum(float(((features[labels == c] - centre) ** 2).sum())
                 for c, centre in zip(classes, centres, strict=True))
    if within == 0:
        reasons["calinski_harabasz"] = "no spread within any class (division by zero)"
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    if (gaps[~np.eye(len(classes), dtype=bool)] == 0).any():
        reasons["davies_bouldin"] = "two class centres coincide (division by zero)"
    return reasons


def class_consistency(predicted_labels: np.ndarray, target_labels: np.ndarray) -> float:
    """Share of samples whose predicted class equals the class they were generated from."""
    predicted_labels = np.asarray(predicted_labels)
    target_labels = np.asarray(target_labels)
    if predicted_labels.shape != target_labels.shape or predicted_labels.ndim != 1:
        raise ValueError(f"predicted labels {predicted_labels.shape} and target labels "
                         f"{target_labels.shape} must be two vectors of one length")
    return float(np.mean(predicted_labels == target_labels))


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray,
                k: int = 5) -> np.ndarray:
    """Class of each row of ``features`` by majority vote of its k nearest training points."""
    return KNeighborsClassifier(n_neighbors=k).fit(train_features, train_labels).predict(features)
