"""Plan 1: GANs that regenerate 28x28 images from their stage-1 embeddings.

Given the embedding e(x) of each training image x (data/embeddings/<ds>_<enc>.npz, written by
encoder_models.py), train generators G(z, e(x)) whose images resemble x, judged by discriminators
that see the same condition: a conditional GAN with a projection discriminator, an ACGAN (an
auxiliary class head on real labels) and an InfoGAN (categorical and continuous codes recovered by a
Q head). All three train through the shared loop in training/gans.py. Per epoch: a grid of real test
images and their regenerations in data/visualizations/; at the end: every test image regenerated
from its embedding in data/samples/plan1/<ds>_<enc>_<gan>.npz (the format evaluate.py reads), a
loss-curve PNG, and a report (FID on the evaluator's features with its floor, Inception-style score,
class consistency, pixel error to the source image).

The default condition is the VAE's embedding (its posterior mean): it was trained to carry what
is needed to rebuild the image, in a space the KL term keeps smooth and near N(0, I), so that a
generator trained on training embeddings meets familiar conditions on test embeddings. The
contrastive and triplet embeddings are trained to forget what varies within a class.

    python plan1_gan_training.py --dataset digits --epochs 2 --models cgan,acgan
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dataio.artifacts import (
    ensure_output_dir,
    fingerprint,
    hold_output_lock,
    holds_output_locks,
    load_embeddings,
    make_meta,
    remake_hint,
    save_figure,
    save_npz,
    tagged,
)
from dataio.data_sources import ImageDataset, load_dataset, resolve_dataset
from dataio.splits import held_out_count, held_out_split, split_record
from evaluation import metrics, scoring
from evaluation.evaluator_cnn import FEATURE_DIM as EVALUATOR_FEATURE_DIM
from evaluation.evaluator_cnn import evaluator_outputs
from evaluation.scoring import cell
from models.image_gans import (
    GAN_NAMES,
    IMAGE_GANS,
    ConditionalGAN,
    ImageGANConfig,
    architecture,
    build_image_gan,
    regenerate,
    to_signed,
)
from reporting.figures import image_grid_figure, loss_curves_figure
from runtime.settings import SettingsError, check_input_tag, configure, pick
from runtime.stage import StageError, limit_cpu_threads, pick_device, run_stage, seed_everything
from runtime.tracking import open_run_log
from training.data_feed import TrainingTensors
from training.gans import (
    LOSS_KINDS,
    GANTrainer,
    TrainerSettings,
    batch_order,
    generator_step_shortfall,
)

# Tables the settings' rules name (not settings).
LOSS_NAMES = LOSS_KINDS

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # images to regenerate [in dataio.data_sources.DATASETS, or folder:PATH]
DATA_DIR = "data"  # where embeddings are read and every output is written
IMAGE_SIZE = 0  # folder:PATH: resize its images to NxN (0: their own size, when shared) [>= 0]
ENCODER = "vae"  # stage-1 embedding to condition on: embeddings/<ds>_<enc>.npz
MODELS = GAN_NAMES  # GANs to train, comma-separated [in GAN_NAMES]
EPOCHS = 15  # total epochs per model (more continues a finished run) [>= 1]
BATCH_SIZE = 128  # images per step [>= 2]
LIMIT = 0  # train on the first N training images only (0: all) [>= 0]
SEED = 0  # seeds weights, batch order, noise and the saved samples [seed]
TAG = ""  # a variant's name: outputs <ds>_<enc>_<gan>@TAG beside the untagged ("": none) [tag]
INPUT_TAG = ""  # condition on the embeddings <ds>_<enc>@INPUT_TAG.npz ("": untagged) [tag]
MAX_DEVICE_IMAGES = 100_000  # a larger training set stays on the CPU, read by a DataLoader [>= 1]
LOADER_WORKERS = 2  # DataLoader workers of a training set read batch by batch [>= 0]
TENSORBOARD = True  # log losses, held-out FID and grids to <data-dir>/runs/plan1/<run>/
WANDB = ""  # also mirror the log to this Weights & Biases project (needs wandb; "": off)
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
NOISE_DIM = 32  # size of the generator's noise z [>= 1]
WIDTH = 32  # channels of the 14x14 conv layers of G and D (twice as many at 7x7) [>= 1, <= 1024]
FEATURE_DIM = 256  # width of the discriminator's feature layer [>= 1, <= 8192]
LOSS = "hinge"  # adversarial loss [in LOSS_NAMES]
GRADIENT_PENALTY = 0.0  # weight of the WGAN-GP gradient penalty (10 with wasserstein) [>= 0]
SPECTRAL_NORM = True  # spectral normalisation of every discriminator layer
N_CRITIC = 1  # discriminator steps per generator step [>= 1]
LR_GENERATOR = 2e-4  # Adam learning rate of the generator (and Q head) [> 0]
LR_DISCRIMINATOR = 2e-4  # Adam learning rate of the discriminator [> 0]
BETA1 = 0.5  # Adam beta1 (DCGAN: 0.5) [>= 0, < 1]
BETA2 = 0.999  # Adam beta2 [>= 0, < 1]
EMA_DECAY = 0.999  # decay of the generator's weight average used for sampling [>= 0, < 1]
AUX_WEIGHT = 1.0  # ACGAN: weight of the auxiliary class cross-entropy [>= 0]
INFO_CATEGORIES = 10  # InfoGAN: categories of the categorical code [>= 2]
INFO_CONTINUOUS = 2  # InfoGAN: continuous codes, uniform in [-1, 1] [>= 0]
INFO_WEIGHT = 1.0  # InfoGAN: weight of the categorical mutual-information term [>= 0]
INFO_CONTINUOUS_WEIGHT = 0.1  # InfoGAN: weight of the continuous codes' term [>= 0]
HELD_OUT_FRACTION = 0.05  # share of training images held out; their FID picks the epoch [>= 0, < 1]
TEST_IMAGES = 0  # regenerate the first N test images only, for quick runs (0: all) [>= 0]
GRID_NOISE_ROWS = 3  # rows of regenerations (one noise each) under the real row [>= 1]
LOG_EVERY = 50  # steps between reads of the summed losses (progress bar, curves) [>= 1]
SAMPLE_BATCH_SIZE = 1000  # images per generator pass when writing samples [>= 1]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class Plan1Settings:
    """What this run trains on and writes (the GANs' own hyper-parameters: ImageGANConfig)."""

    dataset: str
    data_dir: str
    encoder: str
    models: tuple[str, ...]
    epochs: int
    batch_size: int
    limit: int
    seed: int
    deterministic: bool
    tag: str
    input_tag: str
    max_device_images: int
    loader_workers: int
    held_out_fraction: float
    test_images: int
    grid_noise_rows: int
    log_every: int
    sample_batch_size: int


# ---------------------------------------------------------------- data
def encoder_command(dataset: str, encoder: str, limit: int, data_dir: str, tag: str = "") -> str:
    """The stage-1 command that writes the embedding file this stage needs."""
    command = f"python encoder_models.py --dataset {dataset} --models {encoder}"
    if tag:
        command += f" --tag {tag}"
    if limit:
        command += f" --limit {limit}"
    if data_dir != "data":
        command += f" --data-dir {data_dir}"
    return command


def paired_embeddings(path: Path, data: ImageDataset, n_train: int, run: Plan1Settings
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The embeddings of the first ``n_train`` training images and of every test image, checked
    to be the embeddings of exactly these images: meta dataset and limit, split sizes, labels."""
    remake = encoder_command(data.name, run.encoder, run.limit, run.data_dir, run.input_tag)
    if not path.is_file():
        raise StageError(f"{path} not found; make it with: {remake}")
    with remake_hint(remake):
        emb = load_embeddings(path)
    meta = emb["meta"]
    shape = meta.get("image_shape")
    if shape is not None and list(shape) != list(data.shape):
        raise StageError(f"{path}: embeds images of shape {tuple(shape)}, these are "
                         f"{data.shape} (another --image-size?); remake it with: {remake}")
    if meta.get("dataset") != data.name:
        raise StageError(f"{path}: embeds dataset {meta.get('dataset')!r} (its meta), not "
                         f"{data.name!r}")
    file_limit = meta.get("settings", {}).get("limit")
    if not isinstance(file_limit, int):
        raise StageError(f"{path}: its meta does not record the --limit it was made with, so "
                         f"its pairing with the images cannot be checked; remake it with: "
                         f"{remake}")
    full = len(data.x_train)
    embedded = min(file_limit, full) if file_limit else full
    if len(emb["z_train"]) != embedded:
        raise StageError(f"{path}: holds {len(emb['z_train'])} training embeddings, but its meta "
                         f"says it embeds the first {embedded} training images (--limit "
                         f"{file_limit})")
    if embedded < n_train:
        raise StageError(f"{path}: embeds the first {embedded} training images (made with "
                         f"--limit {file_limit}), fewer than the {n_train} this run trains on; "
                         f"run with --limit {embedded} or remake it with: {remake}")
    if len(emb["z_test"]) != len(data.x_test):
        raise StageError(f"{path}: holds {len(emb['z_test'])} test embeddings, the {data.name} "
                         f"test split has {len(data.x_test)} images")
    for split, labels, truth in (("train", emb["y_train"][:n_train], data.y_train[:n_train]),
                                 ("test", emb["y_test"], data.y_test)):
        wrong = int(np.sum(labels != truth))
        if wrong:
            raise StageError(f"{path}: y_{split} differs from the {data.name} {split} labels at "
                             f"{wrong} of {len(truth)} positions: these embeddings are not "
                             f"paired with these images")
    return emb["z_train"][:n_train], emb["z_test"], meta


# ---------------------------------------------------------------- sampling and scoring
def grid_sources(labels: np.ndarray, count: int = 10) -> np.ndarray:
    """Indices of up to ``count`` test images: the first of each class, then the next ones."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:count]
    rest = [i for i in range(len(labels)) if i not in firsts]
    return np.array(firsts + rest[:count - len(firsts)])


def save_epoch_grid(model: ConditionalGAN, x_test: np.ndarray, z_test: torch.Tensor,
                    chosen: np.ndarray, path: Path, title: str, run: Plan1Settings) -> None:
    """Real test images on top, under them regenerations from their embeddings (one noise per
    row, the same noise every epoch)."""
    rows = [x_test[chosen]]
    for row in range(run.grid_noise_rows):
        rows.append(regenerate(model, z_test[chosen], run.seed * 7919 + row,
                               run.sample_batch_size))
    labels = ["real"] + [f"noise {r + 1}" for r in range(run.grid_noise_rows)]
    figure = image_grid_figure(rows, labels, title)
    save_figure(figure, path)
    import matplotlib.pyplot as plt

    plt.close(figure)


def held_out_fid(evaluator: nn.Module, x_real: np.ndarray, z_real: torch.Tensor,
                 device: torch.device, run: Plan1Settings):
    """score(model): FID on the evaluator's features between the held-out training images and
    their regenerations (the same noise every epoch); lower is better. The images were never
    trained on; test images are never used."""
    real_features, _ = evaluator_outputs(evaluator, x_real, device)

    def score(model: ConditionalGAN) -> float:
        generated = regenerate(model, z_real, run.seed + 1, run.sample_batch_size)
        features, _ = evaluator_outputs(evaluator, generated, device)
        return metrics.frechet_distance(features, real_features)

    return score


# ---------------------------------------------------------------- the stage
def resume_settings(name: str, embedding_hash: str, n_train: int, run: Plan1Settings,
                    config: ImageGANConfig, loop: TrainerSettings) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued (``n_train``: the first
    training images the run draws its training and held-out images from)."""
    settings = {"dataset": run.dataset, "encoder": run.encoder, "embeddings": embedding_hash,
                "train_images": n_train, "batch_size": run.batch_size, "seed": run.seed,
                "noise_dim": config.noise_dim, "width": config.width,
                "feature_dim": config.feature_dim, "loss": config.loss,
                "gradient_penalty": config.gradient_penalty,
                "spectral_norm": config.spectral_norm, "n_critic": loop.n_critic,
                "lr_generator": loop.lr_generator, "lr_discriminator": loop.lr_discriminator,
                "betas": list(loop.betas), "ema_decay": loop.ema_decay,
                "held_out_fraction": run.held_out_fraction, "model": name}
    settings.update({key: getattr(config, key) for key in IMAGE_GANS[name].own_settings})
    return settings


def report_table(rows: list[dict[str, Any]]) -> str:
    """The printed results: one row per GAN, each value ± half its 95% interval (KID: ± its sd
    over subsets) beside its floor or the real images' value."""
    space = rows[0]["feature_space_title"] if rows else "evaluator CNN"
    lines = [f"| model | epochs (best) | FID, {space} (floor) | KID (floor) | IS-style (real) | "
             f"precision (floor) | recall (floor) | Vendi (real) | class consistency (real) | "
             f"intra-class FID (floor) | classifier accuracy score (real) | pixel MAE | "
             f"training time (all epochs) |", "| --- " * 13 + "|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['epochs']} ({r['best_epoch']}) | "
            + " | ".join([cell(r, "fid", "fid_floor", "floor", 2),
                          cell(r, "kid", "kid_floor", "floor", 4),
                          cell(r, "score", "score_real", "real", 2),
                          cell(r, "precision", "precision_floor", "floor"),
                          cell(r, "recall", "recall_floor", "floor"),
                          cell(r, "vendi", "vendi_real", "real", 2),
                          cell(r, "class_consistency", "class_consistency_real", "real"),
                          cell(r, "intra_fid", "intra_fid_floor", "floor", 2),
                          cell(r, "cas", "cas_real", "real")])
            + f" | {r['pixel_mae']:.4f} | "
            + f"{r['train_seconds']:.0f} s |")
    return "\n".join(lines)


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    values = resolve_dataset(configure(globals(), argv))
    run = pick(Plan1Settings, values)
    check_input_tag(run.tag, run.input_tag)
    config = pick(ImageGANConfig, values)
    loop = TrainerSettings(n_critic=values["n_critic"], lr_generator=values["lr_generator"],
                        lr_discriminator=values["lr_discriminator"],
                        betas=(values["beta1"], values["beta2"]), ema_decay=values["ema_decay"],
                        log_every=run.log_every, seed=run.seed)
    score_settings = scoring.ScoringSettings(seed=run.seed)
    if 0 < run.test_images <= EVALUATOR_FEATURE_DIM:
        raise SettingsError(f"--test-images {run.test_images}: the FID on "
                            f"{EVALUATOR_FEATURE_DIM}-d features needs more than "
                            f"{EVALUATOR_FEATURE_DIM} images (0: all)")
    root = Path(run.data_dir)
    limit_cpu_threads(values["threads"])
    seed_everything(run.seed, run.deterministic)
    device = pick_device(values["device"])
    data = load_dataset(run.dataset, run.data_dir)  # all of it: the evaluator trains on every image
    n_train = min(run.limit, len(data.x_train)) if run.limit else len(data.x_train)
    # The held-out images pick the epoch; a FID on the evaluator's features needs more of them
    # than its dimensions, so fewer are not held out (the last epoch is kept).
    n_held = held_out_count(n_train, run.held_out_fraction)
    n_held = n_held if n_held > EVALUATOR_FEATURE_DIM else 0
    kept, held_out = held_out_split(n_train, n_held)
    if len(kept) < run.batch_size:
        raise StageError(f"--limit {run.limit} and --held-out-fraction {run.held_out_fraction} "
                         f"leave "
                         f"{len(kept)} training images, not one full batch of --batch-size "
                         f"{run.batch_size}")
    shortfall = generator_step_shortfall(len(kept), run.batch_size, loop.n_critic)
    if shortfall:
        batches, largest = shortfall
        raise StageError(f"training images: {len(kept)} at --batch-size {run.batch_size} give "
                         f"{batches} batch(es) per epoch, fewer than --n-critic {loop.n_critic}, "
                         f"so no generator step; use --batch-size {largest} or smaller, or "
                         f"--n-critic {max(1, batches)}")
    n_test = min(run.test_images, len(data.x_test)) if run.test_images else len(data.x_test)
    if n_test <= EVALUATOR_FEATURE_DIM:
        raise StageError(f"--test-images {run.test_images}: the FID on {EVALUATOR_FEATURE_DIM}-d "
                         f"features needs more than {EVALUATOR_FEATURE_DIM} images")
    embedding_path = (root / "embeddings"
                      / f"{tagged(f'{run.dataset}_{run.encoder}', run.input_tag)}.npz")
    z_train_np, z_test_np, embedding_meta = paired_embeddings(embedding_path, data, n_train, run)
    embedding_hash = fingerprint(z_train_np, z_test_np)
    # Every input checked (a refused run writes nothing): the lock on this run's outputs.
    outputs = tagged(f"{run.dataset}_{run.encoder}", run.tag)
    hold_output_lock(root / f".lock-plan1_gan_training-{outputs}",
                     f"plan1_gan_training.py, {outputs}")
    folders = {name: ensure_output_dir(root / name) for name in
               ("samples/plan1", "visualizations", "checkpoints/plan1")}
    print(f"{data.name}: {len(kept)} train ({len(held_out)} more held out), {len(data.x_test)} "
          f"test images from {data.source}; "
          f"conditions: {embedding_path} ({z_train_np.shape[1]}-d); device {device}")

    real = scoring.real_images_for(
        data, device, scoring.EvaluatorSettings(data_dir=run.data_dir),
        score_settings)
    # Training reads the images through the feed: on the device at once, or batch by batch
    # for a set larger than --max-device-images.
    feed = TrainingTensors({"x": torch.from_numpy(data.x_train[kept]),
                            "condition": torch.from_numpy(z_train_np[kept]),
                            "label": torch.from_numpy(data.y_train[kept])}, device,
                           run.max_device_images, run.loader_workers)
    if feed.streamed:
        print(feed.describe())
    z_train = torch.from_numpy(z_train_np[kept]).to(device)  # vectors: small on any device
    z_test = torch.from_numpy(z_test_np).to(device)
    score = None
    if len(held_out):
        score = held_out_fid(real.evaluator.model, data.x_train[held_out],
                             torch.from_numpy(z_train_np[held_out]).to(device), device, run)
        print(f"{len(held_out)} of the first {n_train} training images held out (never trained "
              f"on): their FID picks the epoch")
    elif run.held_out_fraction:
        print(f"note: --held-out-fraction {run.held_out_fraction} of {n_train} images is too few "
              f"for a FID on "
              f"{EVALUATOR_FEATURE_DIM}-d features: nothing is held out, and the last epoch is "
              f"kept instead of the best")
    chosen = grid_sources(data.y_test)
    def make_batches(epoch: int):
        for batch in feed.batches(batch_order(len(feed), run.batch_size, run.seed, epoch)):
            yield {**batch, "x": to_signed(batch["x"])}

    rows = []
    for name in run.models:
        stem = tagged(f"{run.dataset}_{run.encoder}_{name}", run.tag)
        seed_everything(run.seed, run.deterministic)
        model = build_image_gan(name, z_train.shape[1], data.num_classes, config,
                                data.shape).to(device)
        model.set_condition_statistics(z_train)
        trainer = GANTrainer(model, loop, architecture(name, z_train.shape[1], data.num_classes,
                                                       config, data.shape))
        checkpoint = folders["checkpoints/plan1"] / f"{stem}.pt"
        started = time.time()
        trainer.log = log = open_run_log(values, "plan1", stem)

        def on_epoch(epoch: int, record: dict[str, Any], name: str = name, stem: str = stem,
                     trainer: GANTrainer = trainer, started: float = started) -> None:
            png = folders["visualizations"] / f"plan1_{stem}_epoch{epoch:03d}.png"
            save_epoch_grid(trainer.ema, data.x_test, z_test, chosen, png,
                            f"{name} on {run.dataset} {run.encoder} embeddings, epoch {epoch}: "
                            f"test images (top) regenerated from their embeddings (EMA "
                            f"generator)", run)
            trainer.log.image_file("samples", png, epoch)
            fid = "" if record["score"] is None else f", held-out FID {record['score']:.2f}"
            print(f"{name}: epoch {epoch}/{run.epochs} D {record['d/loss']:.3f} G "
                  f"{record['g/loss']:.3f}{fid} ({time.time() - started:.0f} s); {png}",
                  flush=True)

        def on_resume(epoch: int, name: str = name, checkpoint: Path = checkpoint,
                      trainer: GANTrainer = trainer) -> None:
            print(f"{name}: resuming from {checkpoint} after epoch {epoch}" + (
                f", continuing at epoch {epoch + 1}/{run.epochs}"
                if epoch < run.epochs and not trainer.diverged else "; nothing left to train"))

        resume = resume_settings(name, embedding_hash, n_train, run, config, loop)
        report = trainer.fit(make_batches, run.epochs, checkpoint, resume,
                             steps_per_epoch=len(kept) // run.batch_size, score=score,
                             score_name=f"held-out FID ({len(held_out)} training images)",
                             on_epoch=on_epoch, desc=name, on_resume=on_resume)
        if report.diverged:
            print(f"warning: {name}: training diverged ({report.diverged}); stopped, and the "
                  f"best checkpoint (epoch {report.best_epoch}) is used", file=sys.stderr)
        log.close()
        train_seconds = trainer.training_seconds()
        best = trainer.best_model()
        x_gen = regenerate(best, z_test[:n_test], run.seed, run.sample_batch_size)
        arrays = {"x_gen": x_gen, "idx_src": np.arange(n_test, dtype=np.int64),
                  "y_src": data.y_test[:n_test].astype(np.int64)}
        out = folders["samples/plan1"] / f"{stem}.npz"
        scoring.check_sources(out, arrays, data, score_settings)
        metric_values = scoring.plan1_metrics(out, arrays, real, device, score_settings)
        pixel_mae = float(np.abs(x_gen.astype(np.float64) - data.x_test[:n_test]).mean() / 255)
        meta = make_meta(__file__, values, run.dataset, run.seed, encoder=run.encoder, gan=name,
                         embeddings=str(embedding_path), embeddings_hash=embedding_hash,
                         embeddings_time=embedding_meta.get("time"), checkpoint=str(checkpoint),
                         epochs_trained=trainer.epoch, best_epoch=report.best_epoch,
                         held_out_fid=report.best_score, diverged=report.diverged,
                         train_images=len(kept), split=split_record(n_train, held_out),
                         test_images=n_test, pixel_mae=pixel_mae,
                         train_seconds=train_seconds,
                         parameters=sum(p.numel() for p in model.parameters()))
        save_npz(out, arrays, meta)
        curves = loss_curves_figure(trainer.history, f"{name} on {run.dataset} {run.encoder} "
                                    f"embeddings: losses per {run.log_every} steps")
        png = save_figure(curves, folders["visualizations"] / f"plan1_{stem}_losses.png")
        import matplotlib.pyplot as plt

        plt.close(curves)
        print(f"{name}: wrote {out} and {png}")
        rows.append({"model": tagged(name, run.tag), "epochs": trainer.epoch,
                     "best_epoch": report.best_epoch,
                     "pixel_mae": pixel_mae, "train_seconds": train_seconds, **metric_values})
    print(f"\n{run.dataset}, conditions {run.encoder}, {n_test} test images regenerated; FID, "
          f"KID, precision/recall, Vendi and intra-class FID on the evaluator CNN's features "
          f"(not Inception: compare with the floor), IS-style score over 10 splits and class "
          f"consistency from its logits; ± half the 95% bootstrap interval over the "
          f"{n_test} images ({score_settings.bootstrap} resamples; KID: its sd over subsets); "
          f"pixel MAE in [0, 1] units\n")
    print(report_table(rows))


if __name__ == "__main__":
    run_stage(main)
