"""The evaluator classifier: a small CNN per dataset whose features and logits image metrics use.

Trained once on a dataset's training split and cached in
``<data_dir>/checkpoints/evaluator/<dataset>.pt`` with its test accuracy; later runs load it. Its
penultimate features feed "FID (classifier features)" and precision/recall/density/coverage, its
logits the Inception-style score and class consistency. These numbers are not comparable with
Inception-network FIDs from papers; report them beside the real-vs-real floor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dataio.artifacts import check_settings_match, load_checkpoint, restoring, save_checkpoint
from dataio.data_sources import ImageDataset
from dataio.image_layout import GREY_28, ImageShape, channels_first, stored_shape
from runtime.stage import StageError

FEATURE_DIM = 128  # width of the penultimate layer: the space FID and PRDC are computed in
# Test accuracy each evaluator must reach before its features are trusted to measure with.
TARGET_ACCURACY = {"mnist": 0.99, "fashion-mnist": 0.91, "digits": 0.95}


class EvaluatorCNN(nn.Module):
    """Two conv blocks (16, 32 channels, BatchNorm, max-pool), a 128-unit layer, a linear head.

    Small on purpose: an epoch over 60,000 images takes well under a minute on 2 CPU cores.
    """

    def __init__(self, num_classes: int, feature_dim: int = FEATURE_DIM,
                 image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.blocks = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),  # 28x28 -> 14x14
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
        )
        self.embed = nn.Sequential(nn.Flatten(), nn.Dropout(0.25),
                                   nn.Linear(32 * (height // 4) * (width // 4), feature_dim),
                                   nn.ReLU())
        # Dropout only between features and head: the features themselves stay deterministic.
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, feature_dim) for images (N, C, H, W) in [0, 1]."""
        return self.embed(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes): raw scores for CrossEntropyLoss, no softmax."""
        return self.head(self.features(x))


@dataclass
class Evaluator:
    """A trained evaluator with what its checkpoint records about it."""

    model: EvaluatorCNN
    dataset: str
    test_accuracy: float
    target_accuracy: float | None
    checkpoint: Path
    settings: dict[str, Any]


def layout_text(shape: ImageShape) -> str:
    """How images of ``shape`` are stored, for messages: (N, 28, 28) or (N, 32, 32, 3)."""
    return "(N, " + ", ".join(map(str, stored_shape(shape))) + ")"


def check_images(images: np.ndarray, source: str, shape: ImageShape | None = None) -> np.ndarray:
    """Refuse anything but integer pixels within [0, 255] stored as (N, H, W) grey or
    (N, H, W, 3) colour, of ``shape`` (C, H, W) when given; never rescale silently."""
    images = np.asarray(images)
    if shape is not None and images.shape[1:] != stored_shape(shape):
        raise StageError(f"{source}: images have shape {images.shape}, expected "
                         f"{layout_text(shape)}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        raise StageError(f"{source}: images have shape {images.shape}, expected (N, H, W) grey "
                         f"or (N, H, W, 3) colour")
    if images.dtype.kind not in "ui":
        raise StageError(f"{source}: images are {images.dtype}, expected uint8 pixels 0..255 "
                         f"(values span [{images.min():.3g}, {images.max():.3g}]); convert them "
                         f"explicitly before saving")
    if len(images) and (images.min() < 0 or images.max() > 255):
        raise StageError(f"{source}: pixel values span [{images.min()}, {images.max()}], "
                         f"outside [0, 255]")
    return images


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """A batch of stored pixels, (B, H, W) or (B, H, W, C) integers -> float32 (B, C, H, W) in
    [0, 1]; converted per batch, so that no float copy of a whole data set is ever made."""
    return channels_first(pixels).float() / 255.0


def checkpoint_path(data_dir: str | Path, dataset: str) -> Path:
    """Where the evaluator of ``dataset`` is cached."""
    return Path(data_dir) / "checkpoints" / "evaluator" / f"{dataset}.pt"


@torch.no_grad()
def test_accuracy(model: EvaluatorCNN, images: np.ndarray, labels: np.ndarray,
                  device: torch.device, batch_size: int = 1000) -> float:
    """Share of ``images`` the model classifies as ``labels``."""
    _, logits = evaluator_outputs(model, images, device, batch_size)
    return float(np.mean(logits.argmax(axis=1) == labels))


@torch.no_grad()
def evaluator_outputs(model: EvaluatorCNN, images: np.ndarray, device: torch.device,
                      batch_size: int = 1000, source: str = "images",
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, 128) and logits (N, classes) as float64 arrays, in eval mode."""
    pixels = torch.from_numpy(check_images(images, source, model.image_shape))
    model.eval()
    features, logits = [], []
    for start in range(0, len(pixels), batch_size):
        batch_features = model.features(to_unit(pixels[start:start + batch_size].to(device)))
        features.append(batch_features.cpu().double().numpy())
        logits.append(model.head(batch_features).cpu().double().numpy())
    return np.concatenate(features), np.concatenate(logits)


def train_evaluator(data: ImageDataset, checkpoint: Path, device: torch.device, epochs: int,
                    batch_size: int, learning_rate: float, seed: int,
                    on_epoch: Callable[[int, float, float], None] | None = None) -> Evaluator:
    """Train on the training split with Adam and a one-cycle schedule; resume from ``checkpoint``.

    The checkpoint is rewritten atomically after every epoch with the model, optimiser,
    scheduler and random-generator states, so an interrupted run resumes where it stopped; a
    finished checkpoint is returned as it is, and one made with other settings is refused.
    ``on_epoch(epoch, train_loss, test_accuracy)`` is called after each epoch.
    """
    settings = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                "seed": seed, "train_examples": len(data.x_train)}
    torch.manual_seed(seed)
    model = EvaluatorCNN(data.num_classes, image_shape=data.shape).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps_per_epoch = -(-len(data.x_train) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate,
                                                    total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    start_epoch = 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint, map_location=device,
                                advice="delete it and it is trained again")
        check_settings_match(checkpoint, {**state.get("settings", {}),
                                          "dataset": state.get("dataset")},
                             {**settings, "dataset": data.name})
        # Kept beside the settings, not in them: evaluators cached before images had other
        # shapes record none and are 28x28 grey.
        saved_shape = tuple(state.get("image_shape", GREY_28))
        if saved_shape != data.shape:
            raise StageError(f"{checkpoint} was trained on images of shape {saved_shape}, these "
                             f"are {data.shape}; delete it and it is trained again")
        with restoring(checkpoint, "delete it and it is trained again"):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            # map_location moved every tensor to ``device``; CPU generators take CPU states only
            generator.set_state(state["generator"].cpu())
            # Dropout continues as if never stopped: on CUDA it draws from the device generators.
            torch.set_rng_state(state["torch_rng"].cpu())
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
            start_epoch = int(state["epoch"])
    pixels = torch.from_numpy(check_images(data.x_train, f"{data.name} training images",
                                           data.shape))
    targets = torch.from_numpy(data.y_train)
    accuracy = float("nan")
    for epoch in range(start_epoch, epochs):
        model.train()
        order = torch.randperm(len(pixels), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(model(to_unit(pixels[batch].to(device))),
                                   targets[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(batch)
        accuracy = test_accuracy(model, data.x_test, data.y_test, device)
        save_checkpoint(checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
            "epoch": epoch + 1, "settings": settings,
            "dataset": data.name, "num_classes": data.num_classes, "test_accuracy": accuracy,
            "image_shape": list(data.shape)})
        if on_epoch is not None:
            on_epoch(epoch + 1, total_loss / len(pixels), accuracy)
    if start_epoch >= epochs:  # the checkpoint was already complete
        accuracy = test_accuracy(model, data.x_test, data.y_test, device)
    return Evaluator(model.eval(), data.name, accuracy, TARGET_ACCURACY.get(data.name),
                     checkpoint, settings)
