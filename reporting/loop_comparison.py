"""Self-consuming loops side by side: every loop of a dataset found in a results folder, grouped
into configurations (a run's name without its seed), drawn as mean ± sd over seeds against the
generation, and tabled at chosen generations. Reads the ``<run>_metrics.json`` files that
self_consuming_loop.py writes. May import ``training``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.loop_regimes import REGIME_TAGS

# (key, title, reference key) of each panel of the figure and column of the table; a reference
# is drawn as a dashed grey line (the real images' value or the real-vs-real floor).
PANELS = (("fid", "FID, evaluator features (log scale)", "fid_floor"),
          ("class_consistency", "class consistency", "class_consistency_real"),
          ("within_class_spread", "within-class variance / real's", None),
          ("precision", "precision (k=3)", "precision_floor"),
          ("recall", "recall (k=3)", "recall_floor"),
          ("vendi", "Vendi score", "vendi_real"))


def config_of(run: str) -> str:
    """A run's name without its seed: the loops that are one configuration at several seeds."""
    head, seeded, seed = run.rpartition("_seed")
    return head if seeded and seed.isdigit() else run


def run_label(config: str) -> str:
    """A legend label: regime, fresh share, truncation, scratch; for a diffusion loop (_sd)
    the generator and its fine-tuning (_full: the whole UNet, else LoRA) and sampler; a tagged
    loop's tag after it (``@<tag>``)."""
    config, _, tag = config.partition("@")
    rest = config.partition("_loop")[2]
    regime = next((name for name, tag in REGIME_TAGS.items() if tag and rest.startswith(tag)),
                  "replace")
    rest = rest.removeprefix(REGIME_TAGS[regime])
    label = {"replace": "replace", "accumulate": "accumulate",
             "accumulate-subsample": "accumulate-subsample"}[regime]
    for part in rest.strip("_").split("_"):
        if part.startswith("fresh"):
            label += f", {part[5:]}% fresh" + (" (control)" if part == "fresh100" else "")
        elif part.startswith("trunc"):
            label += f", psi {part[5:]}"
        elif part == "scratch":
            label += ", from scratch"
    parts = rest.strip("_").split("_")
    if "sd" in parts:
        label = (f"Stable Diffusion ({'whole UNet' if 'full' in parts else 'LoRA'}"
                 f"{', DPM-Solver' if 'dpm' in parts else ''}): {label}")
    return f"{label} @{tag}" if tag else label


def banded(runs: dict[str, list[dict[str, Any]]], key: str
           ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Per configuration: generations, mean and sd over its seeds of ``key``, the seed count
    (generations every seed has reached)."""
    configs: dict[str, list[list[dict[str, Any]]]] = {}
    for run, records in runs.items():
        configs.setdefault(config_of(run), []).append(records)
    out = {}
    for config, seeds in configs.items():
        common = sorted(set.intersection(*({int(r["generation"]) for r in records}
                                           for records in seeds)))
        table = np.array([[next(float(r[key]) if r.get(key) is not None else np.nan
                                for r in records if int(r["generation"]) == g)
                           for g in common] for records in seeds])
        out[config] = (np.array(common), table.mean(axis=0),
                       table.std(axis=0, ddof=1) if len(seeds) > 1 else np.zeros(len(common)),
                       len(seeds))
    return out


def metrics_figure(runs: dict[str, list[dict[str, Any]]], title: str) -> Any:
    """FID (with its floor), class consistency, within-class spread, precision, recall and Vendi
    against the generation: per configuration the mean over its seeds, a band of ± one sd; the
    real-image references as dashed grey lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(2, 3, figsize=(14, 8))
    first = next(iter(runs.values()))
    for axis, (key, name, reference) in zip(axes.flat, PANELS, strict=True):
        for index, (config, (generations, mean, sd, seeds)) in enumerate(
                banded(runs, key).items()):
            colour = f"C{index % 10}"
            axis.plot(generations, mean, marker="o", markersize=3, color=colour,
                      label=f"{run_label(config)} ({seeds} seed{'s' * (seeds > 1)})")
            if seeds > 1:
                axis.fill_between(generations, mean - sd, mean + sd, color=colour, alpha=0.2)
        if reference is not None:
            axis.plot([r["generation"] for r in first], [r.get(reference) for r in first],
                      linestyle="--", color="grey", label="real images")
        elif key == "within_class_spread":
            axis.axhline(1.0, linestyle="--", color="grey", label="real images")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("generation")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes.flat[0].set_yscale("log")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9,
                  frameon=False)
    figure.suptitle(title + " (mean ± sd over seeds)", fontsize=11)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return figure


def comparison_table(runs: dict[str, list[dict[str, Any]]], generations: list[int]) -> str:
    """Markdown: per configuration and metric, the mean ± sd over its seeds at each of
    ``generations`` (— where no seed reached it), with the seed count."""
    lines = ["| configuration | seeds | metric | " + " | ".join(f"gen {g}" for g in generations)
             + " |", "| --- " * (len(generations) + 3) + "|"]
    for key, title, _ in PANELS:
        for config, (reached, mean, sd, seeds) in banded(runs, key).items():
            at = {int(g): (m, s) for g, m, s in zip(reached, mean, sd, strict=True)}
            cells = [f"{at[g][0]:.3g} ± {at[g][1]:.2g}" if g in at else "—"
                     for g in generations]
            lines.append(f"| {run_label(config)} | {seeds} | {title.split(',')[0]} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def loop_results(results_dir: Path, dataset: str) -> tuple[dict[str, list[dict[str, Any]]],
                                                          list[str]]:
    """Every loop of ``dataset`` in ``results_dir``: its generations' records by run name, and
    notes on files that are not readable as loop results (left out)."""
    runs, notes = {}, []
    for path in sorted(results_dir.glob(f"{dataset}_loop*_metrics.json")):
        name = path.name.removesuffix("_metrics.json")
        try:
            records = json.loads(path.read_text(encoding="utf-8"))["generations"]
            if not isinstance(records, list) or not all(
                    isinstance(r, dict) and "generation" in r for r in records):
                raise TypeError("generations is not a list of records")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
                RecursionError) as err:
            notes.append(f"{path} is not readable as loop results ({err}); left out")
            continue
        runs[name] = records
    return runs, notes
