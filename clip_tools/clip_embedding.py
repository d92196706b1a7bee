"""CLIP embeddings of captions and image files: loading a CLIP by name or directory, image files
named by their COCO image id, and batched, L2-normalised text and image embeddings (bf16 or
fp16 autocast on CUDA). extract_generation_embeddings.py embeds the generations with it, and
plot_generation_clusters.py a reference set of real images."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clip_tools.clip_images import PixelPipeline, image_batches, model_inputs
from runtime.stage import StageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# The COCO image id: the digits after the last '_' or '-' of the stem, or an all-digit stem.
ID_IN_NAME = re.compile(r"(?:.*[_-])?(\d+)")
# Names that certainly carry a COCO id; pairing them by position would ignore it.
COCO_NAME = re.compile(r"COCO_[a-z]+\d{4}_\d{12}", re.IGNORECASE)


def image_id_from_name(path: Path) -> int | None:
    """The COCO image id in a file name (see ID_IN_NAME), or None."""
    match = ID_IN_NAME.fullmatch(path.stem)
    return int(match.group(1)) if match else None


def natural_key(path: Path) -> list[Any]:
    """Sort key that orders 'img_2' before 'img_10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: Path, pattern: str) -> tuple[list[Path], int]:
    """Image files directly in ``folder`` (hidden files skipped) and the count of other files;
    ``pattern`` is the --generation-dir-pattern the folder came from (for the error). A link that
    leads nowhere (broken, or to itself) is listed like a file, so that reading it fails and
    names it instead of dropping it unseen."""
    if not folder.is_dir():
        raise StageError(f"{folder}: generation folder not found (--generation-dir-pattern "
                         f"{pattern!r})")
    files = [p for p in folder.iterdir() if not p.name.startswith(".")
             and (p.is_file() or (p.is_symlink() and not p.exists()))]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(images, key=natural_key), len(files) - len(images)


def ids_by_file(folder: Path, files: list[Path],
                otherwise: str = ", or pass --pairing position for a folder without ids"
                ) -> dict[Path, int]:
    """The COCO image id of every file; a folder with unnamed or duplicate ids is refused (the
    one line ends with ``otherwise``: what else the caller's user can do)."""
    ids = {path: image_id_from_name(path) for path in files}
    without = [p.name for p, image_id in ids.items() if image_id is None]
    if without:
        mixed = "some files carry ids and others do not; " if len(without) < len(files) else ""
        raise StageError(f"{folder}: {mixed}{len(without)} file(s) have no COCO image id in their "
                         f"name (e.g. {without[0]}); name them like COCO_train2014_000000000009.jpg"
                         f"{otherwise}")
    seen: dict[int, str] = {}
    for path, image_id in ids.items():
        if image_id in seen:
            raise StageError(f"{folder}: {seen[image_id]} and {path.name} carry the same image id "
                             f"{image_id}; one image per id is expected")
        seen[image_id] = path.name
    return {path: int(image_id) for path, image_id in ids.items()}


def load_clip(name_or_dir: str, device: torch.device) -> tuple[Any, Any]:
    """CLIP model (float32, eval mode, on ``device``) and its processor from a name or directory."""
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as transformers_logging

    looks_like_path = name_or_dir.startswith((".", "/", "~")) or Path(name_or_dir).exists()
    directory = Path(name_or_dir).expanduser()
    if looks_like_path and not directory.is_dir():
        raise StageError(f"--model {name_or_dir}: no such directory")
    if looks_like_path and not (directory / "config.json").is_file():
        raise StageError(f"{directory / 'config.json'}: not found: a model directory written by "
                         f"save_pretrained holds one")
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if looks_like_path and (directory / name).is_file():  # a local file: say which is broken
            try:
                document = json.loads((directory / name).read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
                raise StageError(f"{directory / name}: not valid JSON ({err})") from err
            if not isinstance(document, dict):
                raise StageError(f"{directory / name}: a JSON {type(document).__name__}, not the "
                                 f"object save_pretrained writes")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # e.g. "torchvision not installed": not needed
    transformers_logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(name_or_dir, dtype=torch.float32)
        processor = CLIPProcessor.from_pretrained(name_or_dir)
    except (OSError, ValueError) as err:
        if looks_like_path:
            raise StageError(f"--model {name_or_dir}: the directory holds no loadable CLIP model "
                             f"and processor ({str(err).splitlines()[0]})") from err
        raise StageError(f"--model {name_or_dir!r}: could not load a CLIP model and processor: "
                         f"not a local directory holding one, and not in the local Hugging Face "
                         f"cache (offline? download it once on a connected machine, or pass a "
                         f"local directory with --model DIR) ({str(err).splitlines()[0]})") from err
    except Exception as err:  # a damaged weights or tokenizer file
        files = [str(directory / name) for name in ("model.safetensors", "pytorch_model.bin")
                 if (directory / name).is_file()] if looks_like_path else []
        where = ", ".join(files) or name_or_dir
        raise StageError(f"{where}: could not load the CLIP model (empty or truncated file?) "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()
    return model.to(device).eval(), processor


def projected(output: Any) -> torch.Tensor:
    """The projected CLIP features: a tensor in transformers 4.x, ``.pooler_output`` in 5.x."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 (or fp16 where bf16 is missing) autocast on CUDA; no autocast elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def batch_blocks(count: int, batch_size: int, shard: tuple[int, int] | None) -> list[list[int]]:
    """Rows 0..count-1 cut into consecutive batches; with a shard (i, n), batches j = i mod n."""
    blocks = [list(range(start, min(start + batch_size, count)))
              for start in range(0, count, batch_size)]
    return blocks if shard is None else blocks[shard[0]::shard[1]]


def embed_captions(model: Any, tokenizer: Any, captions: list[str], blocks: list[list[int]],
                   device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The caption rows of ``blocks`` and their L2-normalised CLIP text embeddings (float32),
    one forward pass per block."""
    chunks, rows = [], []
    for block in blocks:
        tokens = tokenizer([captions[row] for row in block], padding=True, truncation=True,
                           max_length=77, return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items()}
        with torch.inference_mode(), autocast_for(device):
            features = projected(model.get_text_features(**tokens))
        chunks.append(F.normalize(features.float(), dim=-1).cpu().numpy())
        rows.extend(block)
    dims = model.config.projection_dim
    return (np.array(rows, dtype=np.int64),
            np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dims),
                                                                              np.float32))


def embed_images(model: Any, batches: Iterable, pipeline: PixelPipeline | None,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """L2-normalised CLIP image embeddings of the readable images (float32), their rows, and the
    (row, error) pairs of the unreadable ones; in the order of the batches."""
    chunks, kept, failed = [], [], []
    for groups, batch_failed in batches:
        failed.extend(batch_failed)
        for rows, pixels, target in groups:
            inputs = model_inputs(pixels, target, pipeline, device)
            with torch.inference_mode(), autocast_for(device):
                features = projected(model.get_image_features(pixel_values=inputs))
            chunks.append(F.normalize(features.float(), dim=-1).cpu().numpy())
            kept.append(rows.numpy())
    if not chunks:
        return np.zeros((0, model.config.projection_dim), np.float32), np.zeros(0, np.int64), \
            failed
    embeddings, rows = np.concatenate(chunks).astype(np.float32), np.concatenate(kept)
    order = np.argsort(rows, kind="stable")  # groups of one batch come back by size
    return embeddings[order], rows[order], failed


def embed_image_folder(model: Any, processor: Any, folder: Path, device: torch.device,
                       batch_size: int = 64, workers: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """L2-normalised embeddings (fast preprocessing) of the images of ``folder`` named by their
    image id, those ids, and the (file, error) pairs of the unreadable files."""
    if not folder.is_dir():
        raise StageError(f"{folder}: no such folder")
    files, _ = list_images(folder, str(folder))
    if not files:
        raise StageError(f"{folder}: no image files (they end in "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    file_ids = ids_by_file(folder, files, " (the id of the caption the image shows)")
    pipeline = PixelPipeline.from_processor(processor.image_processor)
    blocks = [list(range(start, min(start + batch_size, len(files))))
              for start in range(0, len(files), batch_size)]
    batches = image_batches(files, blocks, "fast", processor.image_processor, pipeline, workers,
                            device)
    embeddings, kept, failed = embed_images(model, batches, pipeline, device)
    return (embeddings, np.array([file_ids[files[row]] for row in kept], dtype=np.int64),
            [(files[row].name, error) for row, error in failed])
