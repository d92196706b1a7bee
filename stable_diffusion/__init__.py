"""Stable Diffusion for the self-consuming loop: loading any ``StableDiffusionPipeline`` from a
folder or the local Hugging Face cache, drawing images with noise seeded per caption (so that a
batch or shard does not change an image), and fine-tuning its UNet, whole or through LoRA adapters
(``peft``), with the noise-prediction loss on VAE latents, under ``accelerate`` on one process or
many. May import ``runtime`` and ``dataio``."""
