"""Which generator of embeddings is best, chosen honestly, and does a Plan 2 GAN beat the
20-component mixture? For each encoder's embeddings: hold VALIDATION training embeddings out
(seeded), train every (model, recipe, seed) once on the first n of the rest, for each n of
TRAIN_SIZES, and score its samples twice: on the held-out part, where each model's recipe and
then the best GAN are chosen, and on the test split, scored once, for the report (the choice
never looks at it). The mixture is fitted on the same n embeddings with each seed.

Prints, per encoder and size, the validation means of every candidate, the choices, and the test
table (mean ± sd over seeds) with Plan 2's target: the best GAN (chosen on
validation) at recall >= 0.8 and a Fréchet distance <= 2x the floor, above the mixture's
precision and density. Also which generator of embeddings is best on validation (within those
bounds first, then by precision), mixture and flow matching included. The tables also go to
DATA_DIR/results/plan2_target_<encoders>.md (one file per set of encoders, so a second run with
other encoders keeps the first's report).

Every run is plan2_gan_training.py as a user runs it, in a folder of its own under DATA_DIR
(resumed when run again; a run's log beside it); PARALLEL at a time. Hours on 2 CPU cores at
the stage's defaults.

    python bench/bench_plan2_target.py --encoders ae_basic,vae --train-sizes 10000,0
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flows  # noqa: E402
from bench_common import ROOT, flag_words, load_text, meets_target, run_script, within_target  # noqa: E402
from dataio.artifacts import (  # noqa: E402
    ensure_output_dir,
    load_embeddings,
    load_npz,
    make_meta,
    save_npz,
    write_text,
)
from evaluation import scoring  # noqa: E402
from models.flow_models import baseline_samples  # noqa: E402
from models.vector_gans import GENERATORS, is_adversarial  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import StageError, limit_cpu_threads, run_stage  # noqa: E402

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset of the embeddings [in dataio.data_sources.DATASETS]
DATA_DIR = "data/bench_plan2_target"  # stage-1 embeddings (made if missing) and every run
ENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced",
            "vae")  # stage-1 embeddings to generate [in models.encoders.ENCODER_NAMES]
MODELS = ("wgan_gp", "contrastive_gan", "flow_matching")  # generators [in GENERATORS]
CANDIDATES = ("defaults",)  # recipes (flag sets) each model chooses among on validation
SEEDS = (0, 1, 2)  # seeds of every measured configuration [seed]
TRAIN_SIZES = (10000, 0)  # training embeddings of every model and the mixture (0: all kept)
VALIDATION = 10000  # training embeddings held out to choose on [>= 100]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for an encoder that is missing [>= 1]
EPOCHS = 0  # epochs of plan2_gan_training.py (0: the stage's own default) [>= 0]
STAGE_ARGS = ""  # flags of every plan2_gan_training.py run, e.g. --stage-args="--batch-size 64"
SAMPLES = 10000  # samples of every generator and of the mixture [>= 10]
DEVICE = "auto"  # passed to the stage
PARALLEL = 2  # stage runs (and mixture fits) at once, one CPU thread each [>= 1]
# ---------------------------------------------------------------- end of settings
METRICS = ("ratio", "precision", "recall", "density", "coverage")
SCORED = ("validation", "test")


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
    parallel: int
    mixture_components: int  # flows.py's --gmm-components default


@dataclass(frozen=True)
class Split:
    """One encoder's embeddings at one training size: the file every run of it trains on (its
    test part is the held-out validation), and the real test split."""

    encoder: str
    n: int
    name: str  # the embedding name the stage is given: <encoder>-val<n>
    file: Path
    validation: dict[str, Any]  # z_train: the n kept; z_test: the held-out training embeddings
    test: dict[str, Any]  # z_train: the same n kept; z_test: the real test split


def held_out(count: int, total: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded indices of the training embeddings kept for training, and of those held out."""
    order = np.random.default_rng(seed).permutation(total)
    return np.sort(order[count:]), np.sort(order[:count])


def make_split(encoder: str, size: int, b: TargetBench) -> Split:
    """The kept and held-out parts of an encoder's training embeddings, the first written to a
    file of its own (once) for the stage."""
    root = ROOT / b.data_dir
    real = load_embeddings(root / "embeddings" / f"{b.dataset}_{encoder}.npz", b.dataset)
    keep, out = held_out(b.validation, len(real["z_train"]))
    n = min(size or len(keep), len(keep))
    kept = {"z_train": real["z_train"][keep[:n]], "y_train": real["y_train"][keep[:n]]}
    validation = {**kept, "z_test": real["z_train"][out], "y_test": real["y_train"][out]}
    name = f"{encoder}-val{n}"
    path = root / "embeddings" / f"{b.dataset}_{name}.npz"
    if not path.is_file():
        save_npz(path, validation, make_meta(
            __file__, {"validation": b.validation, "train": n}, b.dataset, 0,
            made_from=f"{b.dataset}_{encoder}.npz", note="z_train: n training embeddings kept; "
            "z_test: the held-out training embeddings (never the test split)"))
    test = {**kept, "z_test": real["z_test"], "y_test": real["y_test"]}
    return Split(encoder, n, name, path, validation, test)


def scored(z_gen: np.ndarray, y_gen: np.ndarray | None, real: dict[str, Any],
           seed: int) -> dict[str, float]:
    """Plan 2's metrics of samples against real's z_test (the floor: as many of real's z_train),
    with the Fréchet distance over the floor as "ratio"."""
    generated = {"z_gen": z_gen, **({} if y_gen is None else {"y_gen": y_gen})}
    values = scoring.plan2_metrics(Path("samples.npz"), generated, real,
                                   scoring.ScoringSettings(seed=seed, bootstrap=0))
    return {**values, "ratio": values["frechet_distance"] / values["frechet_distance_floor"]}


def stage_run(split: Split, model: str, recipe_index: int, recipe: str, seed: int,
              b: TargetBench) -> dict[str, Any]:
    """One plan2_gan_training.py run on the split's kept embeddings, in its own folder (resumed
    when done), its output in run.log there; its samples scored on validation and on test."""
    folder = (ROOT / b.data_dir / "runs" / f"{split.name}" / model / f"c{recipe_index}"
              / f"s{seed}")
    embeddings = ensure_output_dir(folder / "embeddings")
    target = embeddings / split.file.name
    if not target.exists():
        target.write_bytes(split.file.read_bytes())
    command = [sys.executable, str(ROOT / "plan2_gan_training.py"), "--dataset", b.dataset,
               "--data-dir", str(folder), "--encoder", split.name, "--models", model,
               "--seed", str(seed), "--samples", str(b.samples), "--device", b.device,
               "--threads", "1", "--no-plots",
               *(["--epochs", str(b.epochs)] if b.epochs else []),
               *flag_words("--stage-args", b.stage_args),
               *flag_words("--candidates", "" if recipe == "defaults" else recipe)]
    started = time.time()
    with (folder / "run.log").open("a") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        raise StageError(f"{' '.join(command[1:])} failed (exit {code}); see {folder}/run.log")
    gen = load_npz(embeddings / f"{b.dataset}_{split.name}_{model}.gen.npz", {"z_gen": (2, "f")})
    y_gen = gen.get("y_gen")
    print(f"{split.name} {model} {recipe} seed {seed}: {time.time() - started:.0f} s", flush=True)
    return {"train_seconds": gen["meta"].get("train_seconds"),
            **{part: scored(gen["z_gen"], y_gen, getattr(split, part), seed)
               for part in SCORED}}


def mixture_run(split: Split, seed: int, b: TargetBench) -> dict[str, Any]:
    """The 20-component mixture fitted on the split's kept embeddings, scored on both parts."""
    samples = baseline_samples(split.validation["z_train"], split.validation["z_test"],
                               b.samples, seed, b.mixture_components)["mixture"]
    return {part: scored(samples, None, getattr(split, part), seed) for part in SCORED}


def mean_sd(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    return {m: (float(np.mean([r[m] for r in rows])),
                float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0)
            for m in METRICS}


def means(rows: list[dict[str, float]]) -> dict[str, float]:
    return {m: v[0] for m, v in mean_sd(rows).items()}


def line(name: str, rows: list[dict[str, float]], verdict: str) -> str:
    stats = mean_sd(rows)
    return (f"| {name} | " + " | ".join(f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}"
                                         for m in METRICS) + f" | {verdict} |")


def rank(rows: list[dict[str, float]]) -> tuple[bool, float]:
    """The order of the choices: within the bounds (recall >= 0.8, FD <= 2x the floor) first,
    then the higher precision."""
    mean = means(rows)
    return within_target(mean), mean["precision"]


def report(split: Split, runs: dict[tuple[str, int, int], dict[str, Any]],
           mixture: list[dict[str, Any]], b: TargetBench) -> list[str]:
    """The validation table and choices, then the test table, of one split."""
    header = ["| generator | " + " | ".join(METRICS) + " | {} |", "| --- " * (len(METRICS) + 2)
              + "|"]
    mix = {part: [m[part] for m in mixture] for part in SCORED}
    gmm = f"GMM-{b.mixture_components}"
    lines = [f"\n## {split.encoder}, {split.n} training embeddings (seeds "
             f"{', '.join(map(str, b.seeds))}): validation, {len(split.validation['z_test'])} "
             f"held-out training embeddings\n", header[0].format("target on the mean"), header[1],
             line(gmm, mix["validation"], "—")]
    chosen: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for model in b.models:
        options = []
        for index, recipe in enumerate(b.candidates):
            records = [runs[(model, index, seed)] for seed in b.seeds]
            rows = [r["validation"] for r in records]
            met = meets_target(means(rows), means(mix["validation"]))
            lines.append(line(f"{model} {recipe}", rows, "met" if met else "not met"))
            options.append((rank(rows), recipe, records))
        best = max(options, key=lambda option: option[0])
        chosen[model] = (best[1], best[2])
    gans = [m for m in chosen if is_adversarial(m)]
    everything = {**{f"{m} {recipe}": [r["validation"] for r in records]
                     for m, (recipe, records) in chosen.items()}, gmm: mix["validation"]}
    best_gan = max(gans, key=lambda m: rank([r["validation"] for r in chosen[m][1]]),
                   default=None)
    best_any = max(everything, key=lambda name: rank(everything[name]))
    lines += ["", "chosen on validation: " + "; ".join(f"{m}: {recipe}" for m, (recipe, _)
                                                        in chosen.items())
              + (f"; best GAN: {best_gan}" if best_gan else "")
              + f"; best generator of embeddings (within the bounds first, then precision): "
              f"{best_any}",
              f"\n### {split.encoder}, {split.n} training embeddings: the test split "
              f"({len(split.test['z_test'])}), scored once\n",
              header[0].format("target on the mean (seeds met)"), header[1],
              line(gmm, mix["test"], "—")]
    mixture_test = means(mix["test"])
    for model, (recipe, records) in chosen.items():
        rows = [r["test"] for r in records]
        mean = means(rows)
        seconds = [r["train_seconds"] for r in records if r["train_seconds"] is not None]
        per_seed = sum(meets_target(row, mixture_test) for row in rows)
        verdict = ("met" if meets_target(mean, mixture_test)
                   else "not met" + ("" if within_target(mean) else " (bounds)"))
        label = f"{model} {recipe}" + (" (best GAN)" if model == best_gan else "")
        lines.append(line(label, rows, f"{verdict} ({per_seed} of {len(rows)} seeds)"
                          + (f"; {np.mean(seconds):.0f} s" if seconds else "")))
    return lines


def main(argv: list[str] | None = None) -> None:
    b = pick(TargetBench, configure(globals(), argv),
             mixture_components=configure(vars(flows), [])["gmm_components"])
    flag_words("--stage-args", b.stage_args)  # checked before anything trains
    for recipe in b.candidates:
        flag_words("--candidates", "" if recipe == "defaults" else recipe)
    unknown = [m for m in b.models if m not in GENERATORS]
    if unknown:
        raise StageError(f"--models {','.join(unknown)}: not generators of embeddings "
                         f"({', '.join(GENERATORS)})")
    limit_cpu_threads(1)
    root = ROOT / b.data_dir
    missing = [e for e in b.encoders
               if not (root / "embeddings" / f"{b.dataset}_{e}.npz").is_file()]
    if missing:
        run_script("encoder_models.py", "--dataset", b.dataset, "--data-dir", b.data_dir,
                   "--models", ",".join(missing), "--epochs", str(b.encoder_epochs))
    started = time.time()
    splits = [make_split(encoder, size, b) for encoder in b.encoders for size in b.train_sizes]
    print(f"{len(splits)} splits x {len(b.models)} models x {len(b.candidates)} recipes x "
          f"{len(b.seeds)} seeds, {b.parallel} at a time; {load_text()}", flush=True)
    with ThreadPoolExecutor(b.parallel) as pool:
        futures = {(split.name, model, index, seed): pool.submit(stage_run, split, model, index,
                                                                 recipe, seed, b)
                   for split in splits for model in b.models
                   for index, recipe in enumerate(b.candidates) for seed in b.seeds}
        mixtures = {(split.name, seed): pool.submit(mixture_run, split, seed, b)
                    for split in splits for seed in b.seeds}
        results = {key: future.result() for key, future in futures.items()}
        fitted = {key: future.result() for key, future in mixtures.items()}
    lines = [f"# Plan 2: generators of {b.dataset} embeddings, chosen on held-out training "
             f"embeddings, scored once on the test split\n",
             f"{b.samples} samples per generator; ratio = Fréchet distance / floor (the floor: "
             f"as many real kept training embeddings against the part scored); precision and "
             f"recall k=3, density and coverage k=5; mean ± sd over seeds; recipes: "
             f"plan2_gan_training.py at its defaults"
             + (f" with `{b.stage_args}`" if b.stage_args else "")
             + (f", --epochs {b.epochs}" if b.epochs else "") + "."]
    for split in splits:
        runs = {(model, index, seed): results[(split.name, model, index, seed)]
                for model in b.models for index in range(len(b.candidates)) for seed in b.seeds}
        lines += report(split, runs, [fitted[(split.name, seed)] for seed in b.seeds], b)
    text = "\n".join(lines)
    print(text, flush=True)
    path = write_text(ensure_output_dir(root / "results")
                      / f"plan2_target_{'_'.join(b.encoders)}.md", text + "\n")
    print(f"\n{(time.time() - started) / 60:.0f} min; wrote {path}; {load_text()}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
