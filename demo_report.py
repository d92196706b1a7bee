"""What `make demo` showed: one line per stage (model, headline metric, its floor or the baseline
a user would pick instead, and whether it works), then the three pictures to open first. Reads
what the stages and evaluate.py wrote under --data-dir; writes data/results/demo_report.md.

    python demo_report.py --data-dir data
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataio.artifacts import load_embeddings, load_npz, short_cause, write_text
from evaluation.scoring import ScoringSettings, plan2_metrics
from models.flow_models import baseline_samples
from runtime.settings import configure, pick
from runtime.stage import StageError, run_stage

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # the demo's dataset [in dataio.data_sources.DATASETS]
DATA_DIR = "data"  # where the demo's stages wrote their files
PLAN1_FID = 30.0  # Plan 1 works: its best model's FID at most this [> 0]
PLAN1_CONSISTENCY = 0.80  # ... and its class consistency at least this [> 0, <= 1]
PLAN2_RECALL = 0.50  # Plan 2 works: precision above the mixture's and recall at least this [> 0]
PLAN2_CONSISTENCY = 0.70  # Plan 2 works: decoded images of the class asked for this often [> 0]
LOOP_FID = 30.0  # the loop's generation 0 works: its FID at most this [> 0]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class DemoReport:
    """What the report reads and the bars it checks."""

    dataset: str
    data_dir: str
    plan1_fid: float
    plan1_consistency: float
    plan2_recall: float
    plan2_consistency: float
    loop_fid: float


def verdict(ok: bool) -> str:
    return "works" if ok else "**does not meet its bar**"


def read_json(path: Path, what: str) -> Any:
    """A results file another stage wrote, as JSON; one line naming it when it is not."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise StageError(f"{path}: not readable as {what}'s JSON ({short_cause(err)}); run "
                         f"{what} again") from err


def value(values: Any, key: str, where: Path) -> float:
    """A finite number ``values[key]`` of a results file; one line naming the file and the key
    when it is missing, not a number, or NaN (a headline is never printed as 'nan')."""
    try:
        number = values[key]
    except (KeyError, TypeError, IndexError) as err:
        raise StageError(f"{where}: no {key!r} where the report reads it; not the file its "
                         f"stage writes, or written by another version") from err
    if isinstance(number, bool) or not isinstance(number, int | float) \
            or not math.isfinite(number):
        raise StageError(f"{where}: {key!r} is {number!r}, not a finite number")
    return float(number)


def section(results: Any, stage: str, dataset: str, where: Path) -> dict[str, Any]:
    """The models of one stage and dataset in metrics.json (empty when it has none)."""
    if not isinstance(results, dict):
        raise StageError(f"{where}: not the object evaluate.py writes")
    models = results.get(stage, {})
    models = models.get(dataset, {}) if isinstance(models, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise StageError(f"{where}: its {stage!r} entry is not evaluate.py's table of models")
    return models


def encoder_rows(results: Any, where: Path, b: DemoReport) -> list[list[str]]:
    models = section(results, "embeddings", b.dataset, where)
    name, baseline = next(((m, v) for m, v in models.items() if m.endswith("(baseline)")),
                          ("", None))
    label = name.removesuffix(" (baseline)").replace("pixels_pca", "PCA-")
    rows = []
    for model, values in models.items():
        if model.endswith("(baseline)") or "+" in model:
            continue
        accuracy = value(values, "knn_accuracy", where)
        if baseline is None:
            rows.append(["encoders", model, f"k-NN {accuracy:.3f}", "—", "—"])
            continue
        floor = value(baseline, "knn_accuracy", where)
        note = "works" if accuracy > floor else (f"does not beat {label}: the demo trains it "
                                                 f"for only a few epochs (its full run is in "
                                                 f"docs/encoders.md)")
        rows.append(["encoders", model, f"k-NN accuracy {accuracy:.3f}", f"{label} {floor:.3f}",
                     note])
    return rows


def flow_rows(b: DemoReport) -> list[list[str]]:
    rows = []
    for path in sorted((Path(b.data_dir) / "embeddings").glob(f"{b.dataset}_*+*.npz")):
        if path.name.endswith(".gen.npz"):
            continue
        meta = load_npz(path, {})["meta"]
        r = meta.get("results")
        if not r:
            continue
        nll, gaussian = value(r, "test_nll", path), value(r, "gaussian_nll", path)
        rows.append(["flows", f"{meta.get('encoder')}+{meta.get('flow')}",
                     f"test NLL {nll:.3f} nats/dim", f"Gaussian {gaussian:.3f}",
                     verdict(nll < gaussian)])
    return rows


def plan1_rows(results: Any, where: Path, b: DemoReport) -> tuple[list[list[str]], str | None]:
    models = section(results, "plan1", b.dataset, where)
    if not models:
        return [], None
    model, values = min(models.items(), key=lambda item: value(item[1], "fid", where))
    fid, consistency = value(values, "fid", where), value(values, "class_consistency", where)
    ok = fid <= b.plan1_fid and consistency >= b.plan1_consistency
    return ([["Plan 1", model, f"FID {fid:.1f}, class consistency {consistency:.3f}",
              f"floor {value(values, 'fid_floor', where):.2f}, real "
              f"{value(values, 'class_consistency_real', where):.3f}",
              verdict(ok)]], f"plan1_{b.dataset}_{model}_samples.png")


def plan2_rows(results: Any, where: Path, b: DemoReport) -> tuple[list[list[str]], str | None]:
    """Each conditional generator's embeddings: precision beside the 20-component mixture's
    (fitted here on the same training embeddings), and recall, which a collapsed generator
    lacks; the decoded images (through the encoder's decoder and each Plan 1 generator) of the
    first that works (else the first): class consistency with the class asked for."""
    generated = section(results, "plan2", b.dataset, where)
    conditional = [(m, v) for m, v in generated.items() if "knn_class_consistency" in v]
    if not conditional:
        return [], None
    rows, mixtures, working = [], {}, []
    for model, values in conditional:
        source = Path(b.data_dir) / "embeddings" / str(values.get("source_embeddings"))
        gen_meta = load_npz(Path(b.data_dir) / "embeddings" / str(values.get("file")),
                            {})["meta"]
        count = int(value(values, "n_generated", where))
        kept = np.setdiff1d(np.arange(gen_meta["split"]["of"]), gen_meta["split"]["held_out"]) \
            if isinstance(gen_meta.get("split"), dict) else None
        key = (source, count, None if kept is None else kept.tobytes())
        if key not in mixtures:
            real = load_embeddings(source)
            train = real["z_train"] if kept is None else real["z_train"][kept]
            mixture = baseline_samples(train, real["z_test"], count, 0)["mixture"]
            mixtures[key] = plan2_metrics(source, {"z_gen": mixture}, real,
                                          ScoringSettings(seed=0, bootstrap=0))["precision"]
        precision, recall = value(values, "precision", where), value(values, "recall", where)
        works = precision > mixtures[key] and recall >= b.plan2_recall
        working += [model] if works else []
        rows.append(["Plan 2", model, f"precision {precision:.3f}, recall {recall:.3f}",
                     f"20-component mixture {mixtures[key]:.3f}", verdict(works)])
    first = (working or [conditional[0][0]])[0]
    images = {m: v for m, v in section(results, "plan2_images", b.dataset, where).items()
              if m.startswith(first) and "class_consistency" in v}
    for name, decoded in images.items():
        consistency = value(decoded, "class_consistency", where)
        rows.append(["Plan 2 decoded", name, f"class consistency {consistency:.3f}",
                     f"real images {value(decoded, 'class_consistency_real', where):.3f}",
                     verdict(consistency >= b.plan2_consistency)])
    best = max(images, key=lambda m: value(images[m], "class_consistency", where), default=None)
    return rows, (f"plan2_{b.dataset}_{best}_samples.png" if best else None)


def loop_rows(b: DemoReport) -> tuple[list[list[str]], str | None]:
    path = Path(b.data_dir) / "results" / f"{b.dataset}_loop_metrics.json"
    if not path.is_file():
        return [], None
    records = read_json(path, "self_consuming_loop.py")
    records = records.get("generations") if isinstance(records, dict) else None
    if not isinstance(records, list) or not records:
        raise StageError(f"{path}: holds no generations; run self_consuming_loop.py again")
    first, last = records[0], records[-1]
    return ([["loop", "generation 0", f"FID {value(first, 'fid', path):.1f}",
              f"floor {value(first, 'fid_floor', path):.2f}",
              verdict(value(first, "fid", path) <= b.loop_fid)],
             ["loop", f"generation {last.get('generation')}",
              f"FID {value(last, 'fid', path):.1f}, recall {value(last, 'recall', path):.3f}",
              f"generation 0: recall {value(first, 'recall', path):.3f}",
              "the drift the loop measures"]], f"{b.dataset}_loop_metrics.png")


def clip_rows(b: DemoReport) -> list[list[str]]:
    path = Path(b.data_dir) / "results" / f"clip_{b.dataset}_zero_shot.json"
    if not path.is_file():
        return []
    accuracy = value(read_json(path, "train_small_clip.py"), "zero_shot_accuracy", path)
    return [["small CLIP", "zero-shot", f"test accuracy {accuracy:.3f}", "chance 0.100",
             verdict(accuracy > 0.5)]]


def main(argv: list[str] | None = None) -> None:
    b = pick(DemoReport, configure(globals(), argv))
    metrics_file = Path(b.data_dir) / "results" / "metrics.json"
    if not metrics_file.is_file():
        raise StageError(f"{metrics_file} not found; run evaluate.py --data-dir {b.data_dir} "
                         f"first")
    results = read_json(metrics_file, "evaluate.py")
    rows = encoder_rows(results, metrics_file, b) + flow_rows(b)
    plan1, plan1_png = plan1_rows(results, metrics_file, b)
    plan2, plan2_png = plan2_rows(results, metrics_file, b)
    loop, loop_png = loop_rows(b)
    rows += plan1 + plan2 + loop + clip_rows(b)
    table = "\n".join(["| stage | model | headline | floor or baseline | verdict |",
                       "| --- | --- | --- | --- | --- |"]
                      + ["| " + " | ".join(row) + " |" for row in rows])
    pictures = [Path(b.data_dir) / "visualizations" / name
                for name in (plan1_png, plan2_png, loop_png) if name]
    pictures = [p for p in pictures if p.is_file()]
    text = (f"# What the demo shows ({b.dataset})\n\nImage metrics on the evaluator CNN's "
            f"features (not comparable with published FIDs); full tables in "
            f"{b.data_dir}/results/summary.md.\n\n{table}\n\nOpen first:\n"
            + "".join(f"- {p}\n" for p in pictures))
    print("\n" + text)
    print(f"wrote {write_text(Path(b.data_dir) / 'results' / 'demo_report.md', text)}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
