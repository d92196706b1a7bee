"""Train the evaluator CNN of a dataset: the instrument every image metric is measured with.

A small CNN classifier (evaluation/evaluator_cnn.py) trained on the dataset's training split with
one fixed recipe (evaluation.scoring.EvaluatorSettings: 4 epochs, seed 0) and cached in
data/checkpoints/evaluator/<ds>.pt with its test accuracy. Plan 1, the self-consuming loop and
evaluate.py load it from there (each trains it the same way when it is missing), so that their
FIDs, precision/recall and class consistency are measured in one feature space. Run this first to
train it on its own and see its accuracy against its target; an interrupted run resumes.

    python train_evaluator.py --dataset digits
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dataio.data_sources import load_dataset, resolve_dataset
from evaluation.scoring import EvaluatorSettings, load_evaluator
from runtime.settings import configure, pick
from runtime.stage import limit_cpu_threads, pick_device, run_stage
from runtime.tracking import open_run_log

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # evaluator's dataset [in dataio.data_sources.DATASETS, or folder:PATH]
DATA_DIR = "data"  # the evaluator goes to <data-dir>/checkpoints/evaluator/<ds>.pt
IMAGE_SIZE = 0  # folder:PATH: resize its images to NxN (0: their own size, when shared) [>= 0]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
TENSORBOARD = True  # log each epoch's loss and test accuracy to <data-dir>/runs/evaluator/<ds>/
WANDB = ""  # also mirror the log to this Weights & Biases project (needs wandb; "": off)
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class EvaluatorRun:
    """Which dataset's evaluator, and where it is cached."""

    dataset: str
    data_dir: str


def main(argv: list[str] | None = None) -> None:
    values = resolve_dataset(configure(globals(), argv))
    run = pick(EvaluatorRun, values)
    limit_cpu_threads(values["threads"])
    device = pick_device(values["device"])
    data = load_dataset(run.dataset, run.data_dir)
    with open_run_log(values, "evaluator", run.dataset) as log:
        evaluator = load_evaluator(data, device, EvaluatorSettings(data_dir=run.data_dir), log)
    target = evaluator.target_accuracy
    verdict = ("no target for this dataset" if target is None else
               f"target {target}: {'met' if evaluator.test_accuracy >= target else 'NOT met'}")
    print(f"{data.name} evaluator CNN: test accuracy {evaluator.test_accuracy:.4f} on "
          f"{len(data.x_test)} test images ({verdict}); {Path(evaluator.checkpoint)}")


if __name__ == "__main__":
    run_stage(main)
