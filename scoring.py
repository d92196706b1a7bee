"""Scoring shared by the stages: embedding, image and translation metrics beside their floors.

``evaluate.py`` scores every file the other stages wrote; Plan 1, Plan 2 and the self-consuming
loop score their own outputs with the same functions, so that a stage's table and evaluate.py's
agree. Every function takes a ``ScoringSettings`` (the neighbours, splits and seed of the metrics);
image metrics also take the dataset's ``RealImages``: its evaluator CNN (cached per dataset under
``<data_dir>/checkpoints/evaluator/``, trained once with ``EvaluatorSettings``) and its outputs on
the test images. Formulas and papers: ``metrics.py``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.metrics.pairwise import paired_cosine_distances
from sklearn.preprocessing import StandardScaler

import metrics
from data_sources import ImageDataset
from evaluator_cnn import (
    Evaluator,
    check_images,
    checkpoint_path,
    evaluator_outputs,
    train_evaluator,
)
from runtime import StageError


@dataclass(frozen=True)
class ScoringSettings:
    """How the metrics are computed; evaluate.py's settings of the same names default to these."""

    seed: int = 0  # seeds subsamples (floors), k-means and the score's split order
    knn_k: int = 5  # neighbours of the k-NN classifier
    precision_k: int = 3  # neighbours for precision/recall (Kynkäänniemi et al. 2019)
    density_k: int = 5  # neighbours for density/coverage (Naeem et al. 2020)
    score_splits: int = 10  # splits of the Inception-style score
    silhouette_samples: int = 5000  # seeded subsample for the silhouette (0: every point)
    kmeans_init: int = 10  # k-means restarts
    probe_max_iter: int = 1000  # iterations of the logistic-regression probe
    batch_size: int = 1000  # images per evaluator forward pass


@dataclass(frozen=True)
class EvaluatorSettings:
    """The evaluator CNN of a dataset: where it is cached and how it is trained once."""

    data_dir: str = "data"
    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 0


# ---------------------------------------------------------------- embeddings
def embedding_metrics(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray,
                      y_test: np.ndarray, s: ScoringSettings) -> dict[str, Any]:
    """k-NN and linear-probe accuracy (train -> test); k-means and cluster indices on test.

    An index undefined for these points is None, with the reason under ``undefined``."""
    if len(z_train) <= s.knn_k or len(z_test) < 3:
        raise StageError(f"{len(z_train)} train and {len(z_test)} test embeddings: too few for "
                         f"k-NN with --knn-k {s.knn_k} and the cluster indices")
    values: dict[str, Any] = {
        "dims": int(z_train.shape[1]), "n_train": len(z_train), "n_test": len(z_test),
        "seed": s.seed, "knn_k": s.knn_k,
        "knn_accuracy": metrics.knn_accuracy(z_train, y_train, z_test, y_test, s.knn_k),
        "linear_probe_accuracy": metrics.linear_probe_accuracy(z_train, y_train, z_test, y_test,
                                                               s.probe_max_iter),
    }
    values.update(metrics.kmeans_agreement(z_test, y_test, s.seed, s.kmeans_init))
    values.update(metrics.label_cluster_quality(z_test, y_test, s.silhouette_samples, s.seed))
    values["silhouette_samples"] = min(s.silhouette_samples or len(z_test), len(z_test))
    undefined = metrics.cluster_quality_undefined(z_test, y_test)
    if undefined:
        values.update(dict.fromkeys(undefined))
        values["undefined"] = undefined
    return values


def pixel_pca(data: ImageDataset, components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the [0, 1] pixels fitted on train: the baseline a learned embedding should beat."""
    pca = PCA(n_components=components, random_state=seed)
    z_train = pca.fit_transform(data.x_train.reshape(len(data.x_train), -1) / 255.0)
    return z_train, pca.transform(data.x_test.reshape(len(data.x_test), -1) / 255.0)


# ---------------------------------------------------------------- images
@dataclass
class RealImages:
    """A dataset, its evaluator, and the evaluator's outputs on the test images."""

    data: ImageDataset
    evaluator: Evaluator
    test_features: np.ndarray
    test_logits: np.ndarray
    floors: dict[int, dict[str, Any]] = field(default_factory=dict)


def load_evaluator(data: ImageDataset, device: Any, settings: EvaluatorSettings) -> Evaluator:
    """The cached evaluator of a dataset, trained (or resumed) first if needed."""
    checkpoint = checkpoint_path(settings.data_dir, data.name)
    print(f"{data.name} evaluator CNN ({settings.epochs} epochs, {len(data.x_train)} images): "
          f"{checkpoint}")
    start = time.time()
    return train_evaluator(
        data, checkpoint, device, settings.epochs, settings.batch_size, settings.learning_rate,
        settings.seed,
        on_epoch=lambda epoch, loss, accuracy: print(
            f"  epoch {epoch}/{settings.epochs}: loss {loss:.4f}, test accuracy {accuracy:.4f}, "
            f"{time.time() - start:.0f} s", flush=True))


def real_images_for(data: ImageDataset, device: Any, evaluator: EvaluatorSettings,
                    s: ScoringSettings) -> RealImages:
    """A dataset's images, its evaluator (trained if missing) and the test-image outputs."""
    model = load_evaluator(data, device, evaluator)
    print(f"{data.name} evaluator: test accuracy {model.test_accuracy:.4f}"
          + (f" (target {model.target_accuracy})" if model.target_accuracy else ""))
    if model.target_accuracy and model.test_accuracy < model.target_accuracy:
        print(f"warning: the {data.name} evaluator is below its target accuracy; train it longer "
              f"(delete {model.checkpoint} and raise --evaluator-epochs)", file=sys.stderr)
    features, logits = evaluator_outputs(model.model, data.x_test, device, s.batch_size,
                                         f"{data.name} test images")
    return RealImages(data, model, features, logits)


def real_image_floors(real: RealImages, count: int, device: Any,
                      s: ScoringSettings) -> dict[str, Any]:
    """Real-vs-real references for ``count`` generated images: a seeded subset of that many
    training images against the test images (FID, PRDC) and on its own (score)."""
    if count not in real.floors:
        n = min(count, len(real.data.x_train))
        chosen = np.sort(np.random.default_rng(s.seed).choice(len(real.data.x_train), n,
                                                              replace=False))
        features, logits = evaluator_outputs(real.evaluator.model, real.data.x_train[chosen],
                                             device, s.batch_size,
                                             f"{real.data.name} train images")
        floor = {"floor_n_train": n,
                 "fid_floor": metrics.frechet_distance(features, real.test_features)}
        floor["score_real"], floor["score_real_std"] = metrics.inception_style_score(
            logits, s.score_splits, seed=s.seed)
        prdc = metrics.precision_recall_density_coverage(real.test_features, features,
                                                         s.precision_k, s.density_k)
        floor.update({f"{name}_floor": value for name, value in prdc.items()})
        real.floors[count] = floor
    return real.floors[count]


def check_sources(path: Path, arrays: dict[str, Any], data: ImageDataset,
                  s: ScoringSettings) -> None:
    """x_gen must be images, idx_src test indices, y_src their test labels (the same order)."""
    x_gen = check_images(arrays["x_gen"], f"{path}: x_gen")
    idx_src, y_src = arrays["idx_src"].astype(np.int64), arrays["y_src"].astype(np.int64)
    n_test = len(data.x_test)
    if len(idx_src) and (idx_src.min() < 0 or idx_src.max() >= n_test):
        raise StageError(f"{path}: idx_src spans [{idx_src.min()}, {idx_src.max()}], outside the "
                         f"{n_test} test images of {data.name}")
    if not np.array_equal(data.y_test[idx_src], y_src):
        wrong = int(np.sum(data.y_test[idx_src] != y_src))
        raise StageError(f"{path}: y_src disagrees with the test labels at idx_src for {wrong} "
                         f"of {len(y_src)} samples: images and labels are misaligned")
    check_image_count(path, len(x_gen), s)


def check_image_count(path: Path, count: int, s: ScoringSettings) -> None:
    """Enough images for the score's splits and the density's neighbours."""
    if count < max(s.score_splits, s.density_k + 1):
        raise StageError(f"{path}: {count} images, too few for the metrics")


def image_metrics(path: Path, x_gen: np.ndarray, real: RealImages, device: Any,
                  s: ScoringSettings) -> tuple[dict[str, Any], np.ndarray]:
    """FID and PRDC on evaluator features and the Inception-style score, each with its
    real-vs-real floor; and the evaluator's logits of the images."""
    n_test = len(real.data.x_test)
    features, logits = evaluator_outputs(real.evaluator.model, x_gen, device, s.batch_size,
                                         f"{path}: x_gen")
    values: dict[str, Any] = {"n_generated": len(x_gen), "n_test": n_test, "seed": s.seed,
                              "score_splits": s.score_splits, "precision_k": s.precision_k,
                              "density_k": s.density_k,
                              "fid": metrics.frechet_distance(features, real.test_features)}
    values["score"], values["score_std"] = metrics.inception_style_score(
        logits, s.score_splits, seed=s.seed)
    values.update(metrics.precision_recall_density_coverage(real.test_features, features,
                                                            s.precision_k, s.density_k))
    values.update(real_image_floors(real, len(x_gen), device, s))
    return values, logits


def plan1_metrics(path: Path, arrays: dict[str, Any], real: RealImages, device: Any,
                  s: ScoringSettings) -> dict[str, Any]:
    """Image metrics and class consistency (evaluator class = class of the source test image)."""
    y_src, idx_src = arrays["y_src"].astype(np.int64), arrays["idx_src"].astype(np.int64)
    values, logits = image_metrics(path, arrays["x_gen"], real, device, s)
    values["class_consistency"] = metrics.class_consistency(logits.argmax(axis=1), y_src)
    # The same evaluator on the real test images the embeddings came from: the ceiling.
    values["class_consistency_real"] = metrics.class_consistency(
        real.test_logits[idx_src].argmax(axis=1), y_src)
    return values


def within_class_variance(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes (with at least two images) of the total variance of their features:
    (1/C) sum_c tr Cov({f_i : y_i = c}), unbiased covariances. The diversity left inside a class,
    which a spread over the classes hides."""
    traces = [float(np.var(features[labels == c], axis=0, ddof=1).sum())
              for c in np.unique(labels) if np.sum(labels == c) >= 2]
    if not traces:
        raise ValueError("no class has two images: within-class variance is undefined")
    return float(np.mean(traces))


# ---------------------------------------------------------------- generated embeddings
def labelled_cluster_values(features: np.ndarray, labels: np.ndarray, s: ScoringSettings,
                            suffix: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """k-means ARI/NMI against ``labels`` and silhouette / Calinski-Harabasz / Davies-Bouldin of
    the ``labels`` classes (None where undefined), and the reasons of the undefined ones; every
    name ends with ``suffix``."""
    values = metrics.kmeans_agreement(features, labels, s.seed, s.kmeans_init)
    values.update(metrics.label_cluster_quality(features, labels, s.silhouette_samples, s.seed))
    undefined = metrics.cluster_quality_undefined(features, labels)
    values.update(dict.fromkeys(undefined))
    return ({name + suffix: value for name, value in values.items()},
            {name + suffix: reason for name, reason in undefined.items()})


def real_references(real: dict[str, Any], n: int, s: ScoringSettings
                    ) -> dict[str, dict[str, float]]:
    """The real-vs-real values beside n generated embeddings, computed once per source file, n
    and settings (kept in ``real``): "floors", the Fréchet distance and PRDC of a seeded subset
    of n train embeddings against the test ones; "classes", the test k-NN accuracy fitted on
    every train embedding and (TRTR) on that subset."""
    cache = real.setdefault("references", {})
    key = (n, s)
    if key not in cache:
        z_train, z_test = real["z_train"].astype(np.float64), real["z_test"].astype(np.float64)
        chosen = np.sort(np.random.default_rng(s.seed).choice(len(z_train), n, replace=False))
        prdc = metrics.precision_recall_density_coverage(z_test, z_train[chosen], s.precision_k,
                                                         s.density_k)
        cache[key] = {
            "floors": {"frechet_distance_floor": metrics.frechet_distance(z_train[chosen],
                                                                          z_test),
                       **{f"{name}_floor": value for name, value in prdc.items()}},
            "classes": {
                "knn_accuracy_real": metrics.knn_accuracy(z_train, real["y_train"], z_test,
                                                          real["y_test"], s.knn_k),
                "trtr_knn_accuracy": metrics.knn_accuracy(
                    z_train[chosen], real["y_train"][chosen], z_test, real["y_test"], s.knn_k)}}
    return cache[key]


def plan2_metrics(path: Path, arrays: dict[str, Any], real: dict[str, Any],
                  s: ScoringSettings) -> dict[str, Any]:
    """Fréchet distance and PRDC against real test embeddings; for a conditional generator
    (``y_gen``, the class asked for): k-NN class consistency, train-on-synthetic-test-on-real
    k-NN accuracy beside train-on-real (as many real training embeddings), and k-means ARI /
    cluster indices of the classes asked for beside those of the real test embeddings."""
    z_gen = arrays["z_gen"].astype(np.float64)
    z_train, z_test = real["z_train"].astype(np.float64), real["z_test"].astype(np.float64)
    if z_gen.shape[1] != z_test.shape[1]:
        raise StageError(f"{path}: z_gen has {z_gen.shape[1]} dims, the real embeddings "
                         f"{z_test.shape[1]}")
    if len(z_gen) <= max(s.density_k, s.knn_k):
        raise StageError(f"{path}: {len(z_gen)} generated embeddings, too few for the metrics")
    n = min(len(z_gen), len(z_train))
    values: dict[str, Any] = {
        "n_generated": len(z_gen), "n_test": len(z_test), "floor_n_train": n, "seed": s.seed,
        "dims": int(z_gen.shape[1]), "precision_k": s.precision_k, "density_k": s.density_k,
        "frechet_distance": metrics.frechet_distance(z_gen, z_test)}
    values.update(metrics.precision_recall_density_coverage(z_test, z_gen, s.precision_k,
                                                            s.density_k))
    values.update(real_references(real, n, s)["floors"])
    if "y_gen" in arrays:
        y_gen = arrays["y_gen"].astype(np.int64)
        predicted = metrics.knn_predict(z_train, real["y_train"], z_gen, s.knn_k)
        values["knn_class_consistency"] = metrics.class_consistency(predicted, y_gen)
        values["knn_k"] = s.knn_k
        values["tstr_knn_accuracy"] = metrics.knn_accuracy(z_gen, y_gen, z_test, real["y_test"],
                                                           s.knn_k)
        values.update(real_references(real, n, s)["classes"])
        generated, undefined = labelled_cluster_values(z_gen, y_gen, s)
        cluster_cache = real.setdefault("cluster_reference", {})
        if s not in cluster_cache:  # the real test set's values, once per source file
            cluster_cache[s] = labelled_cluster_values(z_test, real["y_test"], s, "_real")
        reference, undefined_real = cluster_cache[s]
        values.update({**generated, **reference})
        values["silhouette_samples"] = s.silhouette_samples
        if undefined or undefined_real:
            values["undefined"] = {**undefined, **undefined_real}
    return values


def translation_metrics(path: Path, z_translated: np.ndarray, source: dict[str, Any],
                        target: dict[str, Any], s: ScoringSettings) -> dict[str, Any]:
    """Test embeddings translated from the source encoder's space to the target's, against the
    target's true embeddings of the same test images.

    cosine: mean cosine between each translated and true vector in the target's space
    standardised with its train statistics; k-NN accuracy of the translated vectors beside the
    target's own (both by one k-NN fitted on the target's train embeddings); and, as a ceiling
    that sees pairs, the same two numbers for a linear least-squares map fitted on the paired
    standardised train embeddings."""
    z_translated = z_translated.astype(np.float64)
    b_train, b_test = target["z_train"].astype(np.float64), target["z_test"].astype(np.float64)
    if z_translated.shape != b_test.shape:
        raise StageError(f"{path}: z_translated has shape {z_translated.shape}, the target's "
                         f"test embeddings {b_test.shape}")
    if len(b_train) <= s.knn_k:
        raise StageError(f"{path}: {len(b_train)} target train embeddings, too few for k-NN")
    scale_a = StandardScaler().fit(source["z_train"].astype(np.float64))
    scale_b = StandardScaler().fit(b_train)
    truth = scale_b.transform(b_test)
    paired = LinearRegression().fit(scale_a.transform(source["z_train"].astype(np.float64)),
                                    scale_b.transform(b_train))
    linear = paired.predict(scale_a.transform(source["z_test"].astype(np.float64)))
    y_train, y_test = target["y_train"], target["y_test"]

    def knn_accuracy(features: np.ndarray) -> float:
        return metrics.knn_accuracy(b_train, y_train, features, y_test, s.knn_k)

    return {
        "n_test": len(b_test), "dims_source": int(source["z_test"].shape[1]),
        "dims_target": int(b_test.shape[1]), "knn_k": s.knn_k, "seed": s.seed,
        "cosine": float(np.mean(1.0 - paired_cosine_distances(
            scale_b.transform(z_translated), truth))),
        "knn_accuracy": knn_accuracy(z_translated),
        "knn_accuracy_target": knn_accuracy(b_test),
        "cosine_paired_linear": float(np.mean(1.0 - paired_cosine_distances(linear, truth))),
        "knn_accuracy_paired_linear": knn_accuracy(scale_b.inverse_transform(linear)),
    }


def settings_record(s: ScoringSettings) -> dict[str, Any]:
    """The scoring settings as a plain dict, for a file's ``meta``."""
    return asdict(s)
