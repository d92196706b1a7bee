"""Plan 2's result tables, rebuilt from the rows its files keep in their ``meta`` (one row per
model trained so far), as markdown: generators of embeddings beside their floors, translators
beside a paired linear map. May import ``dataio``, ``runtime`` and ``evaluation``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dataio.artifacts import load_meta
from evaluation.scoring import cell
from reporting.tagged_runs import VARIANT_COLUMN, settings_difference
from runtime.stage import StageError


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table row as JSON keeps it in a file's meta (NumPy numbers become Python ones)."""
    return json.loads(json.dumps(row, default=float))


def rows_on_disk(folder: Path, pattern: str, script: str, match: Mapping[str, str],
                 order: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The table rows stored in the ``meta`` of the files ``folder/pattern`` that ``script``
    wrote and whose meta agrees with ``match``, one per model (its ``gan``) in ``order``, its
    tagged runs (``--tag``: ``<gan>@<tag>``) after it with a ``variant`` note of the settings
    unlike the untagged run's: every model trained so far, each from its own run, so that a
    table is rebuilt from the files and never shows only the last run's models. Also notes on
    files left out (broken, or without a row)."""
    found: dict[tuple[Any, str], tuple[dict[str, Any], dict[str, Any]]] = {}
    notes: list[str] = []
    for path in sorted(folder.glob(pattern)):
        try:
            meta = load_meta(path)
        except StageError as err:  # someone else's broken file: no row, the run stands
            notes.append(f"left out of the table: {err}")
            continue
        if meta.get("script") != script or any(
                meta.get(key) != value for key, value in match.items()):
            continue
        if not isinstance(meta.get("table_row"), dict):
            notes.append(f"left out of the table: {path} holds no table row in its meta")
            continue
        settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
        found[(meta.get("gan"), str(settings.get("tag") or ""))] = (meta["table_row"], settings)
    rows = []
    for name in order:
        for (gan, tag), (row, settings) in sorted(found.items(), key=lambda item: item[0][1]):
            if gan != name:
                continue
            if tag:
                untagged = found.get((gan, ""))
                row = {**row, "model": f"{row['model']}@{tag}",
                       "variant": settings_difference(settings, untagged and untagged[1])}
            rows.append(row)
    return rows, notes


def variant_cells(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The header cell and per-row cells of the tagged runs' column: none when no row is
    tagged."""
    if not any("variant" in r for r in rows):
        return "", ["" for _ in rows]
    return f" {VARIANT_COLUMN} |", [f" {r.get('variant', '')} |" for r in rows]


def generator_table(rows: list[dict[str, Any]]) -> str:
    """One row per generator: each value ± half its 95% interval (KID: ± its sd over subsets)
    beside its floor (as many real train embeddings) or the real embeddings' value."""
    head, variants = variant_cells(rows)
    lines = ["| model | epochs (best) | Fréchet distance (floor) | ratio | KID (floor) | "
             "precision (floor) | recall (floor) | density (floor) | coverage (floor) | "
             "Vendi (real) | k-NN class match (real test acc.) | TSTR k-NN acc. (TRTR) | "
             "intra-class Fréchet distance (floor) | k-means ARI vs class asked (real) | "
             "train time |" + head, "| --- " * (15 + bool(head)) + "|"]
    for r, variant in zip(rows, variants, strict=True):
        conditional = "knn_class_consistency" in r
        lines.append(
            f"| {r['model']} | {r['epochs']} ({r['best_epoch']}) | "
            + cell(r, "frechet_distance", "frechet_distance_floor", "floor")
            + f" | {r['frechet_distance'] / r['frechet_distance_floor']:.2f} | "
            + " | ".join([cell(r, "kid", "kid_floor", "floor", 4),
                          *[cell(r, m, m + "_floor", "floor")
                            for m in ("precision", "recall", "density", "coverage")],
                          cell(r, "vendi", "vendi_real", "real", 2)])
            + (" | " + " | ".join([
                cell(r, "knn_class_consistency", "knn_accuracy_real", "real"),
                cell(r, "tstr_knn_accuracy", "trtr_knn_accuracy", "TRTR"),
                cell(r, "intra_frechet_distance", "intra_frechet_distance_floor", "floor"),
                cell(r, "kmeans_ari", "kmeans_ari_real", "real")])
               if conditional else " | — | — | — | —")
            + f" | {r['train_seconds']:.0f} s |" + variant)
    return "\n".join(lines)


def translation_table(rows: list[dict[str, Any]]) -> str:
    head, variants = variant_cells(rows)
    lines = ["| model | epochs (best) | cosine to true B (paired linear map) | k-NN acc. of "
             "A->B (B's own) | cycle error A (B) | train time |" + head,
             "| --- " * (6 + bool(head)) + "|"]
    for r, variant in zip(rows, variants, strict=True):
        lines.append(f"| {r['model']} | {r['epochs']} ({r['best_epoch']}) | {r['cosine']:.3f} "
                     f"({r['cosine_paired_linear']:.3f}) | {r['knn_accuracy']:.3f} "
                     f"({r['knn_accuracy_target']:.3f}) | {r['cycle_error_a']:.3f} "
                     f"({r['cycle_error_b']:.3f}) | "
                     + f"{r['train_seconds']:.0f} s |" + variant)
    return "\n".join(lines)
