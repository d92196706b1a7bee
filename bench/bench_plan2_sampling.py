"""How much do a Plan 2 generator's sample metrics move with the sampling seed alone? Loads the
finished checkpoints that made `<ds>_<enc>_<model>.gen.npz` (one model or an `--ensemble`), draws
--samples embeddings at each sampling seed (the classes asked for and the noise; the stage draws
at its own --seed, so that row reproduces its file) and prints Fréchet distance / floor,
precision, recall, density and coverage per seed with their mean and standard deviation, beside
the 20-component mixture, and whether issue 10's target holds at each seed. Trains nothing.

    python bench/bench_plan2_sampling.py --data-dir data/bench_flows --encoder ae_intermediate
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_plan2 import meets_target  # noqa: E402

import evaluate  # noqa: E402
import flows  # noqa: E402
import plan2_gan_training as p2  # noqa: E402
from artifacts import load_checkpoint, load_embeddings, load_npz  # noqa: E402
from data_sources import CLASS_NAMES  # noqa: E402
from runtime import StageError, limit_cpu_threads, run_stage  # noqa: E402
from settings import configure  # noqa: E402

DATASET = "fashion-mnist"  # dataset of the embeddings [in data_sources.DATASETS]
DATA_DIR = "data"  # holds embeddings/ and checkpoints/plan2/ of a finished plan2 run
ENCODER = "ae_advanced"  # the embedding the generator learnt
MODEL = "wgan_gp"  # the generator [in plan2_gan_training.GENERATORS]
SAMPLING_SEEDS = (0, 1, 2, 3, 4)  # seeds of the classes asked for and of the noise [>= 0]
SAMPLES = 10000  # samples per sampling seed [>= 10]
SEED = 0  # seed of the metrics' floor subset and of the mixture (the stage's --seed) [>= 0]
MIXTURE = True  # fit the 20-component mixture too and check the target at each seed
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]

METRICS = ("ratio", "precision", "recall", "density", "coverage")


def load_members(gen_path: Path, checkpoints: Path, real: dict[str, Any]) -> tuple[list, Any]:
    """The best EMA models of the checkpoints named in the .gen.npz metadata (one, or an
    ensemble's members in order), and the standardiser of their training embeddings."""
    meta = load_npz(gen_path, {"z_gen": (2, "f")})["meta"]
    names = meta["checkpoint"] if isinstance(meta["checkpoint"], list) else [meta["checkpoint"]]
    n_train = int(meta["train_embeddings"])
    z_train, y_train = real["z_train"][:n_train], real["y_train"][:n_train].astype(np.int64)
    expected = p2.fingerprint(z_train, y_train)
    models = []
    for name in names:
        path = checkpoints / Path(name).name
        state = load_checkpoint(path)
        saved = state["settings"]
        if saved["embeddings"] != expected:
            raise StageError(f"{path}: trained on other embeddings than "
                             f"{DATASET}_{ENCODER}.npz's first {n_train}")
        p2.HIDDEN, p2.DEPTH, p2.NOISE_DIM = saved["hidden"], saved["depth"], saved["noise_dim"]
        p2.WGAN_CONDITIONAL = saved.get("conditional", True)
        model = p2.build_model(MODEL, z_train.shape[1], len(CLASS_NAMES[DATASET]))
        model.load_state_dict(state["best_ema"] or state["ema"])
        models.append(model.eval())
    return models, p2.Standardiser(z_train), y_train


def scores(path: Path, real: dict[str, Any], z_gen: np.ndarray) -> dict[str, float]:
    """evaluate.plan2_metrics of the samples without their classes (Fréchet distance, PRDC and
    floors; the class metrics are skipped), with the Fréchet distance / floor as "ratio"."""
    values = evaluate.plan2_metrics(path, {"z_gen": z_gen}, real)
    return {**values, "ratio": values["frechet_distance"] / values["frechet_distance_floor"]}


def line(name: str, row: dict[str, float], verdict: str) -> str:
    return (f"| {name} | " + " | ".join(f"{row[k]:.3f}" if k != "ratio" else f"{row[k]:.2f}"
                                         for k in METRICS) + f" | {verdict} |")


def main() -> None:
    configure(globals())
    limit_cpu_threads(THREADS)
    if MODEL not in p2.GENERATORS:
        raise StageError(f"--model {MODEL}: not a generator of embeddings; one of "
                         f"{', '.join(p2.GENERATORS)}")
    evaluate.SEED = SEED
    p2.DATASET, p2.ENCODER = DATASET, ENCODER
    root = Path(DATA_DIR)
    source = root / "embeddings" / f"{DATASET}_{ENCODER}.npz"
    real = load_embeddings(source)
    gen_path = root / "embeddings" / f"{DATASET}_{ENCODER}_{MODEL}.gen.npz"
    models, scaler, y_train = load_members(gen_path, root / "checkpoints" / "plan2", real)
    conditional = getattr(models[0], "conditional", False)
    mixture = None
    if MIXTURE:
        draws = flows.baseline_samples(real["z_train"], real["z_test"], SAMPLES, SEED)["mixture"]
        mixture = scores(source, real, draws)
    print(f"{DATASET} {ENCODER} {MODEL} ({len(models)} member{'s' * (len(models) > 1)}), "
          f"{SAMPLES} samples per sampling seed against the {len(real['z_test'])} test "
          f"embeddings; floor subset seed {SEED}\n")
    print("| sampling seed | Fréchet distance / floor | precision | recall | density | coverage "
          "| target |\n" + "| --- " * 7 + "|")
    if mixture is not None:
        print(line(f"GMM-{flows.GMM_COMPONENTS} full (fitted)", mixture, "—"))
    rows = []
    for seed in SAMPLING_SEEDS:
        labels = p2.class_draw(y_train, SAMPLES, len(CLASS_NAMES[DATASET]), seed) \
            if conditional else None
        rows.append(scores(gen_path, real, scaler.inverse(
            p2.generate_ensemble(models, labels, SAMPLES, seed))))
        met = "—" if mixture is None else "met" if meets_target(rows[-1], mixture) \
            else "not met"
        print(line(str(seed), rows[-1], met), flush=True)
    table = np.array([[r[k] for k in METRICS] for r in rows])
    spread = table.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(len(METRICS))
    print(f"| mean ± sd over {len(rows)} | " + " | ".join(
        f"{m:.3f} ± {s:.3f}" for m, s in zip(table.mean(axis=0), spread, strict=True)) + " | |")


if __name__ == "__main__":
    run_stage(main, resumable=False)
