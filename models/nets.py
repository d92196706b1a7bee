"""Building blocks shared by the encoders and the GANs: MLPs and conv stacks for images of any
shape (C, H, W) with C in {1, 3} and sides of 16 to 64 pixels (28x28 grey by default).

The conv stacks halve each side twice with stride-2 convs (H -> H // 2 -> H // 4, flooring); the
transposed stacks mirror them from H // 4 back to exactly H, with an output padding of one where a
side was odd (none for 28, 16, 32 or 64: those networks are the plain DCGAN ones)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dataio.image_layout import GREY_28, ImageShape, channels_first, channels_last, shape_of

__all__ = ["GREY_28", "ImageShape", "channels_first", "channels_last", "shape_of"]

def quarter(shape: ImageShape) -> tuple[int, int]:
    """The map size after two stride-2 convs (kernel 4, padding 1): each side floored twice."""
    return shape[1] // 4, shape[2] // 4


def upsampling(in_channels: int, out_channels: int, target: tuple[int, int]) -> nn.ConvTranspose2d:
    """A stride-2 transposed conv from target // 2 to exactly ``target`` (an odd side gets an
    output padding of one)."""
    padding = (target[0] % 2, target[1] % 2)
    if padding == (0, 0):  # the plain layer, as before sizes other than 28 existed
        return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
    return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1,
                              output_padding=padding)


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU,
        norm: type[nn.Module] | None = None, last_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with an activation (and optional norm) between them."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or last_activation:
            if norm is not None:
                layers.append(norm(fan_out))
            layers.append(activation())
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))): a pre-activation residual block (He et al. 2016)."""

    def __init__(self, channels: int, norm: bool = True) -> None:
        super().__init__()

        def make_norm() -> nn.Module:
            return nn.BatchNorm2d(channels) if norm else nn.Identity()

        self.body = nn.Sequential(
            make_norm(), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            make_norm(), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim): two stride-2 convs (28 -> 14 -> 7), optional residual
    blocks after each, then a linear layer."""

    def __init__(self, out_dim: int, widths: tuple[int, int] = (32, 64), residual_blocks: int = 0,
                 norm: bool = True, image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        w1, w2 = widths
        h4, w4 = quarter(image_shape)
        layers: list[nn.Module] = [nn.Conv2d(image_shape[0], w1, 4, stride=2, padding=1)]
        layers += [ResidualBlock(w1, norm) for _ in range(residual_blocks)]
        layers += [nn.BatchNorm2d(w1) if norm else nn.Identity(), nn.SiLU(),
                   nn.Conv2d(w1, w2, 4, stride=2, padding=1)]
        layers += [ResidualBlock(w2, norm) for _ in range(residual_blocks)]
        layers += [nn.BatchNorm2d(w2) if norm else nn.Identity(), nn.SiLU(), nn.Flatten(),
                   nn.Linear(w2 * h4 * w4, out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, C, H, W) logits: the mirror of ConvEncoder (7 -> 14 -> 28)."""

    def __init__(self, in_dim: int, widths: tuple[int, int] = (32, 64), residual_blocks: int = 0,
                 norm: bool = True, image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        w1, w2 = widths
        h4, w4 = quarter(image_shape)
        layers: list[nn.Module] = [nn.Linear(in_dim, w2 * h4 * w4), nn.Unflatten(1, (w2, h4, w4))]
        layers += [ResidualBlock(w2, norm) for _ in range(residual_blocks)]
        layers += [nn.BatchNorm2d(w2) if norm else nn.Identity(), nn.SiLU(),
                   upsampling(w2, w1, (image_shape[1] // 2, image_shape[2] // 2))]
        layers += [ResidualBlock(w1, norm) for _ in range(residual_blocks)]
        layers += [nn.BatchNorm2d(w1) if norm else nn.Identity(), nn.SiLU(),
                   upsampling(w1, image_shape[0], image_shape[1:])]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvGenerator(nn.Module):
    """(noise (B, N), condition (B, K) or None) -> images (B, C, H, W) in [-1, 1].

    DCGAN-style (Radford et al. 2016): [noise, condition] -> linear to w2 x H/4 x W/4 -> two
    stride-2 transposed convs (7 -> 14 -> 28) with batch norm and ReLU, tanh at the end. A class
    condition is a one-hot vector: the first linear layer then holds a learned embedding of each
    class.
    """

    def __init__(self, noise_dim: int, condition_dim: int = 0,
                 widths: tuple[int, int] = (32, 64), image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        w1, w2 = widths
        h4, w4 = quarter(image_shape)
        self.noise_dim, self.condition_dim = noise_dim, condition_dim
        self.net = nn.Sequential(
            nn.Linear(noise_dim + condition_dim, w2 * h4 * w4), nn.Unflatten(1, (w2, h4, w4)),
            nn.BatchNorm2d(w2), nn.ReLU(),
            upsampling(w2, w1, (image_shape[1] // 2, image_shape[2] // 2)), nn.BatchNorm2d(w1),
            nn.ReLU(), upsampling(w1, image_shape[0], image_shape[1:]), nn.Tanh())

    def forward(self, noise: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if (condition is None) != (self.condition_dim == 0):
            raise ValueError(f"this generator takes a condition of {self.condition_dim} dims "
                             f"(0: none), got {None if condition is None else condition.shape}")
        inputs = noise if condition is None else torch.cat([noise, condition], dim=1)
        return self.net(inputs)


class ConvCritic(nn.Module):
    """(B, C, H, W) -> features (B, feature_dim): two stride-2 convs (28 -> 14 -> 7) and a
    linear layer, LeakyReLU(0.2) between. No normalisation layer: each image is scored on its
    own, as a gradient penalty requires."""

    def __init__(self, widths: tuple[int, int] = (32, 64), feature_dim: int = 256,
                 image_shape: ImageShape = GREY_28) -> None:
        super().__init__()
        w1, w2 = widths
        h4, w4 = quarter(image_shape)
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            nn.Conv2d(image_shape[0], w1, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w1, w2, 4, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten(),
            nn.Linear(w2 * h4 * w4, feature_dim), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """score(h, c) = w.h + b + <V c, h>: a projection discriminator's output (Miyato & Koyama
    2018); with condition_dim 0 only the unconditional term."""

    def __init__(self, feature_dim: int, condition_dim: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, 1)
        self.project = nn.Linear(condition_dim, feature_dim, bias=False) if condition_dim \
            else None

    def forward(self, features: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        score = self.linear(features).squeeze(1)
        if self.project is not None:
            if condition is None:
                raise ValueError("this projection head needs a condition")
            score = score + (self.project(condition) * features).sum(dim=1)
        return score
