"""Plan 1's image GANs: generators of images (C, H, W) from a condition vector, and their critics.

A conditional GAN with a projection discriminator, an ACGAN (an auxiliary class head on real labels)
and an InfoGAN (categorical and continuous codes recovered by a Q head), all trained by the one loop
in training/gans.py. The condition is any vector: a stage-1 embedding in Plan 1, a one-hot class in
the self-consuming loop. A variant is a class and a registry entry (``IMAGE_GANS``); its
hyper-parameters are an ``ImageGANConfig``, which every checkpoint stores beside the condition's
size (``architecture``), so that ``from_checkpoint(path)`` rebuilds the model without any settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dataio.artifacts import read_architecture
from models.nets import (
    GREY_28,
    ConvCritic,
    ConvGenerator,
    ImageShape,
    ProjectionHead,
    channels_first,
    channels_last,
    mlp,
)
from runtime.stage import StageError
from training.gans import AdversarialLoss, GANModel, apply_spectral_norm, trained_weights

FAMILY = "image_gans"


@dataclass(frozen=True)
class ImageGANConfig:
    """Hyper-parameters of an image GAN (each variant reads the ones it has)."""

    noise_dim: int = 32  # size of the generator's noise z
    width: int = 32  # channels of the 14x14 conv layers of G and D (twice as many at 7x7)
    feature_dim: int = 256  # width of the discriminator's feature layer
    loss: str = "hinge"  # adversarial loss (gans.LOSS_KINDS)
    gradient_penalty: float = 0.0  # weight of the WGAN-GP gradient penalty
    spectral_norm: bool = True  # spectral normalisation of every discriminator layer
    aux_weight: float = 1.0  # ACGAN: weight of the auxiliary class cross-entropy
    info_categories: int = 10  # InfoGAN: categories of the categorical code
    info_continuous: int = 2  # InfoGAN: continuous codes, uniform in [-1, 1]
    info_weight: float = 1.0  # InfoGAN: weight of the categorical mutual-information term
    info_continuous_weight: float = 0.1  # InfoGAN: weight of the continuous codes' term


# ---------------------------------------------------------------- models
class ConditionalGAN(GANModel):
    """cGAN (Mirza & Osindero 2014) with a projection discriminator (Miyato & Koyama 2018):
    G(z, c) and D(x, c) = w.phi(x) + b + <V c, phi(x)>; c is the standardised condition.

    The condition is any vector: a stage-1 embedding here, a one-hot class in the self-consuming
    loop (``condition_dim`` = number of classes; the first layers then learn class embeddings).
    ``set_condition_statistics`` stores the training conditions' mean and standard deviation as
    buffers, so that checkpoints carry them.
    """

    def __init__(self, condition_dim: int, noise_dim: int = 32,
                 loss: AdversarialLoss | None = None, spectral_norm: bool = True,
                 widths: tuple[int, int] = (32, 64), feature_dim: int = 256,
                 image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        self.adversarial_loss = loss or AdversarialLoss("hinge")
        self.noise_dim, self.condition_dim = noise_dim, condition_dim
        self.image_shape = tuple(image_shape)
        self.register_buffer("condition_mean", torch.zeros(condition_dim))
        self.register_buffer("condition_std", torch.ones(condition_dim))
        self.generator = ConvGenerator(self.generator_input_dim(), condition_dim, widths,
                                       image_shape)
        self.discriminator = nn.ModuleDict({"trunk": ConvCritic(widths, feature_dim,
                                                                image_shape),
                                            "score": ProjectionHead(feature_dim, condition_dim)})
        self.add_discriminator_heads(feature_dim)
        if spectral_norm:
            apply_spectral_norm(self.discriminator)

    def generator_input_dim(self) -> int:
        return self.noise_dim

    def add_discriminator_heads(self, feature_dim: int) -> None:
        """Extra heads on the discriminator's features (ACGAN's class head)."""

    def set_condition_statistics(self, conditions: torch.Tensor) -> None:
        """Standardise conditions with these training conditions' per-dimension mean and std."""
        std = conditions.float().std(dim=0)
        self.condition_mean.copy_(conditions.float().mean(dim=0))
        self.condition_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def normalise(self, condition: torch.Tensor) -> torch.Tensor:
        return (condition.float() - self.condition_mean) / self.condition_std

    def sample(self, condition: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, C, H, W), for raw (unstandardised) conditions."""
        return self.generator(noise, self.normalise(condition))

    def score(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.discriminator["score"](features, self.normalise(condition))

    # ------------------------------------------------------------ losses
    def discriminator_loss(self, batch: dict[str, torch.Tensor]
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, c = batch["x"], batch["condition"]
        noise = self.sample_noise(len(x))
        fake = self.sample(c, noise)  # the generator's weights are frozen here: no graph
        features = self.discriminator["trunk"](torch.cat([x, fake]))
        real_features, fake_features = features.chunk(2)
        loss_fn = self.adversarial_loss
        adversarial = loss_fn.discriminator(self.score(real_features, c),
                                            self.score(fake_features, c))
        parts = {"adversarial": adversarial}
        if loss_fn.gradient_penalty:
            parts["gradient_penalty"] = loss_fn.penalty(
                lambda v: self.score(self.discriminator["trunk"](v), c), x, fake)
        parts.update(self.discriminator_extra(batch, real_features, fake_features, noise))
        return sum(parts.values()), parts

    def generator_loss(self, batch: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = batch["condition"]
        noise = self.sample_noise(len(c))
        fake_features = self.discriminator["trunk"](self.sample(c, noise))
        parts = {"adversarial": self.adversarial_loss.generator(self.score(fake_features, c))}
        parts.update(self.generator_extra(batch, fake_features, noise))
        return sum(parts.values()), parts

    def discriminator_extra(self, batch: dict[str, torch.Tensor], real_features: torch.Tensor,
                            fake_features: torch.Tensor, noise: torch.Tensor
                            ) -> dict[str, torch.Tensor]:
        """Weighted extra terms of the discriminator loss (none for the plain cGAN)."""
        return {}

    def generator_extra(self, batch: dict[str, torch.Tensor], fake_features: torch.Tensor,
                        noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted extra terms of the generator loss (none for the plain cGAN)."""
        return {}


class ACGAN(ConditionalGAN):
    """ACGAN (Odena et al. 2017) conditioned on the embedding: the discriminator's features feed
    the projection score and an auxiliary class head whose logits go into cross-entropy (no
    softmax in front). D's head learns the real images' labels; G is trained so that its image is
    classified as the class of the image whose embedding it was given."""

    def __init__(self, condition_dim: int, num_classes: int, aux_weight: float = 1.0,
                 **kwargs: Any) -> None:
        self.num_classes, self.aux_weight = num_classes, aux_weight
        super().__init__(condition_dim, **kwargs)

    def add_discriminator_heads(self, feature_dim: int) -> None:
        self.discriminator["classes"] = nn.Linear(feature_dim, self.num_classes)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.discriminator["classes"](features)

    def discriminator_extra(self, batch, real_features, fake_features, noise):
        logits = self.class_logits(real_features)
        return {"classes": self.aux_weight * F.cross_entropy(logits, batch["label"])}

    def generator_extra(self, batch, fake_features, noise):
        logits = self.class_logits(fake_features)
        return {"classes": self.aux_weight * F.cross_entropy(logits, batch["label"])}


class InfoGAN(ConditionalGAN):
    """InfoGAN (Chen et al. 2016) on top of the embedding condition: G(z, k, u, e) with a
    categorical code k (one-hot) and continuous codes u ~ U(-1, 1); a Q head on the
    discriminator's features predicts them. The mutual-information lower bound is maximised by
    minimising CE(Q_k(x), k) + 1/2 ||Q_u(x) - u||^2 (a unit-variance Gaussian for u). In the
    discriminator step it trains the shared trunk; in the generator step G and the Q head (which
    sits in the generator's optimiser group), on every step."""

    def __init__(self, condition_dim: int, categories: int = 10, continuous: int = 2,
                 info_weight: float = 1.0, continuous_weight: float = 0.1,
                 **kwargs: Any) -> None:
        self.categories, self.continuous = categories, continuous
        self.info_weight, self.continuous_weight = info_weight, continuous_weight
        super().__init__(condition_dim, **kwargs)
        feature_dim = self.discriminator["trunk"].feature_dim
        self.q_head = mlp([feature_dim, 128, categories + continuous], activation=nn.LeakyReLU)

    def generator_input_dim(self) -> int:
        return self.noise_dim + self.categories + self.continuous

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.generator.parameters(), *self.q_head.parameters()]

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[z ~ N(0, I), one-hot k ~ uniform, u ~ U(-1, 1)] of size noise_dim + codes."""
        device = None if generator is not None else self.device
        z = torch.randn(n, self.noise_dim, generator=generator, device=device)
        k = torch.randint(self.categories, (n,), generator=generator, device=device)
        u = torch.rand(n, self.continuous, generator=generator, device=device) * 2 - 1
        one_hot = (k[:, None] == torch.arange(self.categories, device=k.device)).float()
        return torch.cat([z, one_hot, u], dim=1).to(self.device)  # (F.one_hot syncs on CUDA)

    def information_loss(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """CE of the categorical code (logits) + continuous weight x 1/2 squared error."""
        predicted = self.q_head(features)
        codes = noise[:, self.noise_dim:]
        k = codes[:, :self.categories].argmax(dim=1)
        loss = F.cross_entropy(predicted[:, :self.categories], k)
        if self.continuous:
            error = predicted[:, self.categories:] - codes[:, self.categories:]
            loss = loss + self.continuous_weight * 0.5 * (error ** 2).sum(dim=1).mean()
        return self.info_weight * loss

    def discriminator_extra(self, batch, real_features, fake_features, noise):
        return {"information": self.information_loss(fake_features, noise)}

    def generator_extra(self, batch, fake_features, noise):
        return {"information": self.information_loss(fake_features, noise)}


def class_condition(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot float conditions (B, num_classes) for class-conditioned generation: the first
    linear layers of G and D then learn an embedding of each class."""
    return (labels[:, None] == torch.arange(num_classes, device=labels.device)).float()


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class ImageGANSpec:
    """A variant: how to build it, and the config fields only it reads (which its checkpoints
    must match to be resumed)."""

    build: Callable[[int, int, ImageGANConfig, dict[str, Any]], ConditionalGAN]
    own_settings: tuple[str, ...] = ()


IMAGE_GANS: dict[str, ImageGANSpec] = {
    "cgan": ImageGANSpec(lambda dim, classes, c, common: ConditionalGAN(dim, **common)),
    "acgan": ImageGANSpec(lambda dim, classes, c, common: ACGAN(dim, classes, c.aux_weight,
                                                                 **common),
                          ("aux_weight",)),
    "infogan": ImageGANSpec(
        lambda dim, classes, c, common: InfoGAN(dim, c.info_categories, c.info_continuous,
                                                c.info_weight, c.info_continuous_weight,
                                                **common),
        ("info_categories", "info_continuous", "info_weight", "info_continuous_weight")),
}
GAN_NAMES = tuple(IMAGE_GANS)


def build_image_gan(name: str, condition_dim: int, num_classes: int,
                    config: ImageGANConfig, image_shape: ImageShape = GREY_28) -> ConditionalGAN:
    """An image GAN by name for conditions of ``condition_dim`` dims and images of
    ``image_shape`` (C, H, W)."""
    if name not in IMAGE_GANS:
        raise StageError(f"unknown image GAN {name!r}; valid names: {', '.join(GAN_NAMES)}")
    common = {"noise_dim": config.noise_dim, "spectral_norm": config.spectral_norm,
              "widths": (config.width, 2 * config.width), "feature_dim": config.feature_dim,
              "loss": AdversarialLoss(config.loss, config.gradient_penalty),
              "image_shape": tuple(image_shape)}
    return IMAGE_GANS[name].build(condition_dim, num_classes, config, common)


def architecture(name: str, condition_dim: int, num_classes: int, config: ImageGANConfig,
                 image_shape: ImageShape = GREY_28) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its model: family, name, sizes, config and (other
    than 28x28 grey, whose records predate it) the image shape."""
    record = {"family": FAMILY, "name": name, "condition_dim": condition_dim,
              "num_classes": num_classes, "config": asdict(config)}
    if tuple(image_shape) != GREY_28:
        record["image_shape"] = list(image_shape)
    return record


def from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    state: Mapping[str, Any] | None = None) -> ConditionalGAN:
    """The model of a checkpoint written by the GAN loop for an image GAN, rebuilt from the
    checkpoint alone, in eval mode: its EMA generator at the best epoch's weights and its
    discriminator as trained (``trained_weights``). ``state``: the checkpoint, when the caller
    has loaded it already."""
    path = Path(path)
    state, record = read_architecture(path, state, FAMILY, GAN_NAMES, "image GANs",
                                      "python plan1_gan_training.py, or self_consuming_loop.py")
    try:
        config = ImageGANConfig(**record["config"])
        model = build_image_gan(record["name"], int(record["condition_dim"]),
                                int(record["num_classes"]), config,
                                tuple(record.get("image_shape", GREY_28)))
        model.load_state_dict(trained_weights(model, state))
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise StageError(f"{path}: cannot rebuild its generator "
                         f"({str(err).splitlines()[0]})") from err
    return model.to(device).eval()


# ---------------------------------------------------------------- pixels and sampling
def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, C) -> float (B, C, H, W) in [-1, 1]."""
    return channels_first(images).float() / 127.5 - 1.0


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1], (B, C, H, W) -> uint8 (B, H, W) grey or (B, H, W, C)."""
    pixels = ((channels_last(images).float() + 1.0) * 127.5).round().clamp(0, 255)
    return pixels.to(torch.uint8).cpu().numpy()


def truncated_noise(model: ConditionalGAN, n: int, generator: torch.Generator,
                    truncation: float) -> torch.Tensor:
    """The generator's noise with z drawn from a standard normal truncated to [-psi, psi]
    (the truncation trick of Brock et al. 2019, BigGAN: a smaller psi trades diversity for
    fidelity); psi 0 draws the untruncated noise. Drawn on the CPU from ``generator``."""
    if not truncation:
        return model.sample_noise(n, generator)
    if isinstance(model, InfoGAN):
        raise ValueError("truncation applies to the noise of a cGAN or ACGAN, not to InfoGAN's "
                         "codes")
    noise = torch.empty(n, model.noise_dim)
    torch.nn.init.trunc_normal_(noise, 0.0, 1.0, -truncation, truncation, generator=generator)
    return noise.to(model.device)


@torch.no_grad()
def regenerate(model: ConditionalGAN, conditions: torch.Tensor, seed: int,
               batch_size: int = 1000, truncation: float = 0.0) -> np.ndarray:
    """uint8 images (N, H, W[, C]), one per condition, in eval mode, with noise fixed by ``seed``
    (drawn on the CPU, so the same on every device; the noise of a row depends on the batch
    size) and truncated to [-psi, psi] with ``truncation`` psi > 0."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for chunk in conditions.split(batch_size):
        noise = truncated_noise(model, len(chunk), generator, truncation)
        parts.append(to_pixels(model.sample(chunk, noise)))
    if not parts:
        channels, height, width = model.image_shape
        return np.zeros((0, height, width) + ((channels,) if channels > 1 else ()), np.uint8)
    return np.concatenate(parts)
