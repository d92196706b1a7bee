"""Stage 1: learn embeddings of 28x28 images.

Autoencoders of increasing capacity (basic MLP, intermediate conv, advanced residual conv), a VAE,
a contrastive encoder (NT-Xent on two augmented views) and a triplet encoder (labels, batch
mining). For each model named in --models: train with a checkpoint every epoch (resumed after an
interruption), then write data/embeddings/<ds>_<enc>.npz and, for autoencoders,
data/visualizations/<ds>_<enc>_reconstructions.png.

    python encoder_models.py --dataset digits --epochs 1 --limit 512 --models ae_basic,vae
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dataio.artifacts import (
    check_settings_match,
    ensure_output_dir,
    hold_output_lock,
    holds_output_locks,
    load_checkpoint,
    make_meta,
    save_checkpoint,
    save_figure,
    save_npz,
    tagged,
)
from dataio.data_sources import load_dataset, resolve_dataset
from models.encoders import (
    ENCODER_NAMES,
    FLIP_KEEPS_CLASS,
    EncoderConfig,
    architecture,
    build_encoder,
    embed_all,
    to_unit,
)
from runtime.settings import configure, pick
from runtime.stage import StageError, pick_device, require_finite, run_stage, seed_everything
from runtime.tracking import open_run_log
from training.data_feed import TrainingTensors

# The schedules there are (a table the rule of --lr-schedule names, not a setting).
LR_SCHEDULES = ("constant", "one-cycle")

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset to embed [in dataio.data_sources.DATASETS, or folder:PATH]
DATA_DIR = "data"  # where every output is written (datasets are also looked up there)
IMAGE_SIZE = 0  # folder:PATH: resize its images to NxN (0: their own size, when shared) [>= 0]
MODELS = ENCODER_NAMES  # encoders to train, comma-separated [in ENCODER_NAMES]
EMBEDDING_DIM = 32  # size of every embedding [>= 1, <= 4096]
EPOCHS = 10  # total epochs per model (more continues a finished constant-rate run) [>= 1]
BATCH_SIZE = 256  # images per optimiser step (batch norm needs 2) [>= 2]
LEARNING_RATE = 1e-3  # Adam learning rate (the peak rate with --lr-schedule one-cycle) [> 0]
LR_SCHEDULE = "constant"  # constant, or one-cycle (10% warm-up, cosine to 0) [in LR_SCHEDULES]
WEIGHT_DECAY = 0.0  # Adam weight decay [>= 0]
LIMIT = 0  # train on the first N training images only (0: all) [>= 0]
SEED = 0  # seeds weights, batch order and augmentations [seed]
TAG = ""  # a variant's name: outputs <ds>_<enc>@TAG beside the untagged run's ("": none) [tag]
MAX_DEVICE_IMAGES = 100_000  # a larger training set stays on the CPU, read by a DataLoader [>= 1]
LOADER_WORKERS = 2  # DataLoader workers of a training set read batch by batch [>= 0]
TENSORBOARD = True  # log each epoch's loss and reconstructions to <data-dir>/runs/encoders/<run>/
WANDB = ""  # also mirror the log to this Weights & Biases project (needs wandb; "": off)
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
VAE_BETA = 1.0  # weight of the KL term in the VAE loss [>= 0]
TEMPERATURE = 0.2  # NT-Xent temperature (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet) [> 0]
PROJECTION_DIM = 64  # output size of the contrastive projection head [>= 1]
TRIPLET_MARGIN = 0.2  # margin of the triplet loss (embeddings are unit vectors) [> 0]
TRIPLET_MINING = "all"  # all (batch-all) or hard (batch-hard; collapses early) [all | hard]
EMBED_BATCH_SIZE = 1024  # images per forward pass when writing embeddings [>= 1]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class EncoderTraining:
    """How this run trains every encoder and where it writes (the encoders' own
    hyper-parameters: EncoderConfig)."""

    dataset: str
    data_dir: str
    models: tuple[str, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    weight_decay: float
    limit: int
    seed: int
    deterministic: bool
    embed_batch_size: int
    tag: str
    max_device_images: int
    loader_workers: int


# ---------------------------------------------------------------- training
def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a last batch of one example is dropped (BatchNorm needs two)."""
    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(batch_size))
    return [c for c in chunks if len(c) > 1]


def learning_rate_at(step: int, total_steps: int, train: EncoderTraining) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total_steps`, per --lr-schedule.

    one-cycle (Smith & Topin 2019): cosine warm-up from the learning rate / 25 to the learning
    rate over the first 10% of the steps, then cosine decay to 0."""
    peak = train.learning_rate
    if train.lr_schedule == "constant":
        return peak
    warm = max(1, round(0.1 * total_steps))
    if step < warm:
        start = peak / 25
        return start + (peak - start) * (1 - math.cos(math.pi * step / warm)) / 2
    progress = (step - warm) / max(1, total_steps - warm)
    return peak * (1 + math.cos(math.pi * min(progress, 1.0))) / 2


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, feed: TrainingTensors,
                    epoch: int, label: str, train: EncoderTraining) -> float:
    """One pass over the feed's images ``x`` and labels ``y`` in a seeded order; returns the
    mean loss; raises if it is not finite."""
    generator = torch.Generator().manual_seed(train.seed * 100_003 + epoch)
    torch.manual_seed(train.seed * 100_003 + epoch)  # augmentation and VAE noise, per epoch
    model.train()
    total, count = 0.0, 0
    order = batches(len(feed), train.batch_size, generator)
    bar = tqdm(feed.batches(order), total=len(order), desc=f"{label} epoch {epoch}/{train.epochs}",
               leave=False, disable=None)
    for i, batch in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at((epoch - 1) * len(order) + i,
                                           train.epochs * len(order), train)
        loss = model.training_loss(to_unit(batch["x"]), batch["y"])
        if not torch.isfinite(loss):
            raise StageError(f"{label}: loss became {loss.item()} at epoch {epoch}; stopped, and "
                             "the last good checkpoint is kept (try a lower --learning-rate)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(batch["y"]), count + len(batch["y"])
        bar.set_postfix(loss=f"{total / count:.4f}")
    if count == 0:
        raise StageError(f"{label}: no batch of at least 2 images to train on")
    # A finite loss before the last step does not make finite weights, nor finite eval-mode
    # outputs (batch-norm statistics can overflow): check both before the checkpoint is written.
    diverged = (f"after epoch {epoch} (training diverged; the last good checkpoint is kept; "
                f"try a lower --learning-rate)")
    for name, value in model.state_dict().items():
        require_finite(value, f"{label}: {name} {diverged}")
    with torch.no_grad():
        first = next(feed.batches(order[:1]))["x"]
        require_finite(embed_all(model, first, train.embed_batch_size),
                       f"{label}: embeddings {diverged}")
    return total / count


def resume_settings(train: EncoderTraining, config: EncoderConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with this run to be continued (with a one-cycle
    schedule, the number of epochs too: it shapes the schedule)."""
    settings = {"dataset": train.dataset, "limit": train.limit,
                "embedding_dim": config.embedding_dim, "batch_size": train.batch_size,
                "learning_rate": train.learning_rate, "lr_schedule": train.lr_schedule,
                "weight_decay": train.weight_decay, "seed": train.seed,
                "vae_beta": config.vae_beta, "temperature": config.temperature,
                "projection_dim": config.projection_dim, "triplet_margin": config.triplet_margin,
                "triplet_mining": config.triplet_mining}
    if train.lr_schedule != "constant":
        settings["epochs"] = train.epochs
    return settings


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device, settings: dict[str, Any]) -> tuple[int, list[float]]:
    """Load a checkpoint into model and optimiser; returns (epochs done, loss history)."""
    state = load_checkpoint(path, map_location=device,
                            required=("model", "optimizer", "epoch", "losses", "settings"))
    check_settings_match(path, state["settings"], settings)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise StageError(f"{path} holds weights of another architecture; delete it to start "
                         f"again "
                         f"({str(err).splitlines()[0]})") from err
    return int(state["epoch"]), [float(v) for v in state["losses"]]


def save_reconstructions(model: nn.Module, x_test: torch.Tensor, path: Path, title: str) -> None:
    """Originals (top row) and reconstructions (bottom row) of the first 10 test images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    with torch.no_grad():
        originals = to_unit(x_test[:10].to(next(model.parameters()).device))
        recon = model.reconstruct(originals).cpu()
    fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
    for col in range(10):
        for row, img in enumerate((originals.cpu(), recon)):
            picture = img[col].permute(1, 2, 0).squeeze(-1).numpy()  # (H, W) or (H, W, 3)
            axes[row, col].imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0,
                                  vmax=1)
            axes[row, col].set_axis_off()
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    values = resolve_dataset(configure(globals(), argv))
    train = pick(EncoderTraining, values)
    config = pick(EncoderConfig, values, flips=FLIP_KEEPS_CLASS.get(train.dataset, False))
    root = Path(train.data_dir)
    device = pick_device(values["device"])
    data = load_dataset(train.dataset, train.data_dir, train.limit)
    if len(data.x_train) < 2:
        raise StageError(f"--limit {train.limit} leaves {len(data.x_train)} training image(s); "
                         f"a batch needs at least 2")
    # Every input checked (a refused run writes nothing): one lock per model, so that runs of
    # other models go side by side.
    for name in train.models:
        stem = tagged(f"{train.dataset}_{name}", train.tag)
        hold_output_lock(root / f".lock-encoder_models-{stem}", f"encoder_models.py, {stem}")
    folders = {name: ensure_output_dir(root / name) for name in
               ("embeddings", "visualizations", "checkpoints/encoders")}
    print(f"{data.name}: {len(data.x_train)} train, {len(data.x_test)} test images "
          f"from {data.source}; device {device}")
    # The images stay uint8 on the CPU; training reads them through the feed (on the device at
    # once, or batch by batch for a set larger than --max-device-images).
    x_train = torch.from_numpy(data.x_train)
    x_test = torch.from_numpy(data.x_test)
    feed = TrainingTensors({"x": x_train, "y": torch.from_numpy(data.y_train)}, device,
                           train.max_device_images, train.loader_workers)
    if feed.streamed:
        print(feed.describe())
    resume = resume_settings(train, config)
    for name in train.models:
        seed_everything(train.seed, train.deterministic)
        model = build_encoder(name, config, data.shape).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=train.learning_rate,
                                     weight_decay=train.weight_decay)
        stem = tagged(f"{train.dataset}_{name}", train.tag)
        ckpt = folders["checkpoints/encoders"] / f"{stem}.pt"
        done, losses = restore(ckpt, model, optimizer, device, resume) if ckpt.exists() \
            else (0, [])
        if done:
            print(f"{name}: resuming from {ckpt} after epoch {done}"
                  + (f", continuing at epoch {done + 1}/{train.epochs}" if done < train.epochs
                     else f"; {train.epochs} epoch(s) asked for, so no training"))
        started = time.time()
        log = open_run_log(values, "encoders", stem)
        for epoch in range(done + 1, train.epochs + 1):
            losses.append(train_one_epoch(model, optimizer, feed, epoch, name, train))
            log.scalars({"loss": losses[-1], "seconds": time.time() - started}, epoch, "epochs/")
            save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "epoch": epoch, "losses": losses, "settings": resume,
                                   "encoder": name,
                                   "architecture": architecture(name, config, data.shape)})
            print(f"{name}: epoch {epoch}/{train.epochs} loss {losses[-1]:.4f} "
                  f"({time.time() - started:.0f} s)")
        z_train = embed_all(model, x_train, train.embed_batch_size)
        z_test = embed_all(model, x_test, train.embed_batch_size)
        require_finite(z_train, f"{name}: train embeddings")
        require_finite(z_test, f"{name}: test embeddings")
        if np.ptp(z_test, axis=0).max() == 0:
            print(f"warning: {name}: every test embedding is the same vector (the encoder "
                  f"collapsed); try another --learning-rate")
        meta = make_meta(__file__, values, train.dataset, train.seed, encoder=name,
                         epochs_trained=len(losses), final_loss=losses[-1] if losses
                         else None, checkpoint=str(ckpt), data_source=data.source,
                         num_train=len(z_train), num_test=len(z_test),
                         class_names=data.class_names, image_shape=list(data.shape),
                         parameters=sum(p.numel() for p in model.parameters()))
        out = save_npz(folders["embeddings"] / f"{stem}.npz",
                       {"z_train": z_train, "y_train": data.y_train, "z_test": z_test,
                        "y_test": data.y_test}, meta)
        print(f"{name}: wrote {out} ({z_train.shape[1]}-d)")
        if model.kind == "autoencoder":
            png = folders["visualizations"] / f"{stem}_reconstructions.png"
            save_reconstructions(model, x_test, png, f"{name} on {train.dataset} test images "
                                 f"({config.embedding_dim}-d code, {len(losses)} epochs)")
            if len(losses) > done:  # a rerun that trained nothing logs nothing again
                log.image_file("reconstructions", png, len(losses))
            print(f"{name}: wrote {png}")
        log.close()


if __name__ == "__main__":
    run_stage(main)
