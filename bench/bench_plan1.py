"""How good and how fast are the Plan 1 GANs? Not a test: tens of minutes to hours.

Speed: one epoch over the whole training set of the conditional GAN (batch 128, the stage's default)
and of the ACGAN (batch 64, as eriklindernoren/PyTorch-GAN's acgan.py, 298.5 s on this kind of
machine), timed in this process with the stage's models and the shared loop. Quality: trains the
stage's GANs (plan1_gan_training.py, resumable) on the chosen encoder's embeddings once per seed of
SEEDS, each seed in a data folder of its own (DATA_DIR/seed<k>, with copies of the stage-1
embeddings and the evaluator, made once in DATA_DIR), then measures every model's regenerations of
the test images beside calibration rows measured in the same run at the same seeds: the real-vs-real
floor (a seeded subset of training images), the test images shifted by one pixel, with Gaussian
pixel noise (sd 25), and each autoencoder's own reconstructions of the same test images (every
autoencoder checkpoint found in DATA_DIR). Every metric is the mean ± the sample sd over the seeds;
the targets are checked on the means, with the number of seeds each is met at. The best model is
chosen on the held-out FID the stage records (training images it held out), never on the test split.
Writes a grid of real test images, reconstructions and the first seed's regenerations.

    python bench/bench_plan1.py --epochs 15 --threads 1 --seeds 0,1,2
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import plan1_gan_training as plan1  # noqa: E402
from bench_common import (  # noqa: E402
    dataset_files,
    flag_words,
    load_text,
    mean_sd,
    over_seeds,
    run_script,
    seed_folder,
    share_inputs,
)
from dataio.artifacts import (  # noqa: E402
    PLAN1_SAMPLE_KEYS,
    ensure_output_dir,
    load_checkpoint,
    load_embeddings,
    load_npz,
    save_figure,
)
from dataio.data_sources import load_dataset  # noqa: E402
from evaluation import scoring  # noqa: E402
from models import encoders  # noqa: E402
from models.image_gans import GAN_NAMES, ImageGANConfig, build_image_gan, to_signed  # noqa: E402
from reporting.figures import image_grid_figure  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import (  # noqa: E402
    StageError,
    limit_cpu_threads,
    pick_device,
    run_stage,
    seed_everything,
)
from training.gans import GANTrainer, TrainerSettings, tensor_batches  # noqa: E402

AUTOENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")
# The targets this benchmark checks (ACGAN: half the epoch time of PyTorch-GAN's acgan.py).
CGAN_EPOCH_SECONDS = 90.0
REFERENCE_ACGAN_SECONDS = 298.5
MIN_CLASS_CONSISTENCY = {"acgan": 0.80}
DEFAULT_CLASS_CONSISTENCY = 0.70
BEST_FID, BEST_RECALL = 25.0, 0.5
# The table's metrics (key, decimals), and the floor row's values of the same columns.
COLUMNS = (("fid", 2), ("score", 2), ("precision", 3), ("recall", 3), ("density", 3),
           ("coverage", 3), ("class_consistency", 3), ("pixel_mae", 4))
FLOOR_COLUMNS = (("fid_floor", 2), ("score_real", 2), ("precision_floor", 3),
                 ("recall_floor", 3), ("density_floor", 3), ("coverage_floor", 3),
                 ("class_consistency_real", 3))

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset [in dataio.data_sources.DATASETS]
DATA_DIR = "data/bench"  # embeddings, checkpoints and samples of the benchmark
ENCODER = "vae"  # stage-1 embedding the GANs are conditioned on
ENCODER_EPOCHS = 10  # encoder epochs when its embedding file has to be made [>= 1]
MODELS = GAN_NAMES  # GANs to train and measure [in GAN_NAMES]
EPOCHS = 15  # GAN epochs (a finished shorter run is continued) [>= 1]
SPEED = True  # time one epoch of cgan (batch 128) and acgan (batch 64)
SPEED_THREADS = 1  # CPU threads for the timed epochs (0: library default) [>= 0]
QUALITY = True  # train the GANs and measure their regenerations
THREADS = 1  # CPU threads of the training runs and the metrics [>= 0]
DEVICE = "auto"  # device of the training runs and of the timing
SEEDS = (0, 1, 2)  # seeds of every measured configuration [seed]
PLAN1_ARGS = ""  # more plan1_gan_training.py flags: --plan1-args="--loss least-squares"
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class Plan1Bench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    encoder: str
    encoder_epochs: int
    models: tuple[str, ...]
    epochs: int
    speed: bool
    speed_threads: int
    quality: bool
    threads: int
    device: str
    seeds: tuple[int, ...]
    plan1_args: str


def time_epoch(name: str, batch_size: int, data, z_train: np.ndarray, device: torch.device,
               config: ImageGANConfig, seed: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one epoch over the whole training set, in the shared loop.
    With one thread, the CPU time is what the wall time would be on an otherwise idle core."""
    seed_everything(seed)
    model = build_image_gan(name, z_train.shape[1], data.num_classes, config).to(device)
    tensors = {"x": torch.from_numpy(data.x_train).to(device),
               "condition": torch.from_numpy(z_train).to(device),
               "label": torch.from_numpy(data.y_train).to(device)}
    model.set_condition_statistics(tensors["condition"])
    trainer = GANTrainer(model, TrainerSettings(seed=seed))
    batches = ({**b, "x": to_signed(b["x"])}
               for b in tensor_batches(tensors, batch_size, seed, 1))
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train_epoch(batches, len(data.x_train) // batch_size, f"{name} timing")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def reconstructions(checkpoint: Path, x_test: np.ndarray, device: torch.device) -> np.ndarray:
    """An autoencoder's reconstructions of the test images as uint8 pixels."""
    model = encoders.from_checkpoint(checkpoint, device)
    parts = []
    with torch.no_grad():
        for chunk in torch.from_numpy(x_test).split(1000):
            recon = model.reconstruct(encoders.to_unit(chunk.to(device)))
            parts.append((recon[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.concatenate(parts)


def measure(label: str, x_gen: np.ndarray, data, real, device: torch.device,
            s: scoring.ScoringSettings, note: str = "") -> dict:
    """evaluate.py's Plan 1 metrics of images regenerated from test images 0..N-1."""
    arrays = {"x_gen": x_gen, "idx_src": np.arange(len(x_gen)), "y_src": data.y_test}
    path = Path(f"{label}.npz")
    scoring.check_sources(path, arrays, data, s)
    values = scoring.plan1_metrics(path, arrays, real, device, s)
    values["pixel_mae"] = float(np.abs(x_gen.astype(np.float64) - data.x_test).mean() / 255)
    values["label"], values["note"] = label, note
    print(f"{label}, seed {s.seed}: FID {values['fid']:.2f}, recall {values['recall']:.3f}, "
          f"class consistency {values['class_consistency']:.3f}", flush=True)
    return values


def cells(records: list[dict[str, Any]], columns: tuple[tuple[str, int], ...]) -> str:
    """Table cells of one row: each metric's mean ± sd over the seeds' records."""
    return " | ".join(over_seeds([r[key] for r in records], digits) for key, digits in columns)


def training_note(records: list[dict[str, Any]]) -> str:
    """A GAN's epochs trained, its best epoch at each seed and its mean training time."""
    epochs = ", ".join(dict.fromkeys(str(r["epochs_trained"]) for r in records))
    seconds = [r["train_seconds"] for r in records if r["train_seconds"] is not None]
    return (f"{epochs} epochs, best epoch by seed "
            f"{', '.join(str(r['best_epoch']) for r in records)}"
            + (f"; {np.mean(seconds):.0f} s (mean)" if seconds else ""))


def seeds_met(flags: list[bool]) -> str:
    """At how many seeds a target is met."""
    return f"met at {sum(flags)} of {len(flags)} seeds"


def main(argv: list[str] | None = None) -> None:
    b = pick(Plan1Bench, configure(globals(), argv))
    flag_words("--plan1-args", b.plan1_args)  # checked before anything trains
    config = pick(ImageGANConfig, configure(vars(plan1), []))  # the stage's defaults
    limit_cpu_threads(b.threads)
    device = pick_device(b.device)
    root = ROOT / b.data_dir
    visual = ensure_output_dir(root / "visualizations")
    data = load_dataset(b.dataset, str(root))
    embedding = root / "embeddings" / f"{b.dataset}_{b.encoder}.npz"
    if not embedding.is_file():  # made once, with the first seed; every seed's GANs share it
        print(f"{embedding} missing: training {b.encoder} for {b.encoder_epochs} epochs",
              flush=True)
        run_script("encoder_models.py", "--dataset", b.dataset, "--models", b.encoder,
                   "--epochs", str(b.encoder_epochs), "--data-dir", str(root), "--device",
                   b.device, "--seed", str(b.seeds[0]))
    z_train = load_embeddings(embedding)["z_train"]
    if len(z_train) != len(data.x_train):
        raise StageError(f"{embedding}: {len(z_train)} training embeddings, expected "
                         f"{len(data.x_train)} (made with --limit?)")

    speed = {}
    if b.speed:  # timings need no seeds: the first one
        limit_cpu_threads(b.speed_threads)
        for name, batch_size in (("cgan", 128), ("acgan", 64)):
            before = load_text()
            seconds, cpu = time_epoch(name, batch_size, data, z_train, device, config,
                                      b.seeds[0])
            speed[name] = (batch_size, seconds, f"CPU time {cpu:.1f} s, "
                           f"{b.speed_threads or 'default'} thread(s); before: {before}; after: "
                           f"{load_text()}")
            print(f"{name}: one epoch of {len(data.x_train)} images at batch {batch_size}: "
                  f"{seconds:.1f} s on {device} ({speed[name][2]})", flush=True)
        limit_cpu_threads(b.threads)
    if not b.quality:
        return

    # The evaluator is trained (once, if missing) here, so that every seed's folder gets a copy.
    real = scoring.real_images_for(
        data, device, scoring.EvaluatorSettings(data_dir=str(root)),
        scoring.ScoringSettings(seed=b.seeds[0]))
    inputs = [embedding, real.evaluator.checkpoint, *dataset_files(root, b.dataset)]
    for seed in b.seeds:
        folder = seed_folder(root, seed)
        share_inputs(root, folder, inputs)
        command = ["--dataset", b.dataset, "--encoder", b.encoder, "--models",
                   ",".join(b.models), "--epochs", str(b.epochs), "--data-dir", str(folder),
                   "--device", b.device, "--seed", str(seed), "--threads", str(b.threads),
                   *flag_words("--plan1-args", b.plan1_args)]
        print("plan1_gan_training.py " + " ".join(command), flush=True)
        seconds = run_script("plan1_gan_training.py", *command)
        print(f"seed {seed}: training and sampling {seconds:.0f} s in this call "
              f"({load_text()})", flush=True)

    recons, grids = {}, {}
    for name in AUTOENCODERS:
        checkpoint = root / "checkpoints" / "encoders" / f"{b.dataset}_{name}.pt"
        if checkpoint.is_file():
            epochs = load_checkpoint(checkpoint)["epoch"]
            recons[f"{name} reconstructions"] = (reconstructions(checkpoint, data.x_test, device),
                                                 f"{epochs} epochs")
            grids[f"{name} recon."] = recons[f"{name} reconstructions"][0]
    gan_labels = [f"{name} ({b.encoder})" for name in b.models]
    shifted = np.roll(data.x_test, 1, axis=2)
    rows: dict[str, list[dict[str, Any]]] = {}  # label -> its values at each seed
    for seed in b.seeds:
        s = scoring.ScoringSettings(seed=seed)
        seeded = replace(real, floors={})  # floors are cached per count: this seed's subset
        found = [measure("test images shifted by 1 pixel", shifted, data, seeded, device, s)]
        noise = np.random.default_rng(seed).normal(0, 25, data.x_test.shape)
        found.append(measure("test images + Gaussian noise (sd 25)",
                             np.clip(np.rint(data.x_test + noise), 0, 255).astype(np.uint8),
                             data, seeded, device, s))
        for label, (images, note) in recons.items():
            found.append(measure(label, images, data, seeded, device, s, note))
        for name, label in zip(b.models, gan_labels, strict=True):
            path = (seed_folder(root, seed) / "samples" / "plan1"
                    / f"{b.dataset}_{b.encoder}_{name}.npz")
            arrays = load_npz(path, PLAN1_SAMPLE_KEYS)
            if not np.array_equal(arrays["idx_src"], np.arange(len(data.x_test))):
                raise StageError(f"{path}: samples do not regenerate test images 0..N-1 in order")
            values = measure(label, arrays["x_gen"], data, seeded, device, s)
            values.update({key: arrays["meta"].get(key) for key in
                           ("epochs_trained", "best_epoch", "held_out_fid", "train_seconds")})
            found.append(values)
            if seed == b.seeds[0]:
                grids[name] = arrays["x_gen"]
        for values in found:
            rows.setdefault(values["label"], []).append(values)

    floors = next(iter(rows.values()))  # every row of a seed has that seed's floor
    seeds = ", ".join(map(str, b.seeds))
    print(f"\n{b.dataset}: {len(data.x_test)} test images; metrics on the evaluator CNN's features "
          f"(test accuracy {real.evaluator.test_accuracy:.4f}); floors: a seeded subset of "
          f"{floors[0]['floor_n_train']} training images against the test images; seeds {seeds}: "
          f"each cell is the mean ± the sample sd over the seeds (GANs trained once per seed; "
          f"the calibration rows and floors with each seed's noise, subset and metric seeds)\n")
    print("| images | FID | IS-style | precision | recall | density | coverage | "
          "class consistency | pixel MAE | training |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| real (train vs test, floor) | {cells(floors, FLOOR_COLUMNS)} | — | — |")
    for label, records in rows.items():
        note = training_note(records) if label in gan_labels else records[0]["note"] or "—"
        print(f"| {label} | {cells(records, COLUMNS)} | {note} |")

    chosen = plan1.grid_sources(data.y_test)
    figure = image_grid_figure([data.x_test[chosen]] + [g[chosen] for g in grids.values()],
                               ["real test"] + list(grids),
                               f"{b.dataset}: test images, reconstructions, and regenerations "
                               f"from {b.encoder} embeddings (seed {b.seeds[0]})")
    png = save_figure(figure, visual / f"plan1_bench_{b.dataset}_{b.encoder}.png")
    print(f"\nwrote {png}")

    print(f"\ntargets (on the means over seeds {seeds}; and at how many seeds each is met):")
    for name, (batch_size, seconds, load) in speed.items():
        target = CGAN_EPOCH_SECONDS if name == "cgan" else REFERENCE_ACGAN_SECONDS / 2
        print(f"- {name} epoch (batch {batch_size}): {seconds:.1f} s, target < {target:.1f} s: "
              f"{'met' if seconds < target else 'NOT met'} ({load})")
    # The strongest baseline: the lowest FID among the reconstructions (mean, and at each seed).
    best_recon = min((mean_sd([r["fid"] for r in rows[label]])[0] for label in recons),
                     default=None)
    recon_at_seed = [min(rows[label][i]["fid"] for label in recons) if recons else None
                     for i in range(len(b.seeds))]
    for name, label in zip(b.models, gan_labels, strict=True):
        records = rows[label]
        need = MIN_CLASS_CONSISTENCY.get(name, DEFAULT_CLASS_CONSISTENCY)
        consistency, fid = [r["class_consistency"] for r in records], [r["fid"] for r in records]
        line = (f"- {name}: class consistency {over_seeds(consistency)} >= {need}: "
                f"{'met' if mean_sd(consistency)[0] >= need else 'NOT met'} "
                f"({seeds_met([c >= need for c in consistency])})")
        if best_recon is not None:
            line += (f"; FID {over_seeds(fid, 2)} below the best reconstructions' "
                     f"{best_recon:.2f}: {'met' if mean_sd(fid)[0] < best_recon else 'NOT met'} "
                     f"({seeds_met([f < r for f, r in zip(fid, recon_at_seed, strict=True)])})")
        print(line)
    validation = {label: [r["held_out_fid"] for r in rows[label]] for label in gan_labels}
    if gan_labels and all(None not in values for values in validation.values()):
        best = min(gan_labels, key=lambda label: mean_sd(validation[label])[0])
        fid, recall = [r["fid"] for r in rows[best]], [r["recall"] for r in rows[best]]
        met = mean_sd(fid)[0] <= BEST_FID and mean_sd(recall)[0] >= BEST_RECALL
        print(f"- best model {best} (chosen on the stage's FID on its held-out training images, "
              f"{mean_sd(validation[best])[0]:.2f} mean; never on the test split): FID "
              f"{over_seeds(fid, 2)} <= {BEST_FID} with recall {over_seeds(recall)} >= "
              f"{BEST_RECALL}: {'met' if met else 'NOT met'} ("
              + seeds_met([f <= BEST_FID and r >= BEST_RECALL
                           for f, r in zip(fid, recall, strict=True)]) + ")")
    elif gan_labels:
        print("- best model: not chosen: a run recorded no held-out FID (--held-out-fraction 0 "
              "or too few training images), and the test split never chooses")


if __name__ == "__main__":
    run_stage(main, resumable=False)
