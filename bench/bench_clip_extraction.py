"""How fast extract_generation_embeddings.py embeds images, against references, in one run.

Pictures: N_IMAGES JPEG files of IMAGE_SIZE pixels cut from scikit-learn's two sample photographs
(random crops, rescaled), as a generator writes them.
1. Preprocessing cost per image on one CPU thread, start-up excluded, measured side by side in
   interleaved passes (the median pass of each is reported): a plain PIL decode of the file (the
   floor any path pays), the stage's fast path (reduced decode plus the tensor resize, crop and
   normalisation, run on the CPU in batches of BATCH_SIZE), and the Hugging Face processor path.
   The cost is the CPU time of the measuring thread (other jobs on a shared machine stretch wall
   time, not CPU time); wall time is printed beside it. Target: fast <= 1.5 x plain decode.
2. A randomly initialised ``CLIPConfig()`` (ViT-B/32 size, the real cost of
   openai/clip-vit-base-patch32):
   - model only: the image tower alone on preprocessed in-memory batches (before and after 3,
     the mean is the reference);
   - end to end: the stage's image path (DataLoader workers decode, the device preprocesses,
     batched image tower, L2 normalisation), files on disk to embeddings in memory;
   - one image at a time: open, preprocess and run both towers per image (a naive loop).
     Targets: end to end >= 0.8 x model only (on a GPU with enough workers; on a CPU the
     tower is the bottleneck anyway), and >= 2 x one image at a time.
Captions are synthetic token ids of CAPTION_TOKENS tokens (no tokenizer is downloaded).
Run from the repository root: python bench/bench_clip_extraction.py [--device cuda --workers 12]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import model_only_seconds, synchronise, write_pictures  # noqa: E402
from clip_tools.clip_embedding import (  # noqa: E402
    autocast_for,
    batch_blocks,
    embed_images,
    projected,
)
from clip_tools.clip_images import PixelPipeline, decode_reduced, image_batches  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import pick_device, run_stage, seed_everything  # noqa: E402

# ---------------------------------------------------------------- settings
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
PREPROCESSING = "fast"  # the stage's path timed end to end [fast | processor]
N_IMAGES = 96  # images embedded end to end and model-only [>= 1]
N_DECODE = 128  # images in the per-image preprocessing comparison [>= 1]
DECODE_PASSES = 3  # interleaved passes of that comparison (the median is reported) [>= 1]
N_PER_IMAGE = 24  # images in the one-at-a-time loop (the slow reference) [>= 1]
BATCH_SIZE = 32  # images per forward pass (as the stage's --batch-size) [>= 1]
WORKERS = 2  # DataLoader worker processes (as the stage's --workers) [>= 0]
IMAGE_SIZE = 512  # side of the JPEG files (Stable Diffusion's output size) [>= 32]
CAPTION_TOKENS = 16  # tokens of a synthetic caption (a COCO caption is about 11 words) [>= 1]
THREADS = 0  # torch CPU threads for the model runs (0: torch's default) [>= 0]
SEED = 0  # seeds the weights, the crops and the token ids [seed]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class ClipBench:
    """This benchmark's settings, as main passes them down."""

    device: str
    preprocessing: str
    n_images: int
    n_decode: int
    decode_passes: int
    n_per_image: int
    batch_size: int
    workers: int
    image_size: int
    caption_tokens: int
    threads: int
    seed: int


def plain_decode(files: list[Path]) -> None:
    """A plain full-size PIL decode to RGB of every file."""
    for path in files:
        with Image.open(path) as image:
            image.convert("RGB")


def fast_preprocessing(files: list[Path], pipeline: PixelPipeline, batch_size: int) -> None:
    """The stage's fast path on the CPU: reduced decode, then batched tensor preprocessing."""
    for start in range(0, len(files), batch_size):
        decoded = [decode_reduced(path, pipeline) for path in files[start:start + batch_size]]
        pixels = torch.stack([torch.from_numpy(array) for array, _ in decoded])
        pipeline(pixels, pipeline.resized_size(*decoded[0][1]))


def processor_preprocessing(files: list[Path], image_processor: CLIPImageProcessor) -> None:
    """The Hugging Face processor path: full decode and processor, one image at a time."""
    for path in files:
        with Image.open(path) as image:
            image_processor(images=image.convert("RGB"), return_tensors="pt")


def timed(work: Any) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) that ``work()`` takes."""
    cpu, wall = time.thread_time(), time.perf_counter()
    work()
    return time.thread_time() - cpu, time.perf_counter() - wall


def end_to_end_seconds(model: CLIPModel, files: list[Path], image_processor: CLIPImageProcessor,
                       pipeline: PixelPipeline | None, device: torch.device,
                       b: ClipBench) -> float:
    """Seconds for the stage's image path: files -> DataLoader -> device -> tower -> normalised
    (b.preprocessing, in batches of b.batch_size, b.workers DataLoader workers)."""
    synchronise(device)
    started = time.perf_counter()
    batches = image_batches(files, batch_blocks(len(files), b.batch_size, None),
                            b.preprocessing, image_processor, pipeline, b.workers, device)
    _, kept, failed = embed_images(model, batches, pipeline, device)
    synchronise(device)
    seconds = time.perf_counter() - started
    if failed or len(kept) != len(files):
        raise RuntimeError(f"{len(failed)} pictures failed to load")
    return seconds


def caption_ids(count: int, tokens: int, config: CLIPConfig, rng: np.random.Generator
                ) -> torch.Tensor:
    """Token ids shaped like tokenised captions: start token, ``tokens`` words, end token."""
    text = config.text_config
    words = rng.integers(1000, 40000, (count, tokens))
    ids = np.concatenate([np.full((count, 1), text.bos_token_id), words,
                          np.full((count, 1), text.eos_token_id)], axis=1)
    return torch.as_tensor(ids, dtype=torch.long)


def caption_seconds(model: CLIPModel, ids: torch.Tensor, device: torch.device,
                    batch_size: int) -> float:
    """Seconds for the stage's batched caption pass (text tower plus normalisation)."""
    synchronise(device)
    started = time.perf_counter()
    for start in range(0, len(ids), batch_size):
        with torch.inference_mode(), autocast_for(device):
            features = projected(model.get_text_features(
                input_ids=ids[start:start + batch_size].to(device)))
        torch.nn.functional.normalize(features.float(), dim=-1).cpu()
    synchronise(device)
    return time.perf_counter() - started


def per_image_seconds(model: CLIPModel, files: list[Path], ids: torch.Tensor,
                      image_processor: CLIPImageProcessor, device: torch.device) -> float:
    """Seconds for the naive per-image loop: per image, open, preprocess, run both towers."""
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


def preprocessing_costs(files: list[Path], image_processor: CLIPImageProcessor,
                        pipeline: PixelPipeline, batch_size: int, decode_passes: int
                        ) -> dict[str, tuple[float, float]]:
    """Median (CPU, wall) milliseconds per image of each path over ``decode_passes`` interleaved
    passes, one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = {"plain PIL decode": lambda: plain_decode(files),
             "fast path": lambda: fast_preprocessing(files, pipeline, batch_size),
             "processor path": lambda: processor_preprocessing(files, image_processor)}
    try:
        fast_preprocessing(files[:batch_size], pipeline, batch_size)  # warm-up
        processor_preprocessing(files[:2], image_processor)
        passes: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for _ in range(decode_passes):
            for name, work in paths.items():
                passes[name].append(timed(work))
    finally:
        torch.set_num_threads(threads)
    return {name: (1000 * statistics.median(cpu for cpu, _ in runs) / len(files),
                   1000 * statistics.median(wall for _, wall in runs) / len(files))
            for name, runs in passes.items()}


def main(argv: list[str] | None = None) -> None:
    b = pick(ClipBench, configure(globals(), argv))
    seed_everything(b.seed)
    if b.threads > 0:
        torch.set_num_threads(b.threads)
    device = pick_device(b.device)
    image_processor = CLIPImageProcessor()  # openai/clip-vit-base-patch32's configuration
    pipeline = PixelPipeline.from_processor(image_processor)
    with tempfile.TemporaryDirectory() as folder:
        files = write_pictures(Path(folder), max(b.n_images, b.n_decode), b.image_size, b.seed)
        costs = preprocessing_costs(files[:b.n_decode], image_processor, pipeline, b.batch_size,
                                    b.decode_passes)
        print(f"preprocessing per image, one CPU thread, {b.n_decode} JPEG files of "
              f"{b.image_size} px, median of {b.decode_passes} interleaved passes:")
        plain_cpu, plain_wall = costs["plain PIL decode"]
        for name, (cpu, wall) in costs.items():
            print(f"  {name:<18} CPU {cpu:6.2f} ms ({1000 / cpu:6.1f} images/s, "
                  f"{cpu / plain_cpu:.2f} x plain decode); wall {wall:6.2f} ms "
                  f"({wall / plain_wall:.2f} x)")
        print(f"fast path / plain decode: {costs['fast path'][0] / plain_cpu:.2f} in CPU time "
              f"(target <= 1.5), {costs['fast path'][1] / plain_wall:.2f} in wall time")

        config = CLIPConfig()
        model = CLIPModel(config).to(device).eval()
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"\nrandom CLIPConfig() ({parameters:.0f} M parameters) on {device}, "
              f"{torch.get_num_threads()} torch threads; batch {b.batch_size}, {b.workers} "
              f"workers, {b.n_images} images, {b.preprocessing} preprocessing end to end")
        files = files[:b.n_images]
        preprocessed = torch.stack([
            image_processor(images=Image.open(p).convert("RGB"), return_tensors="pt")[
                "pixel_values"][0] for p in files])
        batches = list(preprocessed.split(b.batch_size))
        ids = caption_ids(b.n_images, b.caption_tokens, config, np.random.default_rng(b.seed))
        stage_pipeline = pipeline if b.preprocessing == "fast" else None
        model_only_seconds(model, batches[:1], device)  # warm-up
        end_to_end_seconds(model, files[:b.batch_size], image_processor, stage_pipeline, device,
                           b)
        before = model_only_seconds(model, batches, device)
        end_to_end = end_to_end_seconds(model, files, image_processor, stage_pipeline, device, b)
        after = model_only_seconds(model, batches, device)
        captions = caption_seconds(model, ids, device, b.batch_size)
        one_by_one = per_image_seconds(model, files[:b.n_per_image], ids, image_processor,
                                       device)
    model_only = (before + after) / 2
    rates = {"model only (image tower, preprocessed batches)": b.n_images / model_only,
             "end to end (the stage's image path)": b.n_images / end_to_end,
             "end to end with the batched caption pass": b.n_images / (end_to_end + captions),
             "one image at a time, both towers (naive loop)": b.n_per_image / one_by_one}
    for name, rate in rates.items():
        print(f"{name:<52} {rate:8.2f} images/s")
    print(f"model-only runs: {b.n_images / before:.2f} and {b.n_images / after:.2f} images/s "
          f"(before and after the end-to-end run)")
    end_to_end_rate = b.n_images / end_to_end
    print(f"end to end / model only: {end_to_end_rate * model_only / b.n_images:.2f} "
          f"(target >= 0.8)")
    print(f"end to end / one image at a time: {end_to_end_rate * one_by_one / b.n_per_image:.2f}"
          f" (target >= 2)")


if __name__ == "__main__":
    run_stage(main, resumable=False)
