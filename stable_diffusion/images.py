"""The image folders of the diffusion loop: one PNG per prompt named by its COCO image id
(``COCO_train2014_<12-digit id>.png``, what the extraction stage pairs with captions), written
whole or by shards, read back; and real COCO images cropped to the model's size."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dataio.artifacts import replace_directory, staging_dir, write_text
from runtime.stage import StageError

COCO_PREFIX = "COCO_train2014_"
SHARD_RECORD = "shard.json"


def coco_name(image_id: int) -> str:
    """COCO_train2014_000000000009.png: the extraction stage reads the id after the last '_'."""
    return f"{COCO_PREFIX}{int(image_id):012d}.png"


def only_coco_images(folder: Path) -> bool:
    """A generation folder this loop wrote: nothing but COCO-named PNGs."""
    return all(re.fullmatch(rf"{COCO_PREFIX}\d{{12}}\.png", p.name) for p in folder.iterdir())


def generation_drawn(folder: Path, caption_ids: np.ndarray,
                     name_of: Callable[[int], str] = coco_name) -> bool:
    """Whether ``folder`` holds exactly one image per caption id."""
    return folder.is_dir() and {p.name for p in folder.iterdir()} == {
        name_of(i) for i in caption_ids}


def save_png(pixels: np.ndarray, path: Path) -> None:
    """A grey (H, W) or RGB (H, W, 3) uint8 image as PNG."""
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(path)


def write_generation(folder: Path, images: np.ndarray, caption_ids: np.ndarray,
                     name_of: Callable[[int], str] = coco_name,
                     unmarked: Callable[[Path], bool] = only_coco_images) -> None:
    """One PNG per caption id, written into a staging folder that replaces ``folder`` when
    complete (never a folder this loop did not write: ``unmarked`` tells its own)."""
    staging = staging_dir(folder)
    try:
        for image_id, pixels in zip(caption_ids, images, strict=True):
            save_png(pixels, staging / name_of(image_id))
        replace_directory(staging, folder, unmarked, mark=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_generation(folder: Path, caption_ids: np.ndarray,
                    name_of: Callable[[int], str] = coco_name) -> np.ndarray:
    """The images of a complete generation folder, in caption-id order, as saved (grey
    (N, H, W) or RGB (N, H, W, 3))."""
    return np.stack([np.asarray(Image.open(folder / name_of(i))) for i in caption_ids])


def shard_folder(folder: Path, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` of a generation folder is drawn."""
    return folder.with_name(f".{folder.name}.shards") / f"{index}-of-{count}"


def write_shard(folder: Path, images: np.ndarray, caption_ids: np.ndarray,
                record: dict[str, Any]) -> Path:
    """A shard of a generation: its images as drawn (RGB PNGs named by id) and ``record`` (what
    drew them), moved into place whole; returns the shard's folder."""
    index, count = record["shard"]
    target = shard_folder(folder, index, count)
    staging = staging_dir(target)
    try:
        for image_id, pixels in zip(caption_ids, images, strict=True):
            save_png(pixels, staging / coco_name(image_id))
        write_text(staging / SHARD_RECORD, json.dumps(record, indent=1) + "\n")
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def drawn_shards(folder: Path, record: dict[str, Any]) -> dict[int, np.ndarray]:
    """The images shards of ``folder`` hold, by caption id, from shards drawn with the same
    ``record`` (model and drawing settings); a shard drawn otherwise is refused."""
    found: dict[int, np.ndarray] = {}
    shards = folder.with_name(f".{folder.name}.shards")
    for shard in sorted(shards.glob("*-of-*")) if shards.is_dir() else []:
        try:
            saved = json.loads((shard / SHARD_RECORD).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StageError(f"{shard}: not a shard this loop drew ({err}); remove it") from err
        differing = sorted(k for k in record if k != "shard" and saved.get(k) != record[k])
        if differing:
            raise StageError(f"{shard}: drawn with other {', '.join(differing)} than this run; "
                             f"remove it, or run with its settings")
        for path in shard.glob(f"{COCO_PREFIX}*.png"):
            found[int(path.stem.rpartition("_")[2])] = np.asarray(Image.open(path).convert("RGB"))
    return found


def remove_shards(folder: Path) -> None:
    shutil.rmtree(folder.with_name(f".{folder.name}.shards"), ignore_errors=True)


def load_real_images(files: list[Path], size: int) -> np.ndarray:
    """RGB images (N, size, size, 3): each resized so that its shorter side is ``size``, then
    cropped to the centre square, as Stable Diffusion's training crops. An unreadable file is
    named in one line."""
    images = []
    for path in files:
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as err:
            raise StageError(f"{path}: not a readable image ({err})") from err
        scale = size / min(image.size)
        width = max(size, round(image.width * scale))
        height = max(size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - size) // 2, (height - size) // 2
        images.append(np.asarray(image.crop((left, top, left + size, top + size))))
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
