"""Does a Plan 2 GAN beat the 20-component mixture, with its settings chosen honestly? For each
encoder's embeddings and training-set size: hold VALIDATION training embeddings out, train every
candidate recipe of each generator on the rest with each seed and score it on the held-out part
(the test split is not looked at); pick each generator's recipe on those validation scores; then
train the chosen recipe on the training split with each seed and score the test split once.
Prints every candidate's validation means, the choice, and the test table (mean ± sd over seeds)
beside the mixture fitted on the same training embeddings, with the target: recall >= 0.8,
Fréchet distance <= 2x the floor, and precision and density above the mixture's.

Every run is plan2_gan_training.py as a user runs it, in a folder of its own under --data-dir
(resumed when run again); hours on 2 CPU cores at the stage's defaults.

    python bench/bench_plan2_target.py --encoders ae_basic --train-sizes 10000 --seeds 0,1,2
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flows  # noqa: E402
import scoring  # noqa: E402
from artifacts import load_embeddings, load_npz, make_meta, save_npz  # noqa: E402
from bench_common import ROOT, meets_target, run_script, within_target  # noqa: E402
from flow_models import baseline_samples  # noqa: E402
from runtime import limit_cpu_threads, run_stage  # noqa: E402
from settings import configure, pick  # noqa: E402

DATASET = "fashion-mnist"  # dataset of the embeddings [in data_sources.DATASETS]
DATA_DIR = "data/bench_plan2_target"  # stage-1 embeddings (made if missing) and every run
ENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")  # embeddings to generate
MODELS = ("wgan_gp", "contrastive_gan")  # generators [in vector_gans.GENERATORS]
CANDIDATES = ("defaults", "--mode-seeking 2 --energy-weight 1")  # recipes (flag sets)
SEEDS = (0, 1, 2)  # seeds of every measured configuration [>= 0]
TRAIN_SIZES = (0,)  # training embeddings of the GANs and the mixture (0: the whole split) [>= 0]
VALIDATION = 10000  # training embeddings held out to choose the recipe on [>= 100]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for an encoder that is missing [>= 1]
EPOCHS = 0  # epochs of plan2_gan_training.py (0: the stage's own default) [>= 0]
STAGE_ARGS = ""  # flags of every plan2_gan_training.py run, e.g. --stage-args="--batch-size 64"
SAMPLES = 10000  # samples of every generator and of the mixture [>= 10]
DEVICE = "auto"  # passed to the stage
THREADS = 1  # CPU threads of each stage run and of the metrics [>= 0]
METRICS = ("ratio", "precision", "recall", "density", "coverage")


@dataclass(frozen=True)
class TargetBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    encoders: tuple[str, ...]
    models: tuple[str, ...]
    candidates: tuple[str, ...]
    seeds: tuple[int, ...]
    train_sizes: tuple[int, ...]
    validation: int
    encoder_epochs: int
    epochs: int
    samples: int
    stage_args: str
    device: str
    threads: int
    mixture_components: int  # flows.py's --gmm-components default


def split(real: dict[str, Any], held_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded indices of the training embeddings kept for training and held out."""
    order = np.random.default_rng(seed).permutation(len(real["z_train"]))
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def scored(z_gen: np.ndarray, real: dict[str, Any], seed: int) -> dict[str, float]:
    """Plan 2's metrics of samples against real's test part, with the FD / floor as "ratio"."""
    values = scoring.plan2_metrics(Path("samples.npz"), {"z_gen": z_gen}, real,
                                   scoring.ScoringSettings(seed=seed, bootstrap=0))
    return {**values, "ratio": values["frechet_distance"] / values["frechet_distance_floor"]}


def gan_run(folder: Path, source: Path, encoder: str, model: str, seed: int, limit: int,
            recipe: str, b: TargetBench) -> np.ndarray:
    """One plan2_gan_training.py run in its own folder (resumed if done); its samples."""
    embeddings = folder / "embeddings"
    embeddings.mkdir(parents=True, exist_ok=True)
    target = embeddings / source.name
    if not target.exists():
        target.write_bytes(source.read_bytes())
    run_script("plan2_gan_training.py", "--dataset", b.dataset, "--data-dir", str(folder),
               "--encoder", encoder, "--models", model, "--seed", str(seed), "--limit",
               str(limit), "--samples", str(b.samples), "--device", b.device, "--threads",
               str(b.threads), "--no-plots",
               *(["--epochs", str(b.epochs)] if b.epochs else []), *shlex.split(b.stage_args),
               *shlex.split("" if recipe == "defaults" else recipe))
    return load_npz(embeddings / f"{b.dataset}_{encoder}_{model}.gen.npz",
                    {"z_gen": (2, "f")})["z_gen"]


def mean_sd(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    return {m: (float(np.mean([r[m] for r in rows])),
                float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0)
            for m in METRICS}


def line(name: str, stats: dict[str, tuple[float, float]], verdict: str) -> str:
    return (f"| {name} | " + " | ".join(f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}"
                                         for m in METRICS) + f" | {verdict} |")


def measure(encoder: str, size: int, b: TargetBench) -> list[str]:
    """Choose each generator's recipe on held-out training embeddings, then score it on test."""
    root = ROOT / b.data_dir
    source = root / "embeddings" / f"{b.dataset}_{encoder}.npz"
    real = load_embeddings(source)
    keep, held_out = split(real, b.validation)
    n = min(size or len(real["z_train"]), len(keep))
    validation_name = f"{encoder}-val{n}"
    validation_file = root / "embeddings" / f"{b.dataset}_{validation_name}.npz"
    validation = {"z_train": real["z_train"][keep[:n]], "y_train": real["y_train"][keep[:n]],
                  "z_test": real["z_train"][held_out], "y_test": real["y_train"][held_out]}
    if not validation_file.is_file():
        save_npz(validation_file, validation, make_meta(
            __file__, {"validation": b.validation, "train": n}, b.dataset, 0,
            made_from=source.name, note="train: n training embeddings kept; test: the "
            "held-out training embeddings (never the test split)"))
    validation = load_embeddings(validation_file)
    lines = [f"\n## {encoder}, {n} training embeddings: choice on {b.validation} held-out "
             f"training embeddings, seeds {', '.join(map(str, b.seeds))}\n",
             "| recipe | " + " | ".join(METRICS) + " | target on the mean |",
             "| --- " * (len(METRICS) + 2) + "|"]
    mixture = mean_sd([scored(baseline_samples(validation["z_train"], validation["z_test"],
                                               b.samples, seed, b.mixture_components)
                              ["mixture"], validation, seed) for seed in b.seeds])
    mixture_mean = {m: v[0] for m, v in mixture.items()}
    lines.append(line(f"GMM-{b.mixture_components}", mixture, "—"))
    chosen = {}
    for model in b.models:
        ranked = []
        for index, recipe in enumerate(b.candidates):
            rows = [scored(gan_run(root / "validation" / f"{encoder}-n{n}" / f"c{index}" /
                                   f"s{seed}", validation_file, validation_name, model, seed, 0,
                                   recipe, b), validation, seed) for seed in b.seeds]
            stats = mean_sd(rows)
            mean = {m: v[0] for m, v in stats.items()}
            met = meets_target(mean, mixture_mean)
            lines.append(line(f"{model} {recipe}", stats,
                              "met" if met else "not met"))
            ranked.append(((met, mean["precision"] if met else mean["recall"]), recipe))
        chosen[model] = max(ranked, key=lambda r: r[0])[1]
    lines += ["\nchosen on validation: " + "; ".join(f"{m}: {r}"
                                                      for m, r in chosen.items()),
              f"\n### {encoder}, {n} training embeddings: the test split, scored once\n",
              "| generator | " + " | ".join(METRICS) + " | target on the mean (seeds) |",
              "| --- " * (len(METRICS) + 2) + "|"]
    limit = n if n < len(real["z_train"]) else 0
    train_real = {**real, "z_train": real["z_train"][:n], "y_train": real["y_train"][:n]}
    mixture = mean_sd([scored(baseline_samples(train_real["z_train"], real["z_test"], b.samples,
                                               seed, b.mixture_components)["mixture"], real,
                              seed) for seed in b.seeds])
    mixture_mean = {m: v[0] for m, v in mixture.items()}
    lines.append(line(f"GMM-{b.mixture_components}", mixture, "—"))
    for model, recipe in chosen.items():
        rows = [scored(gan_run(root / "test" / f"{encoder}-n{n}" / model / f"s{seed}", source,
                               encoder, model, seed, limit, recipe, b), real, seed)
                for seed in b.seeds]
        stats = mean_sd(rows)
        mean = {m: v[0] for m, v in stats.items()}
        per_seed = sum(meets_target(r, mixture_mean) for r in rows)
        verdict = ("met" if meets_target(mean, mixture_mean) else "not met"
                   + ("" if within_target(mean) else " (bounds)")) + \
            f" ({per_seed} of {len(rows)} seeds)"
        lines.append(line(f"{model} {recipe}", stats, verdict))
    return lines


def main(argv: list[str] | None = None) -> None:
    b = pick(TargetBench, configure(globals(), argv),
             mixture_components=configure(vars(flows), [])["gmm_components"])
    limit_cpu_threads(b.threads)
    missing = [e for e in b.encoders
               if not (ROOT / b.data_dir / "embeddings" / f"{b.dataset}_{e}.npz").is_file()]
    if missing:
        run_script("encoder_models.py", "--dataset", b.dataset, "--data-dir", b.data_dir,
                   "--models", ",".join(missing), "--epochs", str(b.encoder_epochs))
    print(f"# Plan 2 target, recipes chosen on held-out training embeddings ({b.dataset}; "
          f"{b.samples} samples; ratio = Fréchet distance / floor; mean ± sd over seeds)",
          flush=True)
    for encoder in b.encoders:
        for size in b.train_sizes:
            print("\n".join(measure(encoder, size, b)), flush=True)


if __name__ == "__main__":
    run_stage(main, resumable=False)
