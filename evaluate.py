"""Evaluate what the other stages wrote: embeddings, Plan 1 images, Plan 2 generated embeddings.

Reads data/embeddings/<ds>_<enc>[+<flow>].npz (train/test embeddings),
data/samples/plan1/<ds>_<enc>_<gan>.npz (images regenerated from test embeddings),
data/embeddings/<ds>_<enc>_<gan>.gen.npz (generated embeddings),
data/samples/plan2/<ds>_<enc>_<gan>[_<decoder>].npz (generated embeddings decoded into images) and
data/embeddings/<ds>_<encA>-to-<encB>_<gan>.npz (test embeddings translated from A to B); writes
data/results/metrics.json (stage -> dataset -> model -> metric, with sample counts and seeds),
data/results/metrics.csv, data/results/summary.md, and t-SNE / PCA plots in data/visualizations/.
A file that cannot be evaluated is reported in one line and listed in the summary; the others go on.

    python evaluate.py --stages embeddings --files 'fashion-mnist_*'
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from dataio.artifacts import (  # noqa: E402
    GENERATED_EMBEDDING_KEYS,
    PLAN1_SAMPLE_KEYS,
    check_array,
    check_labels,
    ensure_output_dir,
    hold_output_lock,
    holds_output_locks,
    load_embeddings,
    load_meta,
    load_npz,
    make_meta,
    save_figure,
    write_text,
)
from dataio.data_sources import (  # noqa: E402
    DATASETS,
    class_names_of,
    dataset_from_meta,
    load_dataset,
)
from evaluation import (
    metrics,  # noqa: E402
    scoring,  # noqa: E402
)
from evaluation.evaluator_cnn import check_images  # noqa: E402
from evaluation.feature_spaces import FeatureSpaceSettings  # noqa: E402
from evaluation.scoring import cell, number  # noqa: E402
from reporting.tagged_runs import VARIANT_COLUMN, variant_notes  # noqa: E402
from runtime.settings import SettingsError, configure, pick  # noqa: E402
from runtime.stage import (  # noqa: E402
    StageError,
    limit_cpu_threads,
    pick_device,
    run_stage,
    seed_everything,
)

# The stages there are (an internal table, not a setting): each has its files and its table.
STAGE_NAMES = ("embeddings", "plan1", "plan2", "plan2_images", "plan2_translation")

# ---------------------------------------------------------------- settings
DATA_DIR = "data"  # where the other stages wrote their files; results go to <data-dir>/results
STAGES = STAGE_NAMES  # stages to evaluate [in STAGE_NAMES]
FILES = ("*",)  # glob patterns of the file names to evaluate, e.g. fashion-mnist_*
COMPARE = ()  # tags set beside the untagged runs in results/comparison.md [tag, or empty]
SEED = 0  # seeds subsamples, k-means, t-SNE and the evaluator's training [seed]
DEVICE = "auto"  # evaluator device: auto (cuda, then mps, then cpu), cuda, mps or cpu
KNN_K = 5  # neighbours of the k-NN classifier (accuracy, class of generated embeddings) [>= 1]
PRECISION_K = 3  # neighbours for precision/recall (Kynkäänniemi et al. 2019) [>= 1]
DENSITY_K = 5  # neighbours for density/coverage (Naeem et al. 2020) [>= 1]
SCORE_SPLITS = 10  # splits of the Inception-style score (10 by convention) [>= 1]
SILHOUETTE_SAMPLES = 5000  # seeded subsample for the silhouette (0: every test point) [>= 0]
KMEANS_INIT = 10  # k-means restarts (best inertia kept) [>= 1]
PROBE_MAX_ITER = 1000  # iterations of the logistic-regression probe [>= 1]
BASELINE_COMPONENTS = 32  # PCA of the pixels as a baseline row (0: none; <= pixel values) [>= 0]
PLOTS = True  # draw t-SNE and PCA plots of every embedding's test set
PLOT_POINTS = 2000  # test points (seeded subsample) in each t-SNE / PCA plot [>= 10]
EVALUATOR_EPOCHS = 4  # epochs of the evaluator CNN, trained once per dataset and cached [>= 1]
EVALUATOR_BATCH_SIZE = 128  # images per evaluator training step [>= 2]
EVALUATOR_LEARNING_RATE = 3e-3  # peak Adam learning rate of the one-cycle schedule [> 0]
BATCH_SIZE = 1000  # images per evaluator forward pass [>= 1]
BOOTSTRAP = 10  # resamples behind each 95% interval (0: none; else 2 or more) [>= 0, <= 10000]
KID_SUBSETS = 100  # KID: pairs of random subsets (torch-fidelity's default) [>= 1]
KID_SUBSET_SIZE = 1000  # KID: samples per subset, capped at the smaller set [>= 2]
CAS_HIDDEN = 128  # classifier accuracy score: hidden units of its MLP [>= 1]
CAS_EPOCHS = 10  # classifier accuracy score: training passes of its MLP [>= 1]
FEATURE_SPACE = "evaluator"  # space of the image metrics [in evaluation.feature_spaces.SPACES]
FEATURE_MODEL = ""  # dinov2 / clip: hub name or local directory ('': ViT-L/14 of each)
FEATURE_BATCH_SIZE = 100  # images per forward pass of an inception / dinov2 / clip model [>= 1]
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
# ---------------------------------------------------------------- end of settings

# What one broken file can raise; the file is reported and skipped, the others go on.
PER_FILE_ERRORS = (StageError, ValueError, TypeError, KeyError, IndexError,
                   np.linalg.LinAlgError)
STAGE_TITLES = {"embeddings": "Embeddings (train/test)", "plan1": "Plan 1: images regenerated "
                "from embeddings", "plan2": "Plan 2: generated embeddings",
                "plan2_images": "Plan 2: generated embeddings decoded into images",
                "plan2_translation": "Plan 2: test embeddings translated between encoders"}
# Plan 2 images: the images, and the classes asked for when the generator is conditional.
PLAN2_IMAGE_KEYS = {"x_gen": ((3, 4), "iu")}
TRANSLATION_KEYS = {"z_translated": (2, "f"), "y_test": (1, "iu")}


@dataclass(frozen=True)
class EvaluateSettings:
    """What this run evaluates and draws; the metrics' own settings are in ScoringSettings."""

    data_dir: str
    stages: tuple[str, ...]
    files: tuple[str, ...]
    compare: tuple[str, ...]
    baseline_components: int
    plots: bool
    plot_points: int


@dataclass
class Skipped:
    """A file that was not evaluated, and why."""

    stage: str
    file: str
    reason: str


@dataclass
class Report:
    """Everything the run measured, in the nesting metrics.json uses."""

    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    evaluators: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    plots: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    settings: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, stage: str, dataset: str, model: str, values: dict[str, Any],
            meta: dict[str, Any] | None = None) -> None:
        """A row; ``meta``: the file's, whose settings (a ``tag`` among them) make a tagged
        run's note of the settings unlike the untagged run's."""
        self.results.setdefault(stage, {}).setdefault(dataset, {})[model] = values
        if meta is not None and isinstance(meta.get("settings"), dict):
            self.settings[(stage, dataset, model)] = meta["settings"]

    def note_variants(self) -> None:
        """Each tagged row's ``settings_unlike_untagged``: its settings against those of the
        row of the same name without ``@<tag>`` (same stage and dataset)."""
        for stage, datasets in self.results.items():
            for dataset, models in datasets.items():
                runs = {model: self.settings[(stage, dataset, model)] for model in models
                        if (stage, dataset, model) in self.settings}
                for model, note in variant_notes(runs).items():
                    if note:
                        models[model]["settings_unlike_untagged"] = note


@dataclass
class Evaluation:
    """One run: its settings, where it draws, its device, the report and what it loaded once."""

    run: EvaluateSettings
    scoring: scoring.ScoringSettings
    evaluator: scoring.EvaluatorSettings
    device: Any
    visual_dir: Path
    report: Report = field(default_factory=Report)
    real_images: dict[str, scoring.RealImages] = field(default_factory=dict)
    real_embeddings: dict[Path, dict[str, Any]] = field(default_factory=dict)

    def images_of(self, dataset: str) -> scoring.RealImages:
        """A dataset's images and evaluator outputs, loaded (and the evaluator trained) once."""
        if dataset not in self.real_images:
            self.real_images[dataset] = scoring.real_images_for(
                load_dataset(dataset, self.run.data_dir), self.device, self.evaluator,
                self.scoring)
        return self.real_images[dataset]

    def embeddings_of(self, path: Path) -> dict[str, Any]:
        """A real embedding file, loaded and checked once per run."""
        if path not in self.real_embeddings:
            self.real_embeddings[path] = load_embeddings(path)
        return self.real_embeddings[path]

    def save_plot(self, figure: plt.Figure, key: tuple[str, str, str], kind: str,
                  name: str) -> None:
        save_figure(figure, self.visual_dir / name)
        plt.close(figure)
        self.report.plots.setdefault(key, {})[kind] = name


# ---------------------------------------------------------------- finding and naming files
def find_files(data_dir: Path, stages: tuple[str, ...],
               patterns: tuple[str, ...]) -> dict[str, list[Path]]:
    """The files of each stage whose names match one of ``patterns``, sorted by name."""
    embeddings_dir = data_dir / "embeddings"
    # The CLIP drift stage's files share data/embeddings/ but have their own evaluation.
    clip_files = ("coco_caption_embeddings.npz", "gen_*_embeddings.npz")
    arrays = [p for p in embeddings_dir.glob("*.npz") if not p.name.endswith(".gen.npz")
              and not any(fnmatch.fnmatch(p.name, c) for c in clip_files)]
    found = {
        "embeddings": [p for p in arrays if "-to-" not in p.name],
        "plan1": list((data_dir / "samples" / "plan1").glob("*.npz")),
        "plan2": list(embeddings_dir.glob("*.gen.npz")),
        "plan2_images": list((data_dir / "samples" / "plan2").glob("*.npz")),
        "plan2_translation": [p for p in arrays if "-to-" in p.name],
    }
    return {stage: sorted(p for p in found[stage]
                          if any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns))
            for stage in stages}


def dataset_and_model(path: Path, meta: dict[str, Any]) -> tuple[str, str]:
    """``<ds>_<model>[.gen].npz`` -> (ds, model); the dataset in ``meta`` must agree."""
    stem = path.name.removesuffix(".npz").removesuffix(".gen")
    dataset, _, model = stem.partition("_")
    recorded = dataset_from_meta(meta)  # a folder data set is registered from it
    if (dataset not in DATASETS and recorded != dataset) or not model:
        raise StageError(f"{path}: name is not <dataset>_<model>.npz with a dataset among "
                         f"{', '.join(DATASETS)} or a folder its meta names")
    if recorded is not None and recorded != dataset:
        raise StageError(f"{path}: file name says dataset {dataset!r}, its meta says {recorded!r}")
    return dataset, model


def source_embeddings(path: Path, meta: dict[str, Any], dataset: str) -> Path:
    """The real embedding file a ``.gen.npz`` was trained on: meta's ``source_embeddings`` or the
    longest ``<ds>_<enc>.npz`` whose stem begins the generated file's name."""
    folder = path.parent
    named = meta.get("source_embeddings")
    if named:
        candidate = folder / Path(str(named)).name
        if not candidate.is_file():
            raise StageError(f"{path}: meta names source embeddings {named!r}, not found in "
                             f"{folder}")
        return candidate
    stem = path.name.removesuffix(".gen.npz")
    candidates = [p for p in folder.glob(f"{dataset}_*.npz") if not p.name.endswith(".gen.npz")
                  and stem.startswith(p.name.removesuffix(".npz") + "_")]
    if not candidates:
        raise StageError(f"{path}: no real embedding file <ds>_<enc>.npz in {folder} matches "
                         f"its name, and its meta has no 'source_embeddings'")
    return max(candidates, key=lambda p: len(p.name))


# ---------------------------------------------------------------- plots
def plot_subsample(n: int, points: int, seed: int) -> np.ndarray:
    """A seeded choice of at most ``points`` indices of n, in order."""
    if n <= points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, points, replace=False))


def scatter_by_class(points: np.ndarray, labels: np.ndarray, class_names: list[str],
                     title: str, note: str) -> plt.Figure:
    """A 2-D scatter coloured by class with a legend of class names."""
    figure, axis = plt.subplots(figsize=(7.5, 6))
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for index, name in enumerate(class_names):
        chosen = labels == index
        if chosen.any():
            axis.scatter(points[chosen, 0], points[chosen, 1], s=7, alpha=0.75,
                         color=colours(index % colours.N), label=name, linewidths=0)
    axis.set_title(title, fontsize=11)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2.5, frameon=False,
                title="class")
    figure.subplots_adjust(bottom=0.07)
    figure.text(0.01, 0.01, note, fontsize=8, color="0.35")
    return figure


def embedding_plots(z_test: np.ndarray, y_test: np.ndarray, class_names: list[str],
                    name: str, points: int, seed: int) -> dict[str, plt.Figure]:
    """t-SNE and PCA scatter plots of (a seeded subsample of) the test embeddings."""
    chosen = plot_subsample(len(z_test), points, seed)
    points, labels = z_test[chosen].astype(np.float64), y_test[chosen]
    tsne = TSNE(n_components=2, init="pca", learning_rate="auto",
                perplexity=min(30.0, (len(points) - 1) / 3), random_state=seed)
    pca = PCA(n_components=2, random_state=seed).fit(points)
    explained = pca.explained_variance_ratio_.sum()
    count = f"{len(points)} of {len(z_test)} test embeddings ({z_test.shape[1]}-d)"
    return {
        "tsne": scatter_by_class(tsne.fit_transform(points), labels, class_names,
                                 f"{name}: t-SNE of {count}",
                                 "t-SNE cluster sizes and gaps carry no meaning; distances are "
                                 f"measured in the embedding space (seed {seed})"),
        "pca": scatter_by_class(pca.transform(points), labels, class_names,
                                f"{name}: PCA of {count}",
                                f"first two principal components: {explained:.0%} of the variance"),
    }


def sample_grid(x_gen: np.ndarray, y_src: np.ndarray, class_names: list[str],
                title: str, per_class: int = 10) -> plt.Figure:
    """Up to ``per_class`` generated images per source class, one row per class."""
    figure, axes = plt.subplots(len(class_names), per_class,
                                figsize=(per_class * 0.8 + 1.2, len(class_names) * 0.8 + 0.6))
    axes = np.atleast_2d(axes)
    for row, name in enumerate(class_names):
        chosen = np.flatnonzero(y_src == row)[:per_class]
        for column in range(per_class):
            axis = axes[row, column]
            axis.axis("off")
            if column < len(chosen):
                image = x_gen[chosen[column]]
                axis.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        axes[row, 0].text(-0.15, 0.5, name, ha="right", va="center", fontsize=8,
                          transform=axes[row, 0].transAxes)
    figure.subplots_adjust(wspace=0.05, hspace=0.05, top=1 - 0.45 / figure.get_figheight())
    figure.suptitle(title, fontsize=10, y=1 - 0.1 / figure.get_figheight())
    return figure


def generated_overlay(z_gen: np.ndarray, z_test: np.ndarray, title: str, points: int,
                      seed: int) -> plt.Figure:
    """Generated and real test embeddings in the first two principal axes of the real ones."""
    pca = PCA(n_components=2, random_state=seed).fit(z_test)
    chosen_real = plot_subsample(len(z_test), points, seed)
    chosen_gen = plot_subsample(len(z_gen), points, seed)
    real_2d, gen_2d = pca.transform(z_test[chosen_real]), pca.transform(z_gen[chosen_gen])
    figure, axis = plt.subplots(figsize=(6.5, 6))
    axis.scatter(real_2d[:, 0], real_2d[:, 1], s=6, alpha=0.5, color="tab:blue", linewidths=0,
                 label=f"real test ({len(chosen_real)} of {len(z_test)})")
    axis.scatter(gen_2d[:, 0], gen_2d[:, 1], s=6, alpha=0.5, color="tab:orange", linewidths=0,
                 label=f"generated ({len(chosen_gen)} of {len(z_gen)})")
    axis.set_title(title, fontsize=11)
    axis.set_xlabel("PC 1 of the real test embeddings")
    axis.set_ylabel("PC 2")
    axis.legend(markerscale=3, loc="best")
    return figure


# ---------------------------------------------------------------- writing the results
def csv_rows(report: Report) -> list[list[Any]]:
    """One row per stage, dataset, model and numeric value; an interval as its two ends."""
    rows = []
    for stage, datasets in report.results.items():
        for dataset, models in datasets.items():
            for model, values in models.items():
                for name, value in values.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        rows.append([stage, dataset, model, name, value])
                    elif name.endswith("_ci95") and isinstance(value, list):
                        rows += [[stage, dataset, model, f"{name}_low", value[0]],
                                 [stage, dataset, model, f"{name}_high", value[1]]]
    return rows


def plot_links(report: Report, stage: str, dataset: str, model: str) -> str:
    entry = report.results.get(stage, {}).get(dataset, {}).get(model, {})
    links = report.plots.get((stage, dataset, model)) or entry.get("plots") or {}
    note = entry.get("plots_note")
    return ", ".join(f"[{kind}](../visualizations/{name})" for kind, name in links.items()) \
        or note or "—"


def image_columns(consistency: str, score_splits: int, space: str) -> tuple[list[str], Any]:
    """Header and row function of a summary table of generated images (Plan 1, Plan 2 decoded):
    the image metrics with their intervals and floors, the distribution metrics in the feature
    ``space`` the header names; ``consistency`` names the class-consistency column."""
    return (["n generated", f"FID, {space} features (floor: train vs test)",
             f"KID, {space} features (floor)",
             f"IS-style score, evaluator classifier, {score_splits} splits (real)",
             f"precision, {space} (floor)", "recall (floor)", "density (floor)",
             "coverage (floor)", f"Vendi, {space} (real)", consistency,
             f"intra-class FID, {space} (floor)", "classifier accuracy score (real)", "plots"],
            lambda v: [number(v["n_generated"]), cell(v, "fid", "fid_floor", "floor"),
                       cell(v, "kid", "kid_floor", "floor", 4),
                       cell(v, "score", "score_real", "real"),
                       *[cell(v, m, f"{m}_floor", "floor")
                         for m in ("precision", "recall", "density", "coverage")],
                       cell(v, "vendi", "vendi_real", "real", 2),
                       cell(v, "class_consistency", "class_consistency_real", "real"),
                       cell(v, "intra_fid", "intra_fid_floor", "floor", 2),
                       cell(v, "cas", "cas_real", "real")])


def summary_markdown(report: Report, stages: tuple[str, ...],
                     s: scoring.ScoringSettings, kept: list[str] | None = None) -> str:
    """summary.md: one table per stage, floors beside metrics, links to plots, skipped files;
    the rows kept from earlier runs (``kept``) are listed, with when they were evaluated."""
    out = io.StringIO()
    out.write(f"# Evaluation summary\n\nWritten by `evaluate.py` at "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}; seed {s.seed}; stages "
              f"{', '.join(stages)}. Numbers are in `metrics.json` and "
              f"`metrics.csv`.\n\n")
    if kept:
        out.write("Rows kept from earlier runs (not evaluated by this one; their settings are "
                  "those runs'): " + "; ".join(kept) + ".\n\n")
    titles = [v.get("feature_space_title") for models in report.results.get("plan1", {}).values()
              for v in models.values()] + [
        v.get("feature_space_title") for models in report.results.get("plan2_images", {}).values()
        for v in models.values()]
    space = next((t for t in titles if t), "evaluator CNN")
    intervals = (f"A value ± h: h is half the 95% interval (normal approximation) from "
                 f"{s.bootstrap} bootstrap resamples of the generated samples (the classifier "
                 f"accuracy score: of the test images it is scored on); KID ± its standard "
                 f"deviation over {s.kid_subsets} subsets of {s.kid_subset_size}. "
                 if s.bootstrap else f"KID ± its standard deviation over {s.kid_subsets} "
                 f"subsets of {s.kid_subset_size}. ")
    tables = {
        "embeddings": (
            ["dims", f"k-NN acc (k={s.knn_k})", "linear probe acc", "k-means ARI",
             "k-means NMI", "silhouette*", "Calinski-Harabasz*", "Davies-Bouldin* (lower "
             "better)", "plots"],
            lambda v: [number(v["dims"]), number(v["knn_accuracy"]),
                       number(v["linear_probe_accuracy"]), number(v["kmeans_ari"]),
                       number(v["kmeans_nmi"]), number(v["silhouette"]),
                       number(v["calinski_harabasz"], 1), number(v["davies_bouldin"])]),
        "plan1": image_columns("class consistency (real source images)", s.score_splits,
                               space),
        "plan2": (
            ["source embeddings", "n generated",
             "Fréchet distance, embedding space (floor: train vs test)", "KID (floor)",
             "precision (floor)", "recall (floor)", "density (floor)", "coverage (floor)",
             "Vendi (real)", f"k-NN class consistency, k={s.knn_k} (real test k-NN acc)",
             "TSTR k-NN acc (TRTR)", "intra-class Fréchet distance (floor)",
             "k-means ARI, class asked (real test)",
             "silhouette* (real)", "Calinski-Harabasz* (real)", "Davies-Bouldin* (real)",
             "plots"],
            lambda v: [v["source_embeddings"], number(v["n_generated"]),
                       cell(v, "frechet_distance", "frechet_distance_floor", "floor"),
                       cell(v, "kid", "kid_floor", "floor", 4),
                       *[cell(v, m, f"{m}_floor", "floor")
                         for m in ("precision", "recall", "density", "coverage")],
                       cell(v, "vendi", "vendi_real", "real", 2),
                       cell(v, "knn_class_consistency", "knn_accuracy_real", "real"),
                       cell(v, "tstr_knn_accuracy", "trtr_knn_accuracy", "TRTR"),
                       cell(v, "intra_frechet_distance", "intra_frechet_distance_floor",
                             "floor"),
                       *[cell(v, m, f"{m}_real", "real")
                         for m in ("kmeans_ari", "silhouette", "calinski_harabasz",
                                   "davies_bouldin")]]),
        "plan2_images": image_columns("class consistency, class asked (real test images)",
                                      s.score_splits, space),
        "plan2_translation": (
            ["source embeddings", "target embeddings", "n test",
             "cosine to the true target (paired linear map)",
             f"k-NN acc, k={s.knn_k} (target's own)", "k-NN acc of the paired linear map",
             "plots"],
            lambda v: [v["source_embeddings"], v["target_embeddings"], number(v["n_test"]),
                       cell(v, "cosine", "cosine_paired_linear", "paired linear"),
                       cell(v, "knn_accuracy", "knn_accuracy_target", "target"),
                       number(v["knn_accuracy_paired_linear"])]),
    }
    notes = {
        "embeddings": "k-NN and probe: fitted on train, scored on test. k-means (k = number of "
                      "classes), silhouette, Calinski-Harabasz and Davies-Bouldin: on the test "
                      "set with the true labels. *Computed in each embedding's own space: "
                      "not comparable across rows with different spaces. Rows marked "
                      "(baseline) are PCA of the pixels, which a learned embedding should beat.",
        "plan1": f"FID, KID, precision/recall/density/coverage, Vendi and intra-class FID are "
                 f"computed on {space} features"
                 + (" (the evaluator CNN of the dataset, see below: not comparable with "
                    "published FIDs, which use Inception)" if space == "evaluator CNN" else "")
                 + "; the IS-style score and class consistency on the evaluator's logits. "
                 + intervals + "Floors: a seeded subset of as many training images as "
                 f"generated ones, against the test images (precision/recall k={s.precision_k}, "
                 f"density/coverage k={s.density_k}). Class consistency: the evaluator's class "
                 "of each generated image equals the class of the test image whose embedding it "
                 "came from.",
        "plan2": "Against the real test embeddings of the source embedding file. " + intervals
                 + "Floors: a "
                 "seeded subset of as many training embeddings as generated ones. k-NN class "
                 "consistency: the k-NN class (fitted on real train embeddings) of each "
                 "generated embedding equals the class asked for. TSTR: a k-NN fitted on the "
                 "generated embeddings and their classes scores the real test embeddings; "
                 "TRTR: the same with as many real training embeddings. k-means (k = number of "
                 "classes) ARI against the classes asked for, and the cluster indices of those "
                 "classes, beside the real test embeddings' values with their true classes "
                 "(these columns: conditional generators only). *In the embedding's own "
                 "space.",
        "plan2_images": "Generated embeddings decoded into images (by the encoder's decoder or "
                        "a Plan 1 generator), scored like Plan 1 images on the evaluator CNN's "
                        "features (not Inception). Floors: as many training images as generated "
                        "ones, against the test images. Class consistency: the evaluator's "
                        "class of each image equals the class asked for (conditional "
                        "generators); real: the evaluator's accuracy on the test images.",
        "plan2_translation": "Test embeddings of the source encoder translated into the target "
                             "encoder's space by a GAN trained without pairs, against the "
                             "target's true embeddings of the same images. Cosine: in the "
                             "target space standardised with its train statistics. k-NN: "
                             "fitted on the target's train embeddings. The paired linear map "
                             "is a least-squares fit on paired train embeddings: a reference "
                             "that sees the pairs the GAN never sees.",
    }
    for stage in stages:
        header, cells = tables[stage]
        out.write(f"## {STAGE_TITLES[stage]}\n\n{notes[stage]}\n\n")
        rows = [(dataset, model, values)
                for dataset, models in report.results.get(stage, {}).items()
                for model, values in models.items()]
        if not rows:
            out.write("No file of this stage was evaluated.\n\n")
            continue
        tagged = any("settings_unlike_untagged" in values for _, _, values in rows)
        extra = [VARIANT_COLUMN] if tagged else []
        out.write("| dataset | model | " + " | ".join(header + extra) + " |\n")
        out.write("| --- " * (len(header) + len(extra) + 2) + "|\n")
        for dataset, model, values in rows:
            row = [dataset, model, *cells(values), plot_links(report, stage, dataset, model),
                   *([values.get("settings_unlike_untagged", "")] if tagged else [])]
            out.write("| " + " | ".join(row) + " |\n")
        out.write("\n")
    if report.evaluators:
        out.write("## Evaluator classifiers\n\n| dataset | test accuracy | target | epochs | "
                  "checkpoint |\n| --- | --- | --- | --- | --- |\n")
        for dataset, info in report.evaluators.items():
            target = info["target_accuracy"]
            flag = "" if target is None or info["test_accuracy"] >= target else " **below target**"
            out.write(f"| {dataset} | {info['test_accuracy']:.4f}{flag} | "
                      f"{'—' if target is None else target} | {info['settings']['epochs']} | "
                      f"`{info['checkpoint']}` |\n")
        out.write("\n")
    undefined = [(stage, dataset, model, name, reason)
                 for stage, datasets in report.results.items()
                 for dataset, models in datasets.items() for model, values in models.items()
                 for name, reason in values.get("undefined", {}).items()]
    if undefined:
        out.write("## Undefined values\n\n")
        for stage, dataset, model, name, reason in undefined:
            out.write(f"- {stage} {dataset} {model}: {name} is undefined ({reason})\n")
        out.write("\n")
    out.write("## Skipped files\n\n")
    if not report.skipped:
        out.write("None.\n")
    for item in report.skipped:
        out.write(f"- `{item.file}` ({item.stage}): {item.reason}\n")
    return out.getvalue()


# The metrics a comparison of tagged runs shows per stage (every one is in metrics.json).
HEADLINES = {
    "embeddings": ("knn_accuracy", "linear_probe_accuracy", "kmeans_ari"),
    "plan1": ("fid", "fid_floor", "recall", "class_consistency"),
    "plan2": ("frechet_distance", "frechet_distance_floor", "precision", "recall"),
    "plan2_images": ("fid", "fid_floor", "recall", "class_consistency"),
    "plan2_translation": ("cosine", "knn_accuracy"),
}


def comparison_markdown(report: Report, tags: tuple[str, ...]) -> str:
    """comparison.md: per stage, the rows of the runs tagged ``tags`` and of the untagged runs
    of the same names, their headline metrics side by side with each tagged run's settings
    unlike the untagged run's."""
    out = io.StringIO()
    out.write(f"# Tagged runs side by side: {', '.join(tags)}\n\nWritten by `evaluate.py "
              f"--compare {','.join(tags)}`; every number is in `metrics.json` (with its "
              f"interval and sample counts).\n\n")
    for stage, headline in HEADLINES.items():
        rows = []
        for dataset, models in report.results.get(stage, {}).items():
            chosen = {model for model in models for tag in tags if f"@{tag}" in model}
            bases = {model.replace(f"@{tag}", "", 1) for model in chosen for tag in tags}
            rows += [(dataset, model, models[model]) for model in sorted(models)
                     if model in chosen or model in bases]
        if not rows:
            continue
        out.write(f"## {STAGE_TITLES[stage]}\n\n| dataset | model | "
                  + " | ".join(headline) + f" | {VARIANT_COLUMN} |\n"
                  + "| --- " * (len(headline) + 3) + "|\n")
        for dataset, model, values in rows:
            cells = [number(values.get(key)) if key in values else "—" for key in headline]
            out.write(f"| {dataset} | {model} | " + " | ".join(cells)
                      + f" | {values.get('settings_unlike_untagged', '(untagged)')} |\n")
        out.write("\n")
    if out.getvalue().count("## ") == 0:
        out.write("No evaluated file carries these tags.\n")
    return out.getvalue()


# ---------------------------------------------------------------- the stage
def evaluate_baseline(dataset: str, ev: Evaluation) -> None:
    """PCA of the pixels, evaluated like an embedding: the row a learned embedding should beat."""
    data = load_dataset(dataset, ev.run.data_dir)
    components = ev.run.baseline_components
    pixels = int(np.prod(data.shape))
    if components > pixels:
        raise SettingsError(f"--baseline-components {components}: more than the {pixels} pixel "
                         f"values of a {dataset} image")
    z_train, z_test = scoring.pixel_pca(data, components, ev.scoring.seed)
    ev.report.add("embeddings", dataset, f"pixels_pca{components} (baseline)",
                  {"file": None, **scoring.embedding_metrics(z_train, data.y_train, z_test,
                                                             data.y_test, ev.scoring)})


def evaluate_embedding_file(path: Path, ev: Evaluation) -> None:
    """Embedding metrics and t-SNE / PCA plots of one ``<ds>_<enc>.npz``."""
    arrays = load_embeddings(path)
    dataset, model = dataset_and_model(path, arrays["meta"])
    check_labels(path, {"y_train": arrays["y_train"], "y_test": arrays["y_test"]}, dataset)
    values = scoring.embedding_metrics(arrays["z_train"], arrays["y_train"], arrays["z_test"],
                                       arrays["y_test"], ev.scoring)
    constant = np.ptp(arrays["z_test"], axis=0).max(initial=0.0) == 0
    if ev.run.plots and constant:  # scikit-learn's t-SNE crashes (SIGSEGV) on identical points
        values["plots_note"] = "no plots: every test embedding is the same vector"
    ev.report.add("embeddings", dataset, model, {"file": path.name, **values}, arrays["meta"])
    if ev.run.plots and not constant:
        figures = embedding_plots(arrays["z_test"], arrays["y_test"], class_names_of(dataset),
                                  f"{dataset} {model}", ev.run.plot_points, ev.scoring.seed)
        for kind, figure in figures.items():
            ev.save_plot(figure, ("embeddings", dataset, model), kind,
                         f"{dataset}_{model}_{kind}.png")


def evaluate_plan1_file(path: Path, ev: Evaluation) -> None:
    """Image metrics of one ``samples/plan1/<ds>_<enc>_<gan>.npz`` and a grid of its images."""
    arrays = load_npz(path, PLAN1_SAMPLE_KEYS, aligned=(("x_gen", "idx_src", "y_src"),))
    dataset, model = dataset_and_model(path, arrays["meta"])
    check_images(arrays["x_gen"], f"{path}: x_gen")
    check_labels(path, {"y_src": arrays["y_src"]}, dataset)
    if dataset not in ev.real_images:  # checked before training an evaluator for a broken file
        scoring.check_sources(path, arrays, load_dataset(dataset, ev.run.data_dir), ev.scoring)
    real = ev.images_of(dataset)
    scoring.check_sources(path, arrays, real.data, ev.scoring)
    values = scoring.plan1_metrics(path, arrays, real, ev.device, ev.scoring)
    ev.report.add("plan1", dataset, model, {"file": path.name, **values}, arrays["meta"])
    if ev.run.plots:
        figure = sample_grid(arrays["x_gen"], arrays["y_src"], class_names_of(dataset),
                             f"{dataset} {model}: generated images by source class")
        ev.save_plot(figure, ("plan1", dataset, model), "samples",
                     f"plan1_{dataset}_{model}_samples.png")


def evaluate_plan2_file(path: Path, ev: Evaluation) -> None:
    """Embedding-distribution metrics of one ``<ds>_<enc>_<gan>.gen.npz``."""
    arrays = load_npz(path, GENERATED_EMBEDDING_KEYS)
    dataset, model = dataset_and_model(path, arrays["meta"])
    check_classes_asked(path, arrays, "z_gen", dataset)
    source = source_embeddings(path, arrays["meta"], dataset)
    real = ev.embeddings_of(source)
    values = scoring.plan2_metrics(path, arrays, real, ev.scoring)
    ev.report.add("plan2", dataset, model, {"file": path.name, "source_embeddings": source.name,
                                            **values}, arrays["meta"])
    if ev.run.plots:
        figure = generated_overlay(arrays["z_gen"].astype(np.float64),
                                   real["z_test"].astype(np.float64),
                                   f"{dataset} {model}: generated vs real embeddings",
                                   ev.run.plot_points, ev.scoring.seed)
        ev.save_plot(figure, ("plan2", dataset, model), "pca", f"plan2_{dataset}_{model}_pca.png")


def check_classes_asked(path: Path, arrays: dict[str, Any], key: str, dataset: str) -> None:
    """``y_gen``, where present, must hold one class index of ``dataset`` per row of ``key``."""
    if "y_gen" not in arrays:
        return
    y_gen = arrays["y_gen"]
    check_array(path, "y_gen", y_gen, 1, "iu")
    if len(y_gen) != len(arrays[key]):
        raise StageError(f"{path}: y_gen has shape {y_gen.shape}, expected "
                         f"({len(arrays[key])},) to match {key}")
    check_labels(path, {"y_gen": y_gen}, dataset)


def evaluate_plan2_image_file(path: Path, ev: Evaluation) -> None:
    """Image metrics of one ``samples/plan2/<ds>_<enc>_<gan>[_<decoder>].npz`` (generated
    embeddings decoded into images; ``y_gen`` the classes asked for, when conditional)."""
    arrays = load_npz(path, PLAN2_IMAGE_KEYS)
    dataset, model = dataset_and_model(path, arrays["meta"])
    x_gen = check_images(arrays["x_gen"], f"{path}: x_gen")
    check_classes_asked(path, arrays, "x_gen", dataset)
    scoring.check_image_count(path, len(x_gen), ev.scoring)
    real = ev.images_of(dataset)
    asked = arrays["y_gen"].astype(np.int64) if "y_gen" in arrays else None
    values, logits = scoring.image_metrics(path, x_gen, real, ev.device, ev.scoring, asked)
    predicted = logits.argmax(axis=1)
    if asked is not None:
        # The evaluator on the real test images with their labels: the ceiling.
        values["class_consistency_real"] = metrics.class_consistency(
            real.test_logits.argmax(axis=1), real.data.y_test)
    ev.report.add("plan2_images", dataset, model, {"file": path.name, **values},
                  arrays["meta"])
    if ev.run.plots:
        asked = "y_gen" in arrays
        figure = sample_grid(x_gen, arrays["y_gen"] if asked else predicted,
                             class_names_of(dataset), f"{dataset} {model}: generated images by "
                             f"{'class asked for' if asked else 'evaluator class'}")
        ev.save_plot(figure, ("plan2_images", dataset, model), "samples",
                     f"plan2_{dataset}_{model}_samples.png")


def evaluate_translation_file(path: Path, ev: Evaluation) -> None:
    """Translation metrics of one ``<ds>_<encA>-to-<encB>_<gan>.npz`` against the true
    embeddings of the same test images (the files its meta names)."""
    arrays = load_npz(path, TRANSLATION_KEYS, aligned=(("z_translated", "y_test"),))
    dataset, model = dataset_and_model(path, arrays["meta"])
    named = {}
    for role in ("source_embeddings", "target_embeddings"):
        if not arrays["meta"].get(role):
            raise StageError(f"{path}: its meta does not name its {role} file")
        named[role] = path.parent / Path(str(arrays["meta"][role])).name
        if not named[role].is_file():
            raise StageError(f"{path}: meta names {role} {named[role].name!r}, not found in "
                             f"{path.parent}")
    source = ev.embeddings_of(named["source_embeddings"])
    target = ev.embeddings_of(named["target_embeddings"])
    for role, real in (("source", source), ("target", target)):
        if not np.array_equal(real["y_test"], arrays["y_test"]):
            raise StageError(f"{path}: y_test differs from the {role} file's test labels: the "
                             f"translated embeddings are not of those test images")
    values = scoring.translation_metrics(path, arrays["z_translated"], source, target,
                                         ev.scoring)
    ev.report.add("plan2_translation", dataset, model,
                  {"file": path.name, "source_embeddings": named["source_embeddings"].name,
                   "target_embeddings": named["target_embeddings"].name, **values},
                  arrays["meta"])
    if ev.run.plots:
        figure = generated_overlay(arrays["z_translated"].astype(np.float64),
                                   target["z_test"].astype(np.float64),
                                   f"{dataset} {model}: translated vs true target embeddings",
                                   ev.run.plot_points, ev.scoring.seed)
        ev.save_plot(figure, ("plan2_translation", dataset, model), "pca",
                     f"plan2_{dataset}_{model}_pca.png")


EVALUATE_FILE = {"embeddings": evaluate_embedding_file, "plan1": evaluate_plan1_file,
                 "plan2": evaluate_plan2_file, "plan2_images": evaluate_plan2_image_file,
                 "plan2_translation": evaluate_translation_file}


def evaluate_all(files: dict[str, list[Path]], ev: Evaluation) -> int:
    """The pixel baselines and every file, each broken file reported and skipped; the number of
    files evaluated."""
    report = ev.report
    named = set(DATASETS)
    for path in files.get("embeddings", []):  # a folder data set's baseline needs its meta
        with contextlib.suppress(StageError):  # a broken file is reported in its turn
            named.add(dataset_from_meta(load_meta(path)))
    baseline_datasets = sorted({p.name.partition("_")[0] for p in files.get("embeddings", [])}
                               & named) if ev.run.baseline_components else []

    def skip(stage: str, path: Path, err: Exception) -> None:
        reason = str(err).removeprefix(f"{path}: ")
        if not isinstance(err, StageError):
            reason = f"{type(err).__name__}: {reason}"
        reason = reason.splitlines()[0] if reason.strip() else type(err).__name__
        print(f"skipped {path}: {reason}", file=sys.stderr)
        report.skipped.append(Skipped(stage, str(path), reason))

    for dataset in baseline_datasets:
        start = time.time()
        try:
            evaluate_baseline(dataset, ev)
        except StageError as err:
            print(f"no pixel baseline for {dataset}: {err}", file=sys.stderr)
            report.skipped.append(Skipped("embeddings", f"{dataset} pixel baseline", str(err)))
            continue
        print(f"[embeddings] {dataset} pixel PCA baseline: {time.time() - start:.1f} s")
    evaluated = 0
    for stage in ev.run.stages:
        if not files[stage]:
            print(f"[{stage}] no files")
        for path in files[stage]:
            start = time.time()
            try:
                EVALUATE_FILE[stage](path, ev)
            except PER_FILE_ERRORS as err:
                skip(stage, path, err)
                continue
            evaluated += 1
            print(f"[{stage}] {path.name}: {time.time() - start:.1f} s")
    return evaluated


# Where each stage's files are, relative to --data-dir.
STAGE_FOLDERS = {"embeddings": "embeddings", "plan1": "samples/plan1", "plan2": "embeddings",
                 "plan2_images": "samples/plan2", "plan2_translation": "embeddings"}


def keep_earlier_results(report: Report, path: Path, data_dir: Path,
                         files: dict[str, list[Path]]) -> list[str]:
    """Add to ``report`` the rows of the earlier metrics.json at ``path`` that this run did not
    evaluate and whose files are still there (a run of some stages or --files updates those and
    keeps the rest), and the evaluators and skipped files of stages it did not run; returns
    what was kept, as "stage dataset model (evaluated at time)"."""
    if not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(earlier, dict) or earlier.get("meta", {}).get("script") != \
                Path(__file__).name:
            raise ValueError("not written by evaluate.py")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError) as err:
        print(f"warning: {path}: not readable as an earlier evaluate.py result ({err}); it is "
              f"replaced by this run's results alone")
        return []
    run_files = {p.name for paths in files.values() for p in paths}
    kept = []
    for stage, folder in STAGE_FOLDERS.items():
        datasets = earlier.get(stage)
        for dataset, models in (datasets.items() if isinstance(datasets, dict) else ()):
            for model, entry in (models.items() if isinstance(models, dict) else ()):
                if not isinstance(entry, dict) or model in report.results.get(stage, {}).get(
                        dataset, {}) or entry.get("file") in run_files:
                    continue
                if entry.get("file") is not None and \
                        not (data_dir / folder / str(entry["file"])).is_file():
                    continue  # its file is gone: the row would describe nothing
                report.add(stage, dataset, model, entry)
                kept.append(f"{stage} {dataset} {model} (evaluated at "
                            f"{entry.get('evaluated_at', 'an unknown time')})")
    for dataset, evaluator in (earlier.get("evaluators") or {}).items():
        report.evaluators.setdefault(dataset, evaluator)
    report.skipped += [Skipped(**item) for item in earlier.get("skipped") or []
                       if isinstance(item, dict) and item.get("stage") not in files
                       and set(item) == {"stage", "file", "reason"}]
    return kept


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    run = pick(EvaluateSettings, values)
    score_settings = pick(scoring.ScoringSettings, values, features=FeatureSpaceSettings(
        values["feature_space"], values["feature_model"], values["feature_batch_size"]))
    evaluator = scoring.EvaluatorSettings(
        data_dir=run.data_dir, epochs=values["evaluator_epochs"],
        batch_size=values["evaluator_batch_size"],
        learning_rate=values["evaluator_learning_rate"], seed=values["seed"])
    data_dir = Path(run.data_dir)
    if not data_dir.is_dir():
        raise StageError(f"--data-dir {data_dir}: no such folder (the other stages write there)")
    files = find_files(data_dir, run.stages, run.files)
    if not any(files.values()):
        raise StageError(f"no file under {data_dir} matches --files {','.join(run.files)} for "
                         f"the stages {', '.join(run.stages)}; nothing evaluated, earlier results "
                         f"are left as they were")
    hold_output_lock(data_dir / ".lock-evaluate", "evaluate.py")  # a refused run writes nothing
    results_dir = ensure_output_dir(data_dir / "results")
    visual_dir = ensure_output_dir(data_dir / "visualizations")
    seed_everything(values["seed"])
    limit_cpu_threads(values["threads"])
    ev = Evaluation(run, score_settings, evaluator, pick_device(values["device"]), visual_dir)
    evaluated = evaluate_all(files, ev)
    report = ev.report
    if not evaluated:
        raise StageError(f"every one of the {len(report.skipped)} file(s) was skipped (see the "
                         f"lines above); nothing evaluated, earlier results are left as they were")
    for dataset, real in ev.real_images.items():
        report.evaluators[dataset] = {
            "test_accuracy": real.evaluator.test_accuracy,
            "target_accuracy": real.evaluator.target_accuracy,
            "checkpoint": str(real.evaluator.checkpoint), "settings": real.evaluator.settings}

    meta = make_meta(__file__, values, None, values["seed"])
    for (stage, dataset, model), links in report.plots.items():
        report.results[stage][dataset][model]["plots"] = links
    for datasets in report.results.values():
        for models in datasets.values():
            for entry in models.values():
                entry["evaluated_at"] = meta["time"]
    report.note_variants()
    kept = keep_earlier_results(report, results_dir / "metrics.json", data_dir, files)
    document = {**report.results, "evaluators": report.evaluators,
                "skipped": [vars(s) for s in report.skipped], "kept_from_earlier_runs": kept,
                "meta": meta}
    write_text(results_dir / "metrics.json", json.dumps(document, indent=2, default=str,
                                                        allow_nan=False) + "\n")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["stage", "dataset", "model", "metric", "value"])
    writer.writerows(csv_rows(report))
    write_text(results_dir / "metrics.csv", table.getvalue())
    write_text(results_dir / "summary.md",
               summary_markdown(report, run.stages, score_settings, kept))
    if run.compare:
        write_text(results_dir / "comparison.md", comparison_markdown(report, run.compare))
    print(f"wrote {results_dir / 'metrics.json'}, metrics.csv, summary.md"
          f"{', comparison.md' if run.compare else ''}"
          f"{f' (kept {len(kept)} row(s) of earlier runs)' if kept else ''}"
          f"{f'; skipped {len(report.skipped)} file(s)' if report.skipped else ''}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
