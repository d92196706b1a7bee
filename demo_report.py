"""What `make demo` showed: one line per stage (model, headline metric, its floor or the baseline
a user would pick instead, and whether it works), then the three pictures to open first. Reads
what the stages and evaluate.py wrote under --data-dir; writes data/results/demo_report.md.

    python demo_report.py --data-dir data
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataio.artifacts import load_embeddings, load_npz, write_text
from evaluation.scoring import ScoringSettings, plan2_metrics
from models.flow_models import baseline_samples
from runtime.settings import configure, pick
from runtime.stage import StageError, run_stage

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # the demo's dataset [in dataio.data_sources.DATASETS]
DATA_DIR = "data"  # where the demo's stages wrote their files
PLAN1_FID = 30.0  # Plan 1 works: its best model's FID at most this [> 0]
PLAN1_CONSISTENCY = 0.80  # ... and its class consistency at least this [> 0, <= 1]
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
    plan2_consistency: float
    loop_fid: float


def verdict(ok: bool) -> str:
    return "works" if ok else "**does not meet its bar**"


def encoder_rows(results: dict[str, Any], b: DemoReport) -> list[list[str]]:
    models = results.get("embeddings", {}).get(b.dataset, {})
    name, baseline = next(((m, v) for m, v in models.items() if m.endswith("(baseline)")),
                          ("", None))
    label = name.removesuffix(" (baseline)").replace("pixels_pca", "PCA-")
    rows = []
    for model, values in models.items():
        if model.endswith("(baseline)") or "+" in model:
            continue
        if baseline is None:
            rows.append(["encoders", model, f"k-NN {values['knn_accuracy']:.3f}", "—", "—"])
            continue
        beats = values["knn_accuracy"] > baseline["knn_accuracy"]
        note = "works" if beats else (f"does not beat {label}: the demo trains it for only a "
                                      f"few epochs (its full run is in docs/encoders.md)")
        rows.append(["encoders", model, f"k-NN accuracy {values['knn_accuracy']:.3f}",
                     f"{label} {baseline['knn_accuracy']:.3f}", note])
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
        rows.append(["flows", f"{meta['encoder']}+{meta['flow']}",
                     f"test NLL {r['test_nll']:.3f} nats/dim",
                     f"Gaussian {r['gaussian_nll']:.3f}",
                     verdict(r["test_nll"] < r["gaussian_nll"])])
    return rows


def plan1_rows(results: dict[str, Any], b: DemoReport) -> tuple[list[list[str]], str | None]:
    models = results.get("plan1", {}).get(b.dataset, {})
    if not models:
        return [], None
    model, values = min(models.items(), key=lambda item: item[1]["fid"])
    ok = values["fid"] <= b.plan1_fid and values["class_consistency"] >= b.plan1_consistency
    return ([["Plan 1", model, f"FID {values['fid']:.1f}, class consistency "
              f"{values['class_consistency']:.3f}",
              f"floor {values['fid_floor']:.2f}, real {values['class_consistency_real']:.3f}",
              verdict(ok)]], f"plan1_{b.dataset}_{model}_samples.png")


def plan2_rows(results: dict[str, Any], b: DemoReport) -> tuple[list[list[str]], str | None]:
    """Each conditional generator's embeddings: precision beside the 20-component mixture's
    (fitted here on the same training embeddings); the first one's decoded images (through the
    encoder's decoder and each Plan 1 generator): class consistency with the class asked for."""
    generated = results.get("plan2", {}).get(b.dataset, {})
    conditional = [(m, v) for m, v in generated.items() if "knn_class_consistency" in v]
    if not conditional:
        return [], None
    rows, mixtures = [], {}
    for model, values in conditional:
        source = Path(b.data_dir) / "embeddings" / values["source_embeddings"]
        gen_meta = load_npz(Path(b.data_dir) / "embeddings" / values["file"], {})["meta"]
        key = (source, values["n_generated"], gen_meta.get("train_embeddings"))
        if key not in mixtures:
            real = load_embeddings(source)
            n = int(gen_meta.get("train_embeddings") or len(real["z_train"]))
            mixture = baseline_samples(real["z_train"][:n], real["z_test"],
                                       values["n_generated"], 0)["mixture"]
            mixtures[key] = plan2_metrics(source, {"z_gen": mixture}, real,
                                          ScoringSettings(seed=0, bootstrap=0))["precision"]
        rows.append(["Plan 2", model, f"precision {values['precision']:.3f}, recall "
                     f"{values['recall']:.3f}", f"20-component mixture {mixtures[key]:.3f}",
                     verdict(values["precision"] > mixtures[key])])
    first = conditional[0][0]
    images = {m: v for m, v in results.get("plan2_images", {}).get(b.dataset, {}).items()
              if m.startswith(first) and "class_consistency" in v}
    for name, decoded in images.items():
        rows.append(["Plan 2 decoded", name,
                     f"class consistency {decoded['class_consistency']:.3f}",
                     f"real images {decoded['class_consistency_real']:.3f}",
                     verdict(decoded["class_consistency"] >= b.plan2_consistency)])
    best = max(images, key=lambda m: images[m]["class_consistency"], default=None)
    return rows, (f"plan2_{b.dataset}_{best}_samples.png" if best else None)


def loop_rows(b: DemoReport) -> tuple[list[list[str]], str | None]:
    path = Path(b.data_dir) / "results" / f"{b.dataset}_loop_metrics.json"
    if not path.is_file():
        return [], None
    records = json.loads(path.read_text())["generations"]
    first, last = records[0], records[-1]
    return ([["loop", "generation 0", f"FID {first['fid']:.1f}",
              f"floor {first['fid_floor']:.2f}", verdict(first["fid"] <= b.loop_fid)],
             ["loop", f"generation {last['generation']}", f"FID {last['fid']:.1f}, recall "
              f"{last['recall']:.3f}", f"generation 0: recall {first['recall']:.3f}",
              "the drift the loop measures"]], f"{b.dataset}_loop_metrics.png")


def clip_rows(b: DemoReport) -> list[list[str]]:
    path = Path(b.data_dir) / "results" / f"clip_{b.dataset}_zero_shot.json"
    if not path.is_file():
        return []
    accuracy = json.loads(path.read_text())["zero_shot_accuracy"]
    return [["small CLIP", "zero-shot", f"test accuracy {accuracy:.3f}", "chance 0.100",
             verdict(accuracy > 0.5)]]


def main(argv: list[str] | None = None) -> None:
    b = pick(DemoReport, configure(globals(), argv))
    metrics_file = Path(b.data_dir) / "results" / "metrics.json"
    if not metrics_file.is_file():
        raise StageError(f"{metrics_file} not found; run evaluate.py --data-dir {b.data_dir} "
                         f"first")
    results = json.loads(metrics_file.read_text())
    rows = encoder_rows(results, b) + flow_rows(b)
    plan1, plan1_png = plan1_rows(results, b)
    plan2, plan2_png = plan2_rows(results, b)
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
