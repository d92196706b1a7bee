"""Image batches for a CLIP image tower, by two paths that give the same pixels up to rounding.

- ``fast``: a DataLoader worker decodes each file at a reduced size (JPEG draft mode: the DCT
  decoder scales by 1/2, 1/4 or 1/8, never below what the model needs; other formats: an integer
  box reduction) and hands over uint8 pixels; the device then does the image processor's own
  resize, centre crop, rescale and normalisation (read from the loaded processor's config) as
  batched tensor operations. On the CPU the resize runs on uint8 in channels-last order, which
  is PIL's algorithm (two passes, rounded in between); on a GPU it runs in float32.
- ``processor``: the Hugging Face image processor itself, one image at a time in the workers:
  bit-faithful to what ``CLIPProcessor`` gives, and slow (about 100 images/s on one CPU core for
  512x512 JPEGs).
A batch is a list of groups (row indices, pixels) of one size each, plus the (row, error) pairs of
the files that could not be read; see ``collate_groups``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from runtime.stage import StageError

# What a corrupt or truncated image raises in PIL (a broken PNG raises SyntaxError).
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# PIL resampling filters the fast path reproduces: PIL number -> torch interpolate mode.
RESAMPLE_MODES = {int(Image.Resampling.BILINEAR): "bilinear",
                  int(Image.Resampling.BICUBIC): "bicubic"}


def _size_entry(config: Any, key: str) -> int | None:
    value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
    return int(value) if value is not None else None


@dataclass(frozen=True)
class PixelPipeline:
    """The image processor's resize, centre crop, rescale and normalisation as tensor operations.

    ``shortest_edge`` or ``height``/``width`` is the resize target (as the processor's ``size``);
    ``crop`` the centre crop (height, width); ``scale`` and ``offset`` the per-channel affine map
    x * rescale / std - mean / std that rescaling and normalisation make together.
    """

    shortest_edge: int | None
    height: int | None
    width: int | None
    mode: str
    crop: tuple[int, int] | None
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor: Any) -> PixelPipeline:
        """Read the pipeline from a loaded image processor; refuse what it cannot reproduce."""
        def setting(name: str, default: Any = None) -> Any:
            return getattr(processor, name, default)

        unsupported = [name for name in ("do_pad", "do_flip_channel_order", "do_reduce_labels")
                       if setting(name)]
        size = setting("size") if setting("do_resize", False) else None
        shortest = _size_entry(size, "shortest_edge") if size is not None else None
        height = _size_entry(size, "height") if size is not None else None
        width = _size_entry(size, "width") if size is not None else None
        if size is not None and _size_entry(size, "longest_edge") is not None:
            unsupported.append("size.longest_edge")
        if size is not None and shortest is None and (height is None or width is None):
            unsupported.append(f"size {dict(size) if isinstance(size, dict) else size}")
        resample = int(setting("resample", Image.Resampling.BICUBIC))
        if size is not None and resample not in RESAMPLE_MODES:
            unsupported.append(f"resample {resample}")
        if unsupported:
            raise StageError(f"--preprocessing fast cannot reproduce this image processor "
                             f"({', '.join(unsupported)}); use --preprocessing processor")
        crop_size = setting("crop_size") if setting("do_center_crop", False) else None
        crop = (_size_entry(crop_size, "height"), _size_entry(crop_size, "width")) \
            if crop_size is not None else None
        rescale = float(setting("rescale_factor", 1 / 255)) if setting("do_rescale", False) \
            else 1.0
        mean, std = np.zeros(3), np.ones(3)
        if setting("do_normalize", False):
            mean = np.broadcast_to(np.asarray(setting("image_mean"), np.float64), 3)
            std = np.broadcast_to(np.asarray(setting("image_std"), np.float64), 3)
        return cls(shortest, height, width, RESAMPLE_MODES.get(resample, "bicubic"), crop,
                   tuple(float(x) for x in rescale / std), tuple(float(x) for x in -mean / std))

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the processor's resize of an image of that size."""
        if self.shortest_edge is not None:
            # transformers' get_resize_output_image_size(default_to_square=False).
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        if self.height is not None and self.width is not None:
            return self.height, self.width
        return height, width

    def decode_size(self, height: int, width: int) -> tuple[int, int] | None:
        """(width, height) the CPU may reduce an image to before the resize (None: keep it)."""
        if self.shortest_edge is None and self.height is None:
            return None
        new_height, new_width = self.resized_size(height, width)
        return new_width, new_height

    def __call__(self, pixels: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, h, w) float32 model input, resized to ``target``."""
        images = pixels.permute(0, 3, 1, 2)  # channels-last memory, NCHW shape
        if tuple(images.shape[-2:]) != tuple(target):
            if images.device.type == "cpu":  # PIL's algorithm on uint8, rounded between passes
                images = F.interpolate(images, size=target, mode=self.mode, antialias=True,
                                       align_corners=False)
            else:
                images = F.interpolate(images.float(), size=target, mode=self.mode,
                                       antialias=True, align_corners=False)
                images = images.clamp_(0, 255).round_()  # the processor resizes in uint8
        if self.crop is not None:
            images = center_crop(images, self.crop)
        images = images.to(torch.float32, memory_format=torch.contiguous_format)
        scale = images.new_tensor(self.scale).view(1, 3, 1, 1)
        offset = images.new_tensor(self.offset).view(1, 3, 1, 1)
        return torch.addcmul(offset, images, scale)  # one fused pass: mul_ then add_ is ~10x slower


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """transformers' center_crop on (B, C, H, W): top = (H - h) // 2, zero padding if smaller."""
    height, width = images.shape[-2:]
    crop_height, crop_width = size
    if crop_height > height or crop_width > width:
        new_height, new_width = max(crop_height, height), max(crop_width, width)
        top_pad, left_pad = -(-(new_height - height) // 2), -(-(new_width - width) // 2)
        images = F.pad(images, (left_pad, new_width - width - left_pad,
                                top_pad, new_height - height - top_pad))
        height, width = new_height, new_width
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return images[..., top:top + crop_height, left:left + crop_width]


def decode_reduced(path: Path, pipeline: PixelPipeline) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 pixels decoded at a reduced size no smaller than the resize needs, and the
    file's own (height, width), from which the resize target is computed."""
    with Image.open(path) as image:
        width, height = image.size
        wanted = pipeline.decode_size(height, width)
        if wanted is not None:
            image.draft("RGB", wanted)  # JPEG only; other formats ignore it
        rgb = image.convert("RGB")
    if wanted is not None:
        factor = min(rgb.width // wanted[0], rgb.height // wanted[1])
        if factor >= 2:
            rgb = rgb.reduce(factor)
    return np.array(rgb), (height, width)


class ImageFiles(Dataset):
    """One image per item: ``fast`` gives reduced uint8 pixels, ``processor`` the processor's
    float tensor; an unreadable file gives its error instead."""

    def __init__(self, files: list[Path], preprocessing: str, image_processor: Any,
                 pipeline: PixelPipeline | None) -> None:
        self.files = files
        self.preprocessing = preprocessing
        self.image_processor = image_processor
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Any, Any, str]:
        try:
            if self.preprocessing == "fast":
                pixels, size = decode_reduced(self.files[index], self.pipeline)
                target = self.pipeline.resized_size(*size)
                return index, torch.from_numpy(pixels), target, ""
            with Image.open(self.files[index]) as image:
                rgb = image.convert("RGB")
            pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"][0]
        except READ_ERRORS as err:
            return index, None, None, f"{type(err).__name__}: {err}"
        return index, pixels, None, ""


def collate_groups(batch: list[tuple[int, Any, Any, str]]
                   ) -> tuple[list[tuple[torch.Tensor, torch.Tensor, Any]], list[tuple[int, str]]]:
    """Readable items grouped by (pixel shape, resize target), stacked: [(rows, pixels, target)];
    and the (row, error) pairs of the unreadable ones."""
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    failed = []
    for index, pixels, target, error in batch:
        if pixels is None:
            failed.append((index, error))
        else:
            groups.setdefault((tuple(pixels.shape), target), []).append((index, pixels))
    stacked = [(torch.tensor([i for i, _ in items], dtype=torch.long),
                torch.stack([p for _, p in items]), target)
               for (_, target), items in groups.items()]
    return stacked, failed


def image_batches(files: list[Path], blocks: list[list[int]], preprocessing: str,
                  image_processor: Any, pipeline: PixelPipeline | None, workers: int,
                  device: torch.device) -> DataLoader:
    """Batches (see collate_groups) of the rows of ``files`` listed in ``blocks``, one batch per
    block, in order, decoded by ``workers`` processes."""
    return DataLoader(ImageFiles(files, preprocessing, image_processor, pipeline),
                      batch_sampler=blocks, num_workers=workers, collate_fn=collate_groups,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


def model_inputs(pixels: torch.Tensor, target: Any, pipeline: PixelPipeline | None,
                 device: torch.device) -> torch.Tensor:
    """A group's pixels on the device, as the model takes them."""
    pixels = pixels.to(device, non_blocking=True)
    return pixels if pipeline is None else pipeline(pixels, target)
