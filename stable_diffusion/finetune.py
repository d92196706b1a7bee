"""Fine-tuning a Stable Diffusion pipeline's UNet on images and their captions, as diffusers'
text-to-image training examples do: the VAE and the text encoder frozen, the UNet trained (whole,
or through LoRA adapters on its attention projections, ``peft``) to predict the noise added to
the images' VAE latents (Ho et al. 2020; or the velocity, when the scheduler predicts it).

Every sample's noise and timestep are drawn by a generator seeded with (seed, epoch, sample), and
each epoch's order by one seeded with (seed, epoch): an epoch is the same whatever the number of
processes, so that ``accelerate launch`` on n processes with batch b trains as one process with
batch n * b does (DistributedDataParallel averages the gradients of equal shards). A checkpoint
after every epoch (trainable weights, optimiser, epoch) makes an interrupted run resume there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from dataio.artifacts import check_settings_match, load_checkpoint, restoring, save_checkpoint

METHODS = ("lora", "full")
# The attention projections diffusers' LoRA training example adapts.
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


@dataclass(frozen=True)
class FinetuneSettings:
    """How a UNet is fine-tuned."""

    method: str = "lora"  # lora (adapters on the attention projections) or full (the whole UNet)
    learning_rate: float = 1e-4  # AdamW learning rate
    epochs: int = 1  # passes over the training images
    batch_size: int = 1  # images per step and process
    lora_rank: int = 4  # rank of each LoRA adapter (alpha equal to it: scale 1)
    seed: int = 0  # the order, the noise and the timesteps
    caption_dropout: float = 0.0  # share of samples trained on the empty caption (guidance)


def trainable_parameters(unet: Any, settings: FinetuneSettings) -> list[torch.nn.Parameter]:
    """Make the UNet trainable as ``settings.method`` says and return what the optimiser steps:
    every weight (full), or the LoRA adapters', added now unless the UNet already has them (a
    later generation continues the adapters of the one before)."""
    if settings.method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {settings.method!r}")
    if settings.method == "full":
        unet.requires_grad_(True)
        return list(unet.parameters())
    from peft import LoraConfig

    unet.requires_grad_(False)
    if not getattr(unet, "peft_config", None):
        with torch.random.fork_rng(devices=[]):  # adapters drawn from the seed alone
            torch.manual_seed(settings.seed)
            unet.add_adapter(LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_rank,
                                        init_lora_weights="gaussian",
                                        target_modules=list(LORA_TARGETS)))
    adapters = [p for name, p in unet.named_parameters() if "lora_" in name]
    for parameter in adapters:
        parameter.requires_grad_(True)
    return adapters


def trainable_state(unet: Any, method: str) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights fine-tuning changes: the LoRA adapters' (peft's names) or the
    whole UNet's (copied: on the CPU ``.cpu()`` returns the live tensors training changes)."""
    if method == "lora":
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().to("cpu", copy=True)
                for k, v in get_peft_model_state_dict(unet).items()}
    return {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items()}


def load_trainable_state(unet: Any, method: str, state: dict[str, torch.Tensor]) -> None:
    """Put weights of ``trainable_state`` back into a UNet made trainable the same way."""
    if method == "lora":
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(unet, state)
        if getattr(result, "unexpected_keys", None):
            raise KeyError(f"LoRA weights the UNet has no place for: "
                           f"{', '.join(result.unexpected_keys[:3])}")
    else:
        unet.load_state_dict(state)


@torch.no_grad()
def encode_images(vae: Any, images: np.ndarray, batch_size: int = 16) -> torch.Tensor:
    """VAE latents (N, C, h, w) of uint8 RGB images (N, H, W, 3), scaled by the VAE's scaling
    factor: the mean of each latent distribution (no sampling noise, so they are computed
    once per training set)."""
    device, parts = next(vae.parameters()).device, []
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(images[start:start + batch_size]).to(device)
        pixels = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        parts.append(vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor)
    return torch.cat(parts).cpu()


@torch.no_grad()
def encode_captions(pipe: Any, captions: list[str], batch_size: int = 64) -> torch.Tensor:
    """The frozen text encoder's last hidden states (N, L, D) of the captions, padded and cut to
    the tokenizer's context length, as the pipeline conditions on them."""
    tokenizer, parts = pipe.tokenizer, []
    for start in range(0, len(captions), batch_size):
        tokens = tokenizer(list(captions[start:start + batch_size]), padding="max_length",
                           max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        parts.append(pipe.text_encoder(tokens.input_ids.to(pipe.device))[0])
    return torch.cat(parts).cpu()


class NoisedLatents(Dataset):
    """Sample i of an epoch: its latents, its caption's states (the empty caption's instead, with
    probability ``dropout``: what classifier-free guidance needs, Ho & Salimans 2022), and its
    noise and timestep, all drawn by a generator seeded with (seed, epoch, i)."""

    def __init__(self, latents: torch.Tensor, states: torch.Tensor, timesteps: int, seed: int,
                 epoch: int, dropout: float = 0.0, empty: torch.Tensor | None = None) -> None:
        self.latents, self.states, self.timesteps = latents, states, timesteps
        self.seed, self.epoch, self.dropout, self.empty = seed, epoch, dropout, empty

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        key = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(key)
        noise = torch.randn(self.latents[index].shape, generator=generator)
        timestep = torch.randint(0, self.timesteps, (), generator=generator)
        dropped = self.dropout and float(torch.rand((), generator=generator)) < self.dropout
        return self.latents[index], self.empty if dropped else self.states[index], noise, \
            timestep


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of an epoch, the same on every process."""
    key = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(key)).tolist()


def finetune(pipe: Any, latents: torch.Tensor, states: torch.Tensor,
             settings: FinetuneSettings, checkpoint: Path, accelerator: Any,
             resume: dict[str, Any],
             on_epoch: Callable[[int, float], None] | None = None,
             empty: torch.Tensor | None = None) -> None:
    """Train ``pipe.unet`` on (latents, caption states) for ``settings.epochs`` epochs, with a
    checkpoint after each (written by the main process), resuming from ``checkpoint`` when it
    exists and was made with these ``resume`` settings. Every process calls it; ``accelerator``
    (an ``accelerate.Accelerator``) spreads the batches and averages the gradients.
    ``on_epoch(epoch, mean loss)`` is called after each epoch on the main process, after its
    checkpoint. With ``settings.caption_dropout`` > 0, ``empty`` holds the empty caption's
    states (L, D)."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = noise_scheduler.config.prediction_type
    unet = pipe.unet
    parameters = trainable_parameters(unet, settings)
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate)
    record = {**resume, **asdict(settings)}
    start = 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint, required=("weights", "optimizer", "epoch",
                                                      "settings"))
        check_settings_match(checkpoint, state["settings"], record)
        with restoring(checkpoint):
            load_trainable_state(unet, settings.method, state["weights"])
            optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    unet.train()
    model, optimizer = accelerator.prepare(unet, optimizer)
    for epoch in range(start, settings.epochs):
        dataset = NoisedLatents(latents, states, noise_scheduler.config.num_train_timesteps,
                                settings.seed, epoch, settings.caption_dropout, empty)
        loader = accelerator.prepare(DataLoader(
            Subset(dataset, epoch_order(len(dataset), settings.seed, epoch)),
            batch_size=settings.batch_size, shuffle=False, drop_last=True))
        total, steps = torch.zeros((), device=accelerator.device), 0
        for clean, condition, noise, timestep in loader:
            noisy = noise_scheduler.add_noise(clean, noise, timestep)
            target = noise if prediction == "epsilon" else \
                noise_scheduler.get_velocity(clean, noise, timestep)
            predicted = model(noisy, timestep, condition).sample
            loss = F.mse_loss(predicted.float(), target.float())
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
            steps += 1
        if steps == 0:
            raise ValueError(f"{len(dataset)} images make no full batch of {settings.batch_size} "
                             f"on {accelerator.num_processes} process(es)")
        mean = float(accelerator.reduce(total, "mean")) / steps
        if not np.isfinite(mean):
            raise ValueError(f"fine-tuning loss {mean} in epoch {epoch + 1}")
        if accelerator.is_main_process:
            save_checkpoint(checkpoint, {
                "weights": trainable_state(accelerator.unwrap_model(model), settings.method),
                "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "settings": record,
                "loss": mean})
            if on_epoch is not None:
                on_epoch(epoch + 1, mean)
        accelerator.wait_for_everyone()
    unet.eval()


def save_weights(pipe: Any, method: str, folder: Path) -> None:
    """What fine-tuning changed, in a folder others load as diffusers does: the LoRA adapters
    as ``pytorch_lora_weights.safetensors`` (``StableDiffusionPipeline.load_lora_weights``), or
    the whole UNet in ``unet/`` (``UNet2DConditionModel.from_pretrained``)."""
    if method == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=convert_state_dict_to_diffusers(
                get_peft_model_state_dict(pipe.unet)), safe_serialization=True)
    else:
        pipe.unet.save_pretrained(folder / "unet")


def load_weights(pipe: Any, settings: FinetuneSettings, folder: Path) -> None:
    """Give the pipeline's UNet the weights ``save_weights`` wrote (LoRA adapters are added, and
    stay trainable for the next fine-tuning)."""
    if settings.method == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_unet_state_dict_to_peft

        state, _ = StableDiffusionPipeline.lora_state_dict(folder)
        unet_state = {k.removeprefix("unet."): v for k, v in state.items()
                      if k.startswith("unet.")}
        trainable_parameters(pipe.unet, settings)
        load_trainable_state(pipe.unet, "lora", convert_unet_state_dict_to_peft(unet_state))
    else:
        from diffusers import UNet2DConditionModel

        saved = UNet2DConditionModel.from_pretrained(folder / "unet")
        pipe.unet.load_state_dict(saved.state_dict())
    pipe.unet.eval()
