"""Train a miniature Stable Diffusion on a dataset's images and the captions of their classes; save
it as a StableDiffusionPipeline that loads like any Stable Diffusion.

Stable Diffusion's own architecture at small size (stable_diffusion/miniature.py): first an
AutoencoderKL is trained on the images (reconstruction plus a small KL term); its latents' scale
is measured and stored as the VAE's scaling factor; then a UNet2DConditionModel learns DDPM noise
prediction on those latents (stable_diffusion/finetune.py's loop, the whole UNet), conditioned on
the frozen text tower of the small CLIP that train_small_clip.py trains (its tokenizer with it),
each image captioned by a template of its class ("a photo of a Sneaker"), and the empty caption
instead for --caption-dropout of the samples, so that classifier-free guidance works. A share of
the training images (--held-out-fraction) is held out: after every UNet epoch the model draws
--validation-samples images of their classes (DDIM, --validation-steps, guidance
--guidance-scale), and their FID on the evaluator CNN's features against the held-out images
picks the epoch kept; a grid per epoch shows one row per class caption. Both phases write a
checkpoint after every epoch and resume from it.

Writes data/checkpoints/sd_<ds>/ (StableDiffusionPipeline.save_pretrained; the loop takes it as
--pipeline), data/results/sd_<ds>_training.json, data/visualizations/sd_<ds>_epoch<NNN>.png.

    python train_small_sd.py --dataset digits --limit 512 --vae-epochs 1 --unet-epochs 1
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clip_tools.captions import CAPTION_TEMPLATES, class_captions
from dataio.artifacts import (
    check_replaceable,
    check_settings_match,
    ensure_output_dir,
    fingerprint,
    give_umask_permissions,
    hold_output_lock,
    holds_output_locks,
    load_checkpoint,
    make_meta,
    replace_directory,
    restoring,
    save_checkpoint,
    staging_dir,
    tagged,
    write_text,
)
from dataio.data_sources import ImageDataset, load_dataset, resolve_dataset
from dataio.splits import held_out_count, held_out_split, split_record
from evaluation import metrics, scoring
from reporting.figures import image_grid_figure, save_and_close
from runtime.settings import SettingsError, check_input_tag, configure, pick
from runtime.stage import (
    StageError,
    limit_cpu_threads,
    pick_device,
    require_finite,
    run_stage,
    seed_everything,
)
from runtime.tracking import RunLog, open_run_log
from stable_diffusion.finetune import FinetuneSettings, encode_captions, encode_images, finetune
from stable_diffusion.miniature import (
    MiniatureConfig,
    assemble,
    build_unet,
    build_vae,
    check_config,
    from_pipeline_images,
    text_tower,
    to_pipeline_images,
    vae_loss,
)
from stable_diffusion.pipelines import draw

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset to train on [in dataio.data_sources.DATASETS, or folder:PATH]
DATA_DIR = "data"  # where the CLIP is read and every output is written
CLIP = ""  # the small CLIP whose text tower conditions the UNet ("": checkpoints/clip_<ds>)
IMAGE_SIZE = 32  # pixels per side of the pipeline's images (the data padded with black) [>= 8]
VAE_CHANNELS = (16, 32, 32)  # channels per VAE level: len - 1 halvings to latents [>= 8, repeats]
UNET_CHANNELS = (32, 64, 64)  # channels per UNet level [>= 8, repeats]
VAE_EPOCHS = 1  # passes of the autoencoder over the training images [>= 1]
VAE_LEARNING_RATE = 1e-3  # AdamW rate of the autoencoder [> 0]
VAE_KL_WEIGHT = 1e-6  # weight of the KL term per latent element (kept small, as SD's) [>= 0]
UNET_EPOCHS = 8  # passes of the UNet over the training images [>= 1]
LEARNING_RATE = 5e-4  # AdamW rate of the UNet [> 0]
BATCH_SIZE = 64  # images per step [>= 2]
CAPTION_DROPOUT = 0.1  # share of samples trained on the empty caption (for guidance) [>= 0, < 1]
GUIDANCE_SCALE = 7.0  # classifier-free guidance of the validation samples [>= 1]
VALIDATION_SAMPLES = 500  # images drawn per epoch whose FID picks the epoch (0: the last) [>= 0]
VALIDATION_STEPS = 20  # DDIM steps of the validation samples [>= 1]
HELD_OUT_FRACTION = 0.05  # share of training images held out for the FID [>= 0, < 1]
LIMIT = 0  # train on the first N training images only (0: all) [>= 0]
SEED = 0  # seeds weights, orders, noise, caption templates and the held-out split [seed]
TAG = ""  # a variant's name: outputs sd_<ds>@TAG beside the untagged run's ("": none) [tag]
INPUT_TAG = ""  # with CLIP "": condition on the text tower of clip_<ds>@INPUT_TAG [tag]
TENSORBOARD = True  # log losses, held-out FID and grids to <data-dir>/runs/sd/<run>/
WANDB = ""  # also mirror the log to this Weights & Biases project (needs wandb; "": off)
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
# ---------------------------------------------------------------- end of settings

GRID_COLUMNS = 8  # samples per class in each epoch's grid


@dataclass(frozen=True)
class SdTraining:
    """What this run trains on and how (the networks' sizes: MiniatureConfig)."""

    dataset: str
    data_dir: str
    clip: str
    vae_epochs: int
    vae_learning_rate: float
    vae_kl_weight: float
    unet_epochs: int
    learning_rate: float
    batch_size: int
    caption_dropout: float
    guidance_scale: float
    validation_samples: int
    validation_steps: int
    held_out_fraction: float
    limit: int
    seed: int
    tag: str
    input_tag: str


def pixels_of(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB (N, S, S, 3) -> float (N, 3, S, S) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(vae: Any, images: np.ndarray, run: SdTraining, device: torch.device,
              checkpoint: Path, settings: dict[str, Any], log: RunLog
              ) -> list[dict[str, float]]:
    """The autoencoder's epochs (resumed from ``checkpoint``); each epoch's mean losses (also
    in ``log``)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=run.vae_learning_rate)
    history: list[dict[str, float]] = []
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint, required=("vae", "optimizer", "history",
                                                      "settings"))
        check_settings_match(checkpoint, state["settings"], settings)
        with restoring(checkpoint):
            vae.load_state_dict(state["vae"])
            optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
    vae.train()
    for epoch in range(len(history), run.vae_epochs):
        generator = torch.Generator().manual_seed(run.seed * 7_919 + epoch)
        torch.manual_seed(run.seed * 7_919 + epoch)  # the posterior samples
        order = torch.randperm(len(images), generator=generator)
        sums = torch.zeros(2)
        steps = 0
        for batch in tqdm(order.split(run.batch_size), desc=f"VAE epoch {epoch + 1}",
                          leave=False, disable=None):
            loss, reconstruction, kl = vae_loss(vae, pixels_of(images[batch]).to(device),
                                                run.vae_kl_weight)
            require_finite(loss, f"VAE loss in epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([reconstruction.detach().cpu(), kl.detach().cpu()])
            steps += 1
        history.append({"epoch": epoch + 1, "reconstruction_mse": float(sums[0] / steps),
                        "kl": float(sums[1] / steps)})
        save_checkpoint(checkpoint, {"vae": vae.state_dict(), "optimizer": optimizer.state_dict(),
                                     "history": history, "settings": settings})
        log.scalars({k: v for k, v in history[-1].items() if k != "epoch"}, epoch + 1,
                    "vae_epochs/")
        print(f"VAE epoch {epoch + 1}/{run.vae_epochs}: reconstruction MSE "
              f"{history[-1]['reconstruction_mse']:.5f}, KL {history[-1]['kl']:.3f}", flush=True)
    return history


def captions_of(labels: np.ndarray, data: ImageDataset, seed: int) -> list[str]:
    """Each image's caption: a template of its class, chosen per image by the seed."""
    table = class_captions(data.name, data.class_names)
    choice = np.random.default_rng([seed, 11]).integers(0, len(CAPTION_TEMPLATES), len(labels))
    return [table[int(c)][int(t)] for c, t in zip(labels, choice, strict=True)]


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    # IMAGE_SIZE is the pipeline's canvas: a folder is read at its images' own size and padded.
    values = resolve_dataset(configure(globals(), argv), resize_setting=None)
    run = pick(SdTraining, values)
    check_input_tag(run.tag, run.input_tag)
    if run.clip and run.input_tag:
        raise SettingsError(f"--clip {run.clip} and --input-tag {run.input_tag} both name the "
                            f"CLIP: give one")
    config = MiniatureConfig(image_size=values["image_size"],
                             vae_channels=tuple(values["vae_channels"]),
                             unet_channels=tuple(values["unet_channels"]))
    if run.guidance_scale > 1 and run.caption_dropout == 0:
        raise SettingsError(f"--guidance-scale {run.guidance_scale:g} needs an unconditional "
                            f"model: train with --caption-dropout above 0 (0.1), or guide with 1")
    limit_cpu_threads(values["threads"])
    seed_everything(run.seed)
    device = pick_device(values["device"])
    data = load_dataset(run.dataset, run.data_dir)
    try:
        check_config(config, data.x_train.shape[1:])
    except ValueError as err:
        raise SettingsError(str(err)) from err
    root = Path(run.data_dir)
    clip_dir = Path(run.clip) if run.clip else (
        root / "checkpoints" / f"clip_{tagged(run.dataset, run.input_tag)}")
    text_encoder, tokenizer = text_tower(clip_dir)
    n_train = min(run.limit, len(data.x_train)) if run.limit else len(data.x_train)
    kept, held_out = held_out_split(n_train, held_out_count(n_train, run.held_out_fraction),
                                    run.seed)
    if len(kept) < run.batch_size:
        raise StageError(f"--limit {run.limit} and --held-out-fraction {run.held_out_fraction} "
                         f"leave {len(kept)} training images, not one batch of --batch-size "
                         f"{run.batch_size}")
    stem = tagged(run.dataset, run.tag)
    output = root / "checkpoints" / f"sd_{stem}"
    check_replaceable(output)
    hold_output_lock(root / f".lock-train_small_sd-{stem}", f"train_small_sd.py, {stem}")
    folders = {name: ensure_output_dir(root / name) for name in
               ("checkpoints/sd", "results", "visualizations")}
    images = to_pipeline_images(data.x_train[:n_train], config.image_size)
    data_hash = fingerprint(images[kept], held_out)
    print(f"{data.name}: {len(kept)} training images ({len(held_out)} held out), "
          f"{config.image_size} px RGB; text tower of {clip_dir}; device {device}", flush=True)

    # The autoencoder, then the latents' scale: Stable Diffusion scales its latents to about
    # unit variance before the UNet sees them.
    seed_everything(run.seed)
    vae = build_vae(config).to(device)
    vae_settings = {"dataset": run.dataset, "data": data_hash, "config": asdict(config),
                    "vae_learning_rate": run.vae_learning_rate, "vae_kl_weight": run.vae_kl_weight,
                    "batch_size": run.batch_size, "seed": run.seed}
    log = open_run_log(values, "sd", stem)
    history = train_vae(vae, images[kept], run, device,
                        folders["checkpoints/sd"] / f"{stem}_vae.pt", vae_settings, log)
    vae.eval()
    unscaled = encode_images(vae, images[kept])
    scale = 1.0 / float(unscaled.std())
    vae.register_to_config(scaling_factor=scale)
    test_images = to_pipeline_images(data.x_test, config.image_size)
    with torch.no_grad():
        decoded = torch.cat([vae.decode(vae.encode(pixels_of(chunk).to(device)).latent_dist
                                        .mode()).sample.cpu()
                             for chunk in np.array_split(test_images, max(1, len(test_images)
                                                                        // 256))])
    test_mse = float(((decoded.clamp(-1, 1) - pixels_of(test_images)) ** 2).mean())
    print(f"VAE: test reconstruction MSE {test_mse:.5f} (pixels in [-1, 1]); latents "
          f"{config.latent_channels}x{config.latent_size}x{config.latent_size}, std "
          f"{float(unscaled.std()):.4f}: scaling factor {scale:.4f}", flush=True)

    # The UNet on the scaled latents, conditioned on the frozen text tower.
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    seed_everything(run.seed)
    unet = build_unet(config, text_encoder.config.hidden_size).to(device)
    schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                             beta_start=0.00085, beta_end=0.012, clip_sample=False,
                             steps_offset=1).config  # Stable Diffusion's noise schedule
    pipe = assemble(vae, unet, text_encoder.to(device), tokenizer, schedule)
    labels = data.y_train[:n_train]
    latents = unscaled * scale
    states = encode_captions(pipe, captions_of(labels[kept], data, run.seed))
    empty = encode_captions(pipe, [""])[0]
    scoring_settings = scoring.ScoringSettings(seed=run.seed, bootstrap=0)
    real = scoring.real_images_for(data, device, scoring.EvaluatorSettings(data_dir=run.data_dir),
                                   scoring_settings)
    count = min(run.validation_samples, len(held_out))
    reference, _ = scoring.image_outputs(real, data.x_train[held_out[:count]], device,
                                         scoring_settings) if count > 1 else (None, None)
    grid_labels = np.repeat(np.arange(data.num_classes), GRID_COLUMNS)
    grid_captions = [class_captions(data.name, data.class_names)[c][0] for c in grid_labels]
    best_path = folders["checkpoints/sd"] / f"{stem}_best.pt"
    unet_settings = {"vae": fingerprint(*(v.detach().cpu().numpy() for v in
                                          vae.state_dict().values())),
                     "validation_samples": count, "validation_steps": run.validation_steps,
                     "guidance_scale": run.guidance_scale, **vae_settings}
    best = load_checkpoint(best_path) if best_path.is_file() else {"epoch": 0, "fid": None,
                                                                   "history": []}
    if best_path.is_file():
        check_settings_match(best_path, best.get("settings", {}), unet_settings)

    def validate(epoch: int, loss: float) -> None:
        """The held-out FID of this epoch's samples, the best epoch's weights kept, a grid."""
        pipe.unet.eval()
        record: dict[str, Any] = {"epoch": epoch, "loss": loss, "fid": None}
        if reference is not None:
            ids = np.arange(count)  # noise per sample index, the same every epoch
            drawn = draw(pipe, captions_of(data.y_train[held_out[:count]], data, run.seed + 1),
                         ids, run.seed, config.image_size, run.validation_steps,
                         run.guidance_scale, 100)
            features, _ = scoring.image_outputs(
                real, from_pipeline_images(drawn, data.x_train.shape[1:]), device,
                scoring_settings)
            record["fid"] = metrics.frechet_distance(features, reference)
        best["history"] = [r for r in best["history"] if r["epoch"] != epoch] + [record]
        if best["fid"] is None or record["fid"] is None or record["fid"] < best["fid"]:
            best.update(epoch=epoch, fid=record["fid"],
                        # a copy: on the CPU .cpu() would alias the weights training goes on to
                        # change, and the "best" epoch would be the last one
                        weights={k: v.detach().to("cpu", copy=True)
                                 for k, v in pipe.unet.state_dict().items()})
        save_checkpoint(best_path, {**best, "settings": unet_settings})
        grid = from_pipeline_images(draw(pipe, grid_captions, np.arange(len(grid_captions)),
                                         run.seed, config.image_size, run.validation_steps,
                                         run.guidance_scale, 100), data.x_train.shape[1:])
        png = folders["visualizations"] / f"sd_{stem}_epoch{epoch:03d}.png"
        save_and_close(image_grid_figure(
            [grid[grid_labels == c] for c in range(data.num_classes)],
            [data.class_names[c] for c in range(data.num_classes)],
            f"miniature SD on {run.dataset}, epoch {epoch}: a row per class caption (guidance "
            f"{run.guidance_scale:g}, {run.validation_steps} DDIM steps)"), png)
        log.scalars({"loss": loss, "held_out_fid": record["fid"]}, epoch, "unet_epochs/")
        log.image_file("samples", png, epoch)
        shown = "" if record["fid"] is None else f", held-out FID {record['fid']:.2f}"
        print(f"UNet epoch {epoch}/{run.unet_epochs}: loss {loss:.4f}{shown}; {png}", flush=True)
        pipe.unet.train()

    started = time.time()
    finetune(pipe, latents, states,
             FinetuneSettings(method="full", learning_rate=run.learning_rate,
                              epochs=run.unet_epochs, batch_size=run.batch_size, seed=run.seed,
                              caption_dropout=run.caption_dropout),
             folders["checkpoints/sd"] / f"{stem}_unet.pt",
             Accelerator(cpu=device.type == "cpu"), unet_settings, validate, empty)
    log.close()
    with restoring(best_path):
        pipe.unet.load_state_dict(best["weights"])
    staging = staging_dir(output)
    pipe.save_pretrained(staging)
    meta = make_meta(__file__, values, run.dataset, run.seed, config=asdict(config),
                     clip=str(clip_dir), vae_history=history, vae_test_mse=test_mse,
                     scaling_factor=scale, best_epoch=best["epoch"], held_out_fid=best["fid"],
                     unet_history=best["history"], split=split_record(n_train, held_out),
                     class_captions=class_captions(data.name, data.class_names),
                     unet_seconds=time.time() - started)
    write_text(staging / "training_meta.json", json.dumps(meta, indent=2, default=str) + "\n")
    give_umask_permissions(staging)  # safetensors writes 0600; outputs follow the umask
    replace_directory(staging, output)
    results = write_text(folders["results"] / f"sd_{stem}_training.json",
                         json.dumps(meta, indent=2, default=str) + "\n")
    print(f"wrote {output} (epoch {best['epoch']} of {run.unet_epochs}, held-out FID "
          f"{best['fid']}) and {results}; draw with it: python self_consuming_loop.py "
          f"--generator diffusion --pipeline {output}")


if __name__ == "__main__":
    run_stage(main)
