"""A miniature of Stable Diffusion's architecture for small image sets: an ``AutoencoderKL`` that
halves the image ``len(vae_channels) - 1`` times into 4-channel latents, a
``UNet2DConditionModel`` with cross-attention on those latents, and as text encoder the text tower
of a CLIP (the small CLIP of train_small_clip.py), frozen as Stable Diffusion's is. Assembled as a
``StableDiffusionPipeline``, it loads and samples like any Stable Diffusion.

Grey 28x28 images enter as RGB (the grey value in every channel) padded with black to the
pipeline's size, and leave as the mean of the channels, cropped back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.stage import StageError


@dataclass(frozen=True)
class MiniatureConfig:
    """The sizes of the miniature's networks."""

    image_size: int = 32  # pixels per side of the pipeline's images
    vae_channels: tuple[int, ...] = (16, 32, 32)  # channels per VAE level (one halving between)
    latent_channels: int = 4  # channels of the latents (Stable Diffusion's 4)
    unet_channels: tuple[int, ...] = (32, 64, 64)  # channels per UNet level
    attention_head_dim: int = 8  # width of each attention head of the UNet
    norm_groups: int = 16  # groups of every group norm (divides every channel count)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def check_config(config: MiniatureConfig, image_shape: tuple[int, ...]) -> None:
    """Refuse sizes the networks cannot take: an image smaller than the data, a size the VAE
    and the UNet cannot halve to whole latents and blocks (the pipeline asks for a multiple of
    8 too), channel counts the group norm cannot split."""
    halvings = len(config.vae_channels) - 1 + len(config.unet_channels) - 1
    factor = int(np.lcm(8, 2 ** halvings))
    image_shape = image_shape[:2]  # (H, W) of a stored (H, W) or (H, W, 3) image
    if config.image_size < max(image_shape):
        raise ValueError(f"--image-size {config.image_size}: smaller than the "
                         f"{image_shape[0]}x{image_shape[1]} images")
    if config.image_size % factor:
        raise ValueError(f"--image-size {config.image_size}: the VAE and UNet halve it "
                         f"{halvings} times and the pipeline needs a multiple of 8: use a "
                         f"multiple of {factor}")
    uneven = [c for c in (*config.vae_channels, *config.unet_channels)
              if c % config.norm_groups or c % config.attention_head_dim]
    if uneven:
        raise ValueError(f"channels {uneven} are not multiples of the {config.norm_groups} norm "
                         f"groups and the attention heads' width {config.attention_head_dim}")


def build_vae(config: MiniatureConfig) -> Any:
    from diffusers import AutoencoderKL

    levels = len(config.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=config.latent_channels,
                         block_out_channels=config.vae_channels, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels,
                         norm_num_groups=config.norm_groups, sample_size=config.image_size)


def build_unet(config: MiniatureConfig, cross_attention_dim: int) -> Any:
    """Cross-attention at every level but the first (Stable Diffusion's layout at small size)."""
    from diffusers import UNet2DConditionModel

    levels = len(config.unet_channels)
    return UNet2DConditionModel(
        sample_size=config.latent_size, in_channels=config.latent_channels,
        out_channels=config.latent_channels, block_out_channels=config.unet_channels,
        layers_per_block=1, cross_attention_dim=cross_attention_dim,
        attention_head_dim=config.attention_head_dim, norm_num_groups=config.norm_groups,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",))


def text_tower(clip_dir: Path) -> tuple[Any, Any]:
    """The text encoder (a ``CLIPTextModel`` holding the CLIP's text tower, frozen) and the
    tokenizer of a CLIP saved with ``save_pretrained``."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    if not (clip_dir / "config.json").is_file():
        raise StageError(f"{clip_dir}: no CLIP here (no config.json); make it with: python "
                         f"train_small_clip.py, or give --clip")
    try:
        clip = CLIPModel.from_pretrained(clip_dir)
        tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    except (OSError, ValueError) as err:
        raise StageError(f"{clip_dir}: not a loadable CLIP ({str(err).splitlines()[0]})") from err
    # The pipeline pads every prompt to the tokenizer's length: the text tower's context.
    tokenizer.model_max_length = int(clip.config.text_config.max_position_embeddings)
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    encoder.requires_grad_(False)
    return encoder.eval(), tokenizer


def assemble(vae: Any, unet: Any, text_encoder: Any, tokenizer: Any, noise_schedule: Any) -> Any:
    """A ``StableDiffusionPipeline`` of the parts, with a DDIM sampler of the training noise
    schedule, no safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=DDIMScheduler.from_config(noise_schedule),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_pipeline_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images as stored, (N, H, W) grey or (N, H, W, 3) colour -> RGB (N, size, size, 3),
    centred on black (a grey image is its channel three times)."""
    n, height, width = images.shape[:3]
    top, left = (size - height) // 2, (size - width) // 2
    out = np.zeros((n, size, size, 3), np.uint8)
    out[:, top:top + height, left:left + width] = images[..., None] if images.ndim == 3 else images
    return out


def from_pipeline_images(rgb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """RGB (N, size, size, 3) -> the data's stored layout ``shape`` (one image's: (H, W) grey or
    (H, W, 3) colour): the centre crop, channels averaged for grey."""
    size, (height, width) = rgb.shape[1], shape[:2]
    top, left = (size - height) // 2, (size - width) // 2
    crop = rgb[:, top:top + height, left:left + width]
    if len(shape) == 3:
        return np.ascontiguousarray(crop)
    return crop.astype(np.float64).mean(axis=3).round().clip(0, 255).astype(np.uint8)


def vae_loss(vae: Any, pixels: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, ...]:
    """(loss, reconstruction, KL) of a batch in [-1, 1]: the mean squared error of the decoded
    sample of the posterior, plus ``kl_weight`` times the KL divergence of the posterior from a
    standard normal per latent element (Kingma & Welling 2014; Stable Diffusion's VAE keeps the
    weight small, so that latents stay close to an autoencoder's)."""
    posterior = vae.encode(pixels).latent_dist
    reconstruction = torch.nn.functional.mse_loss(vae.decode(posterior.sample()).sample, pixels)
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return reconstruction + kl_weight * kl, reconstruction, kl
