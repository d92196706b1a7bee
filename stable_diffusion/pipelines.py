"""A Stable Diffusion pipeline loaded without downloads, its sampler, and images drawn with noise
seeded per caption: image ``i`` of caption id ``c`` starts from latents drawn by a generator
seeded with (seed, c), whatever the batch it is drawn in, the shard that draws it or the device."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.stage import StageError

SAMPLERS = ("ddim", "dpm-solver")


def load_pipeline(source: str, device: torch.device) -> Any:
    """A ``StableDiffusionPipeline`` from a folder written by ``save_pretrained`` or a model name
    already in the local Hugging Face cache (nothing is downloaded), float32, without a safety
    checker (it would blacken images; the loop studies the model's own output), in eval mode."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    folder = Path(source).expanduser()
    looks_like_path = source.startswith((".", "/", "~")) or folder.exists()
    if looks_like_path:
        index = folder / "model_index.json"
        if not folder.is_dir():
            raise StageError(f"--pipeline {source}: no such folder")
        if not index.is_file():
            raise StageError(f"{index}: not found: a folder written by "
                             f"StableDiffusionPipeline.save_pretrained holds one")
        try:
            document = json.loads(index.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise StageError(f"{index}: not valid JSON ({err})") from err
        if not isinstance(document, dict) or document.get("_class_name") not in (
                "StableDiffusionPipeline", None):
            raise StageError(f"{index}: describes a {document.get('_class_name')!r}, not a "
                             f"StableDiffusionPipeline" if isinstance(document, dict) else
                             f"{index}: not the JSON object save_pretrained writes")
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    for library in (diffusers_logging, transformers_logging):  # no bars for loading files
        library.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, safety_checker=None, requires_safety_checker=False, local_files_only=True,
            dtype=torch.float32)
    except (OSError, ValueError) as err:
        where = "the folder holds no loadable pipeline" if looks_like_path else (
            "not a folder, and not in the local Hugging Face cache (offline? download it once "
            "on a connected machine, or pass a folder)")
        raise StageError(f"--pipeline {source}: {where} ({str(err).splitlines()[0]})") from err
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def use_sampler(pipe: Any, name: str) -> None:
    """Give the pipeline the sampler ``name``: DDIM (Song et al. 2021), or DPM-Solver++
    (multistep, Lu et al. 2022), each built from the pipeline's own noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    kind = DDIMScheduler if name == "ddim" else DPMSolverMultistepScheduler
    pipe.scheduler = kind.from_config(pipe.scheduler.config)


def default_image_size(pipe: Any) -> int:
    """The image size the pipeline's UNet was built for (its latent size times the VAE's
    downsampling)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def check_image_size(pipe: Any, size: int) -> None:
    """Refuse a size the VAE cannot downsample to whole latents, or the UNet to whole blocks (the
    pipeline itself asks for a multiple of 8)."""
    factor = math.lcm(8, int(pipe.vae_scale_factor)
                      * 2 ** (len(pipe.unet.config.block_out_channels) - 1))
    if size <= 0 or size % factor:
        raise StageError(f"--image-size {size}: must be a positive multiple of {factor} for this "
                         f"pipeline (its VAE and UNet halve the image that many times)")


def caption_latents(pipe: Any, caption_ids: np.ndarray, seed: int, size: int) -> torch.Tensor:
    """The starting noise of each caption's image: latents (N, C, h, w) drawn on the CPU by a
    generator seeded with (seed, caption id), so that every image depends on its caption and the
    seed alone."""
    shape = (int(pipe.unet.config.in_channels), size // int(pipe.vae_scale_factor),
             size // int(pipe.vae_scale_factor))
    parts = []
    for caption_id in caption_ids:
        key = int(np.random.SeedSequence([seed, int(caption_id)]).generate_state(1)[0])
        parts.append(torch.randn(shape, generator=torch.Generator().manual_seed(key)))
    return torch.stack(parts)


@torch.no_grad()
def draw(pipe: Any, captions: list[str], caption_ids: np.ndarray, seed: int, size: int,
         steps: int, guidance_scale: float, batch_size: int) -> np.ndarray:
    """uint8 images (N, size, size, 3), one per caption, by the pipeline's own ``__call__`` with
    classifier-free guidance and the latents of ``caption_latents``."""
    device = pipe.device
    images = []
    for start in range(0, len(captions), batch_size):
        stop = start + batch_size
        latents = caption_latents(pipe, caption_ids[start:stop], seed, size).to(device)
        out = pipe(prompt=list(captions[start:stop]), height=size, width=size,
                   num_inference_steps=steps, guidance_scale=guidance_scale, latents=latents,
                   output_type="np")
        images.append((np.clip(out.images, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    return np.concatenate(images) if images else np.zeros((0, size, size, 3), np.uint8)
