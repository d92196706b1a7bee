"""Scoring shared by the stages: embedding, image and translation metrics beside their floors.

``evaluate.py`` scores every file the other stages wrote; Plan 1, Plan 2 and the self-consuming
loop score their own outputs with the same functions, so that a stage's table and evaluate.py's
agree. Every function takes a ``ScoringSettings`` (the neighbours, splits and seed of the metrics);
image metrics also take the dataset's ``RealImages``: its evaluator CNN (cached per dataset under
``<data_dir>/checkpoints/evaluator/``, trained once with ``EvaluatorSettings``) and its outputs on
the test images. Formulas and papers: ``evaluation/metrics.py``.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.metrics.pairwise import paired_cosine_distances
from sklearn.preprocessing import StandardScaler

from dataio.data_sources import ImageDataset
from evaluation import metrics
from evaluation.evaluator_cnn import (
    Evaluator,
    check_images,
    checkpoint_path,
    evaluator_outputs,
    train_evaluator,
)
from evaluation.feature_spaces import FeatureSpace, FeatureSpaceSettings, feature_space
from runtime.settings import SettingsError
from runtime.stage import StageError
from runtime.tracking import RunLog


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
    bootstrap: int = 10  # resamples of the generated samples behind each 95% interval (0: none)
    kid_subsets: int = 100  # KID: subset pairs (torch-fidelity's default)
    kid_subset_size: int = 1000  # KID: samples per subset, capped at the smaller set
    cas_hidden: int = 128  # classifier accuracy score: hidden units of the MLP
    cas_epochs: int = 10  # classifier accuracy score: training passes of the MLP
    features: FeatureSpaceSettings = FeatureSpaceSettings()  # the space of image metrics

    def __post_init__(self) -> None:
        # A percentile interval needs at least two resamples; one would fail only once the
        # first metrics are computed, after training.
        if self.bootstrap == 1:
            raise SettingsError("--bootstrap 1: an interval needs at least 2 resamples (0: none)")


@dataclass(frozen=True)
class EvaluatorSettings:
    """The evaluator CNN of a dataset: where it is cached and how it is trained once. It is the
    instrument every stage measures with, so a stage's own --seed does not change it (seed 0,
    evaluate.py's default)."""

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
    """A dataset, its evaluator, the feature space of the image metrics, and the test images'
    features (in that space) and evaluator logits."""

    data: ImageDataset
    evaluator: Evaluator
    space: FeatureSpace
    test_features: np.ndarray
    test_logits: np.ndarray
    floors: dict[int, dict[str, Any]] = field(default_factory=dict)


def load_evaluator(data: ImageDataset, device: Any, settings: EvaluatorSettings,
                   log: RunLog | None = None) -> Evaluator:
    """The cached evaluator of a dataset, trained (or resumed) first if needed; each epoch it
    trains also goes to ``log``."""
    checkpoint = checkpoint_path(settings.data_dir, data.name)
    print(f"{data.name} evaluator CNN ({settings.epochs} epochs, {len(data.x_train)} images): "
          f"{checkpoint}")
    start = time.time()

    def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
        print(f"  epoch {epoch}/{settings.epochs}: loss {loss:.4f}, test accuracy "
              f"{accuracy:.4f}, {time.time() - start:.0f} s", flush=True)
        if log is not None:
            log.scalars({"loss": loss, "test_accuracy": accuracy}, epoch, "epochs/")

    return train_evaluator(data, checkpoint, device, settings.epochs, settings.batch_size,
                           settings.learning_rate, settings.seed, on_epoch=on_epoch)


def real_images_for(data: ImageDataset, device: Any, evaluator: EvaluatorSettings,
                    s: ScoringSettings) -> RealImages:
    """A dataset's images, its evaluator (trained if missing) and the test-image outputs."""
    model = load_evaluator(data, device, evaluator)
    print(f"{data.name} evaluator: test accuracy {model.test_accuracy:.4f}"
          + (f" (target {model.target_accuracy})" if model.target_accuracy else ""))
    if model.target_accuracy and model.test_accuracy < model.target_accuracy:
        print(f"warning: the {data.name} evaluator is below its target accuracy; train it longer "
              f"(delete {model.checkpoint} and raise --evaluator-epochs)", file=sys.stderr)
    space = feature_space(s.features, model.model, device, s.batch_size)
    real = RealImages(data, model, space, np.zeros((0, 0)), np.zeros((0, 0)))
    real.test_features, real.test_logits = image_outputs(real, data.x_test, device, s,
                                                         f"{data.name} test images")
    return real


def image_outputs(real: RealImages, images: np.ndarray, device: Any, s: ScoringSettings,
                  source: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """Features of images in the run's feature space, and the evaluator's logits (one pass of
    the evaluator when it is the space)."""
    features, logits = evaluator_outputs(real.evaluator.model, images, device, s.batch_size,
                                         source)
    if real.space.name != "evaluator":
        features = real.space.features(images, device)
    return features, logits


# The range of each metric that has one, which its interval stays in.
SHARES = (0.0, 1.0)
NON_NEGATIVE = (0.0, np.inf)


def with_interval(values: dict[str, Any], name: str, estimate: float,
                  statistic: Callable[[np.ndarray], float], n: int, s: ScoringSettings,
                  bounds: tuple[float, float] = NON_NEGATIVE) -> None:
    """values[name] = estimate, and values[name + "_ci95"] its bootstrap interval over the n
    generated samples ``statistic(indices)`` is computed on, within ``bounds`` (none with
    bootstrap 0)."""
    values[name] = estimate
    if s.bootstrap:
        with warnings.catch_warnings():  # the estimate's own warnings were shown once already
            warnings.simplefilter("ignore", UserWarning)
            values[f"{name}_ci95"] = metrics.bootstrap_interval(statistic, n, estimate,
                                                                s.bootstrap, s.seed, bounds)


def distribution_metrics(real_features: np.ndarray, features: np.ndarray, s: ScoringSettings,
                         prefix: str = "fid") -> dict[str, Any]:
    """Fréchet distance (``prefix``), KID (mean, std over subsets), precision, recall, density,
    coverage and Vendi of ``features`` against ``real_features``, each with its interval."""
    values: dict[str, Any] = {}
    with_interval(values, prefix, metrics.frechet_distance(features, real_features),
                  lambda i: metrics.frechet_distance(features[i], real_features), len(features),
                  s)
    values["kid"], values["kid_std"] = metrics.kernel_distance(
        features, real_features, s.kid_subsets, s.kid_subset_size, s.seed)
    values.update(metrics.precision_recall_density_coverage(
        real_features, features, s.precision_k, s.density_k, s.bootstrap, s.seed))
    with_interval(values, "vendi", metrics.vendi_score(features),
                  lambda i: metrics.vendi_score(features[i]), len(features), s, (1.0, np.inf))
    return values


def class_metrics(real_features: np.ndarray, real_labels: np.ndarray, features: np.ndarray,
                  labels: np.ndarray, s: ScoringSettings, name: str = "intra_fid"
                  ) -> dict[str, Any]:
    """The intra-class Fréchet distance (``name``) of features with the classes asked for,
    against the real features of each class, with its interval, the fewest samples of a class
    (``<name>_class_count``) and its covariance estimator (``<name>_covariance``): the sample
    covariance when every class has more samples than dimensions, else Ledoit-Wolf shrinkage
    for every class and every resample. None, with the reason under ``undefined``, when a class
    has fewer than two samples."""
    fewest = metrics.smallest_class(labels, real_labels)
    shrinkage = fewest <= np.asarray(features).shape[1]
    values: dict[str, Any] = {f"{name}_class_count": fewest,
                              f"{name}_covariance": "ledoit-wolf" if shrinkage else "sample"}

    def statistic(index: np.ndarray) -> float:
        return metrics.intra_class_frechet_distance(features[index], labels[index],
                                                    real_features, real_labels, shrinkage)

    try:
        estimate = statistic(np.arange(len(features)))
    except ValueError as err:  # a class with fewer than two samples
        return {**values, name: None, "undefined": {name: str(err)}}
    try:
        with_interval(values, name, estimate, statistic, len(features), s)
    except ValueError as err:  # a resample left a class with fewer than two samples
        values[name] = estimate
        values["undefined"] = {f"{name}_ci95": f"a bootstrap resample: {err}"}
    return values


def real_image_floors(real: RealImages, count: int, device: Any,
                      s: ScoringSettings) -> dict[str, Any]:
    """Real-vs-real references for ``count`` generated images: a seeded subset of that many
    training images against the test images (FID, PRDC) and on its own (score)."""
    if count not in real.floors:
        n = min(count, len(real.data.x_train))
        chosen = np.sort(np.random.default_rng(s.seed).choice(len(real.data.x_train), n,
                                                              replace=False))
        x_real, y_real = real.data.x_train[chosen], real.data.y_train[chosen]
        features, logits = image_outputs(real, x_real, device, s,
                                         f"{real.data.name} train images")
        no_intervals = replace(s, bootstrap=0)
        floor = {"floor_n_train": n,
                 **{f"{name}_floor": value for name, value in distribution_metrics(
                     real.test_features, features, no_intervals).items()}}
        floor["vendi_real"] = floor.pop("vendi_floor")
        floor["score_real"], floor["score_real_std"] = metrics.inception_style_score(
            logits, s.score_splits, seed=s.seed)
        intra = class_metrics(real.test_features, real.data.y_test, features, y_real,
                              no_intervals)
        floor["intra_fid_floor"] = intra["intra_fid"]
        if "undefined" in intra:
            floor["undefined"] = {"intra_fid_floor": intra["undefined"]["intra_fid"]}
        floor["cas_real"], _ = metrics.classifier_accuracy_score(
            x_real, y_real, real.data.x_test, real.data.y_test, s.cas_hidden, s.cas_epochs,
            s.seed)
        real.floors[count] = floor
    return real.floors[count]


def check_sources(path: Path, arrays: dict[str, Any], data: ImageDataset,
                  s: ScoringSettings) -> None:
    """x_gen must be images, idx_src test indices, y_src their test labels (the same order)."""
    x_gen = check_images(arrays["x_gen"], f"{path}: x_gen", data.shape)
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
    """Enough images for the score's splits and the density's neighbours; the one line names the
    setting that asks for more."""
    if count < s.score_splits:
        raise StageError(f"{path}: {count} images cannot be cut into --score-splits "
                         f"{s.score_splits} splits; use at most {count}")
    if count < s.density_k + 1:
        raise StageError(f"{path}: {count} images are too few for --density-k {s.density_k} "
                         f"neighbours; use at most {count - 1}")


def image_metrics(path: Path, x_gen: np.ndarray, real: RealImages, device: Any,
                  s: ScoringSettings, labels: np.ndarray | None = None
                  ) -> tuple[dict[str, Any], np.ndarray]:
    """FID, KID, PRDC and Vendi in the run's feature space and the Inception-style score of the
    evaluator's logits, each with its interval and its real-vs-real floor; with ``labels`` (the
    classes asked for) also class consistency, intra-class FID and the classifier accuracy score.
    Returns the values and the evaluator's logits of the images."""
    n_test = len(real.data.x_test)
    features, logits = image_outputs(real, x_gen, device, s, f"{path}: x_gen")
    values: dict[str, Any] = {"n_generated": len(x_gen), "n_test": n_test, "seed": s.seed,
                              "feature_space": real.space.name,
                              "feature_space_title": real.space.title,
                              "score_splits": s.score_splits, "precision_k": s.precision_k,
                              "density_k": s.density_k, "bootstrap": s.bootstrap,
                              **distribution_metrics(real.test_features, features, s)}
    score, values["score_std"] = metrics.inception_style_score(logits, s.score_splits,
                                                               seed=s.seed)
    with_interval(values, "score", score, lambda i: metrics.inception_style_score(
        logits[i], s.score_splits, seed=s.seed)[0], len(x_gen), s, (1.0, np.inf))
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        correct = logits.argmax(axis=1) == labels
        with_interval(values, "class_consistency", float(correct.mean()),
                      lambda i: float(correct[i].mean()), len(x_gen), s, SHARES)
        values.update(class_metrics(real.test_features, real.data.y_test, features, labels, s))
        cas, right = metrics.classifier_accuracy_score(x_gen, labels, real.data.x_test,
                                                       real.data.y_test, s.cas_hidden,
                                                       s.cas_epochs, s.seed)
        # The classifier is trained once: its interval is over the test images it is scored on.
        with_interval(values, "cas", cas, lambda i: float(right[i].mean()), len(right), s,
                      SHARES)
    floors = real_image_floors(real, len(x_gen), device, s)
    undefined = {**values.get("undefined", {}), **floors.get("undefined", {})}
    values.update(floors)
    if undefined:
        values["undefined"] = undefined
    return values, logits


def plan1_metrics(path: Path, arrays: dict[str, Any], real: RealImages, device: Any,
                  s: ScoringSettings) -> dict[str, Any]:
    """Image metrics and class consistency (evaluator class = class of the source test image)."""
    y_src, idx_src = arrays["y_src"].astype(np.int64), arrays["idx_src"].astype(np.int64)
    values, _ = image_metrics(path, arrays["x_gen"], real, device, s, labels=y_src)
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
        no_intervals = replace(s, bootstrap=0)
        floors = {f"{name}_floor": value for name, value in distribution_metrics(
            z_test, z_train[chosen], no_intervals, "frechet_distance").items()}
        floors["vendi_real"] = floors.pop("vendi_floor")
        intra = class_metrics(z_test, real["y_test"], z_train[chosen], real["y_train"][chosen],
                              no_intervals, "intra_frechet_distance")
        floors["intra_frechet_distance_floor"] = intra["intra_frechet_distance"]
        if "undefined" in intra:
            floors["undefined"] = {"intra_frechet_distance_floor":
                                   intra["undefined"]["intra_frechet_distance"]}
        cache[key] = {
            "floors": floors,
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
        "bootstrap": s.bootstrap, **distribution_metrics(z_test, z_gen, s, "frechet_distance")}
    floors = dict(real_references(real, n, s)["floors"])
    floor_undefined = floors.pop("undefined", {})
    values.update(floors)
    if "y_gen" in arrays:
        y_gen = arrays["y_gen"].astype(np.int64)
        matches = metrics.knn_predict(z_train, real["y_train"], z_gen, s.knn_k) == y_gen
        with_interval(values, "knn_class_consistency", float(matches.mean()),
                      lambda i: float(matches[i].mean()), len(z_gen), s, SHARES)
        values["knn_k"] = s.knn_k
        with_interval(values, "tstr_knn_accuracy", metrics.knn_accuracy(
            z_gen, y_gen, z_test, real["y_test"], s.knn_k),
            lambda i: metrics.knn_accuracy(z_gen[i], y_gen[i], z_test, real["y_test"], s.knn_k),
            len(z_gen), s, SHARES)
        values.update(class_metrics(z_test, real["y_test"], z_gen, y_gen, s,
                                    "intra_frechet_distance"))
        values.update(real_references(real, n, s)["classes"])
        generated, undefined = labelled_cluster_values(z_gen, y_gen, s)
        cluster_cache = real.setdefault("cluster_reference", {})
        if s not in cluster_cache:  # the real test set's values, once per source file
            cluster_cache[s] = labelled_cluster_values(z_test, real["y_test"], s, "_real")
        reference, undefined_real = cluster_cache[s]
        values.update({**generated, **reference})
        values["silhouette_samples"] = s.silhouette_samples
        if undefined or undefined_real:
            values["undefined"] = {**values.get("undefined", {}), **undefined, **undefined_real}
        if floor_undefined:
            values["undefined"] = {**values.get("undefined", {}), **floor_undefined}
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


# ---------------------------------------------------------------- table cells
def number(value: Any, digits: int = 3) -> str:
    """A table cell's number: ``digits`` decimals, 4 significant digits past 10^4."""
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def cell(values: dict[str, Any], key: str, reference: str = "", label: str = "",
         digits: int = 3) -> str:
    """A table cell: ``values[key]``, its 95% interval as +- the half width when it has one
    (KID: +- its standard deviation over subsets), ``(label reference)`` beside it, and for a
    per-class metric the fewest samples of a class and a shrinkage estimator when one was used
    (``[>= 12/class, Ledoit-Wolf]``)."""
    if key not in values:
        return "—"
    text = number(values[key], digits)
    fewest = values.get(f"{key}_class_count")
    per_class = "" if fewest is None else f" [>= {fewest}/class" + (
        ", Ledoit-Wolf]" if values.get(f"{key}_covariance") == "ledoit-wolf" else "]")
    interval = values.get(f"{key}_ci95")
    if interval is not None and values[key] is not None:
        text += f" ± {number((interval[1] - interval[0]) / 2, digits)}"
    elif key == "kid" and "kid_std" in values:  # KID's own spread over its subsets
        text += f" ± {number(values['kid_std'], digits)} (sd)"
    if reference in values:
        return f"{text} ({label} {number(values[reference], digits)}){per_class}"
    return text + per_class
