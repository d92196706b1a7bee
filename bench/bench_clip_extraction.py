"""How fast extract_generation_embeddings.py embeds images, against two references, in one run.

A randomly initialised ``CLIPConfig()`` (ViT-B/32 size, the real cost of
openai/clip-vit-base-patch32) embeds N_IMAGES synthetic JPEG files of IMAGE_SIZE pixels:
1. end to end: the stage's own path (DataLoader workers decode and preprocess, batched image
   tower, L2 normalisation), files on disk to embeddings in memory;
2. model only: the image tower alone on the same batches, already preprocessed in memory
   (measured before and after 1, the mean is the reference);
3. one image at a time: open, preprocess and run both towers (the image and its caption) per
   image, as the public scripts did.
Captions are synthetic token ids of CAPTION_TOKENS tokens (no tokenizer is downloaded); the
batched caption pass of the stage is timed too. Targets: 1 >= 0.8 x 2, and 1 >= 2 x 3.
Run from the repository root: python bench/bench_clip_extraction.py [--device cuda]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extract_generation_embeddings import (  # noqa: E402
    autocast_for,
    embed_images,
    image_loader,
    projected,
)
from runtime import pick_device, run_stage, seed_everything  # noqa: E402
from settings import configure  # noqa: E402

DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
N_IMAGES = 96  # images embedded end to end and model-only
N_PER_IMAGE = 24  # images in the one-at-a-time loop (the slow reference)
BATCH_SIZE = 32  # images per forward pass (as the stage's --batch-size)
WORKERS = 2  # DataLoader worker processes (as the stage's --workers)
IMAGE_SIZE = 512  # side of the synthetic JPEG files (Stable Diffusion's output size)
CAPTION_TOKENS = 16  # tokens of a synthetic caption (a COCO caption is about 11 words)
THREADS = 0  # torch CPU threads (0: torch's default)
SEED = 0  # seeds the weights, the pictures and the token ids


def write_pictures(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """Smooth random pictures (upsampled low-resolution noise) saved as JPEG files."""
    rng = np.random.default_rng(seed)
    files = []
    for index in range(count):
        small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        path = folder / f"COCO_train2014_{index + 1:012d}.jpg"
        small.resize((size, size), Image.Resampling.BICUBIC).save(path, quality=90)
        files.append(path)
    return files


def synchronise(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only_seconds(model: CLIPModel, batches: list[torch.Tensor],
                       device: torch.device) -> float:
    """Seconds for the image tower (plus normalisation) on preprocessed in-memory batches."""
    synchronise(device)
    started = time.perf_counter()
    for pixels in batches:
        with torch.inference_mode(), autocast_for(device):
            features = projected(model.get_image_features(pixel_values=pixels.to(device)))
        torch.nn.functional.normalize(features.float(), dim=-1).cpu()
    synchronise(device)
    return time.perf_counter() - started


def end_to_end_seconds(model: CLIPModel, files: list[Path], image_processor: CLIPImageProcessor,
                       device: torch.device) -> float:
    """Seconds for the stage's image path: files -> DataLoader -> batched tower -> normalised."""
    synchronise(device)
    started = time.perf_counter()
    loader = image_loader(files, image_processor, BATCH_SIZE, WORKERS, device)
    embeddings, kept, failed = embed_images(model, loader, len(files), device)
    synchronise(device)
    seconds = time.perf_counter() - started
    if failed or len(kept) != len(files):
        raise RuntimeError(f"{len(failed)} synthetic pictures failed to load")
    return seconds


def caption_ids(count: int, tokens: int, config: CLIPConfig, rng: np.random.Generator
                ) -> torch.Tensor:
    """Token ids shaped like tokenised captions: start token, ``tokens`` words, end token."""
    text = config.text_config
    words = rng.integers(1000, 40000, (count, tokens))
    ids = np.concatenate([np.full((count, 1), text.bos_token_id), words,
                          np.full((count, 1), text.eos_token_id)], axis=1)
    return torch.as_tensor(ids, dtype=torch.long)


def caption_seconds(model: CLIPModel, ids: torch.Tensor, device: torch.device) -> float:
    """Seconds for the stage's batched caption pass (text tower plus normalisation)."""
    synchronise(device)
    started = time.perf_counter()
    for start in range(0, len(ids), BATCH_SIZE):
        with torch.inference_mode(), autocast_for(device):
            features = projected(model.get_text_features(
                input_ids=ids[start:start + BATCH_SIZE].to(device)))
        torch.nn.functional.normalize(features.float(), dim=-1).cpu()
    synchronise(device)
    return time.perf_counter() - started


def per_image_seconds(model: CLIPModel, files: list[Path], ids: torch.Tensor,
                      image_processor: CLIPImageProcessor, device: torch.device) -> float:
    """Seconds for the public scripts' loop: per image, open, preprocess, run both towers."""
    synchronise(device)
    started = time.perf_counter()
    for path, caption in zip(files, ids, strict=False):
        image = Image.open(path).convert("RGB")
        pixels = image_processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.inference_mode(), autocast_for(device):
            outputs = model(input_ids=caption[None].to(device), pixel_values=pixels.to(device))
        outputs.image_embeds.float().cpu()
        outputs.text_embeds.float().cpu()
    synchronise(device)
    return time.perf_counter() - started


def main() -> None:
    configure(globals())
    seed_everything(SEED)
    if THREADS > 0:
        torch.set_num_threads(THREADS)
    device = pick_device(DEVICE)
    config = CLIPConfig()
    model = CLIPModel(config).to(device).eval()
    image_processor = CLIPImageProcessor()
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"random CLIPConfig() ({parameters:.0f} M parameters) on {device}, "
          f"{torch.get_num_threads()} torch threads; batch {BATCH_SIZE}, {WORKERS} workers, "
          f"{N_IMAGES} JPEG files of {IMAGE_SIZE} px")
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory() as folder:
        files = write_pictures(Path(folder), N_IMAGES, IMAGE_SIZE, SEED)
        preprocessed = torch.stack([
            image_processor(images=Image.open(p).convert("RGB"), return_tensors="pt")[
                "pixel_values"][0] for p in files])
        batches = list(preprocessed.split(BATCH_SIZE))
        ids = caption_ids(N_IMAGES, CAPTION_TOKENS, config, rng)
        model_only_seconds(model, batches[:1], device)  # warm-up
        before = model_only_seconds(model, batches, device)
        end_to_end = end_to_end_seconds(model, files, image_processor, device)
        after = model_only_seconds(model, batches, device)
        captions = caption_seconds(model, ids, device)
        one_by_one = per_image_seconds(model, files[:N_PER_IMAGE], ids, image_processor,
                                       device)
    model_only = (before + after) / 2
    rates = {"model only (image tower, preprocessed batches)": N_IMAGES / model_only,
             "end to end (the stage's image path)": N_IMAGES / end_to_end,
             "end to end with the batched caption pass": N_IMAGES / (end_to_end + captions),
             "one image at a time, both towers (public scripts)": N_PER_IMAGE / one_by_one}
    for name, rate in rates.items():
        print(f"{name:<52} {rate:8.2f} images/s")
    print(f"model-only runs: {N_IMAGES / before:.2f} and {N_IMAGES / after:.2f} images/s "
          f"(before and after the end-to-end run)")
    end_to_end_rate = N_IMAGES / end_to_end
    print(f"end to end / model only: {end_to_end_rate * model_only / N_IMAGES:.2f} "
          f"(target >= 0.8)")
    print(f"end to end / one image at a time: {end_to_end_rate * one_by_one / N_PER_IMAGE:.2f}"
          f" (target >= 2)")


if __name__ == "__main__":
    run_stage(main)
