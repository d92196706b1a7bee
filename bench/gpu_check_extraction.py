"""One GPU check of extract_generation_embeddings.py, to run once on a CUDA machine.

    python bench/gpu_check_extraction.py            # about 3 minutes on one H100

Measures, with a randomly initialised ``CLIPConfig()`` (ViT-B/32 size) under the stage's bf16
autocast, on N_IMAGES JPEG files of 512 pixels cut from real photographs:
1. model only: the image tower on preprocessed batches (before and after the end-to-end runs);
2. end to end, the stage's image path (DataLoader workers, batch BATCH_SIZE), with the fast
   preprocessing for each worker count in WORKER_COUNTS, and with the processor path once;
   target: fast end to end >= 0.8 x model only with enough workers; and the fast path's
   DataLoader alone (no tower) for each worker count, which shows whether loading is the limit;
3. the fast path against the processor path on the GPU: cosine of the embeddings per image
   (target >= 0.999);
4. a sharded extraction (2 shards, merged) against an unsharded one, run as a user runs the stage
   on the GPU with a tiny CLIP: the arrays must be identical.
Prints a summary and writes it as JSON to $OUT/gpu_check_extraction.json when OUT is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import ROOT, model_only_seconds, synchronise, write_pictures  # noqa: E402
from clip_tools.clip_embedding import batch_blocks, embed_images  # noqa: E402
from clip_tools.clip_images import PixelPipeline, image_batches  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import pick_device, run_stage, seed_everything  # noqa: E402

# ---------------------------------------------------------------- settings
DEVICE = "cuda"  # the device to check (cuda, or cpu for a dry run)
N_IMAGES = 4096  # JPEG files embedded end to end and model-only [>= 1]
BATCH_SIZE = 256  # images per forward pass [>= 1]
WORKER_COUNTS = (4, 8, 12)  # DataLoader workers tried for the fast path [>= 0]
PROCESSOR_WORKERS = 12  # DataLoader workers for the processor path [>= 0]
N_AGREEMENT = 64  # images compared between the fast and the processor path [>= 1]
SEED = 0  # seeds the weights and the pictures [seed]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class GpuCheck:
    """This check's settings, as main passes them down."""

    device: str
    n_images: int
    batch_size: int
    worker_counts: tuple[int, ...]
    processor_workers: int
    n_agreement: int
    seed: int


def write_chunk(arguments: tuple[str, int, int, int]) -> list[str]:
    """Pictures for one worker of the pool (their names carry distinct ids): (folder, offset of
    the first id, count, seed of the whole set)."""
    folder, offset, count, seed = arguments
    chunk = Path(folder) / f"part{offset}"
    chunk.mkdir()
    files = write_pictures(chunk, count, 512, seed + offset)
    renamed = []
    for number, path in enumerate(files):
        target = Path(folder) / f"COCO_train2014_{offset + number + 1:012d}.jpg"
        path.rename(target)
        renamed.append(str(target))
    return renamed


def pictures(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` photographs as 512x512 JPEG files, written by a pool of processes."""
    step = max(1, -(-count // (os.cpu_count() or 1)))
    jobs = [(str(folder), offset, min(step, count - offset), seed)
            for offset in range(0, count, step)]
    with Pool(len(jobs)) as pool:
        return [Path(p) for chunk in pool.map(write_chunk, jobs) for p in chunk]


def end_to_end(model: CLIPModel, files: list[Path], preprocessing: str, processor: Any,
               pipeline: PixelPipeline | None, workers: int, device: torch.device,
               batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds of the stage's image path over ``files``, and the embeddings."""
    synchronise(device)
    started = time.perf_counter()
    batches = image_batches(files, batch_blocks(len(files), batch_size, None), preprocessing,
                            processor, pipeline, workers, device)
    embeddings, kept, failed = embed_images(model, batches, pipeline, device)
    synchronise(device)
    if failed or len(kept) != len(files):
        raise RuntimeError(f"{len(failed)} pictures failed to load")
    return time.perf_counter() - started, embeddings


def loader_only_seconds(files: list[Path], processor: Any, pipeline: PixelPipeline,
                        workers: int, device: torch.device, batch_size: int) -> float:
    """Seconds to receive every fast-path batch of ``files`` from the stage's DataLoader."""
    started = time.perf_counter()
    received = sum(len(rows) for groups, _ in image_batches(
        files, batch_blocks(len(files), batch_size, None), "fast", processor, pipeline, workers,
        device) for rows, _, _ in groups)
    if received != len(files):
        raise RuntimeError(f"the loader gave {received} of {len(files)} pictures")
    return time.perf_counter() - started


def shard_check(device: torch.device, folder: Path, seed: int) -> dict[str, Any]:
    """Run the stage unsharded and as 2 shards on ``device`` with a tiny CLIP; compare."""
    from transformers import CLIPProcessor, CLIPTokenizer

    clip = folder / "tiny_clip"
    symbols = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    vocab = {token: index for index, token in enumerate(tokens)}
    CLIPProcessor(image_processor=CLIPImageProcessor(),
                  tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(clip)
    tower = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2}
    CLIPModel(CLIPConfig(
        text_config={**tower, "vocab_size": len(vocab), "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**tower, "image_size": 224, "patch_size": 32},
        projection_dim=32)).save_pretrained(clip)
    ids = list(range(1, 101))
    annotations = [{"id": i, "image_id": i, "caption": f"a photograph number {i}"} for i in ids]
    (folder / "captions.json").write_text(json.dumps({"annotations": annotations}))
    for generation in (0, 1):
        (folder / f"gen_{generation}").mkdir()
        write_pictures(folder / f"gen_{generation}", len(ids), 512, seed + 10 + generation)
    flags = ["--annotation-file", str(folder / "captions.json"), "--generation-dir-pattern",
             str(folder / "gen_{g}"), "--generations", "0,1", "--model", str(clip),
             "--num-captions", "100", "--batch-size", "16", "--workers", "4",
             "--device", str(device)]
    runs = [(folder / "whole", [])] + [(folder / "sharded", ["--shard", f"{i}/2"])
                                       for i in (0, 1)]
    for output, extra in runs:
        subprocess.run([sys.executable, str(ROOT / "extract_generation_embeddings.py"), *flags,
                        "--output-dir", str(output), *extra], check=True, cwd=ROOT)
    differing = []
    for name in ("coco_caption_embeddings.npz", "gen_0_embeddings.npz", "gen_1_embeddings.npz"):
        with np.load(folder / "whole" / name) as whole, np.load(folder / "sharded" / name) as part:
            differing += [f"{name}:{key}" for key in whole.files if key != "meta"
                          and not np.array_equal(whole[key], part[key])]
    return {"shards_identical_to_unsharded": not differing, "differing_arrays": differing}


def main(argv: list[str] | None = None) -> None:
    c = pick(GpuCheck, configure(globals(), argv))
    seed_everything(c.seed)
    device = pick_device(c.device)
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "n_images": c.n_images,
        "batch_size": c.batch_size}
    print(summary, flush=True)
    model = CLIPModel(CLIPConfig()).to(device).eval()
    processor = CLIPImageProcessor()
    pipeline = PixelPipeline.from_processor(processor)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        files = pictures(Path(folder), c.n_images, c.seed)
        print(f"{len(files)} pictures written in {time.perf_counter() - started:.1f} s",
              flush=True)
        preprocessed = torch.stack([processor(images=Image.open(p).convert("RGB"),
                                              return_tensors="pt")["pixel_values"][0]
                                    for p in files[:c.batch_size * 4]])
        batches = list(preprocessed.split(c.batch_size)) * max(
            1, c.n_images // (c.batch_size * 4))
        model_images = sum(len(b) for b in batches)
        model_only_seconds(model, batches[:2], device)  # warm-up
        end_to_end(model, files[:c.batch_size * 2], "fast", processor, pipeline, 2, device,
                   c.batch_size)
        before = model_only_seconds(model, batches, device)
        fast = {}
        for workers in c.worker_counts:
            seconds, _ = end_to_end(model, files, "fast", processor, pipeline, workers, device,
                                    c.batch_size)
            fast[workers] = len(files) / seconds
            print(f"fast path, {workers} workers: {fast[workers]:.0f} images/s", flush=True)
        loader = {w: len(files) / loader_only_seconds(files, processor, pipeline, w, device,
                                                      c.batch_size)
                  for w in c.worker_counts}
        print("fast path's DataLoader alone: " + ", ".join(
            f"{w} workers {r:.0f} images/s" for w, r in loader.items()), flush=True)
        seconds, _ = end_to_end(model, files, "processor", processor, None, c.processor_workers,
                                device, c.batch_size)
        processor_rate = len(files) / seconds
        after = model_only_seconds(model, batches, device)
        model_rate = 2 * model_images / (before + after)
        sample = files[:c.n_agreement]
        _, fast_embeddings = end_to_end(model, sample, "fast", processor, pipeline, 2, device,
                                        c.batch_size)
        _, exact_embeddings = end_to_end(model, sample, "processor", processor, None, 2, device,
                                         c.batch_size)
        cosines = np.sum(fast_embeddings * exact_embeddings, axis=1)
    summary.update(
        model_only_images_per_s=round(model_rate, 1),
        model_only_runs=[round(model_images / before, 1), round(model_images / after, 1)],
        fast_end_to_end_images_per_s={str(w): round(r, 1) for w, r in fast.items()},
        fast_over_model_only={str(w): round(r / model_rate, 3) for w, r in fast.items()},
        loader_only_images_per_s={str(w): round(r, 1) for w, r in loader.items()},
        processor_end_to_end_images_per_s=round(processor_rate, 1),
        processor_workers=c.processor_workers,
        processor_over_model_only=round(processor_rate / model_rate, 3),
        fast_vs_processor_cosine_min=float(cosines.min()),
        fast_vs_processor_cosine_mean=float(cosines.mean()), target_end_to_end_ratio=0.8)
    with tempfile.TemporaryDirectory() as folder:
        summary.update(shard_check(device, Path(folder), c.seed))
    text = json.dumps(summary, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check_extraction.json").write_text(text + "\n")


if __name__ == "__main__":
    run_stage(main, resumable=False)
