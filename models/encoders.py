"""Stage 1's encoders: autoencoders, a VAE, a contrastive and a triplet encoder of images of any
shape (C, H, W) (28x28 grey by default; the shape is part of each checkpoint's record).

Every encoder has ``embed(x)`` (images in [0, 1], (B, C, H, W) -> (B, D)) and
``training_loss(x, y)``; the autoencoders also ``reconstruct`` and own a ``decoder``. A variant
is a class and a registry entry (``ENCODERS``); its hyper-parameters are an ``EncoderConfig``,
which every checkpoint of encoder_models.py stores (``architecture``), so that
``from_checkpoint(path)`` rebuilds the trained encoder without any settings (Plan 2 decodes
generated embeddings with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from CL_loss_function import batch_triplet_loss, nt_xent_loss
from dataio.artifacts import read_architecture
from models.nets import (
    GREY_28,
    ConvDecoder,
    ConvEncoder,
    ImageShape,
    channels_first,
    channels_last,
    mlp,
)
from runtime.stage import StageError

FAMILY = "encoders"
# Horizontal flips keep the class of clothes, not of digits.
FLIP_KEEPS_CLASS = {"fashion-mnist": True, "mnist": False, "digits": False, "cifar10": True}


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of an encoder (each variant reads the ones it has)."""

    embedding_dim: int = 32  # size of every embedding
    vae_beta: float = 1.0  # VAE: weight of the KL term
    temperature: float = 0.2  # NT-Xent temperature
    projection_dim: int = 64  # output size of the contrastive projection head
    triplet_margin: float = 0.2  # margin of the triplet loss (embeddings are unit vectors)
    triplet_mining: str = "all"  # all (batch-all) or hard (batch-hard)
    flips: bool = False  # contrastive views may be flipped horizontally (FLIP_KEEPS_CLASS)


# ---------------------------------------------------------------- models
class Autoencoder(nn.Module):
    """Encoder to a D-dim code, decoder to pixel logits; loss: per-image summed BCE."""

    kind = "autoencoder"

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.embed(x))).view_as(x)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(x)).view_as(x)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)


class VAE(nn.Module):
    """VAE (Kingma & Welling 2014): q(z|x) = N(mu, diag(exp(logvar))), p(z) = N(0, I).

    loss = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)),
    KL = -1/2 sum(1 + logvar - mu^2 - exp(logvar)), per image, averaged over the batch.
    The embedding is the posterior mean mu.
    """

    kind = "autoencoder"

    def __init__(self, dim: int, beta: float, image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        self.beta = beta
        self.encoder = ConvEncoder(2 * dim, widths=(32, 64), image_shape=image_shape)
        self.decoder = ConvDecoder(dim, widths=(32, 64), image_shape=image_shape)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.embed(x))).view_as(x)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation
        logits = self.decoder(z).view_as(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (recon + self.beta * kl) / len(x)


class ContrastiveEncoder(nn.Module):
    """SimCLR-style: backbone -> embedding -> projection head; NT-Xent on two augmented views.
    The embedding is taken before the head (Chen et al. 2020).

    The backbone is the plain two-conv encoder: a residual block at each scale makes an epoch
    about 3.5x slower without raising the k-NN accuracy on Fashion-MNIST (docs/encoders.md)."""

    kind = "contrastive"

    def __init__(self, dim: int, projection_dim: int, temperature: float, flips: bool,
                 image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        self.temperature, self.flips = temperature, flips
        self.backbone = ConvEncoder(dim, widths=(32, 64), image_shape=image_shape)
        self.head = mlp([dim, 128, projection_dim], norm=nn.BatchNorm1d)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        views = augment(torch.cat([x, x]), self.flips)
        projected = self.head(self.backbone(views))
        return nt_xent_loss(*projected.chunk(2), temperature=self.temperature)


class TripletEncoder(nn.Module):
    """Conv backbone trained with the triplet loss mined inside each labelled batch.

    Embeddings are L2-normalised, so that the margin has a fixed scale and the loss cannot be
    lowered by shrinking everything (batch-hard mining collapses otherwise)."""

    kind = "triplet"

    def __init__(self, dim: int, margin: float, mining: str,
                 image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        self.margin, self.mining = margin, mining
        self.backbone = ConvEncoder(dim, widths=(32, 64), residual_blocks=1,
                                    image_shape=image_shape)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x), dim=1)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return batch_triplet_loss(self.embed(x), y, self.margin, self.mining)


def augment(x: torch.Tensor, flips: bool, max_zoom: float = 1.4, max_shift: float = 0.15,
            jitter: float = 1.5, gamma: float = 0.7, noise: float = 0.1) -> torch.Tensor:
    """Random views of a batch in [0, 1], on its own device: an affine crop (zoom in by up to
    max_zoom, shift by up to max_shift of the image), an optional horizontal flip,
    brightness/contrast jitter (contrast 1 +- 0.4 jitter, brightness +- 0.2 jitter), a gamma
    curve x ** exp(u), u uniform in +-gamma, and Gaussian pixel noise of standard deviation noise.
    With max_zoom=1, max_shift=0, jitter=0, gamma=0, noise=0 and no flips it returns x.

    Rotation and random erasing are left out: on Fashion-MNIST they lower the NT-Xent encoder's
    k-NN accuracy (docs/encoders.md)."""
    b, device = len(x), x.device
    zoom = 1.0 / (1.0 + (max_zoom - 1.0) * torch.rand(b, device=device))
    flip = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0) if flips else \
        torch.ones(b, device=device)
    shift = (torch.rand(b, 2, device=device) * 2 - 1) * max_shift
    zero = torch.zeros(b, device=device)
    theta = torch.stack([torch.stack([zoom * flip, zero, shift[:, 0]], 1),
                         torch.stack([zero, zoom, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    contrast = 1.0 + jitter * (0.8 * torch.rand(b, 1, 1, 1, device=device) - 0.4)
    brightness = jitter * (torch.rand(b, 1, 1, 1, device=device) - 0.5) * 0.4
    out = ((out - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    out = out ** torch.exp((torch.rand(b, 1, 1, 1, device=device) * 2 - 1) * gamma)
    return (out + noise * torch.randn_like(out)).clamp(0, 1)


# ---------------------------------------------------------------- the registry
# name -> builder(config, image shape (C, H, W)).
ENCODERS: dict[str, Callable[[EncoderConfig, ImageShape], nn.Module]] = {
    "ae_basic": lambda c, s: Autoencoder(
        nn.Sequential(nn.Flatten(), mlp([math.prod(s), 512, 256, c.embedding_dim],
                                        norm=nn.BatchNorm1d)),
        nn.Sequential(mlp([c.embedding_dim, 256, 512, math.prod(s)], norm=nn.BatchNorm1d),
                      nn.Unflatten(1, s))),
    "ae_intermediate": lambda c, s: Autoencoder(
        ConvEncoder(c.embedding_dim, widths=(16, 32), image_shape=s),
        ConvDecoder(c.embedding_dim, widths=(16, 32), image_shape=s)),
    "ae_advanced": lambda c, s: Autoencoder(
        ConvEncoder(c.embedding_dim, widths=(32, 64), residual_blocks=1, image_shape=s),
        ConvDecoder(c.embedding_dim, widths=(32, 64), residual_blocks=1, image_shape=s)),
    "vae": lambda c, s: VAE(c.embedding_dim, c.vae_beta, s),
    "ntxent": lambda c, s: ContrastiveEncoder(c.embedding_dim, c.projection_dim, c.temperature,
                                              c.flips, s),
    "triplet": lambda c, s: TripletEncoder(c.embedding_dim, c.triplet_margin, c.triplet_mining,
                                           s),
}
ENCODER_NAMES = tuple(ENCODERS)


def build_encoder(name: str, config: EncoderConfig,
                  image_shape: ImageShape = GREY_28) -> nn.Module:
    """An encoder by name, for images of ``image_shape`` (C, H, W)."""
    if name not in ENCODERS:
        raise StageError(f"unknown encoder {name!r}; valid names: {', '.join(ENCODER_NAMES)}")
    return ENCODERS[name](config, tuple(image_shape))


def architecture(name: str, config: EncoderConfig,
                 image_shape: ImageShape = GREY_28) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its encoder: family, name, config and (other than
    28x28 grey, whose records predate it) the image shape."""
    record = {"family": FAMILY, "name": name, "config": asdict(config)}
    if tuple(image_shape) != GREY_28:
        record["image_shape"] = list(image_shape)
    return record


def from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    state: Mapping[str, Any] | None = None) -> nn.Module:
    """The encoder of a checkpoint written by encoder_models.py, rebuilt from the checkpoint
    alone, in eval mode. ``state``: the checkpoint, when the caller has loaded it already."""
    path = Path(path)
    state, record = read_architecture(path, state, FAMILY, ENCODER_NAMES, "encoders",
                                      "python encoder_models.py")
    try:
        model = build_encoder(record["name"], EncoderConfig(**record["config"]),
                              tuple(record.get("image_shape", GREY_28)))
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise StageError(f"{path}: cannot rebuild its encoder "
                         f"({str(err).splitlines()[0]})") from err
    return model.to(device).eval()


# ---------------------------------------------------------------- images in, embeddings out
def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
    return channels_first(images).float() / 255.0


@torch.no_grad()
def embed_all(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Embeddings of uint8 images (N, H, W[, C]) in eval mode, as float32 (N, D); each batch is
    moved to the model's device (the images may stay on the CPU)."""
    model.eval()
    device = next(model.parameters()).device
    parts = [model.embed(to_unit(chunk.to(device))).float().cpu() for chunk in x.split(batch_size)]
    return torch.cat(parts).numpy().astype(np.float32)


@torch.no_grad()
def decode_images(model: nn.Module, z: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    """uint8 images (N, H, W[, C]) an autoencoder's decoder makes of embeddings z (N, D)."""
    model.eval()
    parts = []
    for chunk in np.array_split(z, max(1, -(-len(z) // batch_size))):
        pixels = torch.sigmoid(model.decoder(torch.from_numpy(chunk)))
        pixels = channels_last(pixels.reshape(len(chunk), *pixels.shape[1:]))
        parts.append((pixels * 255.0).round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(parts)
