"""Embed COCO captions and the images of each generation of a self-consuming text-to-image loop
with CLIP, pairing every image with the caption of its own COCO image id.

Captions: for each image id, its first caption (lowest annotation id); the caption set is the
first NUM_CAPTIONS image ids in ascending order. With PAIRING 'id' those ids are taken among the
ids that both have a caption and appear in at least one generation folder (so the captions are the
prompts of the generated images); with PAIRING 'position' among all annotated ids.
Images: PAIRING 'id' reads the COCO image id from each file name (COCO_train2014_000000000009.jpg,
000000000009.png, gen_9.png: the digits after the last '_' or the whole stem); a file whose id is
not among the loaded captions is reported and skipped. PAIRING 'position' pairs the i-th file in
natural name order with the i-th caption, for folders whose names carry no ids (COCO-named files
are refused). Unreadable images are reported by name, skipped and counted in ``meta``.

Writes OUTPUT_DIR/coco_caption_embeddings.npz (text_embeddings, captions, image_ids) and one
OUTPUT_DIR/gen_<g>_embeddings.npz per generation (image_embeddings, text_embeddings of each
image's caption, captions, image_files, image_ids), every embedding L2-normalised in float32.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPModel, CLIPProcessor

from artifacts import make_meta, save_npz
from generation_metrics import check_generations
from runtime import StageError, pick_device, run_stage, seed_everything
from settings import configure

ANNOTATION_FILE = "data/coco/annotations/captions_train2014.json"  # COCO captions JSON
GENERATION_DIR_PATTERN = "data/coco/sd_to_sd_cfg_7_steps_50_gen_{g}"  # one folder per generation
GENERATIONS = (0, 4, 10)  # generations to embed, any list
MODEL = "openai/clip-vit-base-patch32"  # CLIP: a name in the local HF cache, or a local directory
NUM_CAPTIONS = 100  # caption ids to embed: the first N image ids in ascending order
PAIRING = "id"  # 'id': COCO id in the file name; 'position': i-th file with i-th caption
BATCH_SIZE = 64  # images or captions per forward pass
WORKERS = 2  # DataLoader worker processes that decode and preprocess images (0: main process)
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
SEED = 0  # seeds torch and numpy; the extraction itself draws nothing at random
OUTPUT_DIR = "data/embeddings"  # where the NPZ files are written

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# The COCO image id: the digits after the last '_' or '-' of the stem, or an all-digit stem.
ID_IN_NAME = re.compile(r"(?:.*[_-])?(\d+)")
# Names that certainly carry a COCO id; pairing them by position would ignore it.
COCO_NAME = re.compile(r"COCO_[a-z]+\d{4}_\d{12}", re.IGNORECASE)


@dataclass
class CaptionSet:
    """The first caption of each selected image id, in ascending id order."""

    image_ids: np.ndarray
    captions: list[str]


@dataclass
class GenerationImages:
    """The image files of one generation folder paired with caption rows, and what was skipped."""

    folder: Path
    files: list[Path]
    image_ids: list[int]
    caption_rows: list[int]
    no_caption: list[str]
    not_images: int


def read_first_captions(path: Path) -> dict[int, str]:
    """The first caption (lowest annotation id, then file order) of each image id in a file."""
    if not path.is_file():
        raise StageError(f"{path}: COCO caption annotation file not found (--annotation-file)")
    try:
        annotations = json.loads(path.read_text(encoding="utf-8"))["annotations"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StageError(f"{path}: not a readable JSON file ({err})") from err
    except (KeyError, TypeError) as err:
        raise StageError(f"{path}: no 'annotations' list; is this a COCO captions file?") from err
    first: dict[int, tuple[float, int, str]] = {}
    for position, entry in enumerate(annotations):
        try:
            image_id, caption = int(entry["image_id"]), str(entry["caption"]).strip()
            order = (float(entry.get("id", float("inf"))), position, caption)
        except (KeyError, TypeError, ValueError) as err:
            raise StageError(f"{path}: annotation {position} lacks an integer 'image_id', a "
                             f"'caption' or a numeric 'id' ({entry!r:.120})") from err
        if caption and (image_id not in first or order < first[image_id]):
            first[image_id] = order
    if not first:
        raise StageError(f"{path}: holds no captions")
    return {image_id: order[2] for image_id, order in first.items()}


def image_id_from_name(path: Path) -> int | None:
    """The COCO image id in a file name (see ID_IN_NAME), or None."""
    match = ID_IN_NAME.fullmatch(path.stem)
    return int(match.group(1)) if match else None


def natural_key(path: Path) -> list[Any]:
    """Sort key that orders 'img_2' before 'img_10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files directly in ``folder`` (hidden files skipped) and the count of other files."""
    if not folder.is_dir():
        raise StageError(f"{folder}: generation folder not found (--generation-dir-pattern "
                         f"{GENERATION_DIR_PATTERN!r})")
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(images, key=natural_key), len(files) - len(images)


def ids_by_file(folder: Path, files: list[Path]) -> dict[Path, int]:
    """The COCO image id of every file; a folder with unnamed or duplicate ids is refused."""
    ids = {path: image_id_from_name(path) for path in files}
    without = [p.name for p, image_id in ids.items() if image_id is None]
    if without:
        mixed = "some files carry ids and others do not; " if len(without) < len(files) else ""
        raise StageError(f"{folder}: {mixed}{len(without)} file(s) have no COCO image id in their "
                         f"name (e.g. {without[0]}); name them like COCO_train2014_000000000009.jpg"
                         f", or pass --pairing position for a folder without ids")
    seen: dict[int, str] = {}
    for path, image_id in ids.items():
        if image_id in seen:
            raise StageError(f"{folder}: {seen[image_id]} and {path.name} carry the same image id "
                             f"{image_id}; one image per id is expected")
        seen[image_id] = path.name
    return {path: int(image_id) for path, image_id in ids.items()}


def select_captions(first_captions: dict[int, str], wanted_ids: set[int] | None,
                    count: int) -> CaptionSet:
    """The first ``count`` image ids in ascending order (among ``wanted_ids`` when given)."""
    candidates = sorted(first_captions if wanted_ids is None else
                        set(first_captions) & wanted_ids)
    chosen = candidates[:count]
    return CaptionSet(np.array(chosen, dtype=np.int64), [first_captions[i] for i in chosen])


def pair_by_id(folder: Path, files: list[Path], file_ids: dict[Path, int],
               caption_set: CaptionSet, not_images: int) -> GenerationImages:
    """Pair each file with the caption row of its image id; others are listed as skipped."""
    row_of_id = {int(image_id): row for row, image_id in enumerate(caption_set.image_ids)}
    kept = sorted((file_ids[p], p) for p in files if file_ids[p] in row_of_id)
    no_caption = [p.name for p in files if file_ids[p] not in row_of_id]
    return GenerationImages(folder, [p for _, p in kept], [i for i, _ in kept],
                            [row_of_id[i] for i, _ in kept], no_caption, not_images)


def pair_by_position(folder: Path, files: list[Path], caption_set: CaptionSet,
                     not_images: int) -> GenerationImages:
    """Pair the i-th file (natural name order) with the i-th caption; extra files are skipped."""
    coco_named = [p.name for p in files if COCO_NAME.search(p.stem)]
    if coco_named:
        raise StageError(f"{folder}: {len(coco_named)} file name(s) carry COCO image ids (e.g. "
                         f"{coco_named[0]}); pairing them by position would ignore those ids: "
                         f"use --pairing id")
    count = min(len(files), len(caption_set.captions))
    return GenerationImages(folder, files[:count],
                            [int(i) for i in caption_set.image_ids[:count]], list(range(count)),
                            [p.name for p in files[count:]], not_images)


def load_clip(name_or_dir: str, device: torch.device) -> tuple[CLIPModel, CLIPProcessor]:
    """CLIP model (float32, eval mode, on ``device``) and its processor from a name or directory."""
    looks_like_path = name_or_dir.startswith((".", "/", "~")) or Path(name_or_dir).exists()
    if looks_like_path and not Path(name_or_dir).expanduser().is_dir():
        raise StageError(f"--model {name_or_dir}: no such directory")
    try:
        model = CLIPModel.from_pretrained(name_or_dir, dtype=torch.float32)
        processor = CLIPProcessor.from_pretrained(name_or_dir)
    except (OSError, ValueError) as err:
        raise StageError(f"--model {name_or_dir!r}: could not load a CLIP model and processor: "
                         f"not a local directory holding one, and not in the local Hugging Face "
                         f"cache (offline? download it once on a connected machine, or pass a "
                         f"local directory with --model DIR) ({str(err).splitlines()[0]})") from err
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


def embed_captions(model: CLIPModel, processor: CLIPProcessor, captions: list[str],
                   device: torch.device, batch_size: int) -> np.ndarray:
    """L2-normalised CLIP text embeddings (float32), one forward pass per batch of captions."""
    chunks = []
    for start in range(0, len(captions), batch_size):
        tokens = processor.tokenizer(captions[start:start + batch_size], padding=True,
                                     truncation=True, max_length=77, return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items()}
        with torch.inference_mode(), autocast_for(device):
            features = projected(model.get_text_features(**tokens))
        chunks.append(F.normalize(features.float(), dim=-1).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


class ImageFiles(Dataset):
    """Decodes and preprocesses one image per item; an unreadable file yields its error instead."""

    # What a corrupt or truncated image raises in PIL (a broken PNG raises SyntaxError).
    read_errors = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

    def __init__(self, files: list[Path], image_processor: Any) -> None:
        self.files = files
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            with Image.open(self.files[index]) as image:
                rgb = image.convert("RGB")
            pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"][0]
        except self.read_errors as err:
            return index, None, f"{type(err).__name__}: {err}"
        return index, pixels, ""


def collate_readable(batch: list[tuple[int, torch.Tensor | None, str]]
                     ) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]:
    """The readable images of a batch stacked, their indices, and (index, error) of the rest."""
    readable = [(index, pixels) for index, pixels, _ in batch if pixels is not None]
    failed = [(index, error) for index, pixels, error in batch if pixels is None]
    indices = torch.tensor([index for index, _ in readable], dtype=torch.long)
    pixels = torch.stack([p for _, p in readable]) if readable else None
    return indices, pixels, failed


def image_loader(files: list[Path], image_processor: Any, batch_size: int, workers: int,
                 device: torch.device) -> DataLoader:
    """Batches of preprocessed images (see collate_readable), decoded by ``workers`` processes."""
    return DataLoader(ImageFiles(files, image_processor), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate_readable,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


def embed_images(model: CLIPModel, batches: Iterable, count: int, device: torch.device
                 ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """L2-normalised CLIP image embeddings of the readable images, their indices, the failures."""
    chunks, kept, failed = [], [], []
    for indices, pixels, batch_failed in batches:
        failed.extend(batch_failed)
        if pixels is None:
            continue
        with torch.inference_mode(), autocast_for(device):
            features = projected(model.get_image_features(
                pixel_values=pixels.to(device, non_blocking=True)))
        chunks.append(F.normalize(features.float(), dim=-1).cpu().numpy())
        kept.append(indices.numpy())
    if not chunks:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), failed
    embeddings, order = np.concatenate(chunks).astype(np.float32), np.concatenate(kept)
    if len(order) + len(failed) != count:
        raise RuntimeError(f"the loader returned {len(order) + len(failed)} of {count} images")
    return embeddings, order, failed


def folder_of(generation: int) -> Path:
    """The folder of one generation, from GENERATION_DIR_PATTERN."""
    if "{g}" not in GENERATION_DIR_PATTERN:
        raise StageError(f"--generation-dir-pattern {GENERATION_DIR_PATTERN!r} has no '{{g}}' "
                         f"where the generation number goes")
    return Path(GENERATION_DIR_PATTERN.format(g=generation))


def shown(names: list[str], limit: int = 5) -> str:
    """A short list of names for a printed line."""
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def main() -> None:
    settings = configure(globals())
    if PAIRING not in ("id", "position"):
        raise StageError(f"--pairing {PAIRING!r}: expected 'id' or 'position'")
    if NUM_CAPTIONS < 1 or BATCH_SIZE < 1 or WORKERS < 0:
        raise StageError("--num-captions and --batch-size must be >= 1, --workers >= 0")
    check_generations(GENERATIONS)
    seed_everything(SEED)
    annotation_file = Path(ANNOTATION_FILE)
    first_captions = read_first_captions(annotation_file)

    # Every folder is listed (and every missing one reported) before the model is loaded.
    listings = {g: (folder_of(g), *list_images(folder_of(g))) for g in GENERATIONS}
    empty = [str(folder) for folder, files, _ in listings.values() if not files]
    if empty:
        raise StageError(f"no images to embed in {', '.join(empty)} (image files end in "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    file_ids = {g: ids_by_file(folder, files) for g, (folder, files, _) in listings.items()} \
        if PAIRING == "id" else {}
    wanted = {i for ids in file_ids.values() for i in ids.values()} if PAIRING == "id" else None
    caption_set = select_captions(first_captions, wanted, NUM_CAPTIONS)
    if not caption_set.captions:
        raise StageError(f"{annotation_file}: none of the image ids in the generation folders "
                         f"({', '.join(str(folder) for folder, _, _ in listings.values())}) has a "
                         f"caption; are these the right annotations?")
    pairs = {g: pair_by_id(folder, files, file_ids[g], caption_set, not_images)
             if PAIRING == "id" else pair_by_position(folder, files, caption_set, not_images)
             for g, (folder, files, not_images) in listings.items()}
    unpaired = [str(p.folder) for p in pairs.values() if not p.files]
    if unpaired:
        raise StageError(f"no images to embed in {', '.join(unpaired)}: none is named by a COCO "
                         f"id among the {len(caption_set.captions)} caption ids")

    device = pick_device(DEVICE)
    model, processor = load_clip(MODEL, device)
    print(f"model {MODEL} on {device}; {len(caption_set.captions)} captions from {annotation_file}")
    output_dir = Path(OUTPUT_DIR)
    started = time.perf_counter()
    text_embeddings = embed_captions(model, processor, caption_set.captions, device, BATCH_SIZE)
    caption_meta = make_meta(
        __file__, settings, "coco-captions", SEED, annotation_file=str(annotation_file),
        model=MODEL, device=str(device), n_captions=len(caption_set.captions),
        embedding_dim=int(text_embeddings.shape[1]),
        caption_order="ascending image id; per id the caption with the lowest annotation id",
        caption_ids_from="ids in the generation folders" if PAIRING == "id" else "all ids")
    caption_path = save_npz(output_dir / "coco_caption_embeddings.npz",
                            {"text_embeddings": text_embeddings,
                             "captions": np.array(caption_set.captions, dtype=str),
                             "image_ids": caption_set.image_ids}, caption_meta)
    print(f"captions: {len(caption_set.captions)} embedded in "
          f"{time.perf_counter() - started:.1f} s -> {caption_path}")

    for generation, paired in pairs.items():
        started = time.perf_counter()
        batches = image_loader(paired.files, processor.image_processor, BATCH_SIZE, WORKERS,
                               device)
        image_embeddings, kept, failed = embed_images(model, batches, len(paired.files), device)
        seconds = time.perf_counter() - started
        unreadable = [{"file": paired.files[index].name, "error": error} for index, error in failed]
        for item in unreadable:
            print(f"gen {generation}: unreadable image skipped: {paired.folder / item['file']} "
                  f"({item['error']})")
        if paired.no_caption:
            print(f"gen {generation}: {len(paired.no_caption)} image(s) without a caption among "
                  f"the {len(caption_set.captions)} loaded ids skipped: {shown(paired.no_caption)}")
        if len(kept) == 0:
            raise StageError(f"{paired.folder}: none of its {len(paired.files)} paired images "
                             f"could be read")
        rows = np.array([paired.caption_rows[i] for i in kept], dtype=np.int64)
        files = [paired.files[i].name for i in kept]
        meta = make_meta(
            __file__, settings, "coco-generations", SEED, generation=int(generation),
            folder=str(paired.folder), pairing=PAIRING, model=MODEL, device=str(device),
            caption_file=str(caption_path), annotation_file=str(annotation_file),
            n_image_files=len(paired.files) + len(paired.no_caption),
            n_embedded=len(kept), n_unreadable=len(unreadable), unreadable_files=unreadable,
            n_no_caption=len(paired.no_caption), no_caption_files=paired.no_caption,
            n_other_files_ignored=paired.not_images, seconds=round(seconds, 3))
        path = save_npz(output_dir / f"gen_{generation}_embeddings.npz",
                        {"image_embeddings": image_embeddings,
                         "text_embeddings": text_embeddings[rows],
                         "captions": np.array([caption_set.captions[r] for r in rows], dtype=str),
                         "image_files": np.array(files, dtype=str),
                         "image_ids": caption_set.image_ids[rows]}, meta)
        print(f"gen {generation}: {len(kept)} images embedded from {paired.folder} "
              f"({len(unreadable)} unreadable, {len(paired.no_caption)} without caption) in "
              f"{seconds:.1f} s ({len(kept) / max(seconds, 1e-9):.1f} images/s) -> {path}")


if __name__ == "__main__":
    run_stage(main)
