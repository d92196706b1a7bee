"""How good and how fast are the Plan 1 GANs? (issue 9) Not a test: tens of minutes to hours.

Speed: one epoch over the whole training set of the conditional GAN (batch 128, the stage's
default) and of the ACGAN (batch 64, as eriklindernoren/PyTorch-GAN's acgan.py, 298.5 s on this
kind of machine), timed in this process with the stage's models and the shared loop.
Quality: trains the stage's GANs (plan1_gan_training.py, resumable) on the chosen encoder's
embeddings, then measures every model's regenerations of the test images beside calibration rows
measured in the same run: the real-vs-real floor, the test images shifted by one pixel, with
Gaussian pixel noise (sd 25), and each autoencoder's own reconstructions of the same test images
(every autoencoder checkpoint found in the data folder). Writes a grid of real test images,
reconstructions and regenerations.

    python bench/bench_plan1.py --epochs 15 --threads 1
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import encoders  # noqa: E402
import plan1_gan_training as plan1  # noqa: E402
import scoring  # noqa: E402
from artifacts import (  # noqa: E402
    PLAN1_SAMPLE_KEYS,
    ensure_output_dir,
    load_checkpoint,
    load_embeddings,
    load_npz,
    save_figure,
)
from bench_common import load_text, run_script  # noqa: E402
from data_sources import load_dataset  # noqa: E402
from gans import GANTrainer, LoopSettings, image_grid_figure, tensor_batches  # noqa: E402
from image_gans import GAN_NAMES, ImageGANConfig, build_image_gan, to_signed  # noqa: E402
from runtime import (  # noqa: E402
    StageError,
    limit_cpu_threads,
    pick_device,
    run_stage,
    seed_everything,
)
from settings import configure, pick  # noqa: E402

AUTOENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")
# The targets.
CGAN_EPOCH_SECONDS = 90.0
REFERENCE_ACGAN_SECONDS = 298.5
MIN_CLASS_CONSISTENCY = {"acgan": 0.80}
DEFAULT_CLASS_CONSISTENCY = 0.70
BEST_FID, BEST_RECALL = 25.0, 0.5

DATASET = "fashion-mnist"  # dataset [in data_sources.DATASETS]
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
SEED = 0  # seed of the training runs and the metrics [>= 0]
PLAN1_ARGS = ""  # more plan1_gan_training.py flags: --plan1-args="--loss least-squares"


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
    seed: int
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
    trainer = GANTrainer(model, LoopSettings(seed=seed))
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
    print(f"{label}: FID {values['fid']:.2f}, recall {values['recall']:.3f}, class consistency "
          f"{values['class_consistency']:.3f}", flush=True)
    return values


def main(argv: list[str] | None = None) -> None:
    b = pick(Plan1Bench, configure(globals(), argv))
    config = pick(ImageGANConfig, configure(vars(plan1), []))  # the stage's defaults
    score_settings = scoring.ScoringSettings(seed=b.seed)
    limit_cpu_threads(b.threads)
    device = pick_device(b.device)
    root = ROOT / b.data_dir
    visual = ensure_output_dir(root / "visualizations")
    data = load_dataset(b.dataset, str(root))
    embedding = root / "embeddings" / f"{b.dataset}_{b.encoder}.npz"
    if not embedding.is_file():
        print(f"{embedding} missing: training {b.encoder} for {b.encoder_epochs} epochs",
              flush=True)
        run_script("encoder_models.py", "--dataset", b.dataset, "--models", b.encoder,
                   "--epochs", str(b.encoder_epochs), "--data-dir", str(root), "--device",
                   b.device, "--seed", str(b.seed))
    z_train = load_embeddings(embedding)["z_train"]
    if len(z_train) != len(data.x_train):
        raise StageError(f"{embedding}: {len(z_train)} training embeddings, expected "
                         f"{len(data.x_train)} (made with --limit?)")

    speed = {}
    if b.speed:
        limit_cpu_threads(b.speed_threads)
        for name, batch_size in (("cgan", 128), ("acgan", 64)):
            before = load_text()
            seconds, cpu = time_epoch(name, batch_size, data, z_train, device, config,
                                      b.seed)
            speed[name] = (batch_size, seconds, f"CPU time {cpu:.1f} s, "
                           f"{b.speed_threads or 'default'} thread(s); before: {before}; after: "
                           f"{load_text()}")
            print(f"{name}: one epoch of {len(data.x_train)} images at batch {batch_size}: "
                  f"{seconds:.1f} s on {device} ({speed[name][2]})", flush=True)
        limit_cpu_threads(b.threads)
    if not b.quality:
        return

    started = time.time()
    command = ["--dataset", b.dataset, "--encoder", b.encoder, "--models", ",".join(b.models),
               "--epochs", str(b.epochs), "--data-dir", str(root), "--device", b.device,
               "--seed", str(b.seed), "--threads", str(b.threads), *shlex.split(b.plan1_args)]
    print("plan1_gan_training.py " + " ".join(command), flush=True)
    run_script("plan1_gan_training.py", *command)
    print(f"training and sampling: {time.time() - started:.0f} s in this call ({load_text()})")

    real = scoring.real_images_for(
        data, device, scoring.EvaluatorSettings(data_dir=str(root)), score_settings)
    rows = []
    rows.append(measure("test images shifted by 1 pixel", np.roll(data.x_test, 1, axis=2),
                        data, real, device, score_settings))
    noise = np.random.default_rng(b.seed).normal(0, 25, data.x_test.shape)
    rows.append(measure("test images + Gaussian noise (sd 25)",
                        np.clip(np.rint(data.x_test + noise), 0, 255).astype(np.uint8), data,
                        real, device, score_settings))
    recon_rows, grids = [], {}
    for name in AUTOENCODERS:
        checkpoint = root / "checkpoints" / "encoders" / f"{b.dataset}_{name}.pt"
        if checkpoint.is_file():
            epochs = load_checkpoint(checkpoint)["epoch"]
            images = reconstructions(checkpoint, data.x_test, device)
            recon_rows.append(measure(f"{name} reconstructions", images, data, real, device,
                                      score_settings, f"{epochs} epochs"))
            grids[f"{name} recon."] = images
    rows += recon_rows
    gan_rows = []
    for name in b.models:
        arrays = load_npz(root / "samples" / "plan1" / f"{b.dataset}_{b.encoder}_{name}.npz",
                          PLAN1_SAMPLE_KEYS)
        meta = arrays["meta"]
        if not np.array_equal(arrays["idx_src"], np.arange(len(data.x_test))):
            raise StageError(f"{name}: samples do not regenerate test images 0..N-1 in order")
        gan_rows.append(measure(f"{name} ({b.encoder})", arrays["x_gen"], data, real, device,
                                score_settings,
                                f"{meta['epochs_trained']} epochs, best {meta['best_epoch']}"))
        grids[name] = arrays["x_gen"]
    rows += gan_rows

    floor = rows[0]
    print(f"\n{b.dataset}: {len(data.x_test)} test images; metrics on the evaluator CNN's features "
          f"(test accuracy {real.evaluator.test_accuracy:.4f}); floors: a seeded subset of "
          f"{floor['floor_n_train']} training images against the test images\n")
    print("| images | FID | IS-style | precision | recall | density | coverage | "
          "class consistency | pixel MAE | training |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| real (train vs test, floor) | {floor['fid_floor']:.2f} | {floor['score_real']:.2f} "
          f"| {floor['precision_floor']:.3f} | {floor['recall_floor']:.3f} | "
          f"{floor['density_floor']:.3f} | {floor['coverage_floor']:.3f} | "
          f"{floor['class_consistency_real']:.3f} | — | — |")
    for r in rows:
        print(f"| {r['label']} | {r['fid']:.2f} | {r['score']:.2f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | "
              f"{r['class_consistency']:.3f} | {r['pixel_mae']:.4f} | {r['note'] or '—'} |")

    chosen = plan1.grid_sources(data.y_test)
    figure = image_grid_figure([data.x_test[chosen]] + [g[chosen] for g in grids.values()],
                               ["real test"] + list(grids),
                               f"{b.dataset}: test images, reconstructions, and regenerations "
                               f"from {b.encoder} embeddings")
    png = save_figure(figure, visual / f"plan1_bench_{b.dataset}_{b.encoder}.png")
    print(f"\nwrote {png}")

    print("\ntargets:")
    for name, (batch_size, seconds, load) in speed.items():
        target = CGAN_EPOCH_SECONDS if name == "cgan" else REFERENCE_ACGAN_SECONDS / 2
        print(f"- {name} epoch (batch {batch_size}): {seconds:.1f} s, target < {target:.1f} s: "
              f"{'met' if seconds < target else 'NOT met'} ({load})")
    best_recon = min((r["fid"] for r in recon_rows), default=None)
    for r, name in zip(gan_rows, b.models, strict=True):
        need = MIN_CLASS_CONSISTENCY.get(name, DEFAULT_CLASS_CONSISTENCY)
        print(f"- {name}: class consistency {r['class_consistency']:.3f} >= {need}: "
              f"{'met' if r['class_consistency'] >= need else 'NOT met'}"
              + ("" if best_recon is None else
                 f"; FID {r['fid']:.2f} below the best reconstructions' {best_recon:.2f}: "
                 f"{'met' if r['fid'] < best_recon else 'NOT met'}"))
    if gan_rows:
        best = min(gan_rows, key=lambda r: r["fid"])
        met = best["fid"] <= BEST_FID and best["recall"] >= BEST_RECALL
        print(f"- best model {best['label']}: FID {best['fid']:.2f} <= {BEST_FID} with recall "
              f"{best['recall']:.3f} >= {BEST_RECALL}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
