"""How much do a Plan 2 generator's sample metrics move with the sampling seed alone? Loads the
finished checkpoints that made `<ds>_<enc>_<model>.gen.npz` (one model or an `--ensemble`), draws
--samples embeddings at each sampling seed (the classes asked for and the noise; the stage draws at
its own --seed, so that row reproduces its file) and prints Fréchet distance / floor, precision,
recall, density and coverage per seed with their mean and standard deviation, beside the
20-component mixture, and whether Plan 2's target (bench_common.meets_target) holds at each seed.
Trains nothing.

    python bench/bench_plan2_sampling.py --data-dir data/bench_flows --encoder ae_intermediate
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flows  # noqa: E402
from bench_common import meets_target  # noqa: E402
from dataio.artifacts import fingerprint, load_checkpoint, load_embeddings, load_npz  # noqa: E402
from dataio.data_sources import CLASS_NAMES  # noqa: E402
from evaluation import scoring  # noqa: E402
from models import vector_gans  # noqa: E402
from models.flow_models import baseline_samples  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import StageError, limit_cpu_threads, run_stage  # noqa: E402

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset of the embeddings [in dataio.data_sources.DATASETS]
DATA_DIR = "data"  # holds embeddings/ and checkpoints/plan2/ of a finished plan2 run
ENCODER = "ae_advanced"  # the embedding the generator learnt
MODEL = "wgan_gp"  # the generator [in models.vector_gans.GENERATORS]
SAMPLING_SEEDS = (0, 1, 2, 3, 4)  # seeds of the classes asked for and of the noise [seed]
SAMPLES = 10000  # samples per sampling seed [>= 10]
SEED = 0  # seed of the metrics' floor subset and of the mixture (the stage's --seed) [seed]
MIXTURE = True  # fit the 20-component mixture too and check the target at each seed
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
# ---------------------------------------------------------------- end of settings

METRICS = ("ratio", "precision", "recall", "density", "coverage")


@dataclass(frozen=True)
class SamplingBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    encoder: str
    model: str
    sampling_seeds: tuple[int, ...]
    samples: int
    seed: int
    mixture: bool
    threads: int
    mixture_components: int  # flows.py's --gmm-components default


def load_members(gen_path: Path, checkpoints: Path, real: dict[str, Any], b: SamplingBench
                 ) -> tuple[list, Any, np.ndarray]:
    """The best EMA models of the checkpoints named in the .gen.npz metadata (one, or an
    ensemble's members in order), rebuilt from their checkpoints, the standardiser of their
    training embeddings (the kept part of the split the meta records) and those embeddings'
    classes."""
    meta = load_npz(gen_path, {"z_gen": (2, "f")})["meta"]
    names = meta["checkpoint"] if isinstance(meta["checkpoint"], list) else [meta["checkpoint"]]
    held_out = np.array(meta["split"]["held_out"], dtype=np.int64)
    kept = np.setdiff1d(np.arange(int(meta["split"]["of"])), held_out)
    n_train = len(kept)
    z_train, y_train = real["z_train"][kept], real["y_train"][kept].astype(np.int64)
    expected = fingerprint(z_train, y_train, held_out)
    models = []
    for name in names:
        path = checkpoints / Path(name).name
        state = load_checkpoint(path)
        if state["settings"]["embeddings"] != expected:
            raise StageError(f"{path}: trained on other embeddings than "
                             f"the {n_train} of {b.dataset}_{b.encoder}.npz its meta names")
        models.append(vector_gans.from_checkpoint(path, state=state))
    return models, vector_gans.Standardiser(z_train), y_train


def scores(path: Path, real: dict[str, Any], z_gen: np.ndarray,
           s: scoring.ScoringSettings) -> dict[str, float]:
    """scoring.plan2_metrics of the samples without their classes (Fréchet distance, PRDC and
    floors; the class metrics are skipped), with the Fréchet distance / floor as "ratio"."""
    values = scoring.plan2_metrics(path, {"z_gen": z_gen}, real, s)
    return {**values, "ratio": values["frechet_distance"] / values["frechet_distance_floor"]}


def line(name: str, row: dict[str, float], verdict: str) -> str:
    return (f"| {name} | " + " | ".join(f"{row[k]:.3f}" if k != "ratio" else f"{row[k]:.2f}"
                                         for k in METRICS) + f" | {verdict} |")


def main(argv: list[str] | None = None) -> None:
    b = pick(SamplingBench, configure(globals(), argv),
             mixture_components=configure(vars(flows), [])["gmm_components"])
    limit_cpu_threads(b.threads)
    score_settings = scoring.ScoringSettings(seed=b.seed)
    root = Path(b.data_dir)
    source = root / "embeddings" / f"{b.dataset}_{b.encoder}.npz"
    real = load_embeddings(source)
    gen_path = root / "embeddings" / f"{b.dataset}_{b.encoder}_{b.model}.gen.npz"
    models, scaler, y_train = load_members(gen_path, root / "checkpoints" / "plan2", real, b)
    conditional = getattr(models[0], "conditional", False)
    mixture = None
    if b.mixture:
        draws = baseline_samples(real["z_train"], real["z_test"], b.samples, b.seed,
                                 b.mixture_components)["mixture"]
        mixture = scores(source, real, draws, score_settings)
    print(f"{b.dataset} {b.encoder} {b.model} ({len(models)} member"
          f"{'s' * (len(models) > 1)}), {b.samples} samples per sampling seed against the "
          f"{len(real['z_test'])} test embeddings; floor subset seed {b.seed}\n")
    print("| sampling seed | Fréchet distance / floor | precision | recall | density | coverage "
          "| target |\n" + "| --- " * 7 + "|")
    if mixture is not None:
        print(line(f"GMM-{b.mixture_components} full (fitted)", mixture, "—"))
    rows = []
    for seed in b.sampling_seeds:
        labels = vector_gans.class_draw(y_train, b.samples, len(CLASS_NAMES[b.dataset]), seed) \
            if conditional else None
        rows.append(scores(gen_path, real, scaler.inverse(
            vector_gans.generate_ensemble(models, labels, b.samples, seed)), score_settings))
        met = "—" if mixture is None else "met" if meets_target(rows[-1], mixture) \
            else "not met"
        print(line(str(seed), rows[-1], met), flush=True)
    table = np.array([[r[k] for k in METRICS] for r in rows])
    spread = table.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(len(METRICS))
    print(f"| mean ± sd over {len(rows)} | " + " | ".join(
        f"{m:.3f} ± {s:.3f}" for m, s in zip(table.mean(axis=0), spread, strict=True)) + " | |")


if __name__ == "__main__":
    run_stage(main, resumable=False)
