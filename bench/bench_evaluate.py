"""Benchmark: image metrics of 10,000 generated images once the evaluator is trained.

Times what evaluate.py does for one Plan 1 file: evaluator features and logits of the test
images and of the generated ones, FID (classifier features), the Inception-style score,
precision/recall/density/coverage, class consistency, and the real-vs-real floors. The test images,
each shifted by one pixel, stand in for generated images: the work does not depend on what the
images show. The evaluator is loaded from its checkpoint (trained first, untimed, if missing).
Target: under 60 s on 2 CPU cores.

    python bench/bench_evaluate.py --dataset fashion-mnist
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataio.data_sources import load_dataset  # noqa: E402
from evaluation import scoring  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import (  # noqa: E402
    StageError,
    limit_cpu_threads,
    pick_device,
    run_stage,
    seed_everything,
)

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # whose evaluator and test images [in dataio.data_sources.DATASETS]
DATA_DIR = "data"  # where the evaluator is cached (<data-dir>/checkpoints/evaluator)
COUNT = 10_000  # generated images to evaluate (at most the test split's size) [>= 10]
DEVICE = "cpu"  # the target is for CPU; auto picks cuda, then mps, then cpu
SEED = 0  # seeds the floors' training subset [seed]
TARGET_SECONDS = 60.0  # bound on the timed work on 2 CPU cores [> 0]
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class EvaluateBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    count: int
    device: str
    seed: int
    target_seconds: float
    threads: int


def main(argv: list[str] | None = None) -> None:
    b = pick(EvaluateBench, configure(globals(), argv))
    seed_everything(b.seed)
    limit_cpu_threads(b.threads)
    device = pick_device(b.device)
    score_settings = scoring.ScoringSettings(seed=b.seed)
    evaluator = scoring.EvaluatorSettings(data_dir=b.data_dir, seed=b.seed)
    data = load_dataset(b.dataset, b.data_dir)
    if len(data.x_test) < b.count:
        raise StageError(f"--count {b.count} is more than the {len(data.x_test)} test images")
    scoring.load_evaluator(data, device, evaluator)  # trains and caches it once; not timed
    source = np.arange(b.count)
    arrays = {"x_gen": np.roll(data.x_test[:b.count], 1, axis=2), "idx_src": source,
              "y_src": data.y_test[source]}
    path = Path(f"{b.dataset}_shifted-test-images.npz")

    start = time.perf_counter()
    scoring.check_sources(path, arrays, data, score_settings)
    real = scoring.real_images_for(data, device, evaluator, score_settings)
    loaded = time.perf_counter()
    values = scoring.plan1_metrics(path, arrays, real, device, score_settings)
    done = time.perf_counter()

    print(f"{b.count} images, {b.dataset}, device {device}: FID {values['fid']:.3f} "
          f"(floor {values['fid_floor']:.3f}), score {values['score']:.3f}, precision "
          f"{values['precision']:.3f}, recall {values['recall']:.3f}, density "
          f"{values['density']:.3f}, coverage {values['coverage']:.3f}, class consistency "
          f"{values['class_consistency']:.3f}")
    print(f"evaluator load + test-image features: {loaded - start:.1f} s; metrics of the "
          f"generated images with floors: {done - loaded:.1f} s")
    total = done - start
    verdict = "within" if total < b.target_seconds else "OVER"
    print(f"total: {total:.1f} s ({verdict} the {b.target_seconds:.0f} s target)")


if __name__ == "__main__":
    run_stage(main)
