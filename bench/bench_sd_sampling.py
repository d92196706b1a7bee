"""Does the diffusion loop draw as fast as the pipeline itself? Images per second of the loop's
generation step (stable_diffusion.pipelines.draw: the pipeline's own __call__ with latents seeded
per caption) against StableDiffusionPipeline.__call__ with one seeded generator, on the same
model, prompts, sampler steps, guidance and batch size, timed alternately REPEATS times in this
process (the median of each). Target: at least 0.95 times the pipeline's rate.

PIPELINE names any StableDiffusionPipeline folder (or cached name); empty, the bench builds one
with random weights of a small Stable-Diffusion-shaped UNet (two attention levels), since the
cost per step is the architecture's, not the weights'.

    python bench/bench_sd_sampling.py --steps 20 --repeats 3
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import load_text  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import limit_cpu_threads, pick_device, run_stage  # noqa: E402
from stable_diffusion.pipelines import (  # noqa: E402
    default_image_size,
    draw,
    load_pipeline,
    use_sampler,
)

# ---------------------------------------------------------------- settings
PIPELINE = ""  # a StableDiffusionPipeline folder or cached name ('': a random small one)
PROMPTS = 16  # prompts drawn per timing [>= 1]
STEPS = 50  # sampler steps [>= 1]
GUIDANCE_SCALE = 7.0  # classifier-free guidance [>= 1]
BATCH_SIZE = 8  # prompts per pipeline call [>= 1]
SAMPLER = "ddim"  # sampler [in stable_diffusion.pipelines.SAMPLERS]
REPEATS = 3  # alternating timings of each [>= 1]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
THREADS = 1  # CPU threads of torch (0: library default) [>= 0]
TARGET = 0.95  # the loop's rate at least this times the pipeline's [> 0]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class SamplingBench:
    """This benchmark's settings, as main passes them down."""

    pipeline: str
    prompts: int
    steps: int
    guidance_scale: float
    batch_size: int
    sampler: str
    repeats: int
    target: float


def random_pipeline(folder: Path) -> Path:
    """A Stable-Diffusion-shaped pipeline with random weights: UNet (32, 64, 64) channels with
    cross-attention at two levels, a 4-channel VAE, a 4-layer CLIP text encoder of width 64."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    symbols = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(block_out_channels=(32, 64, 64), in_channels=3, out_channels=3,
                          down_block_types=("DownEncoderBlock2D",) * 3,
                          up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4,
                          norm_num_groups=16),
        text_encoder=CLIPTextModel(CLIPTextConfig(
            hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=4,
            vocab_size=len(tokens), max_position_embeddings=77, bos_token_id=0,
            eos_token_id=1, pad_token_id=1)),
        tokenizer=CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[],
                                model_max_length=77),
        unet=UNet2DConditionModel(
            block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=16,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    b = pick(SamplingBench, values)
    limit_cpu_threads(values["threads"])
    device = pick_device(values["device"])
    with tempfile.TemporaryDirectory() as scratch:
        source = b.pipeline or str(random_pipeline(Path(scratch) / "pipeline"))
        pipe = load_pipeline(source, device)
        use_sampler(pipe, b.sampler)
        size = default_image_size(pipe)
        captions = [f"a photo of object number {i}" for i in range(b.prompts)]
        ids = np.arange(b.prompts)

        def pipeline_call() -> None:
            generator = torch.Generator(device="cpu").manual_seed(0)
            for start in range(0, b.prompts, b.batch_size):
                pipe(prompt=captions[start:start + b.batch_size], height=size, width=size,
                     num_inference_steps=b.steps, guidance_scale=b.guidance_scale,
                     generator=generator, output_type="np")

        def loop_draw() -> None:
            draw(pipe, captions, ids, 0, size, b.steps, b.guidance_scale, b.batch_size)

        pipeline_call()  # warm-up: first calls build kernels and caches
        rates: dict[str, list[float]] = {"pipeline": [], "loop": []}
        for _ in range(b.repeats):
            for name, call in (("pipeline", pipeline_call), ("loop", loop_draw)):
                started = time.perf_counter()
                call()
                rates[name].append(b.prompts / (time.perf_counter() - started))
    pipeline, drawn = statistics.median(rates["pipeline"]), statistics.median(rates["loop"])
    ratio = drawn / pipeline
    model = b.pipeline or "a random small pipeline"
    print(f"{model} on {device}: {b.prompts} prompts of {size} px, "
          f"{b.sampler} {b.steps} steps, guidance {b.guidance_scale:g}, batch {b.batch_size}; "
          f"median of {b.repeats}: pipeline {pipeline:.2f} images/s, loop {drawn:.2f} images/s "
          f"-> {ratio:.3f}x (target >= {b.target}: {'met' if ratio >= b.target else 'NOT met'})"
          f"; {load_text()}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
