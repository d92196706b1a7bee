"""A self-consuming loop of class-conditioned GANs, each trained on what the loop fed it.

Generation 0 is a caption-(class-)conditioned GAN (Plan 1's cGAN generator and projection
discriminator, trained by the shared loop in training/gans.py, the condition a one-hot class)
trained on the first --train-images real training images until its held-out FID (on the last
--held-out-fraction of the training images, never trained on) has not improved for --patience
epochs: a converged start, shared by every loop of the same seed and settings
(data/checkpoints/loop/start/). Each later generation k adds --train-images images to the loop's
pool: images generation k-1 generated with the class histogram of generation 0's set (the noise
truncated to [-psi, psi] with --truncation psi) and, with --fresh-fraction, fresh real training
images drawn anew. Then it trains (training/loop_regimes.py) on the newest addition (--regime
replace, the fully synthetic loop of Shumailov et al. 2024 and Alemohammad et al. 2024), on the
whole pool (accumulate, Gerstgrasser et al. 2024) or on --train-images drawn from it
(accumulate-subsample), for the same budget as generation 0 (--epochs 0; an epoch is --train-images
images whatever the pool's size), starting from generation k-1's weights (--warm-start) or from
scratch.

The prompts: the first N_IMAGES test images, each with a caption of its class ("a photo of a
Sneaker", a template of clip_tools/captions.py chosen per image by the seed). After each
generation its EMA generator draws one image per prompt (the same noise every generation) and writes
DATA_DIR/<run>/gen_<k>/test_<id>.png, the id being the test image's index; DATA_DIR/<run>/
captions.json holds the captions of those ids in COCO's format, so that
extract_generation_embeddings.py reads them with
--annotation-file DATA_DIR/<run>/captions.json --generation-dir-pattern 'DATA_DIR/<run>/gen_{g}';
DATA_DIR/<ds>_loop_reference/ holds the real prompt images under the same names (the reference
of plot_generation_clusters.py --reference-dir). <run> is <ds>_loop, then _accumulate or
_accsub for those regimes, _fresh<percent>, _trunc<psi>, _scratch without warm start and
_seed<k> for a seed other than 0.

Per generation it measures, against the real test images, the metrics of evaluation/scoring.py (FID,
KID, precision, recall, density, coverage, Vendi, class consistency, intra-class FID and the
classifier accuracy score, each with its 95% interval and its real-vs-real floor) and the
within-class variance of the features relative to that of the real prompt images; writes them with
each generation's training sources (images by origin) to DATA_DIR/results/<run>_metrics.json,
DATA_DIR/<run>/gen_<k>.npz (the images in Plan 1's sample format), a grid of samples per generation
and a figure of the metrics of this run's loops (mean ± sd over its seeds); compare_loops.py puts
every loop of the dataset side by side. Each generation's checkpoint and addition are kept in
DATA_DIR/checkpoints/loop/<run>/; an interrupted loop resumes in the generation it was in, and
finished generations are kept (a larger --generations continues).

    python self_consuming_loop.py --dataset digits --generations 2 --n-images 50 --train-images 500
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clip_tools.captions import CAPTION_TEMPLATES, class_phrase
from clip_tools.clip_embedding import ids_by_file, list_images
from dataio.artifacts import (
    check_replaceable,
    check_settings_match,
    ensure_output_dir,
    fingerprint,
    hold_output_lock,
    holds_output_locks,
    load_checkpoint,
    load_npz,
    make_meta,
    replace_directory,
    restoring,
    save_npz,
    short_cause,
    staging_dir,
    tagged,
    weights_fingerprint,
    write_text,
)
from dataio.coco import parse_shard, read_first_captions
from dataio.data_sources import ImageDataset, load_dataset, resolve_dataset
from dataio.splits import held_out_count
from evaluation import metrics, scoring
from evaluation.scoring import cell
from models import image_gans
from models.image_gans import ConditionalGAN, ImageGANConfig, class_condition, to_signed
from reporting.figures import image_grid_figure, save_and_close
from reporting.loop_comparison import config_of, metrics_figure
from runtime.provenance import code_version
from runtime.settings import SettingsError, configure, pick
from runtime.stage import StageError, limit_cpu_threads, pick_device, run_stage, seed_everything
from runtime.tracking import RunLog, open_run_log
from stable_diffusion.finetune import (
    FinetuneSettings,
    encode_captions,
    encode_images,
    finetune,
    load_weights,
    save_weights,
)
from stable_diffusion.images import (
    coco_name,
    drawn_shards,
    generation_drawn,
    load_real_images,
    only_coco_images,
    read_generation,
    remove_shards,
    write_generation,
    write_shard,
)
from stable_diffusion.miniature import from_pipeline_images, to_pipeline_images
from stable_diffusion.pipelines import (
    check_image_size,
    default_image_size,
    draw,
    load_pipeline,
    use_sampler,
)
from training import loop_regimes
from training.data_feed import TrainingTensors
from training.gans import (
    LOSS_KINDS,
    GANTrainer,
    TrainerSettings,
    batch_order,
    generator_step_shortfall,
)
from training.loop_regimes import REGIME_TAGS, ImageSet, Regime

# Tables the stage and its settings' rules use (not settings).
LOSS_NAMES = LOSS_KINDS
METRIC_KEYS = ("fid", "fid_floor", "kid", "kid_std", "kid_floor", "precision", "precision_floor",
               "recall", "recall_floor", "density", "density_floor", "coverage",
               "coverage_floor", "vendi", "vendi_real", "class_consistency",
               "class_consistency_real", "intra_fid", "intra_fid_floor", "cas", "cas_real",
               "score", "score_real", "within_class_variance", "within_class_variance_real",
               "within_class_spread", "feature_space")
ADDITION_KEYS = {"x": ((3, 4), "u"), "y": (1, "iu"), "origin": (1, "i")}

# ---------------------------------------------------------------- settings
GENERATOR = "gan"  # gan: a class-conditional GAN; diffusion: Stable Diffusion [gan | diffusion]
DATASET = "fashion-mnist"  # real images [in dataio.data_sources.DATASETS, or folder:PATH]
DATA_DIR = "data"  # where images, checkpoints, results and figures are written
GENERATIONS = 10  # generations after the first: gen_0 ... gen_<N> are trained and written [>= 1]
REGIME = "replace"  # what generation k trains on [in training.loop_regimes.REGIMES]
FRESH_FRACTION = 0.0  # share of each later addition that is fresh real images [>= 0, <= 1]
WARM_START = True  # generation k starts from generation k-1's weights; --no-warm-start: scratch
TRUNCATION = 0.0  # noise of the images fed back drawn in [-psi, psi] (0: untruncated) [>= 0]
TRAIN_IMAGES = 10000  # images of generation 0's set and of every addition (an epoch) [>= 2]
HELD_OUT_FRACTION = 0.05  # share of training images (the last) held out for gen 0 [>= 0, < 1]
N_IMAGES = 1000  # images written per generation, one per test image (the first N) [>= 1]
EPOCHS_FIRST = 40  # most epochs of generation 0 (it stops earlier once converged) [>= 1]
PATIENCE = 3  # generation 0 stops after this many epochs without a better held-out FID [>= 1]
EPOCHS = 0  # epochs of every later generation (0: as many as generation 0 needed) [>= 0]
BATCH_SIZE = 64  # images per step [>= 2]
SEEDS = (0,)  # seeds of the loops, one loop each: weights, batches, noise, captions, draws [seed]
TAG = ""  # a variant's name: the loop <name>@TAG[_seed<k>] beside the untagged one [tag]
MAX_DEVICE_IMAGES = 100_000  # a larger training set stays on the CPU, read by a DataLoader [>= 1]
LOADER_WORKERS = 2  # DataLoader workers of a training set read batch by batch [>= 0]
TENSORBOARD = True  # log each generation's training and metrics to <data-dir>/runs/loop/<run>/
WANDB = ""  # also mirror the log to this Weights & Biases project (needs wandb; "": off)
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
NOISE_DIM = 32  # size of the generator's noise z [>= 1]
WIDTH = 32  # channels of the 14x14 conv layers of G and D (twice as many at 7x7) [>= 1, <= 1024]
FEATURE_DIM = 256  # width of the discriminator's feature layer [>= 1, <= 8192]
LOSS = "hinge"  # adversarial loss [in LOSS_NAMES]
GRADIENT_PENALTY = 0.0  # weight of the WGAN-GP gradient penalty (10 with wasserstein) [>= 0]
SPECTRAL_NORM = True  # spectral normalisation of every discriminator layer
N_CRITIC = 1  # discriminator steps per generator step [>= 1]
LR_GENERATOR = 1e-3  # Adam learning rate of the generator [> 0]
LR_DISCRIMINATOR = 1e-3  # Adam learning rate of the discriminator [> 0]
BETA1 = 0.5  # Adam beta1 (DCGAN: 0.5) [>= 0, < 1]
BETA2 = 0.999  # Adam beta2 [>= 0, < 1]
EMA_DECAY = 0.99  # decay of the generator's weight average that draws the images [>= 0, < 1]
BOOTSTRAP = 10  # resamples behind each 95% interval (0: none; else 2 or more) [>= 0, <= 10000]
KID_SUBSETS = 100  # KID: pairs of random subsets [>= 1]
CAS_EPOCHS = 10  # classifier accuracy score: training passes of its MLP [>= 1]
LOG_EVERY = 50  # steps between reads of the summed losses [>= 1]
SAMPLE_BATCH_SIZE = 1000  # images per generator pass when sampling [>= 1]
# The diffusion generator's own settings (GENERATIONS, REGIME, FRESH_FRACTION, SEEDS, DEVICE and
# DATA_DIR are the loop's).
PIPELINE = ""  # diffusion: a StableDiffusionPipeline folder, or a name in the local HF cache
PROMPTS = "coco"  # diffusion: COCO captions, or the dataset's test images' classes [coco | dataset]
ANNOTATION_FILE = "data/coco/annotations/captions_train2014.json"  # diffusion: COCO captions
NUM_CAPTIONS = 100  # diffusion: prompts, the first N ids (COCO: ascending; dataset: test) [>= 1]
IMAGE_DIR = ""  # diffusion: real COCO images named by id (needed to accumulate, fresh data)
FINETUNE = "lora"  # diffusion: LoRA on the UNet's attention, or the whole UNet [lora | full]
GUIDANCE_SCALE = 7.0  # diffusion: classifier-free guidance weight [>= 1]
STEPS = 50  # diffusion: sampler steps per image [>= 1, <= 1000]
SAMPLER = "ddim"  # diffusion: sampler [in stable_diffusion.pipelines.SAMPLERS]
IMAGE_SIZE = 0  # diffusion: pixels per side (0: the pipeline's own) [>= 0, <= 2048]
SD_LEARNING_RATE = 1e-4  # diffusion: AdamW rate of fine-tuning (the seed's full UNet: 1e-5) [> 0]
SD_EPOCHS = 5  # diffusion: fine-tuning passes over each generation's training images [>= 1]
SD_BATCH_SIZE = 1  # diffusion: images per fine-tuning step and process [>= 1]
LORA_RANK = 4  # diffusion: rank of each LoRA adapter [>= 1, <= 1024]
DRAW_BATCH_SIZE = 8  # diffusion: prompts per pipeline call [>= 1]
SHARD = ""  # diffusion: i/n: draw shard i of the first generation not drawn yet, then stop
STOP_AFTER_FINETUNE = False  # diffusion: stop once the next generation is fine-tuned (to shard it)
# ---------------------------------------------------------------- end of settings

# The file that completes a generation's saved weights (written last).
WEIGHTS_DONE = "weights.complete"


@dataclass(frozen=True)
class LoopRun:
    """What a loop trains and writes (the GAN's own hyper-parameters: ImageGANConfig; its
    optimiser: TrainerSettings; what it feeds each generation: Regime)."""

    dataset: str
    data_dir: str
    generations: int
    warm_start: bool
    truncation: float
    held_out_fraction: float
    n_images: int
    epochs_first: int
    patience: int
    epochs: int
    batch_size: int
    seed: int
    deterministic: bool
    sample_batch_size: int
    tag: str
    max_device_images: int
    loader_workers: int


# ---------------------------------------------------------------- names and captions
def run_name(run: LoopRun, regime: Regime) -> str:
    """<ds>_loop, the regime, _fresh<percent>, _trunc<psi>, _scratch, @<tag>, _seed<k>
    (k != 0): the seeds of one configuration share the name before _seed."""
    name = f"{run.dataset}_loop{REGIME_TAGS[regime.name]}"
    if regime.fresh_fraction > 0:
        name += f"_fresh{100 * regime.fresh_fraction:g}"
    if run.truncation:
        name += f"_trunc{run.truncation:g}"
    if not run.warm_start:
        name += "_scratch"
    return tagged(name, run.tag) + (f"_seed{run.seed}" if run.seed else "")


def image_name(image_id: int) -> str:
    """test_<id>.png: extract_generation_embeddings.py reads the id after the last '_'."""
    return f"test_{image_id:05d}.png"


def prompt_captions(data: ImageDataset, count: int, seed: int) -> list[str]:
    """The caption of each of the first ``count`` test images: a template (chosen per image with
    ``seed``) applied to its class."""
    choice = np.random.default_rng(seed).integers(len(CAPTION_TEMPLATES), size=count)
    return [CAPTION_TEMPLATES[t].format(class_phrase(data.name, data.class_names[label]))
            for t, label in zip(choice, data.y_test[:count], strict=True)]


def coco_captions(data: ImageDataset, captions: list[str]) -> dict[str, Any]:
    """A COCO-format caption file: an image entry and one caption per test id."""
    return {"info": {"description": f"captions of the first {len(captions)} {data.name} test "
                                    f"images: the prompts of the self-consuming loop; image id = "
                                    f"index in the test split",
                     "version": "1.0"},
            "licenses": [],
            "images": [{"id": i, "file_name": image_name(i), "width": data.shape[2],
                        "height": data.shape[1]} for i in range(len(captions))],
            "annotations": [{"id": i, "image_id": i, "caption": caption}
                            for i, caption in enumerate(captions)]}


# ---------------------------------------------------------------- models and data
def build_model(num_classes: int, config: ImageGANConfig,
                image_shape: tuple[int, int, int] = (1, 28, 28)) -> ConditionalGAN:
    """Plan 1's cGAN with a one-hot class as its condition, for images of ``image_shape``."""
    return image_gans.build_image_gan("cgan", num_classes, num_classes, config, image_shape)


def conditions(labels: np.ndarray, num_classes: int, device: torch.device) -> torch.Tensor:
    """The generator's condition for each label: its one-hot class (Plan 1's class_condition)."""
    return class_condition(torch.as_tensor(labels, device=device).long(), num_classes)


def generate(model: ConditionalGAN, labels: np.ndarray, num_classes: int, seed: int,
             device: torch.device, batch_size: int, truncation: float = 0.0) -> np.ndarray:
    """uint8 images as stored ((N, H, W) grey, (N, H, W, 3) colour), one per label, in eval mode,
    with noise fixed by ``seed`` (drawn on the CPU, so the same on every device), truncated to
    [-psi, psi] with ``truncation``."""
    return image_gans.regenerate(model, conditions(labels, num_classes, device), seed,
                                 batch_size, truncation)


def optimiser_settings(values: dict[str, Any]) -> TrainerSettings:
    """The GAN loop's optimiser settings from this stage's settings (``configure``'s values);
    each generation adds its own seed."""
    return TrainerSettings(n_critic=values["n_critic"], lr_generator=values["lr_generator"],
                        lr_discriminator=values["lr_discriminator"],
                        betas=(values["beta1"], values["beta2"]),
                        ema_decay=values["ema_decay"], log_every=values["log_every"])


@dataclass(frozen=True)
class Loop:
    """Everything a generation needs: the run, the GAN's config and optimiser, what it is fed,
    the data and where its files are."""

    run: LoopRun
    config: ImageGANConfig
    optimiser: TrainerSettings
    regime: Regime
    data: ImageDataset
    checkpoints: Path
    start: Path
    device: torch.device

    def held_out_images(self) -> int:
        """How many of the last training images are held out (--held-out-fraction)."""
        return held_out_count(len(self.data.x_train), self.run.held_out_fraction)

    def model_settings(self) -> dict[str, Any]:
        c, o = self.config, self.optimiser
        return {"noise_dim": c.noise_dim, "width": c.width, "feature_dim": c.feature_dim,
                "loss": c.loss, "gradient_penalty": c.gradient_penalty,
                "spectral_norm": c.spectral_norm, "n_critic": o.n_critic,
                "lr_generator": o.lr_generator, "lr_discriminator": o.lr_discriminator,
                "betas": list(o.betas), "ema_decay": o.ema_decay,
                "batch_size": self.run.batch_size}

    def start_settings(self) -> dict[str, Any]:
        """What generation 0 depends on: it is shared by the loops that agree on these."""
        return {"dataset": self.run.dataset, "generation": 0, "seed": self.run.seed,
                "train_images": self.regime.train_images,
                "held_out_fraction": self.run.held_out_fraction,
                "epochs": self.run.epochs_first, "patience": self.run.patience,
                **self.model_settings()}

    def settings(self) -> dict[str, Any]:
        """Settings that change what any generation is: a results file made with others is not
        continued."""
        return {**self.start_settings(), "regime": self.regime.name,
                "fresh_fraction": self.regime.fresh_fraction,
                "warm_start": self.run.warm_start, "truncation": self.run.truncation,
                "epochs_later": self.run.epochs, "n_images": self.run.n_images}

    def resume_settings(self, generation: int, train_hash: str) -> dict[str, Any]:
        """What a later generation's checkpoint must share with this run to be continued."""
        return {**self.settings(), "generation": generation, "train_set": train_hash}


def start_checkpoint(loop_dir: Path, start: dict[str, Any]) -> Path:
    """Where the converged generation 0 of these settings lives (shared by the loops)."""
    tag = fingerprint(np.frombuffer(json.dumps(start, sort_keys=True).encode(), np.uint8))
    return loop_dir / "start" / f"{start['dataset']}_seed{start['seed']}_{tag}.pt"


def held_out_indices(data: ImageDataset, loop: Loop) -> np.ndarray:
    """The last --held-out-fraction of the training images: never trained on, never fresh."""
    return np.arange(len(data.x_train) - loop.held_out_images(), len(data.x_train))


def fresh_pool(data: ImageDataset, loop: Loop) -> np.ndarray:
    """The real training images fresh data is drawn from: neither in generation 0's set nor
    held out."""
    return np.arange(loop.regime.train_images, len(data.x_train) - loop.held_out_images())


def held_out_fid(loop: Loop, real: scoring.RealImages, s: scoring.ScoringSettings):
    """score(model): FID of the images a model draws for the held-out images' classes against
    those images (features of the run's space); lower is better. Never the test images."""
    index = held_out_indices(loop.data, loop)
    labels = loop.data.y_train[index]
    reference, _ = scoring.image_outputs(real, loop.data.x_train[index], loop.device, s)

    def score(model: ConditionalGAN) -> float:
        images = generate(model, labels, loop.data.num_classes, loop.run.seed + 1, loop.device,
                          loop.run.sample_batch_size)
        features, _ = scoring.image_outputs(real, images, loop.device, s)
        return metrics.frechet_distance(features, reference)

    return score


def save_addition(path: Path, images: ImageSet, meta: dict[str, Any]) -> None:
    save_npz(path, {"x": images.x, "y": images.y, "origin": images.origin}, meta)


def load_addition(path: Path, loop: Loop) -> ImageSet:
    saved = load_npz(path, ADDITION_KEYS, aligned=(("x", "y", "origin"),))
    check_settings_match(path, saved["meta"].get("loop_settings", {}), loop.settings())
    if len(saved["x"]) != loop.regime.train_images:
        raise StageError(f"{path}: holds {len(saved['x'])} images, not --train-images "
                         f"{loop.regime.train_images}; delete it to make it again")
    return ImageSet(saved["x"], saved["y"].astype(np.int64), saved["origin"].astype(np.int64))


def additions_up_to(generation: int, loop: Loop, previous: ConditionalGAN | None,
                    previous_path: Path | None, values: dict[str, Any]
                    ) -> tuple[list[ImageSet], ConditionalGAN | None]:
    """A_0 ... A_k for generation k, the new one made from generation k-1 (loaded if needed)
    the first time and read back after; and generation k-1's model if it was loaded."""
    data, regime = loop.data, loop.regime
    first = loop_regimes.first_addition(data.x_train, data.y_train, regime)
    additions = [first]
    for k in range(1, generation + 1):
        path = loop.checkpoints / f"addition_{k}.npz"
        if path.is_file():
            additions.append(load_addition(path, loop))
            continue
        if k != generation:
            raise StageError(f"{path}: the addition of generation {k} is missing; delete the "
                             f"run's results file to run the loop again")
        if previous is None:
            previous = load_generation_model(previous_path, k - 1, loop)
        labels = loop_regimes.addition_labels(first.y, k, regime, loop.run.seed)
        made = generate(previous, labels, data.num_classes, loop.run.seed * 100_003 + 7 * k + 1,
                        loop.device, loop.run.sample_batch_size, loop.run.truncation)
        fresh, repeats = loop_regimes.fresh_indices(fresh_pool(data, loop), k, regime,
                                                    loop.run.seed)
        images = loop_regimes.addition(made, labels, k - 1, data.x_train, data.y_train, fresh)
        save_addition(path, images, make_meta(
            __file__, values, loop.run.dataset, loop.run.seed, generation=k,
            made_by=f"generation {k - 1} ({previous_path})",
            sources=loop_regimes.sources(images), loop_settings=loop.settings(),
            fresh_indices=[int(i) for i in fresh], fresh_repeats=repeats))
        additions.append(images)
    return additions, previous


def source_of(sources: dict[str, int]) -> str:
    """What a generation was trained on, for tables: 'real', 'gen 0 + 2000 real', ..."""
    generated = [name.replace("_", " ") for name in sources if name != "real"]
    real = sources.get("real", 0)
    if not generated:
        return "real"
    return " + ".join(generated) + (f" + {real} real" if real else "")


def generation_state(checkpoint: Path | None, generation: int, loop: Loop) -> dict[str, Any]:
    """The checkpoint of a finished generation, checked to come from a loop with these
    settings."""
    if checkpoint is None or not checkpoint.is_file():
        raise StageError(f"{checkpoint}: the checkpoint of generation {generation} is missing; "
                         f"the next generation needs it (delete the run's results file to run "
                         f"the loop again)")
    state = load_checkpoint(checkpoint, required=("model", "ema", "best_ema", "settings"))
    saved = state["settings"]
    expected = loop.start_settings() if generation == 0 else loop.resume_settings(
        generation, str(saved.get("train_set")))
    check_settings_match(checkpoint, saved, expected)
    return state


def load_generation_model(checkpoint: Path | None, generation: int,
                          loop: Loop) -> ConditionalGAN:
    """The EMA generator of a finished generation (its best weights), from its checkpoint."""
    state = generation_state(checkpoint, generation, loop)
    return image_gans.from_checkpoint(checkpoint, loop.device, state=state)


# ---------------------------------------------------------------- outputs
def write_image_folder(folder: Path, images: np.ndarray) -> None:
    """One PNG per prompt, written into a staging folder that replaces ``folder`` when done."""
    staging = staging_dir(folder)
    try:
        for image_id, pixels in enumerate(images):
            Image.fromarray(pixels).save(staging / image_name(image_id))  # L grey or RGB
        # Unmarked: a generation folder holds nothing but its PNGs, which is what says a stage
        # wrote it (other tools read these folders as image sets).
        replace_directory(staging, folder, only_prompt_images, mark=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def only_prompt_images(folder: Path) -> bool:
    """A generation folder this stage wrote: nothing but test_<id>.png."""
    return all(re.fullmatch(r"test_\d{5}\.png", p.name) for p in folder.iterdir())


def generation_complete(folder: Path, samples: Path, count: int) -> bool:
    """Whether a generation's folder holds exactly its ``count`` images and its NPZ exists."""
    if not folder.is_dir() or not samples.is_file():
        return False
    names = {p.name for p in folder.iterdir() if p.suffix == ".png"}
    return names == {image_name(i) for i in range(count)}


def format_table(records: list[dict[str, Any]]) -> str:
    """One row per generation, each value ± half its 95% interval, the floors in brackets; a
    generation whose fresh real images include ones an earlier generation had (the pool of
    unused ones ran out) is marked "fresh repeats"."""
    lines = ["| generation | trained on | FID (floor) | KID (floor) | precision (floor) | "
             "recall (floor) | Vendi (real) | class consistency (real) | within-class "
             "variance / real's | train time |", "| --- " * 10 + "|"]
    for r in records:
        lines.append(
            f"| {r['generation']} | {r['trained_on']}"
            f"{' (fresh repeats)' if r.get('fresh_repeats') else ''} | "
            + " | ".join([cell(r, "fid", "fid_floor", "floor", 2),
                          cell(r, "kid", "kid_floor", "floor", 4),
                          cell(r, "precision", "precision_floor", "floor"),
                          cell(r, "recall", "recall_floor", "floor"),
                          cell(r, "vendi", "vendi_real", "real", 2),
                          cell(r, "class_consistency", "class_consistency_real", "real"),
                          f"{r['within_class_spread']:.3f}"])
            + f" | {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def read_results(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished generations' records of an earlier run with the same loop settings."""
    if not path.is_file():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        saved, records = document["loop_settings"], document["generations"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            RecursionError) as err:
        raise StageError(f"{path}: not a results file of this loop ({short_cause(err)}); delete "
                         f"it to start "
                         f"again") from err
    differing = {k: (v, saved.get(k)) for k, v in settings.items() if saved.get(k) != v}
    if differing:
        listed = ", ".join(f"{k}: now {a!r}, there {b!r}" for k, (a, b) in differing.items())
        raise StageError(f"{path} records a loop with other settings ({listed}); delete it (and "
                         f"the run's folders) to start again, or run with its settings")
    return records


def write_results(path: Path, records: list[dict[str, Any]], values: dict[str, Any], name: str,
                  caption_file: Path, loop: Loop) -> None:
    document = {"loop_settings": loop.settings(), "generations": records,
                "meta": make_meta(__file__, values, loop.run.dataset, loop.run.seed, run=name,
                                  captions=str(caption_file))}
    write_text(path, json.dumps(document, indent=2) + "\n")


# ---------------------------------------------------------------- one generation
def train_generation(generation: int, loop: Loop, train: ImageSet, checkpoint: Path,
                     warm_from: Path | None, score: Any, log: RunLog
                     ) -> tuple[GANTrainer, Any]:
    """Train (or resume) one generation on ``train``, logged in ``log``; an epoch is
    --train-images images drawn from it (all of them when it has no more), so that every
    generation gets the same budget."""
    run, data = loop.run, loop.data
    generation_seed = run.seed * 100_003 + generation
    seed_everything(generation_seed, run.deterministic)
    model = build_model(data.num_classes, loop.config, data.shape).to(loop.device)
    trainer = GANTrainer(model, replace(loop.optimiser, seed=generation_seed),
                         image_gans.architecture("cgan", data.num_classes, data.num_classes,
                                                 loop.config, data.shape))
    if warm_from is not None and not checkpoint.exists():
        state = generation_state(warm_from, generation - 1, loop)
        with restoring(warm_from, "delete the run's results file to run the loop again"):
            trainer.warm_start(state)  # from the weights that drew its training images
    else:
        model.set_condition_statistics(conditions(train.y, data.num_classes, loop.device))
    trainer.log = log
    # An accumulating loop's set grows every generation: past --max-device-images it is read
    # batch by batch from the CPU (the same batches either way).
    one_hot = conditions(train.y, data.num_classes, torch.device("cpu"))
    feed = TrainingTensors({"x": torch.from_numpy(train.x), "condition": one_hot}, loop.device,
                           run.max_device_images, run.loader_workers)
    if feed.streamed:
        print(feed.describe())
    per_epoch = loop.regime.train_images

    def make_batches(epoch: int):
        index = torch.arange(len(train))
        if len(train) > per_epoch:  # the same budget as a set of --train-images
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
                generation_seed * 7_919 + epoch))
            index = order[:per_epoch].sort().values
        order = [index[positions] for positions in
                 batch_order(len(index), run.batch_size, generation_seed, epoch)]
        for batch in feed.batches(order):
            yield {**batch, "x": to_signed(batch["x"])}

    if generation == 0:
        epochs, settings = run.epochs_first, loop.start_settings()
    else:
        epochs = run.epochs or start_budget(loop)
        settings = loop.resume_settings(generation, fingerprint(train.x, train.y, train.origin))

    def on_resume(epoch: int) -> None:
        print(f"gen {generation}: resumed from {checkpoint} after epoch {epoch}", flush=True)

    def on_epoch(epoch: int, record: dict[str, Any]) -> None:
        if record["score"] is not None:
            print(f"gen {generation}: epoch {epoch}/{epochs}, held-out FID "
                  f"{record['score']:.2f}", flush=True)

    report = trainer.fit(make_batches, epochs, checkpoint, settings,
                         steps_per_epoch=per_epoch // run.batch_size, desc=f"gen {generation}",
                         on_resume=on_resume, score=score,
                         score_name="held-out FID" if score else None, on_epoch=on_epoch,
                         patience=run.patience if score else 0)
    if report.diverged:
        print(f"warning: gen {generation}: training diverged ({report.diverged}); the "
              f"last good epoch ({report.best_epoch}) is used", flush=True)
    return trainer, report


def start_budget(loop: Loop) -> int:
    """The epochs generation 0 needed: its best validation epoch (the later generations'
    budget with --epochs 0)."""
    state = load_checkpoint(loop.start, required=("best_epoch",))
    return max(1, int(state["best_epoch"]))


def run_loop(loop: Loop, values: dict[str, Any], real: scoring.RealImages,
             s: scoring.ScoringSettings, folders: dict[str, Path], reference: Path
             ) -> tuple[str, list[dict[str, Any]]]:
    """One loop (one seed): every generation trained, drawn, scored and written."""
    run, data = loop.run, loop.data
    name = run_name(run, loop.regime)
    run_dir = ensure_output_dir(Path(run.data_dir) / name)
    hold_output_lock(Path(run.data_dir) / f".lock-self_consuming_loop-{name}",
                     f"self_consuming_loop.py, loop {name}")
    results_path = folders["results"] / f"{name}_metrics.json"
    records = read_results(results_path, loop.settings())
    done = {int(r["generation"]) for r in records}
    captions = prompt_captions(data, run.n_images, run.seed)
    caption_file = run_dir / "captions.json"
    caption_text = json.dumps(coco_captions(data, captions), indent=1) + "\n"
    if not caption_file.is_file() or caption_file.read_text(encoding="utf-8") != caption_text:
        write_text(caption_file, caption_text)
    prompt_labels = data.y_test[:run.n_images].astype(np.int64)
    print(f"{data.name}: loop {name}, generations 0-{run.generations}, regime "
          f"{loop.regime.name}, {loop.regime.train_images} images per addition "
          f"({loop.regime.fresh_fraction:.0%} fresh real after generation 0), truncation "
          f"{run.truncation or 'off'}, {'warm' if run.warm_start else 'cold'} start, "
          f"{run.n_images} prompts ({caption_file}); device {loop.device}", flush=True)
    real_spread = scoring.within_class_variance(real.test_features[:run.n_images],
                                                prompt_labels)
    previous: ConditionalGAN | None = None
    previous_path: Path | None = None
    generations_log = open_run_log(values, "loop", f"{name}/generations")
    for generation in range(run.generations + 1):
        folder = run_dir / f"gen_{generation}"
        samples_path = run_dir / f"gen_{generation}.npz"
        checkpoint = loop.start if generation == 0 else loop.checkpoints / f"gen_{generation}.pt"
        if generation in done and generation_complete(folder, samples_path, run.n_images):
            previous, previous_path = None, checkpoint  # loaded only if the next one needs it
            continue
        started = time.time()
        seed_everything(run.seed * 100_003 + generation, run.deterministic)
        additions, previous = additions_up_to(generation, loop, previous, previous_path, values)
        train = loop_regimes.training_set(additions, loop.regime, run.seed)
        sources = loop_regimes.sources(train)
        score = held_out_fid(loop, real, s) if generation == 0 and \
            loop.held_out_images() > 1 else None
        warm_from = previous_path if run.warm_start and generation > 0 else None
        with open_run_log(values, "loop", f"{name}/gen_{generation}") as log:
            trainer, report = train_generation(generation, loop, train, checkpoint, warm_from,
                                               score, log)
        train_seconds = time.time() - started
        previous, previous_path = trainer.best_model(), checkpoint

        images = generate(previous, prompt_labels, data.num_classes, run.seed, loop.device,
                          run.sample_batch_size)
        arrays = {"x_gen": images, "idx_src": np.arange(run.n_images, dtype=np.int64),
                  "y_src": prompt_labels}
        metric_values = scoring.plan1_metrics(samples_path, arrays, real, loop.device, s)
        features, _ = scoring.image_outputs(real, images, loop.device, s)
        metric_values["within_class_variance"] = scoring.within_class_variance(features,
                                                                               prompt_labels)
        metric_values["within_class_variance_real"] = real_spread
        metric_values["within_class_spread"] = metric_values["within_class_variance"] / \
            real_spread
        record = {"generation": generation, "code": code_version(),
                  "trained_on": source_of(sources),
                  "train_sources": sources, "train_images": len(train),
                  "fresh_real_images": loop.regime.fresh if generation else 0,
                  "fresh_repeats": generation * loop.regime.fresh > len(fresh_pool(data, loop)),
                  "epochs": trainer.epoch, "best_epoch": report.best_epoch,
                  "stopped_early": report.stopped_early,
                  "held_out_fid": report.best_score if generation == 0 else None,
                  "diverged": report.diverged, "train_seconds": train_seconds,
                  **{k: metric_values[k] for k in METRIC_KEYS},
                  **{k: v for k, v in metric_values.items() if k.endswith("_ci95")},
                  **({"undefined": metric_values["undefined"]}
                     if "undefined" in metric_values else {}),
                  "n_generated": metric_values["n_generated"],
                  "n_test": metric_values["n_test"],
                  "floor_n_train": metric_values["floor_n_train"]}
        write_image_folder(folder, images)
        save_npz(samples_path, arrays, make_meta(
            __file__, values, run.dataset, run.seed, generation=generation, run=name,
            checkpoint=str(checkpoint), captions=str(caption_file), reference=str(reference),
            **{k: v for k, v in record.items() if k != "generation"}))
        records = [r for r in records if int(r["generation"]) != generation] + [record]
        records.sort(key=lambda r: int(r["generation"]))
        write_results(results_path, records, values, name, caption_file, loop)
        generations_log.scalars({k: v for k, v in record.items() if k in METRIC_KEYS or k in (
            "within_class_spread", "train_seconds", "epochs")}, generation, "generations/")
        print(f"gen {generation}: trained on {record['trained_on']} ({train_seconds:.0f} s); "
              f"FID {metric_values['fid']:.2f} (floor {metric_values['fid_floor']:.2f}), "
              f"class consistency {metric_values['class_consistency']:.3f}, recall "
              f"{metric_values['recall']:.3f}; wrote {folder}/ ({run.n_images} images)",
              flush=True)
    generations_log.close()
    # Every finished generation on record, also those of an earlier, longer run: the figure,
    # the printed table and the metrics file show the same generations.
    records = [r for r in records if (run_dir / f"gen_{int(r['generation'])}.npz").is_file()]
    shown = [int(r["generation"]) for r in records]
    all_images = [load_npz(run_dir / f"gen_{g}.npz", {"x_gen": ((3, 4), "u")})["x_gen"]
                  for g in shown]
    grid_ids = [int(np.flatnonzero(prompt_labels == c)[0]) for c in np.unique(prompt_labels)]
    rows = [data.x_test[grid_ids]] + [images[grid_ids] for images in all_images]
    labels = ["real"] + [f"gen {g}" for g in shown]
    figure = image_grid_figure(rows, labels, f"{name}: the first test prompt of each class, "
                                             f"drawn by every generation (same noise)")
    grid_png = save_and_close(figure, folders["visualizations"] / f"{name}_samples.png")
    print(f"\n{name}: FID, KID, precision/recall and Vendi on the {real.space.title} features "
          f"(not Inception: compare with the floor, {run.n_images} real training images "
          f"against the test set); ± half the 95% bootstrap interval\n")
    print(format_table(records))
    print(f"\nresults: {results_path}; figure: {grid_png}; embed the generations with:\n"
          f"  python extract_generation_embeddings.py --annotation-file {caption_file} "
          f"--generation-dir-pattern '{run_dir}/gen_{{g}}' --num-captions {run.n_images} "
          f"--model {Path(run.data_dir)}/checkpoints/clip_{run.dataset}")
    return name, records


def make_loop(values: dict[str, Any], seed: int, data: ImageDataset,
              device: torch.device) -> Loop:
    """The loop of one seed, from this stage's settings (``configure``'s values)."""
    run = pick(LoopRun, values, seed=seed)
    regime = Regime(values["regime"], values["train_images"], values["fresh_fraction"])
    probe = Loop(run, pick(ImageGANConfig, values), optimiser_settings(values), regime, data,
                 Path(), Path(), device)
    loop_dir = Path(run.data_dir) / "checkpoints" / "loop"
    return replace(probe, checkpoints=ensure_output_dir(loop_dir / run_name(run, regime)),
                   start=start_checkpoint(loop_dir, probe.start_settings()))


# ---------------------------------------------------------------- the diffusion generator
@dataclass(frozen=True)
class DiffusionRun:
    """A loop of Stable Diffusion pipelines, each fine-tuned on what the loop fed it."""

    data_dir: str
    dataset: str
    generations: int
    pipeline: str
    prompts: str
    annotation_file: str
    num_captions: int
    image_dir: str
    guidance_scale: float
    steps: int
    sampler: str
    image_size: int
    draw_batch_size: int
    shard: str
    stop_after_finetune: bool
    tag: str


@dataclass
class Prompts:
    """What a diffusion loop draws and trains on: the prompts' ids, every caption by id (the
    prompts' and the real images'), the ids of A_0's real images and of the fresh pool, and how
    the real images of ids are read at a size. For dataset prompts also the data, the prompts'
    classes and how a drawn image becomes one of the data's shape (metrics, PNGs)."""

    ids: np.ndarray
    caption_of: dict[int, str]
    first_real: np.ndarray
    fresh_pool: np.ndarray
    real_images: Any  # Callable[[np.ndarray, int], np.ndarray]: RGB images of ids
    data: ImageDataset | None = None
    labels: np.ndarray | None = None


# Training images of the dataset prompts are ids from here on (the test prompts' ids are their
# test indices), so that one caption table holds both.
TRAIN_ID_OFFSET = 10_000_000


def diffusion_run_name(run: DiffusionRun, regime: Regime, finetuning: FinetuneSettings,
                       seed: int) -> str:
    """COCO prompts: the seed's folder name, sd_to_sd_cfg_<w>_steps_<n>, then the regime as the
    GAN loop names it, _fresh<percent>, _full (whole-UNet fine-tuning), _dpm (DPM-Solver),
    @<tag>, _seed<k>. Dataset prompts: <ds>_loop, the regime, _fresh<percent>, _sd, _full, _dpm,
    @<tag>, _seed<k> (a GAN loop's name with _sd: the loops compare side by side)."""
    tags = REGIME_TAGS[regime.name] + (f"_fresh{100 * regime.fresh_fraction:g}"
                                       if regime.fresh_fraction > 0 else "")
    method = ("_full" if finetuning.method == "full" else "") + (
        "_dpm" if run.sampler == "dpm-solver" else "")
    name = (f"sd_to_sd_cfg_{run.guidance_scale:g}_steps_{run.steps}{tags}{method}"
            if run.prompts == "coco" else f"{run.dataset}_loop{tags}_sd{method}")
    return tagged(name, run.tag) + (f"_seed{seed}" if seed else "")


def coco_prompts(run: DiffusionRun, regime: Regime) -> Prompts:
    """The prompts of a COCO captions file (as the extraction stage chooses its captions) and,
    when the regime or fresh data needs real images, the file of each id in --image-dir: every
    prompt's (A_0), and the ids after them as the fresh pool; refused in one line when they are
    missing."""
    caption_of = read_first_captions(Path(run.annotation_file))
    ordered = sorted(caption_of)
    if len(ordered) < run.num_captions:
        raise StageError(f"{run.annotation_file}: holds {len(ordered)} image ids' captions, fewer "
                         f"than --num-captions {run.num_captions}")
    ids = np.array(ordered[:run.num_captions], dtype=np.int64)
    if regime.name == "replace" and not regime.fresh:
        return Prompts(ids, caption_of, ids, np.zeros(0, np.int64), None)
    why = f"--regime {regime.name}" + (f" --fresh-fraction {regime.fresh_fraction}"
                                       if regime.fresh else "")
    if not run.image_dir:
        raise SettingsError(f"{why} trains on real images: give their folder with --image-dir")
    folder = Path(run.image_dir)
    if not folder.is_dir():
        raise StageError(f"--image-dir {folder}: no such folder")
    files, _ = list_images(folder, str(folder))
    by_id = {image_id: path for path, image_id in ids_by_file(
        folder, files, " (COCO_train2014_<12-digit id>.jpg)").items()}
    missing = [int(i) for i in ids if int(i) not in by_id]
    if missing:
        raise StageError(f"--image-dir {folder}: no image of {len(missing)} prompt id(s) (e.g. "
                         f"{missing[:3]}), which {why} trains on")
    pool = np.array([i for i in ordered[run.num_captions:] if i in by_id], dtype=np.int64)
    if regime.fresh > len(pool):
        raise StageError(f"--image-dir {folder}: {len(pool)} images of captions after the "
                         f"prompts, fewer than the {regime.fresh} fresh ones each generation "
                         f"takes")
    return Prompts(ids, caption_of, ids, pool,
                   lambda wanted, size: load_real_images([by_id[int(i)] for i in wanted], size))


def dataset_prompts(run: DiffusionRun, regime: Regime, data: ImageDataset,
                    seed: int) -> Prompts:
    """The first --num-captions test images as prompts (captions of their classes, as the GAN
    loop's), the first as many training images as A_0 and the later ones (not the held-out
    last share) as the fresh pool, each training image captioned by a template of its class."""
    count = run.num_captions
    if len(data.x_test) < count or len(data.x_train) < count + regime.fresh:
        raise StageError(f"--num-captions {count}: {data.name} has {len(data.x_test)} test and "
                         f"{len(data.x_train)} training images")
    train_ids = TRAIN_ID_OFFSET + np.arange(len(data.x_train), dtype=np.int64)
    choice = np.random.default_rng([seed, 11]).integers(len(CAPTION_TEMPLATES),
                                                         size=len(train_ids))
    caption_of = {int(i): c for i, c in enumerate(prompt_captions(data, count, seed))}
    caption_of.update({int(i): CAPTION_TEMPLATES[t].format(class_phrase(
        data.name, data.class_names[label])) for i, t, label in zip(
        train_ids, choice, data.y_train, strict=True)})

    def real_images(wanted: np.ndarray, size: int) -> np.ndarray:
        return to_pipeline_images(data.x_train[wanted - TRAIN_ID_OFFSET], size)

    return Prompts(np.arange(count, dtype=np.int64), caption_of, train_ids[:count],
                   train_ids[count:], real_images, data, data.y_test[:count].astype(np.int64))


def diffusion_training_set(generation: int, drawn: Any, prompts: Prompts, regime: Regime,
                           seed: int, size: int) -> ImageSet:
    """What generation k >= 1 fine-tunes on: A_0 real images (when the regime uses them), A_j
    generation j-1's images (``drawn(j - 1)``, RGB at the pipeline's size) of a seeded draw of
    the prompts and fresh real images (none fresh twice while unused ones remain), combined by
    the regime (``training/loop_regimes.py``); y holds each image's caption id."""
    def real(ids: np.ndarray) -> np.ndarray:
        return prompts.real_images(ids, size)

    needed = range(1, generation + 1) if regime.name != "replace" else [generation]
    additions = [ImageSet(real(prompts.first_real), prompts.first_real,
                          np.full(len(prompts.first_real), loop_regimes.REAL, np.int64))
                 if regime.name != "replace" else ImageSet(*(np.zeros(0),) * 3)]
    for k in needed:
        made = drawn(k - 1)
        chosen = loop_regimes.addition_labels(prompts.ids, k, regime, seed)
        rows = np.searchsorted(prompts.ids, chosen)
        fresh, _ = loop_regimes.fresh_indices(np.arange(len(prompts.fresh_pool)), k, regime, seed)
        fresh_ids = prompts.fresh_pool[fresh]
        additions.append(ImageSet(
            np.concatenate([made[rows], real(fresh_ids)]) if len(fresh_ids) else made[rows],
            np.concatenate([chosen, fresh_ids]).astype(np.int64),
            np.concatenate([np.full(len(chosen), k - 1, np.int64),
                            np.full(len(fresh_ids), loop_regimes.REAL, np.int64)])))
    return loop_regimes.training_set(additions, regime, seed)


def score_images(samples_path: Path, images: np.ndarray, labels: np.ndarray,
                 real: scoring.RealImages, device: torch.device, s: scoring.ScoringSettings,
                 real_spread: float) -> dict[str, Any]:
    """The GAN loop's metrics of one generation's images (one per prompt, the first test images'
    classes): the image metrics beside their floors and the within-class variance."""
    arrays = {"x_gen": images, "idx_src": np.arange(len(images), dtype=np.int64),
              "y_src": labels}
    values = scoring.plan1_metrics(samples_path, arrays, real, device, s)
    features, _ = scoring.image_outputs(real, images, device, s)
    values["within_class_variance"] = scoring.within_class_variance(features, labels)
    values["within_class_variance_real"] = real_spread
    values["within_class_spread"] = values["within_class_variance"] / real_spread
    return values


def run_diffusion_loop(run: DiffusionRun, regime: Regime, finetuning: FinetuneSettings,
                       prompts: Prompts, seed: int, values: dict[str, Any],
                       accelerator: Any, real: scoring.RealImages | None) -> None:
    """One loop (one seed): generation 0 drawn by the pipeline as given, generation k >= 1 by
    the pipeline fine-tuned (from generation k-1's weights) on what the regime feeds it; with
    dataset prompts each generation is scored as the GAN loop scores its own."""
    root = Path(run.data_dir)
    name = diffusion_run_name(run, regime, finetuning, seed)
    coco = run.prompts == "coco"
    folders = [root / "coco" / f"{name}_gen_{g}" if coco else root / name / f"gen_{g}"
               for g in range(run.generations + 1)]
    name_of, unmarked = (coco_name, only_coco_images) if coco else (image_name,
                                                                     only_prompt_images)
    for folder in folders:  # before any work: a folder this loop did not write stays
        check_replaceable(folder, unmarked)
    main = accelerator.is_main_process
    if main:
        hold_output_lock(root / f".lock-self_consuming_loop-{name}",
                         f"self_consuming_loop.py, loop {name}")
    shard = parse_shard(run.shard)
    pipe = load_pipeline(run.pipeline, accelerator.device)
    use_sampler(pipe, run.sampler)
    size = run.image_size or default_image_size(pipe)
    check_image_size(pipe, size)
    if prompts.data is not None and size < max(prompts.data.x_train.shape[1:]):
        raise StageError(f"--pipeline {run.pipeline}: draws {size}-pixel images, smaller than "
                         f"the {prompts.data.name} images")
    checkpoints = root / "checkpoints" / "sd_loop" / name
    results_path = ensure_output_dir(root / "results") / f"{name}_metrics.json"
    settings = {"pipeline": run.pipeline, "prompts": run.prompts,
                "num_captions": run.num_captions, "guidance_scale": run.guidance_scale,
                "steps": run.steps, "sampler": run.sampler, "image_size": size,
                "regime": regime.name, "fresh_fraction": regime.fresh_fraction, "seed": seed,
                **{f"finetune_{k}": v for k, v in asdict(finetuning).items() if k != "seed"}}
    records = read_results(results_path, settings) if main else []
    if not coco and main:
        captions = [prompts.caption_of[int(i)] for i in prompts.ids]
        write_text(ensure_output_dir(root / name) / "captions.json",
                   json.dumps(coco_captions(prompts.data, captions), indent=1) + "\n")
        real_spread = scoring.within_class_variance(real.test_features[:len(prompts.ids)],
                                                    prompts.labels)

    generations_log = open_run_log(values, "loop", f"{name}/generations") if main else \
        RunLog(None, values)

    def finetuned(generation: int, epoch: int, loss: float) -> None:
        print(f"gen {generation}: fine-tuning epoch {epoch}/{finetuning.epochs}, loss "
              f"{loss:.4f}", flush=True)
        generations_log.scalars({f"gen_{generation}/loss": loss}, epoch, "finetune_epochs/")

    def drawn(generation: int) -> np.ndarray:
        """A generation's images as the pipeline takes them (RGB at its size)."""
        saved = read_generation(folders[generation], prompts.ids, name_of)
        return saved if coco else to_pipeline_images(saved, size)

    print(f"loop {name}: {run.num_captions} prompts, generations 0-{run.generations}, "
          f"{run.sampler} {run.steps} steps, guidance {run.guidance_scale:g}, {size} px, "
          f"{finetuning.method} fine-tuning; device {accelerator.device}", flush=True)
    for generation, folder in enumerate(folders):
        record: dict[str, Any] = next((r for r in records if r["generation"] == generation),
                                      {"generation": generation, "trained_on": "as given"})
        if generation:
            weights = checkpoints / f"gen_{generation}" / "weights"
            if not (weights / WEIGHTS_DONE).is_file():
                started = time.time()
                train = diffusion_training_set(generation, drawn, prompts, regime, seed, size)
                latents = encode_images(pipe.vae, train.x)
                states = encode_captions(pipe, [prompts.caption_of[int(i)] for i in train.y])
                finetune(pipe, latents, states, replace(finetuning,
                                                        seed=seed * 100_003 + generation),
                         checkpoints / f"gen_{generation}" / "finetune.pt", accelerator,
                         {"generation": generation, **settings,
                          "train_set": fingerprint(train.x, train.y, train.origin)},
                         lambda epoch, loss, g=generation: finetuned(g, epoch, loss))
                if main:
                    staging = staging_dir(weights)
                    save_weights(pipe, finetuning.method, staging)
                    write_text(staging / WEIGHTS_DONE, "complete\n")
                    replace_directory(staging, weights)
                record.update(trained_on=source_of(loop_regimes.sources(train)),
                              train_sources=loop_regimes.sources(train),
                              train_images=len(train), finetune_seconds=time.time() - started)
                accelerator.wait_for_everyone()
            else:
                load_weights(pipe, finetuning, weights)
        if generation_drawn(folder, prompts.ids, name_of):
            continue
        if run.stop_after_finetune:
            print(f"gen {generation}: its model is ready in {checkpoints}; stopped before "
                  f"drawing it (--stop-after-finetune): draw it with --shard i/n")
            return
        draw_record = {"shard": list(shard or (0, 1)), "generation": generation,
                       "unet": weights_fingerprint(pipe.unet), **settings}
        started = time.time()
        if shard is not None:
            ids = prompts.ids[shard[0]::shard[1]]
            images = draw(pipe, [prompts.caption_of[int(i)] for i in ids], ids, seed, size,
                          run.steps, run.guidance_scale, run.draw_batch_size)
            where = write_shard(folder, images, ids, draw_record)
            print(f"gen {generation}: shard {shard[0]}/{shard[1]}, {len(ids)} images in "
                  f"{time.time() - started:.0f} s: {where}; a run without --shard merges the "
                  f"shards and goes on")
            return
        if main:
            shards = drawn_shards(folder, draw_record)
            missing = np.array([i for i in prompts.ids if int(i) not in shards], dtype=np.int64)
            new = draw(pipe, [prompts.caption_of[int(i)] for i in missing], missing, seed, size,
                       run.steps, run.guidance_scale, run.draw_batch_size)
            shards.update(zip(missing.tolist(), new, strict=True))
            images = np.stack([shards[int(i)] for i in prompts.ids])
            if not coco:
                images = from_pipeline_images(images, prompts.data.x_test.shape[1:])
            record.update(draw_seconds=time.time() - started,
                          from_shards=len(prompts.ids) - len(missing))
            shown = ""
            if not coco:
                metric_values = score_images(root / name / f"gen_{generation}.npz", images,
                                             prompts.labels, real, accelerator.device,
                                             replace(real_settings(values), seed=seed),
                                             real_spread)
                record.update({k: metric_values[k] for k in METRIC_KEYS},
                              n_generated=metric_values["n_generated"],
                              n_test=metric_values["n_test"],
                              floor_n_train=metric_values["floor_n_train"],
                              train_seconds=record.get("finetune_seconds", 0.0))
                shown = (f"; FID {metric_values['fid']:.2f} (floor "
                         f"{metric_values['fid_floor']:.2f}), class consistency "
                         f"{metric_values['class_consistency']:.3f}, recall "
                         f"{metric_values['recall']:.3f}")
            write_generation(folder, images, prompts.ids, name_of, unmarked)
            remove_shards(folder)
            record["code"] = code_version()
            generations_log.scalars({k: v for k, v in record.items() if k in METRIC_KEYS or k in (
                "finetune_seconds", "draw_seconds")}, generation, "generations/")
            records = [r for r in records if r["generation"] != generation] + [record]
            write_text(results_path, json.dumps({
                "loop_settings": settings, "generations": sorted(
                    records, key=lambda r: r["generation"]),
                "meta": make_meta(__file__, values, run.dataset if not coco else "coco", seed,
                                  run=name)}, indent=2, default=float) + "\n")
            print(f"gen {generation}: {len(missing)} images drawn in "
                  f"{time.time() - started:.0f} s ({len(prompts.ids) - len(missing)} from "
                  f"shards){shown}: {folder}", flush=True)
        accelerator.wait_for_everyone()
    generations_log.close()
    pattern = folders[0].parent / (folders[0].name.replace("gen_0", "gen_{g}"))
    annotation = run.annotation_file if coco else root / name / "captions.json"
    print(f"loop {name} complete; embed it with: python extract_generation_embeddings.py "
          f"--annotation-file {annotation} --num-captions {run.num_captions} "
          f"--generation-dir-pattern '{pattern}' --generations "
          f"{','.join(map(str, range(run.generations + 1)))} --model <a CLIP>")


def real_settings(values: dict[str, Any]) -> scoring.ScoringSettings:
    """The metrics' settings of this run (the same for both generators)."""
    return scoring.ScoringSettings(seed=values["seeds"][0], bootstrap=values["bootstrap"],
                                   kid_subsets=values["kid_subsets"],
                                   cas_epochs=values["cas_epochs"])


def diffusion_main(values: dict[str, Any]) -> None:
    """--generator diffusion: every check before any model is loaded, then one loop per seed."""
    from accelerate import Accelerator

    run = pick(DiffusionRun, values)
    regime = Regime(values["regime"], run.num_captions, values["fresh_fraction"])
    finetuning = FinetuneSettings(values["finetune"], values["sd_learning_rate"],
                                  values["sd_epochs"], values["sd_batch_size"],
                                  values["lora_rank"])
    if not run.pipeline:
        raise SettingsError("--generator diffusion draws with a Stable Diffusion pipeline: give "
                            "its folder or cached name with --pipeline")
    if regime.fresh_fraction > 0 and regime.fresh == 0:
        raise SettingsError(f"--fresh-fraction {regime.fresh_fraction} of --num-captions "
                            f"{run.num_captions} rounds to 0 fresh images per generation")
    s = real_settings(values)
    shard = parse_shard(run.shard)
    accelerator = Accelerator(cpu=values["device"] == "cpu")
    if shard is not None and accelerator.num_processes > 1:
        raise SettingsError("--shard is one process's part: run it without accelerate launch")
    limit_cpu_threads(values["threads"])
    coco = coco_prompts(run, regime) if run.prompts == "coco" else None
    data = load_dataset(run.dataset, run.data_dir) if coco is None else None
    real = None
    if data is not None:  # the GAN loop's reference: the evaluator, the test images, floors
        real = scoring.real_images_for(data, accelerator.device, scoring.EvaluatorSettings(
            data_dir=run.data_dir), s)
        # The real-vs-real floors, drawn once with seed 0: one floor for every loop and seed.
        scoring.real_image_floors(real, run.num_captions, accelerator.device,
                                  replace(s, seed=0))
    for seed in values["seeds"]:
        prompts = coco if coco is not None else dataset_prompts(run, regime, data, seed)
        seed_everything(seed, values["deterministic"])
        run_diffusion_loop(run, regime, finetuning, prompts, seed, values, accelerator, real)


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    # IMAGE_SIZE is the diffusion pipeline's size: a folder is read at its images' own size.
    values = resolve_dataset(configure(globals(), argv), resize_setting=None)
    if values["generator"] == "diffusion":
        return diffusion_main(values)
    base = pick(LoopRun, values, seed=values["seeds"][0])
    regime = Regime(values["regime"], values["train_images"], values["fresh_fraction"])
    optimiser = optimiser_settings(values)
    s = scoring.ScoringSettings(seed=base.seed, bootstrap=values["bootstrap"],
                                kid_subsets=values["kid_subsets"],
                                cas_epochs=values["cas_epochs"])
    root = Path(base.data_dir)
    limit_cpu_threads(values["threads"])
    device = pick_device(values["device"])
    data = load_dataset(base.dataset, base.data_dir)
    held_out = held_out_count(len(data.x_train), base.held_out_fraction)
    if len(data.x_train) < regime.train_images + held_out:
        raise StageError(f"--train-images {regime.train_images} and --held-out-fraction "
                         f"{base.held_out_fraction} ({held_out} images): {data.name} has only "
                         f"{len(data.x_train)} "
                         f"training images")
    if regime.fresh_fraction > 0 and regime.fresh == 0:
        raise SettingsError(f"--fresh-fraction {regime.fresh_fraction} of --train-images "
                            f"{regime.train_images} rounds to 0 fresh images per generation; use "
                            f"0, or at least {0.5 / regime.train_images:.2g}")
    pool = len(data.x_train) - regime.train_images - held_out
    if regime.fresh > pool:
        raise StageError(f"--fresh-fraction {regime.fresh_fraction}: {regime.fresh} fresh "
                         f"images per generation, more than the {pool} training images outside "
                         f"generation 0's set and the held-out ones")
    if regime.train_images < base.batch_size:
        raise StageError(f"--train-images {regime.train_images} is less than one batch of "
                         f"--batch-size {base.batch_size}")
    shortfall = generator_step_shortfall(regime.train_images, base.batch_size,
                                         optimiser.n_critic)
    if shortfall:
        batches, largest = shortfall
        raise StageError(f"--train-images: {regime.train_images} at --batch-size "
                         f"{base.batch_size} give {batches} batch(es) per epoch, fewer than "
                         f"--n-critic {optimiser.n_critic}, so no generator step; use "
                         f"--batch-size {largest} or smaller, or --n-critic {max(1, batches)}")
    if len(data.x_test) < base.n_images:
        raise StageError(f"--n-images {base.n_images}: {data.name} has only {len(data.x_test)} "
                         f"test images to prompt with")
    if np.bincount(data.y_test[:base.n_images]).max() < 2:
        raise StageError(f"--n-images {base.n_images} gives no class two prompts: within-class "
                         f"diversity cannot be measured")
    # Every image folder the loops will write, checked before anything trains: one a stage did
    # not write is never replaced, and found after a generation's training it would stop the
    # loop hours in.
    for seed in values["seeds"]:
        name = run_name(pick(LoopRun, values, seed=seed), regime)
        for generation in range(base.generations + 1):
            check_replaceable(root / name / f"gen_{generation}", only_prompt_images)
    check_replaceable(root / f"{data.name}_loop_reference", only_prompt_images)
    folders = {folder: ensure_output_dir(root / folder) for folder in
               ("results", "visualizations", "checkpoints/loop/start")}
    real = scoring.real_images_for(
        data, device, scoring.EvaluatorSettings(data_dir=base.data_dir), s)
    # The real-vs-real floors, drawn once with seed 0: the same floor for every loop and seed,
    # whichever seeds this run lists first (a floor drawn per seed would differ from seed to seed).
    scoring.real_image_floors(real, base.n_images, device, replace(s, seed=0))
    reference = root / f"{data.name}_loop_reference"
    if not all((reference / image_name(i)).is_file() for i in range(base.n_images)):
        write_image_folder(reference, data.x_test[:base.n_images])  # the real prompt images
    finished = {}
    for seed in values["seeds"]:
        loop = make_loop(values, seed, data, device)
        finished.update([run_loop(loop, values, real, replace(s, seed=seed), folders,
                                  reference)])
    figure = metrics_figure(finished, f"{base.dataset} self-consuming loop: {base.n_images} "
                                      f"images per generation against the {len(data.x_test)} "
                                      f"real test images")
    figure_name = f"{config_of(run_name(base, regime))}_metrics.png"
    metrics_png = save_and_close(figure, folders["visualizations"] / figure_name)
    print(f"\nfigure of this run's loops: {metrics_png}; every loop of {base.dataset} side by "
          f"side: python compare_loops.py --dataset {base.dataset} --data-dir {base.data_dir}")


if __name__ == "__main__":
    run_stage(main)
