"""A self-consuming loop of class-conditioned GANs, each trained on the last one's images.

Generation 0 is a caption-(class-)conditioned GAN (Plan 1's cGAN generator and projection
discriminator, trained by the shared loop in gans.py, the condition a one-hot class) trained on
TRAIN_IMAGES real training images. Generation k >= 1 is trained only on TRAIN_IMAGES images that
generation k-1 generated, with the class histogram of generation 0's set (the fully synthetic
loop of Shumailov et al. 2023 and Alemohammad et al. 2023); FRESH_FRACTION > 0 replaces that
share of them with real training images drawn anew each generation (the "fresh data" loop).
With WARM_START generation k starts from generation k-1's weights (fine-tuning on its own
output); without it every generation is trained from scratch.

The prompts: the first N_IMAGES test images, each with a caption of its class ("a photo of a
Sneaker", a template of train_small_clip.py chosen per image by the seed). After each generation
its EMA generator draws one image per prompt (the same noise every generation) and writes
DATA_DIR/<run>/gen_<k>/test_<id>.png, the id being the test image's index; DATA_DIR/<run>/
captions.json holds the captions of those ids in COCO's format, so that
extract_generation_embeddings.py reads them with
--annotation-file DATA_DIR/<run>/captions.json --generation-dir-pattern 'DATA_DIR/<run>/gen_{g}'.
<run> is <ds>_loop, with _fresh<percent> for a fresh-data loop and _scratch without warm start.

Per generation it measures, against the real test images, the evaluator CNN's FID (classifier
features, beside the real-vs-real floor), precision/recall, density/coverage and class
consistency (the evaluator's class of each image against its prompt's class), as evaluate.py
does for Plan 1, and the within-class variance of the evaluator features relative to that of the
real prompt images (the diversity left inside a class); writes them to
DATA_DIR/results/<run>_metrics.json, DATA_DIR/<run>/gen_<k>.npz (the images in Plan 1's sample
format), a figure of the metrics (with the other loops of the dataset found in results/) and a
grid of samples per generation. Each generation's checkpoint and training set are kept in
DATA_DIR/checkpoints/loop/<run>/; an interrupted loop resumes in the generation it was in, and
finished generations are kept (a larger --generations continues a finished loop).

    python self_consuming_loop.py --dataset digits --generations 2 --n-images 50 --train-images 500
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import image_gans
import scoring
from artifacts import (
    check_settings_match,
    ensure_output_dir,
    fingerprint,
    load_checkpoint,
    load_npz,
    make_meta,
    replace_directory,
    save_figure,
    save_npz,
    write_text,
)
from captions import CAPTION_TEMPLATES, class_phrase
from data_sources import ImageDataset, load_dataset
from gans import (
    LOSS_KINDS,
    GANTrainer,
    LoopSettings,
    check_generator_steps,
    image_grid_figure,
    tensor_batches,
)
from image_gans import ConditionalGAN, ImageGANConfig, class_condition, to_signed
from runtime import StageError, limit_cpu_threads, pick_device, run_stage, seed_everything
from settings import configure, pick

# Internal tables (no same-line comment, so not settings).
LOSS_NAMES = LOSS_KINDS
METRIC_KEYS = ("fid", "fid_floor", "kid", "kid_std", "kid_floor", "precision", "precision_floor",
               "recall", "recall_floor", "density", "density_floor", "coverage",
               "coverage_floor", "vendi", "vendi_real", "class_consistency",
               "class_consistency_real", "intra_fid", "intra_fid_floor", "cas", "cas_real",
               "score", "score_real", "within_class_variance", "within_class_variance_real",
               "within_class_spread", "feature_space")
TRAIN_SET_KEYS = {"x": (3, "u"), "y": (1, "iu"), "real": (1, "b")}

DATASET = "fashion-mnist"  # dataset of the real images [in data_sources.DATASETS]
DATA_DIR = "data"  # where images, checkpoints, results and figures are written
GENERATIONS = 10  # generations after the first: gen_0 ... gen_<N> are trained and written [>= 1]
FRESH_FRACTION = 0.0  # share of each later training set that is fresh real images [>= 0, <= 1]
WARM_START = True  # generation k starts from generation k-1's weights; false: from scratch
TRAIN_IMAGES = 10000  # training images of every generation (gen 0: the first N real ones) [>= 2]
N_IMAGES = 1000  # images written per generation, one per test image (the first N) [>= 1]
EPOCHS_FIRST = 3  # epochs of generation 0 [>= 1]
EPOCHS = 1  # epochs of every later generation [>= 1]
BATCH_SIZE = 64  # images per step [>= 2]
SEED = 0  # seeds weights, batch order, noise, captions and the fresh draws [>= 0]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS, OpenMP (0: library default; more were slower here) [>= 0]
NOISE_DIM = 32  # size of the generator's noise z [>= 1]
WIDTH = 32  # channels of the 14x14 conv layers of G and D (twice as many at 7x7) [>= 1]
FEATURE_DIM = 256  # width of the discriminator's feature layer [>= 1]
LOSS = "hinge"  # adversarial loss [in LOSS_NAMES]
GRADIENT_PENALTY = 0.0  # weight of the WGAN-GP gradient penalty (10 with wasserstein) [>= 0]
SPECTRAL_NORM = True  # spectral normalisation of every discriminator layer
N_CRITIC = 1  # discriminator steps per generator step [>= 1]
LR_GENERATOR = 1e-3  # Adam learning rate of the generator [> 0]
LR_DISCRIMINATOR = 1e-3  # Adam learning rate of the discriminator [> 0]
BETA1 = 0.5  # Adam beta1 (DCGAN: 0.5) [>= 0, < 1]
BETA2 = 0.999  # Adam beta2 [>= 0, < 1]
EMA_DECAY = 0.99  # decay of the generator's weight average that draws the images [>= 0, < 1]
LOG_EVERY = 50  # steps between reads of the summed losses [>= 1]
SAMPLE_BATCH_SIZE = 1000  # images per generator pass when sampling [>= 1]


@dataclass(frozen=True)
class LoopRun:
    """What the loop trains and writes (the GAN's own hyper-parameters: ImageGANConfig; its
    optimiser: LoopSettings)."""

    dataset: str
    data_dir: str
    generations: int
    fresh_fraction: float
    warm_start: bool
    train_images: int
    n_images: int
    epochs_first: int
    epochs: int
    batch_size: int
    seed: int
    deterministic: bool
    sample_batch_size: int


# ---------------------------------------------------------------- names and captions
def run_name(run: LoopRun) -> str:
    """<ds>_loop, _fresh<percent> for a fresh-data loop, _scratch without warm start."""
    name = f"{run.dataset}_loop"
    if run.fresh_fraction > 0:
        name += f"_fresh{100 * run.fresh_fraction:g}"
    if not run.warm_start:
        name += "_scratch"
    return name


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
            "images": [{"id": i, "file_name": image_name(i), "width": 28, "height": 28}
                       for i in range(len(captions))],
            "annotations": [{"id": i, "image_id": i, "caption": caption}
                            for i, caption in enumerate(captions)]}


# ---------------------------------------------------------------- models and data
def build_model(num_classes: int, config: ImageGANConfig) -> ConditionalGAN:
    """Plan 1's cGAN with a one-hot class as its condition."""
    return image_gans.build_image_gan("cgan", num_classes, num_classes, config)


def conditions(labels: np.ndarray, num_classes: int, device: torch.device) -> torch.Tensor:
    """The generator's condition for each label: its one-hot class (Plan 1's class_condition)."""
    return class_condition(torch.as_tensor(labels, device=device).long(), num_classes)


def generate(model: ConditionalGAN, labels: np.ndarray, num_classes: int, seed: int,
             device: torch.device, batch_size: int) -> np.ndarray:
    """uint8 images (N, 28, 28), one per label, in eval mode, with noise fixed by ``seed`` (drawn
    on the CPU, so the same on every device)."""
    return image_gans.regenerate(model, conditions(labels, num_classes, device), seed,
                                 batch_size)


def synthetic_training_set(previous: ConditionalGAN, data: ImageDataset, generation: int,
                           device: torch.device, run: LoopRun) -> dict[str, np.ndarray]:
    """Generation k's training set: --train-images images of generation k-1 with labels drawn
    from generation 0's labels, of which a --fresh-fraction share is replaced by real training
    images drawn anew (without replacement) from the whole training split."""
    rng = np.random.default_rng([run.seed, generation])
    n = run.train_images
    n_fresh = int(round(run.fresh_fraction * n))
    labels = data.y_train[:n][rng.permutation(n)[:n - n_fresh]]
    images = generate(previous, labels, data.num_classes,
                      run.seed * 100_003 + 7 * generation + 1, device, run.sample_batch_size)
    fresh = np.sort(rng.choice(len(data.x_train), n_fresh, replace=False))
    x = np.concatenate([images, data.x_train[fresh]])
    y = np.concatenate([labels, data.y_train[fresh]]).astype(np.int64)
    real = np.concatenate([np.zeros(len(images), bool), np.ones(n_fresh, bool)])
    return {"x": x, "y": y, "real": real}


def resume_settings(generation: int, train_hash: str, run: LoopRun, config: ImageGANConfig,
                    loop: LoopSettings) -> dict[str, Any]:
    """What a generation's checkpoint must share with this run to be continued."""
    return {"dataset": run.dataset, "generation": generation, "train_set": train_hash,
            "fresh_fraction": run.fresh_fraction, "warm_start": run.warm_start,
            "train_images": run.train_images,
            "epochs": run.epochs_first if generation == 0 else run.epochs,
            "batch_size": run.batch_size, "seed": run.seed, "noise_dim": config.noise_dim,
            "width": config.width, "feature_dim": config.feature_dim, "loss": config.loss,
            "gradient_penalty": config.gradient_penalty, "spectral_norm": config.spectral_norm,
            "n_critic": loop.n_critic, "lr_generator": loop.lr_generator,
            "lr_discriminator": loop.lr_discriminator, "betas": list(loop.betas),
            "ema_decay": loop.ema_decay}


def loop_settings(run: LoopRun, config: ImageGANConfig, loop: LoopSettings) -> dict[str, Any]:
    """Settings that change what any generation is: a results file made with others is not
    continued."""
    return {k: v for k, v in resume_settings(0, "", run, config, loop).items()
            if k not in ("generation", "train_set", "epochs")} | {
        "epochs_first": run.epochs_first, "epochs_later": run.epochs, "n_images": run.n_images}


# ---------------------------------------------------------------- outputs
def write_generation_folder(folder: Path, images: np.ndarray) -> None:
    """One PNG per prompt, written into a staging folder that replaces ``folder`` when done."""
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for image_id, pixels in enumerate(images):
            Image.fromarray(pixels, mode="L").save(staging / image_name(image_id))
        replace_directory(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def generation_complete(folder: Path, samples: Path, count: int) -> bool:
    """Whether a generation's folder holds exactly its ``count`` images and its NPZ exists."""
    if not folder.is_dir() or not samples.is_file():
        return False
    names = {p.name for p in folder.iterdir() if p.suffix == ".png"}
    return names == {image_name(i) for i in range(count)}


def samples_grid(rows: list[np.ndarray], labels: list[str], title: str) -> Any:
    return image_grid_figure(rows, labels, title)


def run_label(run: str) -> str:
    """A legend label for a run name: 'fully synthetic', '20% fresh real', '... from scratch'."""
    fresh = run.partition("_fresh")[2].removesuffix("_scratch")
    label = f"{fresh}% fresh real" if fresh else "fully synthetic"
    if fresh == "100":
        label += " (control)"
    return label + (", from scratch" if run.endswith("_scratch") else "")


def metrics_figure(runs: dict[str, list[dict[str, Any]]], title: str) -> Any:
    """FID (with its floor), class consistency, within-class spread, recall and coverage against
    the generation, one line per run; the real-image references as dashed grey lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("fid", "FID, evaluator features (log scale)", "fid_floor"),
              ("class_consistency", "class consistency", "class_consistency_real"),
              ("within_class_spread", "within-class variance / real's", None),
              ("recall", "recall (k=3)", None),
              ("coverage", "coverage (k=5)", None))
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    first = next(iter(runs.values()))
    for axis, (key, name, reference) in zip(axes, panels, strict=True):
        for run, records in runs.items():
            axis.plot([r["generation"] for r in records], [r.get(key, np.nan) for r in records],
                      marker="o", markersize=4, label=run_label(run))
        if reference is not None:
            axis.plot([r["generation"] for r in first], [r[reference] for r in first],
                      linestyle="--", color="grey", label="real images")
        elif key == "within_class_spread":
            axis.axhline(1.0, linestyle="--", color="grey", label="real images")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("generation")
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9,
                  frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return figure


def format_table(records: list[dict[str, Any]]) -> str:
    lines = ["| generation | trained on | FID (floor) | class consistency (real) | within-class "
             "variance / real's | precision | recall | density | coverage | train time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(f"| {r['generation']} | {r['trained_on']} | {r['fid']:.2f} "
                     f"({r['fid_floor']:.2f}) | {r['class_consistency']:.3f} "
                     f"({r['class_consistency_real']:.3f}) | {r['within_class_spread']:.3f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | "
                     f"{r['coverage']:.3f} | {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def read_results(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished generations' records of an earlier run with the same loop settings."""
    if not path.is_file():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        saved, records = document["loop_settings"], document["generations"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise StageError(f"{path}: not a results file of this loop ({err}); delete it to start "
                         f"again") from err
    differing = {k: (v, saved.get(k)) for k, v in settings.items() if saved.get(k) != v}
    if differing:
        listed = ", ".join(f"{k}: now {a!r}, there {b!r}" for k, (a, b) in differing.items())
        raise StageError(f"{path} records a loop with other settings ({listed}); delete it (and "
                         f"the run's folders) to start again, or run with its settings")
    return records


# ---------------------------------------------------------------- the stage
@dataclass(frozen=True)
class Loop:
    """Everything a generation needs: the run, the GAN's config and optimiser, the data."""

    run: LoopRun
    config: ImageGANConfig
    optimiser: LoopSettings
    data: ImageDataset
    checkpoints: Path
    device: torch.device

    def settings(self) -> dict[str, Any]:
        return loop_settings(self.run, self.config, self.optimiser)


def optimiser_settings(values: dict[str, Any]) -> LoopSettings:
    """The GAN loop's optimiser settings from this stage's settings (``configure``'s values);
    each generation adds its own seed."""
    return LoopSettings(n_critic=values["n_critic"], lr_generator=values["lr_generator"],
                        lr_discriminator=values["lr_discriminator"],
                        betas=(values["beta1"], values["beta2"]),
                        ema_decay=values["ema_decay"], log_every=values["log_every"])


def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    run = pick(LoopRun, values)
    config = pick(ImageGANConfig, values)
    optimiser = optimiser_settings(values)
    score_settings = scoring.ScoringSettings(seed=run.seed)
    name = run_name(run)
    root = Path(run.data_dir)
    run_dir = ensure_output_dir(root / name)
    folders = {folder: ensure_output_dir(root / folder) for folder in
               ("results", "visualizations", f"checkpoints/loop/{name}")}
    checkpoints = folders[f"checkpoints/loop/{name}"]
    limit_cpu_threads(values["threads"])
    seed_everything(run.seed, run.deterministic)
    device = pick_device(values["device"])
    data = load_dataset(run.dataset, run.data_dir)
    if len(data.x_train) < run.train_images:
        raise StageError(f"--train-images {run.train_images}: {data.name} has only "
                         f"{len(data.x_train)} training images")
    if run.train_images < run.batch_size:
        raise StageError(f"--train-images {run.train_images} is less than one batch of "
                         f"--batch-size {run.batch_size}")
    check_generator_steps(run.train_images, run.batch_size, optimiser.n_critic,
                          "--train-images")
    if len(data.x_test) < run.n_images:
        raise StageError(f"--n-images {run.n_images}: {data.name} has only {len(data.x_test)} "
                         f"test images to prompt with")
    if np.bincount(data.y_test[:run.n_images]).max() < 2:
        raise StageError(f"--n-images {run.n_images} gives no class two prompts: within-class "
                         f"diversity cannot be measured")
    loop = Loop(run, config, optimiser, data, checkpoints, device)
    results_path = folders["results"] / f"{name}_metrics.json"
    records = read_results(results_path, loop.settings())
    done = {int(r["generation"]) for r in records}

    captions = prompt_captions(data, run.n_images, run.seed)
    caption_file = run_dir / "captions.json"
    caption_text = json.dumps(coco_captions(data, captions), indent=1) + "\n"
    if not caption_file.is_file() or caption_file.read_text(encoding="utf-8") != caption_text:
        write_text(caption_file, caption_text)
    prompt_labels = data.y_test[:run.n_images].astype(np.int64)
    print(f"{data.name}: loop {name}, generations 0-{run.generations}, {run.train_images} "
          f"training images each ({run.fresh_fraction:.0%} fresh real after generation 0), "
          f"{'warm' if run.warm_start else 'cold'} start, {run.n_images} prompts "
          f"({caption_file}); device {device}", flush=True)

    real = scoring.real_images_for(
        data, device, scoring.EvaluatorSettings(data_dir=run.data_dir, seed=run.seed),
        score_settings)
    real_spread = scoring.within_class_variance(real.test_features[:run.n_images],
                                                prompt_labels)
    grid_ids = [int(np.flatnonzero(prompt_labels == c)[0]) for c in np.unique(prompt_labels)]
    previous: ConditionalGAN | None = None
    previous_path: Path | None = None
    for generation in range(run.generations + 1):
        folder = run_dir / f"gen_{generation}"
        samples_path = run_dir / f"gen_{generation}.npz"
        checkpoint = checkpoints / f"gen_{generation}.pt"
        if generation in done and generation_complete(folder, samples_path, run.n_images):
            previous, previous_path = None, checkpoint  # loaded only if the next one needs it
            continue
        started = time.time()
        generation_seed = run.seed * 100_003 + generation
        seed_everything(generation_seed, run.deterministic)

        train, previous = training_set(generation, loop, previous, previous_path, values)
        train_hash = fingerprint(train["x"], train["y"])
        n_fresh = int(train["real"].sum())
        trained_on = source_of(generation, n_fresh, run)

        seed_everything(generation_seed, run.deterministic)
        model = build_model(data.num_classes, config).to(device)
        trainer = GANTrainer(model, LoopSettings(**{**vars(optimiser), "seed": generation_seed}),
                             image_gans.architecture("cgan", data.num_classes, data.num_classes,
                                                     config))
        if run.warm_start and generation > 0 and not checkpoint.exists():
            state = generation_state(previous_path, generation - 1, loop)
            model.load_state_dict(state["model"])
            trainer.ema.load_state_dict(state["ema"])
        else:
            model.set_condition_statistics(conditions(train["y"], data.num_classes, device))
        tensors = {"x": torch.from_numpy(train["x"]).to(device),
                   "condition": conditions(train["y"], data.num_classes, device)}

        def make_batches(epoch: int, tensors: dict[str, torch.Tensor] = tensors,
                         seed: int = generation_seed):
            for batch in tensor_batches(tensors, run.batch_size, seed, epoch):
                yield {**batch, "x": to_signed(batch["x"])}

        epochs = run.epochs_first if generation == 0 else run.epochs

        def on_resume(epoch: int, generation: int = generation,
                      checkpoint: Path = checkpoint) -> None:
            print(f"gen {generation}: resumed from {checkpoint} after epoch {epoch}", flush=True)

        report = trainer.fit(make_batches, epochs, checkpoint,
                             resume_settings(generation, train_hash, run, config, optimiser),
                             steps_per_epoch=run.train_images // run.batch_size,
                             desc=f"gen {generation}", on_resume=on_resume)
        if report.diverged:
            print(f"warning: gen {generation}: training diverged ({report.diverged}); the "
                  f"last good epoch ({report.best_epoch}) is used", flush=True)
        train_seconds = time.time() - started
        previous, previous_path = trainer.best_model(), checkpoint

        images = generate(previous, prompt_labels, data.num_classes, run.seed, device,
                          run.sample_batch_size)
        arrays = {"x_gen": images, "idx_src": np.arange(run.n_images, dtype=np.int64),
                  "y_src": prompt_labels}
        metric_values = scoring.plan1_metrics(samples_path, arrays, real, device, score_settings)
        features, _ = scoring.image_outputs(real, images, device, score_settings)
        metric_values["within_class_variance"] = scoring.within_class_variance(features,
                                                                               prompt_labels)
        metric_values["within_class_variance_real"] = real_spread
        metric_values["within_class_spread"] = metric_values["within_class_variance"] / \
            real_spread
        record = {"generation": generation, "trained_on": trained_on,
                  "train_images": run.train_images, "fresh_real_images": n_fresh,
                  "epochs": trainer.epoch, "diverged": report.diverged,
                  "train_seconds": train_seconds,
                  **{k: metric_values[k] for k in METRIC_KEYS},
                  **{k: v for k, v in metric_values.items() if k.endswith("_ci95")},
                  **({"undefined": metric_values["undefined"]}
                     if "undefined" in metric_values else {}),
                  "n_generated": metric_values["n_generated"],
                  "n_test": metric_values["n_test"],
                  "floor_n_train": metric_values["floor_n_train"]}
        write_generation_folder(folder, images)
        save_npz(samples_path, arrays, make_meta(
            __file__, values, run.dataset, run.seed, generation=generation, run=name,
            checkpoint=str(checkpoint), captions=str(caption_file), train_set_hash=train_hash,
            **{k: v for k, v in record.items() if k != "generation"}))
        records = [r for r in records if int(r["generation"]) != generation] + [record]
        records.sort(key=lambda r: int(r["generation"]))
        write_results(results_path, records, values, name, caption_file, loop)
        print(f"gen {generation}: trained on {trained_on} ({train_seconds:.0f} s); FID "
              f"{metric_values['fid']:.2f} (floor {metric_values['fid_floor']:.2f}), class "
              f"consistency {metric_values['class_consistency']:.3f}, recall "
              f"{metric_values['recall']:.3f}; wrote {folder}/ ({run.n_images} images)",
              flush=True)

    all_images = [load_npz(run_dir / f"gen_{g}.npz", {"x_gen": (3, "u")})["x_gen"]
                  for g in range(run.generations + 1)]
    rows = [data.x_test[grid_ids]] + [images[grid_ids] for images in all_images]
    labels = ["real"] + [f"gen {g}" for g in range(run.generations + 1)]
    figure = samples_grid(rows, labels, f"{name}: the first test prompt of each class, drawn "
                                        f"by every generation (same noise)")
    import matplotlib.pyplot as plt

    grid_png = save_figure(figure, folders["visualizations"] / f"{name}_samples.png")
    plt.close(figure)
    figure = metrics_figure(compared_runs(folders["results"], name, records, run),
                            f"{run.dataset} self-consuming loops: {run.n_images} images per "
                            f"generation against the {len(data.x_test)} real test images")
    metrics_png = save_figure(figure, folders["visualizations"] / f"{name}_metrics.png")
    plt.close(figure)
    print(f"\n{name}: FID and precision/recall on the evaluator CNN's features (not Inception: "
          f"compare with the floor, {run.n_images} real training images against the test "
          f"set)\n")
    print(format_table(records))
    print(f"\nresults: {results_path}; figures: {grid_png}, {metrics_png}; embed the "
          f"generations with:\n"
          f"  python extract_generation_embeddings.py --annotation-file {caption_file} "
          f"--generation-dir-pattern '{run_dir}/gen_{{g}}' --num-captions {run.n_images} "
          f"--model {root}/checkpoints/clip_{run.dataset}")


def training_set(generation: int, loop: Loop, previous: ConditionalGAN | None,
                 previous_path: Path | None, values: dict[str, Any]
                 ) -> tuple[dict[str, np.ndarray], ConditionalGAN | None]:
    """Generation k's training set and the previous generation's model (loaded if it was
    needed): the first --train-images real images for generation 0; else the set drawn from
    generation k-1, saved beside the checkpoints the first time and read back after."""
    run, data = loop.run, loop.data
    if generation == 0:
        return {"x": data.x_train[:run.train_images], "y": data.y_train[:run.train_images],
                "real": np.ones(run.train_images, bool)}, previous
    path = loop.checkpoints / f"train_gen_{generation}.npz"
    if path.is_file():
        train = load_npz(path, TRAIN_SET_KEYS, aligned=(("x", "y", "real"),))
        check_settings_match(path, train["meta"].get("loop_settings", {}), loop.settings())
        if len(train["x"]) != run.train_images:
            raise StageError(f"{path}: holds {len(train['x'])} images, not --train-images "
                             f"{run.train_images}; delete it to make it again")
        return train, previous
    if previous is None:
        previous = load_generation_model(previous_path, generation - 1, loop)
    train = synthetic_training_set(previous, data, generation, loop.device, run)
    save_npz(path, train, make_meta(__file__, values, run.dataset, run.seed,
                                   generation=generation,
                                   made_by=f"generation {generation - 1} ({previous_path})",
                                   fresh_real_images=int(train["real"].sum()),
                                   loop_settings=loop.settings()))
    return train, previous


def source_of(generation: int, n_fresh: int, run: LoopRun) -> str:
    """What a generation was trained on, for tables: real, gen k-1 (+ fresh), fresh only."""
    if generation == 0:
        return "real"
    if n_fresh == run.train_images:
        return "fresh real only"
    return f"gen {generation - 1}" + (f" + {n_fresh} fresh real" if n_fresh else "")


def generation_state(checkpoint: Path | None, generation: int, loop: Loop) -> dict[str, Any]:
    """The checkpoint of a finished generation, checked to come from a loop with these
    settings."""
    if checkpoint is None or not checkpoint.is_file():
        raise StageError(f"{checkpoint}: the checkpoint of generation {generation} is missing; "
                         f"the next generation needs it (delete the run's results file to run "
                         f"the loop again)")
    state = load_checkpoint(checkpoint, required=("model", "ema", "best_ema", "settings"))
    saved = state["settings"]
    check_settings_match(checkpoint, saved,
                         resume_settings(generation, str(saved.get("train_set")), loop.run,
                                         loop.config, loop.optimiser))
    return state


def load_generation_model(checkpoint: Path | None, generation: int,
                          loop: Loop) -> ConditionalGAN:
    """The EMA generator of a finished generation (its best weights), from its checkpoint."""
    state = generation_state(checkpoint, generation, loop)
    return image_gans.from_checkpoint(checkpoint, loop.device, state=state)


def write_results(path: Path, records: list[dict[str, Any]], values: dict[str, Any], name: str,
                  caption_file: Path, loop: Loop) -> None:
    document = {"loop_settings": loop.settings(), "generations": records,
                "meta": make_meta(__file__, values, loop.run.dataset, loop.run.seed, run=name,
                                  captions=str(caption_file))}
    write_text(path, json.dumps(document, indent=2) + "\n")


def compared_runs(results_dir: Path, name: str, records: list[dict[str, Any]],
                  run: LoopRun) -> dict[str, list[dict[str, Any]]]:
    """This run's records and those of the other loops of the dataset found in ``results_dir``."""
    runs = {name: records}
    for path in sorted(results_dir.glob(f"{run.dataset}_loop*_metrics.json")):
        other = path.name.removesuffix("_metrics.json")
        if other == name:
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            runs[other] = list(document["generations"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            print(f"note: {path} is not readable as loop results; left out of the figure")
    return runs


if __name__ == "__main__":
    run_stage(main)
