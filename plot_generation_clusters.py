"""Show how the images of successive generations drift in CLIP space, relative to their captions.

Reads the files of extract_generation_embeddings.py and writes
- VISUALIZATION_DIR/generation_clusters_tsne_clean.png: one joint t-SNE of the captions and every
  generation (captions as blue circles, each generation as squares in its own colour, a circle per
  group, arrows between consecutive generation centres, the total variance of each generation);
- VISUALIZATION_DIR/generation_metrics_tsne_clean.png: bar charts of the drift metrics;
- VISUALIZATION_DIR/generation_clusters_pca.png: a PCA view (captions with images, images alone);
- RESULTS_DIR/generation_metrics.json, and a table printed at the end.
Every number is computed in the CLIP embedding space (t-SNE keeps neighbourhoods, not distances or
spreads): centre movement between consecutive generations and from first to last, total variance
(trace of the covariance), mean image-caption cosine and CLIPScore (torchmetrics' convention,
max(100 * mean cosine, 0)), diversity, caption-to-image gap, Fréchet distance to the first
generation. t-SNE circles and arrows are drawing aids only. A collapsed first generation (all
images identical) is refused: every ratio to it would be undefined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.colors
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from dataio.artifacts import (
    ensure_output_dir,
    hold_output_lock,
    holds_output_locks,
    load_npz,
    make_meta,
    save_figure,
    weights_fingerprint,
    write_text,
)
from evaluation.generation_metrics import (
    centre_distance,
    check_generations,
    clipscore,
    frechet,
    mean_cosine,
    mean_pairwise_cosine_distance,
    modality_gap,
    reference_drift,
    split_half_frechet,
    total_variance,
)
from runtime.settings import SettingsError, configure, pick
from runtime.stage import StageError, pick_device, run_stage, seed_everything

# ---------------------------------------------------------------- settings
EMBEDDING_DIR = "data/embeddings"  # where extract_generation_embeddings.py wrote its files
GENERATIONS = (0, 4, 10)  # generations to compare, in order; the first is the reference [>= 0]
VISUALIZATION_DIR = "data/visualizations"  # where the PNG figures go
RESULTS_DIR = "data/results"  # where generation_metrics.json goes
SEED = 0  # seeds t-SNE, PCA and the split-half Fréchet floor [seed]
PERPLEXITY = 30.0  # t-SNE perplexity; lowered to (points - 1) / 3 for small sets [> 0]
TSNE_PCA_DIMS = 0  # 0: t-SNE on cosine distances; k > 0: PCA to k dims, then Euclidean [>= 0]
TSNE_MAX_ITER = 1000  # t-SNE optimisation steps [>= 250]
NORM_TOLERANCE = 1e-3  # largest allowed | ||x|| - 1 | of a stored embedding [> 0, < 1]
CAPTION_COLOUR = "tab:blue"  # matplotlib colour of the caption points (a name or #rrggbb)
FIGURE_DPI = 150  # resolution of the PNG figures [>= 10, <= 1200]
REFERENCE_DIR = ""  # real images named by image id, embedded as the reference ('': none)
MODEL = ""  # the CLIP that embeds the reference images ('': the one the captions name)
DEVICE = "auto"  # where the reference images are embedded: auto, cuda, mps or cpu
BATCH_SIZE = 64  # reference images per forward pass [>= 1]
# ---------------------------------------------------------------- end of settings

# The least total variance a reference generation may have: the spread of unit vectors that
# differ by rounding is many orders of magnitude smaller, of any set of images' far larger.
MIN_REFERENCE_VARIANCE = 1e-4



@dataclass(frozen=True)
class DriftPlotSettings:
    """What this run reads, draws and writes."""

    embedding_dir: str
    generations: tuple[int, ...]
    visualization_dir: str
    results_dir: str
    seed: int
    perplexity: float
    tsne_pca_dims: int
    tsne_max_iter: int
    norm_tolerance: float
    caption_colour: str
    figure_dpi: int
    reference_dir: str
    model: str
    batch_size: int


CAPTION_KEYS = {"text_embeddings": (2, "f"), "captions": (1, "U"), "image_ids": (1, "iu")}
GENERATION_KEYS = {"image_embeddings": (2, "f"), "text_embeddings": (2, "f"), "captions": (1, "U"),
                   "image_files": (1, "U"), "image_ids": (1, "iu")}


def check_normalised(path: Path, key: str, embeddings: np.ndarray, tolerance: float) -> None:
    """Raise unless every row of ``embeddings`` has unit Euclidean norm."""
    worst = float(np.abs(np.linalg.norm(embeddings.astype(np.float64), axis=1) - 1.0).max())
    if worst > tolerance:
        raise StageError(f"{path}: key {key!r} is not L2-normalised (a norm is off by {worst:.3g}"
                         f"); run extract_generation_embeddings.py again")


def load_captions(path: Path, tolerance: float) -> dict[str, Any]:
    """The caption file, checked: keys, lengths, finite values, unit norms, unique ids."""
    data = load_npz(path, CAPTION_KEYS, aligned=(tuple(CAPTION_KEYS),))
    if len(data["text_embeddings"]) < 2:
        raise StageError(f"{path}: holds {len(data['text_embeddings'])} caption(s); at least 2 "
                         f"are needed")
    check_normalised(path, "text_embeddings", data["text_embeddings"], tolerance)
    if len(np.unique(data["image_ids"])) != len(data["image_ids"]):
        raise StageError(f"{path}: key 'image_ids' repeats an id")
    return data


def load_generation(path: Path, captions: dict[str, Any], caption_path: Path,
                    tolerance: float) -> dict[str, Any]:
    """One generation file, checked, and checked against the caption file it was paired with."""
    data = load_npz(path, GENERATION_KEYS, aligned=(tuple(GENERATION_KEYS),))
    if len(data["image_ids"]) < 2:
        raise StageError(f"{path}: holds {len(data['image_ids'])} image(s); at least 2 are needed")
    for key in ("image_embeddings", "text_embeddings"):
        check_normalised(path, key, data[key], tolerance)
    if len(np.unique(data["image_ids"])) != len(data["image_ids"]):
        repeated = np.unique(data["image_ids"], return_counts=True)
        twice = [int(i) for i, n in zip(*repeated, strict=True) if n > 1]
        raise StageError(f"{path}: key 'image_ids' repeats id(s) {twice[:5]}; one image per id "
                         f"is expected: run extract_generation_embeddings.py again")
    dims = captions["text_embeddings"].shape[1]
    if data["image_embeddings"].shape[1] != dims or data["text_embeddings"].shape[1] != dims:
        raise StageError(f"{path}: embeddings have {data['image_embeddings'].shape[1]} dims, "
                         f"{caption_path} has {dims}")
    row_of_id = {int(i): row for row, i in enumerate(captions["image_ids"])}
    missing = [int(i) for i in data["image_ids"] if int(i) not in row_of_id]
    if missing:
        raise StageError(f"{path}: image id(s) {missing[:5]} are not in {caption_path}; the two "
                         f"files come from different runs: run extract_generation_embeddings.py")
    rows = [row_of_id[int(i)] for i in data["image_ids"]]
    if not np.allclose(data["text_embeddings"], captions["text_embeddings"][rows], atol=1e-5):
        raise StageError(f"{path}: its caption embeddings differ from those in {caption_path} "
                         f"(another model or run?): run extract_generation_embeddings.py again")
    model, caption_model = data["meta"].get("model"), captions["meta"].get("model")
    if model and caption_model and model != caption_model:
        raise StageError(f"{path} was embedded with {model}, {caption_path} with {caption_model}")
    return data


def common_rows(ids_a: np.ndarray, ids_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into a and b of the image ids both hold, in ascending id order."""
    _, rows_a, rows_b = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    return rows_a, rows_b


def drift_metrics(captions: dict[str, Any], generations: dict[int, dict[str, Any]],
                  seed: int) -> dict[str, Any]:
    """Per-generation metrics and centre movements, all in the embedding space."""
    order = list(generations)
    first = generations[order[0]]
    first_variance = total_variance(first["image_embeddings"])
    if first_variance <= 0.0:
        raise ValueError(f"generation {order[0]}, the reference, is collapsed (total variance 0)")
    per_generation = []
    for generation, data in generations.items():
        images, texts = data["image_embeddings"], data["text_embeddings"]
        rows_first, rows_here = common_rows(first["image_ids"], data["image_ids"])
        entry = {"generation": generation, "n_images": len(images),
                 "mean_cosine": mean_cosine(images, texts),
                 "clipscore": clipscore(images, texts),
                 "diversity": mean_pairwise_cosine_distance(images),
                 "caption_image_gap": modality_gap(texts, images),
                 "total_variance": total_variance(images),
                 "total_variance_ratio_to_first": total_variance(images) / first_variance,
                 "centre_distance_to_first": centre_distance(first["image_embeddings"], images),
                 "frechet_to_first": frechet(first["image_embeddings"], images),
                 "frechet_n_first": len(first["image_embeddings"]), "frechet_n": len(images),
                 "n_ids_shared_with_first": len(rows_first)}
        if len(rows_first) >= 4:
            value, floor, half = split_half_frechet(first["image_embeddings"][rows_first],
                                                    images[rows_here], seed)
            entry.update(frechet_split_half=value, frechet_split_half_floor=floor,
                         frechet_split_half_n=half)
        per_generation.append(entry)
    movements = [{"from": a, "to": b, "kind": "consecutive",
                  "centre_distance": centre_distance(generations[a]["image_embeddings"],
                                                     generations[b]["image_embeddings"])}
                 for a, b in zip(order, order[1:], strict=False)]
    if len(order) > 2:
        movements.append({"from": order[0], "to": order[-1], "kind": "first_to_last",
                          "centre_distance": per_generation[-1]["centre_distance_to_first"]})
    return {"captions": {"n": len(captions["text_embeddings"]),
                         "total_variance": total_variance(captions["text_embeddings"])},
            "generations": per_generation, "movements": movements}


def joint_tsne(points: np.ndarray, seed: int, perplexity: float, pca_dims: int,
               max_iter: int) -> tuple[np.ndarray, dict[str, Any]]:
    """2-d t-SNE (van der Maaten & Hinton 2008) of all points, seeded; returns the settings used."""
    count = len(points)
    perplexity = float(min(perplexity, max(1.0, (count - 1) / 3.0)))
    if pca_dims > 0:
        dims = min(pca_dims, count, points.shape[1])
        inputs, metric = PCA(n_components=dims, random_state=seed).fit_transform(points), \
            "euclidean"
    else:
        inputs, metric = points, "cosine"
    tsne = TSNE(n_components=2, perplexity=perplexity, metric=metric, init="pca",
                learning_rate="auto", max_iter=max(250, max_iter), random_state=seed)
    coordinates = tsne.fit_transform(inputs.astype(np.float64))
    return coordinates, {"perplexity": perplexity, "metric": metric,
                         "pca_dims": pca_dims if pca_dims > 0 else None,
                         "kl_divergence": float(tsne.kl_divergence_)}


def generation_colours(count: int) -> list[Any]:
    """One colour per generation from a sequential colormap (early purple, late yellow)."""
    cmap = matplotlib.colormaps["plasma"]
    return [cmap(x) for x in np.linspace(0.12, 0.85, count)] if count > 1 else [cmap(0.12)]


def median_radius(points: np.ndarray) -> float:
    """Median distance of points to their mean: a circle that holds about half of them."""
    return float(np.median(np.linalg.norm(points - points.mean(axis=0), axis=1)))


def draw_tsne(coordinates: np.ndarray, groups: list[tuple[str, slice]], metrics: dict[str, Any],
              dims: int, tsne_settings: dict[str, Any], caption_colour: str) -> Figure:
    """The joint t-SNE figure: points, a circle per group, arrows between generation centres.

    ``groups`` are (name, rows of ``coordinates``): the captions first, then the generations in
    the order of ``metrics["generations"]``.
    """
    colours = [caption_colour] + generation_colours(len(groups) - 1)
    consecutive = [m for m in metrics["movements"] if m["kind"] == "consecutive"]
    figure = Figure(figsize=(12, 9.5))
    axes = figure.subplots()
    centres = []
    for index, ((name, rows), colour) in enumerate(zip(groups, colours, strict=True)):
        points = coordinates[rows]
        marker = "o" if index == 0 else "s"
        axes.scatter(points[:, 0], points[:, 1], s=28, marker=marker, color=colour, alpha=0.7,
                     edgecolors="white", linewidths=0.4, zorder=3, label=name)
        centre, radius = points.mean(axis=0), median_radius(points)
        axes.add_patch(Circle(centre, radius, facecolor=colour, edgecolor=colour, alpha=0.12,
                              linewidth=1.5, zorder=1))
        axes.add_patch(Circle(centre, radius, fill=False, edgecolor=colour, alpha=0.6,
                              linewidth=1.2, linestyle="--", zorder=2))
        centres.append(centre)
        if index == 0:
            note = f"captions\ntotal var {metrics['captions']['total_variance']:.3f}"
        else:
            entry = metrics["generations"][index - 1]
            note = (f"{name}: total var {entry['total_variance']:.3f}\n"
                    f"({entry['total_variance_ratio_to_first']:.2f} x first)")
        # Notes go round the circles at evenly spread angles, so that concentric ones stay legible.
        angle = np.pi / 2 + 2 * np.pi * index / len(groups)
        direction = np.array([np.cos(angle), np.sin(angle)])
        axes.annotate(note, centre + radius * direction, xytext=tuple(70 * direction),
                      textcoords="offset points", ha="center", va="center", fontsize=8.5,
                      bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "alpha": 0.9,
                            "edgecolor": colour},
                      arrowprops={"arrowstyle": "-", "color": colour, "lw": 1.0}, zorder=8)
    for step, movement in enumerate(consecutive, start=1):
        start, end = centres[step], centres[step + 1]
        axes.annotate("", end, start, arrowprops={"arrowstyle": "-|>", "color": "black",
                                                  "lw": 1.8, "shrinkA": 0, "shrinkB": 0},
                      zorder=5)
        middle = (start + end) / 2
        axes.annotate(f"Δ {movement['centre_distance']:.3f}", middle, xytext=(4, -4),
                      textcoords="offset points", fontsize=8, fontweight="bold", zorder=6,
                      bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.7,
                            "edgecolor": "none"})
    for centre, colour in zip(centres, colours, strict=True):
        axes.scatter(*centre, marker="X", s=110, color=colour, edgecolors="black",
                     linewidths=0.8, zorder=7)
    handles, labels = axes.get_legend_handles_labels()
    handles += [Line2D([], [], color="black", lw=1.8, marker=">", markersize=6),
                Line2D([], [], marker="X", color="grey", markeredgecolor="black", lw=0,
                       markersize=9)]
    labels += ["shift of the mean between consecutive generations",
               "mean t-SNE position of a group"]
    axes.legend(handles, labels, loc="best", fontsize=9, framealpha=0.9)
    listed = ", ".join(str(e["generation"]) for e in metrics["generations"])
    axes.set_title(f"CLIP embeddings of the captions and of generated images, generations "
                   f"{listed}\n(joint t-SNE, {tsne_settings['metric']} metric, perplexity "
                   f"{tsne_settings['perplexity']:.0f})", fontsize=12)
    axes.set_xlabel("t-SNE 1")
    axes.set_ylabel("t-SNE 2")
    axes.set_aspect("equal", adjustable="datalim")
    axes.grid(alpha=0.2)
    figure.text(0.5, 0.005, (
        "Circles (median distance to the mean t-SNE position) and arrows are drawing aids only: "
        "t-SNE keeps neighbourhoods, not distances or spreads.\n"
        f"The numbers come from the {dims}-d embedding space: total var = trace of the "
        "covariance; Δ = distance between the mean image embeddings of consecutive generations.\n"
        "Captions and images sit apart by CLIP's modality gap (Liang et al. 2022) whatever the "
        "drift: read drift image to image."), ha="center", va="bottom", fontsize=9, wrap=True)
    figure.tight_layout(rect=(0, 0.075, 1, 1))
    return figure


def bar_panel(axes: Axes, labels: list[str], values: list[float], colours: list[Any],
              title: str, ylabel: str, fmt: str = "{:.3f}") -> None:
    """One bar chart with its values written on the bars."""
    bars = axes.bar(labels, values, color=colours, edgecolor="black", linewidth=0.6)
    for bar, value in zip(bars, values, strict=True):
        below = value < 0  # a negative bar is labelled under its end
        axes.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, value),
                      xytext=(0, -2 if below else 2), textcoords="offset points", ha="center",
                      va="top" if below else "bottom", fontsize=8)
    axes.set_title(title, fontsize=10.5)
    axes.set_ylabel(ylabel, fontsize=9)
    axes.tick_params(axis="x", labelsize=8.5, rotation=0 if len(labels) <= 5 else 30)
    axes.margins(y=0.15)
    axes.grid(axis="y", alpha=0.3)


def frechet_panel(axes: Axes, labels: list[str], entries: list[dict[str, Any]],
                  colours: list[Any]) -> None:
    """Fréchet distance to the first generation: all images, and split-half with its floor."""
    positions = np.arange(len(entries))
    width = 0.4
    full = [e["frechet_to_first"] for e in entries]
    axes.bar(positions - width / 2, full, width, color=colours, edgecolor="black",
             linewidth=0.6, label=f"all images (n = {entries[0]['frechet_n_first']} vs n)")
    for x, value in zip(positions - width / 2, full, strict=True):
        axes.annotate(f"{value:.3f}", (x, value), xytext=(0, 2), textcoords="offset points",
                      ha="center", va="bottom", fontsize=7.5)
    if "frechet_split_half" in entries[0]:
        half = [e.get("frechet_split_half", np.nan) for e in entries]
        axes.bar(positions + width / 2, half, width, color=colours, edgecolor="black",
                 linewidth=0.6, hatch="//", alpha=0.55,
                 label=f"split halves, disjoint prompts (n = {entries[0]['frechet_split_half_n']}"
                       f" each side)")
        axes.axhline(entries[0]["frechet_split_half_floor"], color="black", linestyle=":",
                     linewidth=1.2, label=f"split-half floor: {labels[0]} vs {labels[0]}")
    axes.set_xticks(positions, labels)
    axes.set_title(f"Fréchet distance to {labels[0]}", fontsize=10.5)
    axes.set_ylabel("Fréchet distance", fontsize=9)
    axes.tick_params(axis="x", labelsize=8.5, rotation=0 if len(labels) <= 5 else 30)
    axes.margins(y=0.25)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=7.5, loc="upper left")


def draw_metrics(metrics: dict[str, Any], dims: int) -> Figure:
    """Bar charts of the drift metrics, all computed in the embedding space."""
    entries = metrics["generations"]
    labels = [f"gen {e['generation']}" for e in entries]
    colours = generation_colours(len(entries))
    figure = Figure(figsize=(16, 9.5))
    axes = figure.subplots(2, 3)
    moves = metrics["movements"]
    bar_panel(axes[0, 0], [f"{m['from']}→{m['to']}" for m in moves],
              [m["centre_distance"] for m in moves],
              ["0.55" if m["kind"] == "consecutive" else "0.2" for m in moves],
              "Centre movement (consecutive; dark: first→last)",
              "||mean image emb. a - mean b||")
    bar_panel(axes[0, 1], labels, [e["total_variance"] for e in entries], colours,
              "Total variance of image embeddings", "trace of covariance")
    for bar, entry in zip(axes[0, 1].patches, entries, strict=True):
        axes[0, 1].annotate(f"{entry['total_variance_ratio_to_first']:.2f}x",
                            (bar.get_x() + bar.get_width() / 2, bar.get_height() / 2),
                            ha="center", va="center", fontsize=8, color="white",
                            fontweight="bold")
    frechet_panel(axes[0, 2], labels, entries, colours)
    bar_panel(axes[1, 0], labels, [e["mean_cosine"] for e in entries], colours,
              "Mean cosine, image · own caption (inside: CLIPScore)", "cosine")
    for bar, entry in zip(axes[1, 0].patches, entries, strict=True):
        axes[1, 0].annotate(f"{entry['clipscore']:.1f}",
                            (bar.get_x() + bar.get_width() / 2, bar.get_height() / 2),
                            ha="center", va="center", fontsize=8, color="white",
                            fontweight="bold")
    # Diversity is not drawn: for unit vectors it equals the total variance (see
    # generation_metrics.mean_pairwise_cosine_distance); it stays in the JSON and the table.
    bar_panel(axes[1, 1], labels, [e["centre_distance_to_first"] for e in entries], colours,
              f"Image drift: mean image embedding vs {labels[0]}'s", "||mean g - mean first||")
    bar_panel(axes[1, 2], labels, [e["caption_image_gap"] for e in entries], colours,
              "Caption-to-image gap (modality gap)", "||mean caption - mean image||")
    figure.suptitle(f"Drift of generated images, measured in the {dims}-d CLIP embedding space "
                    "(not in t-SNE coordinates)", fontsize=13)
    figure.text(0.5, 0.005, "n images per generation: " + ", ".join(
        f"{label} {e['n_images']}" for label, e in zip(labels, entries, strict=True))
        + ".  Fréchet distances with fewer samples than dimensions are biased upwards: compare "
          "them with each other and with the floor, at equal n.", ha="center", fontsize=9)
    figure.tight_layout(rect=(0, 0.03, 1, 0.96))
    return figure


def draw_pca(caption_embeddings: np.ndarray, generations: dict[int, dict[str, Any]],
             seed: int, caption_colour: str) -> Figure:
    """PCA views: captions and images together, and the images alone (drift image to image)."""
    colours = generation_colours(len(generations))
    image_sets = [data["image_embeddings"] for data in generations.values()]
    figure = Figure(figsize=(16, 7.5))
    joint_axes, image_axes = figure.subplots(1, 2)
    for axes, with_captions in ((joint_axes, True), (image_axes, False)):
        sets = ([caption_embeddings] if with_captions else []) + image_sets
        pca = PCA(n_components=2, random_state=seed).fit(np.concatenate(sets))
        names = (["captions"] if with_captions else []) + [f"gen {g}" for g in generations]
        set_colours = ([caption_colour] if with_captions else []) + colours
        centres = []
        for index, (name, points, colour) in enumerate(zip(names, sets, set_colours,
                                                           strict=True)):
            projected = pca.transform(points)
            marker = "o" if with_captions and index == 0 else "s"
            axes.scatter(projected[:, 0], projected[:, 1], s=22, marker=marker, color=colour,
                         alpha=0.6, edgecolors="white", linewidths=0.3, label=name, zorder=3)
            centre = projected.mean(axis=0)
            axes.scatter(*centre, marker="X", s=120, color=colour, edgecolors="black", zorder=6)
            if name != "captions":
                centres.append(centre)
        for start, end in zip(centres, centres[1:], strict=False):
            axes.annotate("", end, start, arrowprops={"arrowstyle": "-|>", "color": "black",
                                                      "lw": 1.6, "shrinkA": 0, "shrinkB": 0},
                          zorder=7)
        ratio = pca.explained_variance_ratio_
        axes.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f}% of variance)")
        axes.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f}% of variance)")
        axes.set_title("captions and images" if with_captions else
                       "images only (drift read image to image)", fontsize=11)
        axes.legend(fontsize=9, loc="best")
        axes.grid(alpha=0.2)
    figure.suptitle("PCA of the CLIP embeddings (a linear projection: mean positions (X) and "
                    "arrows between them are true projections)", fontsize=12)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    return figure


def format_table(metrics: dict[str, Any]) -> str:
    """The per-generation metrics as a fixed-width text table."""
    header = (f"{'gen':>5} {'n':>5} {'mean cos':>8} {'CLIPScore':>9} {'diversity':>9} "
              f"{'cap-img gap':>11} "
              f"{'total var':>9} {'var/first':>9} {'drift':>7} {'FD to first':>11} "
              f"{'FD split-half / floor (n)':>26}")
    lines = [header, "-" * len(header)]
    for e in metrics["generations"]:
        split = (f"{e['frechet_split_half']:.3f} / {e['frechet_split_half_floor']:.3f} "
                 f"({e['frechet_split_half_n']})" if "frechet_split_half" in e else "n/a")
        lines.append(f"{e['generation']:>5} {e['n_images']:>5} {e['mean_cosine']:>8.4f} "
                     f"{e['clipscore']:>9.2f} "
                     f"{e['diversity']:>9.4f} {e['caption_image_gap']:>11.4f} "
                     f"{e['total_variance']:>9.4f} {e['total_variance_ratio_to_first']:>9.3f} "
                     f"{e['centre_distance_to_first']:>7.4f} {e['frechet_to_first']:>11.4f} "
                     f"{split:>26}")
    if "frechet_to_reference" in metrics["generations"][0]:
        n_reference = metrics["generations"][0]["n_reference"]
        lines.append(f"against {n_reference} real images: " + "; ".join(
            f"gen {e['generation']}: mean distance {e['centre_distance_to_reference']:.4f}, FD "
            f"{e['frechet_to_reference']:.4f}, precision {e['precision_to_reference']:.3f}, "
            f"recall {e['recall_to_reference']:.3f}" for e in metrics["generations"]))
    lines.append("movement of the mean image embedding: " + ", ".join(
        f"{m['from']}→{m['to']} {m['centre_distance']:.4f}" for m in metrics["movements"]))
    lines.append("mean cos = mean cosine of each image with its own caption; CLIPScore = "
                 "max(100 * mean cos, 0) (torchmetrics; Hessel et al. 2021 use 2.5 * max(cos, 0) "
                 "per pair)")
    lines.append("drift = distance of the mean image embedding from the first generation's; "
                 "FD = Fréchet distance of Gaussian fits")
    return "\n".join(lines)


def reference_embeddings(s: DriftPlotSettings, captions: dict[str, Any], device: Any
                         ) -> np.ndarray:
    """The CLIP embeddings of the real images in --reference-dir whose ids have a caption (the
    prompts' own images, paired by id), embedded with the CLIP the captions were."""
    from clip_tools import clip_embedding

    folder = Path(s.reference_dir)
    model_name = s.model or str(captions["meta"].get("model") or "")
    if not model_name:
        raise StageError("--reference-dir: the caption file's meta names no model; pass "
                         "--model NAME_OR_DIR")
    model, processor = clip_embedding.load_clip(model_name, device)
    recorded, loaded = captions["meta"].get("model_fingerprint"), \
        weights_fingerprint(model)
    if recorded != loaded:
        raise StageError(f"--reference-dir: the captions were embedded with CLIP weights "
                         f"{recorded} (their meta), {model_name} holds {loaded}: the model was "
                         f"retrained or replaced since; embed the generations again with it, or "
                         f"pass the model that embedded them")
    embeddings, ids, failed = clip_embedding.embed_image_folder(model, processor, folder,
                                                                device, s.batch_size)
    for name, error in failed:
        print(f"reference: unreadable image skipped: {folder / name} ({error})")
    keep = np.isin(ids, captions["image_ids"])
    if keep.sum() < 4:
        raise StageError(f"{folder}: {int(keep.sum())} of its images are named by an image id "
                         f"of the captions; the reference needs at least 4")
    print(f"reference: {int(keep.sum())} real images from {folder} embedded with {model_name}")
    return embeddings[keep]


def draw_reference(metrics: dict[str, Any], dims: int) -> Figure:
    """Drift against reality: each generation against the reference's real images."""
    entries = metrics["generations"]
    labels = [f"gen {e['generation']}" for e in entries]
    colours = generation_colours(len(entries))
    figure = Figure(figsize=(16, 4.8))
    axes = figure.subplots(1, 4)
    for axis, (key, title, unit) in zip(axes, (
            ("centre_distance_to_reference", "Distance of the mean from the real images'",
             "||mean g - mean real||"),
            ("frechet_to_reference", "Fréchet distance to the real images", "FD"),
            ("precision_to_reference", "Precision (inside the real manifold)", "share"),
            ("recall_to_reference", "Recall (real images covered)", "share")), strict=True):
        bar_panel(axis, labels, [e[key] for e in entries], colours, title, unit)
    figure.suptitle(f"Drift against reality: every generation against "
                    f"{entries[0]['n_reference']} real images, in the {dims}-d CLIP space",
                    fontsize=12)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    return figure


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    s = pick(DriftPlotSettings, values)
    check_generations(s.generations)
    if not matplotlib.colors.is_color_like(s.caption_colour):
        raise SettingsError(f"--caption-colour {s.caption_colour!r}: not a matplotlib colour (a "
                            f"name such as tab:blue or red, or #rrggbb)")
    if s.reference_dir and not Path(s.reference_dir).is_dir():
        raise StageError(f"--reference-dir {s.reference_dir}: no such folder (the real images "
                         f"the generations are compared with)")
    seed_everything(s.seed)
    embedding_dir = Path(s.embedding_dir)
    caption_path = embedding_dir / "coco_caption_embeddings.npz"
    captions = load_captions(caption_path, s.norm_tolerance)
    paths = {g: embedding_dir / f"gen_{g}_embeddings.npz" for g in s.generations}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise StageError(f"{', '.join(missing)}: not found; run extract_generation_embeddings.py "
                         f"with --generations {','.join(map(str, s.generations))}")
    generations = {g: load_generation(path, captions, caption_path, s.norm_tolerance)
                   for g, path in paths.items()}
    dims = captions["text_embeddings"].shape[1]
    reference = generations[s.generations[0]]["image_embeddings"]
    spread = total_variance(reference)
    if spread < MIN_REFERENCE_VARIANCE:
        raise StageError(f"{paths[s.generations[0]]}: the {len(reference)} image embeddings of "
                         f"generation {s.generations[0]}, the reference, have a total variance "
                         f"of {spread:.3g} (unit vectors: real images have about 0.1 to 0.5): a "
                         f"collapsed generation, against which every ratio is meaningless; put "
                         f"another generation first in --generations")
    visualization_dir, results_dir = Path(s.visualization_dir), Path(s.results_dir)
    ensure_output_dir(visualization_dir)
    ensure_output_dir(results_dir)
    hold_output_lock(results_dir / ".lock-plot_generation_clusters", "plot_generation_clusters.py")

    metrics = drift_metrics(captions, generations, s.seed)
    if s.reference_dir:
        reference = reference_embeddings(s, captions, pick_device(values["device"]))
        for entry in metrics["generations"]:
            entry.update(reference_drift(
                reference, generations[entry["generation"]]["image_embeddings"]))
    groups, start = [("captions", slice(0, len(captions["text_embeddings"])))], \
        len(captions["text_embeddings"])
    for g, data in generations.items():
        groups.append((f"gen {g}", slice(start, start + len(data["image_embeddings"]))))
        start += len(data["image_embeddings"])
    points = np.concatenate([captions["text_embeddings"]]
                            + [d["image_embeddings"] for d in generations.values()])
    print(f"t-SNE of {len(points)} points ({len(captions['text_embeddings'])} captions, "
          f"{len(generations)} generations, {dims} dims) ...")
    coordinates, tsne_settings = joint_tsne(points, s.seed, s.perplexity, s.tsne_pca_dims,
                                            s.tsne_max_iter)

    written = []
    figure = draw_tsne(coordinates, groups, metrics, dims, tsne_settings, s.caption_colour)
    written.append(save_figure(figure, visualization_dir / "generation_clusters_tsne_clean.png",
                               s.figure_dpi))
    figure = draw_metrics(metrics, dims)
    written.append(save_figure(figure, visualization_dir / "generation_metrics_tsne_clean.png",
                               s.figure_dpi))
    figure = draw_pca(captions["text_embeddings"], generations, s.seed, s.caption_colour)
    written.append(save_figure(figure, visualization_dir / "generation_clusters_pca.png",
                               s.figure_dpi))
    if s.reference_dir:
        written.append(save_figure(draw_reference(metrics, dims),
                                   visualization_dir / "generation_reference_metrics.png",
                                   s.figure_dpi))

    meta = make_meta(__file__, values, "coco-generations", s.seed, tsne=tsne_settings,
                     inputs={str(p): generations[g]["meta"].get("time") for g, p in paths.items()}
                     | {str(caption_path): captions["meta"].get("time")},
                     model=captions["meta"].get("model"), embedding_dim=int(dims),
                     notes="all metrics in the embedding space; embeddings L2-normalised; "
                           "total variance = trace of the unbiased covariance; Fréchet distances "
                           "with fewer samples than dimensions are biased: compare at equal n")
    written.append(write_text(results_dir / "generation_metrics.json",
                              json.dumps({"meta": meta, **metrics}, indent=2) + "\n"))
    for path in written:
        print(f"wrote {path}")
    print(format_table(metrics))


if __name__ == "__main__":
    run_stage(main, resumable=False)
