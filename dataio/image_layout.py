"""How image arrays are laid out: stored as uint8 (N, H, W) when grey and (N, H, W, C) when
colour (what PIL, PNG files and the NPZ formats hold), computed on as (N, C, H, W) tensors. An
image shape is (C, H, W); 28x28 grey is every network's default, the shape of the data the
project began with."""

from __future__ import annotations

from collections.abc import Sequence

import torch

ImageShape = tuple[int, int, int]
GREY_28: ImageShape = (1, 28, 28)


def channels_first(images: torch.Tensor) -> torch.Tensor:
    """Image arrays as stored, (B, H, W) grey or (B, H, W, C) colour, -> (B, C, H, W)."""
    return images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the stored layout: (B, H, W) for one channel, else (B, H, W, C)."""
    return x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)


def shape_of(images: torch.Tensor | Sequence) -> ImageShape:
    """(C, H, W) of stored image arrays (N, H, W) or (N, H, W, C)."""
    shape = tuple(images.shape)
    return (1, *shape[1:3]) if len(shape) == 3 else (shape[3], *shape[1:3])


def stored_shape(shape: ImageShape) -> tuple[int, ...]:
    """The per-image shape of stored arrays: (H, W) for one channel, else (H, W, C)."""
    channels, height, width = shape
    return (height, width) if channels == 1 else (height, width, channels)
