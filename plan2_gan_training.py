"""Plan 2: GANs that generate embedding vectors, and GANs that translate between two embeddings.

Generators of embeddings (learn the distribution of data/embeddings/<ds>_<enc>.npz, or of a
flow-refined <ds>_<enc>+<flow>.npz): WGAN-GP (optionally class-conditional), VAE-GAN, a
contrastive GAN (class-conditional, NT-Xent towards real embeddings of the class asked for) and,
beside the GANs, class-conditional flow matching (straight paths, an Euler sampler): the model
a researcher would pick instead, trained by the same loop without a discriminator.
Translators between two encoders' embeddings of the same images, trained without pairs: CycleGAN
and DualGAN. The training images are cut into two disjoint halves, one seen only as domain A
(--encoder), the other only as domain B (--encoder-b); on the test split both embeddings of each
image are known, which measures how well A->B recovers the true B embedding. Every model is an
MLP over standardised vectors (train statistics) trained through the shared loop in
training/gans.py.

Writes data/embeddings/<ds>_<enc>_<gan>.gen.npz (generated embeddings; y_gen for conditional
models), data/embeddings/<ds>_<encA>-to-<encB>_<gan>.npz (translated test embeddings), and, when
the encoder is an autoencoder with its checkpoint, data/samples/plan2/<ds>_<enc>_<gan>.npz: the
generated embeddings decoded into images (and _plan1-<gan>.npz through each Plan 1 generator of
the encoder); loss curves and a PCA / t-SNE picture of real against generated embeddings in
data/visualizations/; results tables (printed, and in data/results/: plan2_<ds>_<enc>.md for
the generators, plan2_<ds>_<encA>-to-<encB>.md for the translators).

    python plan2_gan_training.py --dataset digits --encoder ae_basic --encoder-b vae --epochs 5
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataio.artifacts import (
    ensure_output_dir,
    fingerprint,
    hold_output_lock,
    holds_output_locks,
    load_embeddings,
    make_meta,
    remake_hint,
    save_npz,
    tagged,
    write_text,
)
from dataio.data_sources import class_names_of, load_dataset, resolve_embedded_dataset
from dataio.splits import held_out_count, held_out_split, split_record
from evaluation import scoring
from evaluation.metrics import frechet_distance
from models import encoders
from models.decoding import autoencoder_decoder, plan1_decoders
from models.flow_models import FLOW_NAMES
from models.vector_gans import (
    GAN_NAMES,
    GENERATORS,
    TRANSLATORS,
    VECTOR_GANS,
    Sizes,
    Standardiser,
    TranslationGAN,
    VectorGANConfig,
    adam_betas,
    architecture,
    build_vector_gan,
    class_draw,
    class_groups,
    generate,
    generate_ensemble,
    model_settings,
    translate,
)
from reporting.figures import loss_curves_figure, real_vs_generated_figure, save_and_close
from reporting.plan2_tables import generator_table, plain_row, rows_on_disk, translation_table
from runtime.provenance import code_version
from runtime.settings import SettingsError, check_input_tag, configure, pick
from runtime.stage import StageError, limit_cpu_threads, pick_device, run_stage, seed_everything
from runtime.tracking import open_run_log
from training.gans import (
    GANTrainer,
    GenerativeModel,
    TrainerSettings,
    generator_step_shortfall,
    passes_per_epoch,
    tensor_batches,
)

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # embeddings' dataset: a built-in, folder:PATH or a folder set's name
DATA_DIR = "data"  # where embeddings are read and every output is written
ENCODER = "ae_advanced"  # embedding to learn (an autoencoder's decodes to images); domain A
ENCODER_B = "vae"  # domain B of CycleGAN and DualGAN: another encoder of the same images
MODELS = GAN_NAMES  # models to train, comma-separated [in GAN_NAMES]
EPOCHS = 120  # total epochs per model (with --no-lr-decay, more continues a finished run) [>= 1]
EPOCH_VECTORS = 60000  # an epoch is round(this / training size) passes, at least 1 (0: one) [>= 0]
BATCH_SIZE = 256  # embeddings per step [>= 2]
LIMIT = 0  # train on the first N training embeddings only (0: all) [>= 0]
SEED = 0  # seeds weights, batch order, noise, the halves and the saved samples [seed]
TAG = ""  # a variant's name: outputs <ds>_<enc>_<gan>@TAG beside the untagged ("": none) [tag]
INPUT_TAG = ""  # learn the embeddings <ds>_<enc>@INPUT_TAG.npz (and its decoders) [tag]
TENSORBOARD = True  # log losses and held-out distances to <data-dir>/runs/plan2/<run>/
WANDB = ""  # also mirror the log to this Weights & Biases project (needs wandb; "": off)
ENSEMBLE = 1  # generators per model, member k seeded SEED+k; samples split evenly [>= 1, <= 32]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
NOISE_DIM = 32  # size of the generator's noise (VAE-GAN: of its latent code) [>= 1]
HIDDEN = 256  # width of every hidden layer of every network [>= 1, <= 8192]
DEPTH = 3  # hidden layers of every generator, critic and encoder [>= 1, <= 32]
WGAN_CONDITIONAL = True  # WGAN-GP and flow matching generate a class asked for (y_gen)
GRADIENT_PENALTY = 10.0  # WGAN-GP penalty weight of the Wasserstein models (paper: 10) [>= 0]
N_CRITIC = 5  # critic steps per generator step of the Wasserstein models (paper: 5) [>= 1]
ENERGY_WEIGHT = 0.0  # WGAN-GP and contrastive GAN: weight of the energy-distance term [>= 0]
MODE_SEEKING = 1.5  # WGAN-GP and contrastive GAN: weight of the mode-seeking term (MSGAN) [>= 0]
WASSERSTEIN_LR = 1e-3  # Adam rate of WGAN-GP, contrastive GAN, DualGAN (paper: 1e-4) [> 0]
LEARNING_RATE = 1e-3  # Adam rate of VAE-GAN and CycleGAN [> 0]
LR_DECAY = True  # learning rates fall linearly over --epochs (to 1/epochs of theirs in the last)
EMA_DECAY = 0.99  # decay of the generators' weight average used for sampling [>= 0, < 1]
VAE_BETA = 1.0  # VAE-GAN: weight of the KL term [>= 0]
VAEGAN_GAMMA = 0.1  # VAE-GAN: the decoder's weight of the feature reconstruction [> 0]
CONTRASTIVE_WEIGHT = 1.0  # contrastive GAN: weight of the NT-Xent term [>= 0]
CONTRASTIVE_TEMPERATURE = 0.5  # contrastive GAN: NT-Xent temperature [> 0]
TRANSLATION_CLASSES = True  # CycleGAN/DualGAN critics see each half's own labels (no pairs)
CYCLE_WEIGHT = 1.0  # CycleGAN: weight of the L1 cycle-consistency loss (paper: 10) [>= 0]
IDENTITY_WEIGHT = 0.0  # CycleGAN: weight of the L1 identity loss, when dims match [>= 0]
DUALGAN_RECONSTRUCTION = 20.0  # DualGAN: weight of its L1 reconstruction loss [>= 0]
FM_STEPS = 100  # flow matching: Euler steps of its sampler from noise to data [>= 1]
SAMPLES = 10000  # embeddings generated per model into <ds>_<enc>_<gan>.gen.npz [>= 10, <= 1000000]
HELD_OUT_FRACTION = 0.05  # share of training vectors held out: their FD picks the epoch [>= 0, < 1]
PLOTS = True  # draw loss curves and the PCA / t-SNE picture of real vs generated embeddings
PLOT_POINTS = 1000  # real and generated points (each) in the PCA / t-SNE picture [>= 10]
LOG_EVERY = 50  # steps between reads of the summed losses (progress bar, curves) [>= 1]
SAMPLE_BATCH_SIZE = 2000  # vectors per generator pass when writing samples and images [>= 1]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class Plan2Settings:
    """What this run trains on, how it trains and what it writes (the models' own
    hyper-parameters: VectorGANConfig)."""

    dataset: str
    data_dir: str
    encoder: str
    encoder_b: str
    models: tuple[str, ...]
    epochs: int
    epoch_vectors: int
    batch_size: int
    limit: int
    seed: int
    tag: str
    input_tag: str
    ensemble: int
    deterministic: bool
    n_critic: int
    wasserstein_lr: float
    learning_rate: float
    lr_decay: bool
    ema_decay: float
    samples: int
    held_out_fraction: float
    plots: bool
    plot_points: int
    log_every: int
    sample_batch_size: int


def trainer_settings(name: str, run: Plan2Settings, seed: int) -> TrainerSettings:
    """The optimiser schedule of a model: WGAN-GP's paper for the Wasserstein models."""
    wasserstein = VECTOR_GANS[name].wasserstein
    lr = run.wasserstein_lr if wasserstein else run.learning_rate
    return TrainerSettings(n_critic=run.n_critic if wasserstein else 1, lr_generator=lr,
                        lr_discriminator=lr, betas=adam_betas(name), ema_decay=run.ema_decay,
                        log_every=run.log_every, seed=seed)


# ---------------------------------------------------------------- data
def making_command(encoder: str, run: Plan2Settings) -> str | None:
    """The command that writes data/embeddings/<ds>_<encoder>.npz; None when no stage of this
    project makes an embedding of that name."""
    base, plus, flow = encoder.partition("+")
    if base not in encoders.ENCODER_NAMES or (plus and flow not in FLOW_NAMES):
        return None
    if plus:
        command = f"python flows.py --dataset {run.dataset} --encoders {base} --flows {flow}"
    else:
        command = f"python encoder_models.py --dataset {run.dataset} --models {encoder}"
    return (command + (f" --tag {run.input_tag}" if run.input_tag else "")
            + (f" --data-dir {run.data_dir}" if run.data_dir != "data" else ""))


def load_source(encoder: str, run: Plan2Settings) -> tuple[Path, dict[str, Any]]:
    """An embedding file of --dataset, checked: labels are class indices, its meta agrees."""
    path = (Path(run.data_dir) / "embeddings"
            / f"{tagged(f'{run.dataset}_{encoder}', run.input_tag)}.npz")
    command = making_command(encoder, run)
    if not path.is_file() and command is None:
        raise StageError(f"{path} not found, and no stage makes it: {encoder!r} is not an "
                         f"encoder of encoder_models.py ({', '.join(encoders.ENCODER_NAMES)}), "
                         f"optionally +<flow> ({', '.join(FLOW_NAMES)}); name one of those, or "
                         f"put your own embedding file there")
    if not path.is_file():
        raise StageError(f"{path} not found; make it with: {command}")
    with remake_hint(command) if command else contextlib.nullcontext():  # a user's own file
        data = load_embeddings(path, run.dataset)  # labels checked to be class indices
    return path, data


def check_same_images(path_a: Path, a: dict[str, Any], path_b: Path, b: dict[str, Any]) -> None:
    """Two embedding files for translation must embed the same images in the same order: both
    say their dataset in their meta, the same one, with as many embeddings and equal labels."""
    between = f"{path_a.name} and {path_b.name}"
    for path, data in ((path_a, a), (path_b, b)):
        if data["meta"].get("dataset") is None:
            raise StageError(f"{path}: its meta names no dataset, so nothing says it embeds the "
                             f"images of the other file; translation needs files written by "
                             f"encoder_models.py or flows.py")
    datasets = (a["meta"].get("dataset"), b["meta"].get("dataset"))
    if datasets[0] != datasets[1]:
        raise StageError(f"{between} embed different datasets ({datasets[0]!r}, "
                         f"{datasets[1]!r}); translation needs two embeddings of the same images")
    for split in ("train", "test"):
        n_a, n_b = len(a[f"z_{split}"]), len(b[f"z_{split}"])
        if n_a != n_b:
            raise StageError(f"{between} hold {n_a} and {n_b} {split} embeddings; translation "
                             f"needs two embeddings of the same images (made with one --limit)")
        wrong = int(np.sum(a[f"y_{split}"] != b[f"y_{split}"]))
        if wrong:
            raise StageError(f"{between}: y_{split} differs at {wrong} of {n_a} positions; "
                             f"these are not embeddings of the same images in one order")


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded halves of range(n): images seen only as A, and only as B."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:2 * half])


def index_batches(n: int, batch_size: int, seed: int, epoch: int,
                  passes: int = 1) -> Iterator[torch.Tensor]:
    """Shuffled CPU index batches of range(n), ``passes`` passes, the order fixed by (seed,
    epoch)."""
    for part in range(passes):
        for batch in tensor_batches({"i": torch.arange(n)}, batch_size, seed, epoch, part):
            yield batch["i"]


def member_suffix(member: int) -> str:
    """The file-name suffix of an ensemble member: none for member 0 (the model's own files)."""
    return f"_member{member}" if member else ""


# ---------------------------------------------------------------- pictures
def save_pictures(trainer: GANTrainer, stem: Path, losses_title: str, real: np.ndarray,
                  fake: np.ndarray, title: str, labels: tuple[str, str],
                  run: Plan2Settings) -> list[Path]:
    """The loss curves (<stem>_losses.png) and the PCA / t-SNE picture of real against generated
    or translated vectors (<stem>_real_vs_generated.png)."""
    return [save_and_close(loss_curves_figure(trainer.history, f"{losses_title}: losses per "
                                              f"{run.log_every} steps"),
                           stem.with_name(stem.name + "_losses.png")),
            save_and_close(real_vs_generated_figure(real, fake, title, *labels, run.plot_points,
                                                    run.seed),
                           stem.with_name(stem.name + "_real_vs_generated.png"))]


# ---------------------------------------------------------------- from embeddings to images
def image_decoders(real: dict[str, Any], device: torch.device,
                   run: Plan2Settings) -> dict[str, Any]:
    """decode(z) -> images for each way these embeddings can become images: "decoder" (the
    autoencoder that made them) and "plan1-<gan>" (each Plan 1 generator trained on them);
    what cannot be used is said in a note."""
    root = Path(run.data_dir) / "checkpoints"
    data_dir = f" --data-dir {run.data_dir}" if run.data_dir != "data" else ""
    decoders: dict[str, Any] = {}
    decode, why = autoencoder_decoder(
        root / "encoders" / f"{tagged(f'{run.dataset}_{run.encoder}', run.input_tag)}.pt",
        run.encoder, real["z_test"],
        load_dataset(run.dataset, run.data_dir).x_test, run.sample_batch_size,
        making_command(run.encoder, run) or "encoder_models.py")
    if decode is None:
        print(f"note: no images from {run.encoder} embeddings through an autoencoder: {why}")
    else:
        decoders["decoder"] = decode
    prefix = f"{run.dataset}_{run.encoder}_"
    source = f"{tagged(prefix[:-1], run.input_tag)}.npz"
    plan1, notes = plan1_decoders(
        sorted((root / "plan1").glob(f"{prefix}*.pt")), prefix, source,
        real["z_train"], real["z_test"], device, run.seed,
        lambda gan: f"python plan1_gan_training.py --dataset {run.dataset} --encoder "
                    f"{run.encoder} --models {gan}{data_dir}"
                    + (f" --input-tag {run.input_tag} --tag {run.input_tag}"
                       if run.input_tag else ""),
        tag=run.input_tag)
    for note in notes:
        print(f"note: Plan 1 generator not used: {note}")
    decoders.update({f"plan1-{gan}": f for gan, f in plan1.items()})
    return decoders


# ---------------------------------------------------------------- training
def resume_settings(name: str, embedding_hash: str, n_train: int, seed: int,
                    run: Plan2Settings, config: VectorGANConfig) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued."""
    loop = trainer_settings(name, run, seed)
    settings = {"model": name, "dataset": run.dataset, "encoder": run.encoder,
                "embeddings": embedding_hash, "train_embeddings": n_train,
                "batch_size": run.batch_size, "seed": seed,
                "n_critic": loop.n_critic, "learning_rate": loop.lr_generator,
                "betas": list(loop.betas), "ema_decay": run.ema_decay,
                "held_out_fraction": run.held_out_fraction, "lr_decay": run.lr_decay}
    if run.lr_decay:  # the schedule's shape depends on the number of epochs
        settings["epochs"] = run.epochs
    settings["epoch_passes"] = passes_per_epoch(n_train, run.epoch_vectors)
    if VECTOR_GANS[name].translator:
        settings["encoder_b"] = run.encoder_b
    settings.update(model_settings(name, config))
    return settings


def train(name: str, model: GenerativeModel, sizes: Sizes, make_batches: Any, steps: int,
          score: Any, embedding_hash: str, n_train: int, checkpoint: Path, seed: int,
          run: Plan2Settings, config: VectorGANConfig, values: dict[str, Any]
          ) -> tuple[GANTrainer, Any, float]:
    """Train (or resume) one model, logged under runs/plan2/<checkpoint's name>; returns its
    trainer, the fit report and the seconds of every epoch trained (resumed runs included;
    ``GANTrainer.training_seconds``)."""
    loop = trainer_settings(name, run, seed)
    trainer = GANTrainer(model, loop, architecture(name, sizes, config))
    started = time.time()

    def scheduled_batches(epoch: int) -> Any:
        """The epoch's batches, after setting the epoch's learning rates (from the epoch alone,
        so that a resumed run follows the same schedule)."""
        factor = 1.0 - (epoch - 1) / run.epochs if run.lr_decay else 1.0
        for optimizer, rate in ((trainer.opt_g, loop.lr_generator),
                                (trainer.opt_d, loop.lr_discriminator)):
            for group in optimizer.param_groups if optimizer is not None else ():
                group["lr"] = rate * factor
        return make_batches(epoch)

    def on_epoch(epoch: int, record: dict[str, Any]) -> None:
        shown = "" if record["score"] is None else f", held-out FD {record['score']:.4f}"
        losses = (f"D {record['d/loss']:.3f} G {record['g/loss']:.3f}" if "d/loss" in record
                  else f"loss {record['g/loss']:.4f}")
        print(f"{name}: epoch {epoch}/{run.epochs} {losses}{shown} "
              f"({time.time() - started:.0f} s)", flush=True)

    with open_run_log(values, "plan2", checkpoint.stem) as trainer.log:
        report = trainer.fit(scheduled_batches, run.epochs, checkpoint,
                             resume_settings(name, embedding_hash, n_train, seed, run, config),
                             steps_per_epoch=steps,
                             score=score, score_name="held-out Fréchet distance (standardised)",
                             on_epoch=on_epoch, desc=name)
    if report.resumed_from:
        print(f"{name}: resumed from {checkpoint} after epoch {report.resumed_from}"
              + ("" if report.trained_epochs else " (nothing left to train)"))
    if report.diverged:
        print(f"warning: {name}: training stopped ({report.diverged}); the best checkpoint "
              f"(epoch {report.best_epoch}) is used")
    return trainer, report, trainer.training_seconds()


def table_rows(folder: Path, pattern: str, match: dict[str, str]) -> list[dict[str, Any]]:
    """The rows this stage's files ``folder/pattern`` keep (every model trained so far, each
    from its own run), in the registry's order; files left out are said in a warning."""
    rows, notes = rows_on_disk(folder, pattern, Path(__file__).name, match, VECTOR_GANS)
    for note in notes:
        print(f"warning: {note}")
    return rows


def held_out_score(reference: np.ndarray, labels: np.ndarray, seed: int, batch_size: int):
    """score(ema): Fréchet distance between samples (the same noise and classes every epoch) and
    the standardised held-out training embeddings, never trained on; lower is better. Never the
    test split."""
    def score(model: GenerativeModel) -> float:
        return frechet_distance(generate(model, labels, len(reference), seed + 1, batch_size),
                                reference)

    return score


def train_generators(names: list[str], real: dict[str, Any], source: Path,
                     split: tuple[np.ndarray, np.ndarray], folders: dict[str, Path],
                     values: dict[str, Any], device: torch.device, run: Plan2Settings,
                     config: VectorGANConfig,
                     score_settings: scoring.ScoringSettings) -> list[dict[str, Any]]:
    """Train the generators of embeddings on the kept part of ``split`` (kept, held-out indices
    of the training embeddings), choose each one's epoch on the held-out part; write their
    samples, images and pictures."""
    num_classes = len(class_names_of(run.dataset))
    kept, held_out = split
    z_train_raw, y_train = real["z_train"][kept], real["y_train"][kept].astype(np.int64)
    n_train = len(kept)
    passes = passes_per_epoch(n_train, run.epoch_vectors)
    scaler = Standardiser(z_train_raw)
    z_train = torch.from_numpy(scaler.forward(z_train_raw)).to(device)
    labels = torch.from_numpy(y_train).to(device)
    embedding_hash = fingerprint(z_train_raw, y_train, held_out)
    sizes = Sizes(z_train.shape[1], num_classes)
    decoders = image_decoders(real, device, run)

    def train_member(name: str, member: int) -> tuple[GANTrainer, Any, float, Path]:
        """Member ``member`` of a model's ensemble, trained (or resumed) exactly as a run with
        ``--seed SEED+member`` trains the model alone: weights, batch order and noise follow
        that seed; every member chooses on the same held-out embeddings. Member 0's checkpoint
        is the model's own."""
        seed = run.seed + member

        def make_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            for index in index_batches(n_train, run.batch_size, seed, epoch, passes):
                groups = torch.from_numpy(class_groups(y_train[index.numpy()]))
                index = index.to(device)
                yield {"x": z_train[index], "label": labels[index], "groups": groups}

        seed_everything(seed, run.deterministic)
        model = build_vector_gan(name, sizes, config).to(device)
        score = held_out_score(scaler.forward(real["z_train"][held_out]),
                               real["y_train"][held_out].astype(np.int64), seed,
                               run.sample_batch_size) if len(held_out) > 1 else None
        checkpoint = (folders["checkpoints/plan2"]
                      / f"{tagged(f'{run.dataset}_{run.encoder}_{name}', run.tag)}"
                        f"{member_suffix(member)}.pt")
        if run.ensemble > 1:
            print(f"{name}: ensemble member {member + 1}/{run.ensemble} (seed {seed})")
        return (*train(name, model, sizes, make_batches, passes * (n_train // run.batch_size),
                       score,
                       embedding_hash, n_train, checkpoint, seed, run, config, values),
                checkpoint)

    rows = []
    for name in names:
        stem = tagged(f"{run.dataset}_{run.encoder}_{name}", run.tag)
        members = [train_member(name, member) for member in range(run.ensemble)]
        trainers = [m[0] for m in members]
        reports = [m[1] for m in members]
        bests = [trainer.best_model() for trainer in trainers]
        conditional = getattr(bests[0], "conditional", False)
        y_gen = class_draw(y_train, run.samples, num_classes, run.seed) if conditional else None
        z_gen = scaler.inverse(generate_ensemble(bests, y_gen, run.samples, run.seed,
                                                 run.sample_batch_size))
        seconds = [m[2] for m in members]
        one = run.ensemble == 1  # one member: scalars (a single model's format); several: lists
        per_member = {
            "checkpoint": [str(m[3]) for m in members],
            "epochs_trained": [trainer.epoch for trainer in trainers],
            "best_epoch": [report.best_epoch for report in reports],
            "held_out_frechet": [report.best_score for report in reports],
            "diverged": [report.diverged for report in reports]}
        if one:
            per_member = {key: value[0] for key, value in per_member.items()}
        classes = {"y_gen": y_gen} if conditional else {}
        out = folders["embeddings"] / f"{stem}.gen.npz"
        metric_values = scoring.plan2_metrics(out, {"z_gen": z_gen, **classes}, real,
                                              score_settings)
        train_seconds = sum(seconds)
        row = plain_row({"model": name if one else f"{name} x{run.ensemble}",
                         "epochs": ", ".join(str(t.epoch) for t in trainers),
                         "best_epoch": ", ".join(str(r.best_epoch) for r in reports),
                         "train_seconds": train_seconds, **metric_values})
        meta = make_meta(__file__, values, run.dataset, run.seed, gan=name, encoder=run.encoder,
                         source_embeddings=source.name, embeddings_hash=embedding_hash,
                         train_embeddings=n_train,
                         split=split_record(n_train + len(held_out), held_out),
                         ensemble=run.ensemble,
                         member_seeds=[run.seed + k for k in range(run.ensemble)], **per_member,
                         train_seconds=train_seconds, conditional=conditional,
                         parameters=sum(p.numel() for p in bests[0].parameters()),
                         table_row=row)
        written = [save_npz(out, {"z_gen": z_gen, **classes}, meta)]
        for decoder, decode in decoders.items():
            suffix = "" if decoder == "decoder" else f"_{decoder}"
            made_by = f"{run.encoder} autoencoder decoder" if decoder == "decoder" else decoder
            written.append(save_npz(folders["samples/plan2"] / f"{stem}{suffix}.npz",
                                    {"x_gen": decode(z_gen), **classes},
                                    {**meta, "decoded_by": made_by}))
        if run.plots:
            written += save_pictures(
                trainers[0], folders["visualizations"] / f"plan2_{stem}",
                f"{name} on {run.dataset} {run.encoder} embeddings", real["z_test"], z_gen,
                f"{name} on {run.dataset} {run.encoder}: real test vs generated embeddings",
                ("real test", "generated"), run)
            for member, trainer in enumerate(trainers[1:], start=1):
                written.append(save_and_close(
                    loss_curves_figure(trainer.history, f"{name} on {run.dataset} "
                                       f"{run.encoder} embeddings, ensemble member "
                                       f"{member + 1} (seed {run.seed + member}): losses per "
                                       f"{run.log_every} steps"),
                    folders["visualizations"] / f"plan2_{stem}{member_suffix(member)}_losses.png"))
        print(f"{name}: wrote {', '.join(str(p) for p in written)}")
        rows.append(row)
    return rows


def train_translators(names: list[str], real_a: dict[str, Any], path_a: Path,
                      real_b: dict[str, Any], path_b: Path, split: tuple[np.ndarray, np.ndarray],
                      folders: dict[str, Path], values: dict[str, Any], device: torch.device,
                      run: Plan2Settings, config: VectorGANConfig,
                      score_settings: scoring.ScoringSettings) -> list[dict[str, Any]]:
    """Train the translators A -> B on disjoint halves of the kept part of ``split`` (kept,
    held-out indices of the training embeddings), choose each one's epoch on the held-out part;
    write the translated test embeddings."""
    num_classes = len(class_names_of(run.dataset))
    kept, held_out = split
    n_train = len(kept)
    halves = split_halves(n_train, run.seed)
    passes = passes_per_epoch(n_train, run.epoch_vectors)  # of the whole set, not of a half
    za_train, zb_train = real_a["z_train"][kept], real_b["z_train"][kept]
    y_train = real_a["y_train"][kept].astype(np.int64)  # checked equal to B's
    scaler_a, scaler_b = Standardiser(za_train), Standardiser(zb_train)
    # Each half with its own labels; the images of the other half are never seen.
    a_half = torch.from_numpy(scaler_a.forward(za_train[halves[0]])).to(device)
    b_half = torch.from_numpy(scaler_b.forward(zb_train[halves[1]])).to(device)
    label_a = torch.from_numpy(y_train[halves[0]]).to(device)
    label_b = torch.from_numpy(y_train[halves[1]]).to(device)
    embedding_hash = fingerprint(za_train, zb_train, y_train, halves[0], held_out)
    test_a, test_b = scaler_a.forward(real_a["z_test"]), scaler_b.forward(real_b["z_test"])
    check_a, check_b = ((scaler_a.forward(real_a["z_train"][held_out]),
                         scaler_b.forward(real_b["z_train"][held_out]))
                        if len(held_out) > 1 else (None, None))
    sizes = Sizes(a_half.shape[1], num_classes, b_half.shape[1])
    batch = run.sample_batch_size

    def make_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        # Independent orders for the two halves: no pair is ever formed.
        for ia, ib in zip(index_batches(len(halves[0]), run.batch_size, run.seed, epoch, passes),
                          index_batches(len(halves[1]), run.batch_size, run.seed + 1, epoch,
                                        passes),
                          strict=True):
            ia, ib = ia.to(device), ib.to(device)
            yield {"a": a_half[ia], "label_a": label_a[ia], "b": b_half[ib],
                   "label_b": label_b[ib]}

    def score(model: GenerativeModel) -> float:
        """Distribution match both ways on the held-out embeddings, each domain's own (no pairs
        are used); lower is better."""
        return (frechet_distance(translate(model, check_a, "a_to_b", batch), check_b)
                + frechet_distance(translate(model, check_b, "b_to_a", batch), check_a))

    rows = []
    for name in names:
        stem = tagged(f"{run.dataset}_{run.encoder}-to-{run.encoder_b}_{name}", run.tag)
        seed_everything(run.seed, run.deterministic)
        model = build_vector_gan(name, sizes, config).to(device)
        checkpoint = folders["checkpoints/plan2"] / f"{stem}.pt"
        trainer, report, seconds = train(name, model, sizes, make_batches,
                                         passes * (len(halves[0]) // run.batch_size),
                                         score if len(held_out) > 1 else None, embedding_hash,
                                         n_train,
                                         checkpoint, run.seed, run, config, values)
        best: TranslationGAN = trainer.best_model()
        translated = translate(best, test_a, "a_to_b", batch)
        z_translated = scaler_b.inverse(translated)
        out = folders["embeddings"] / f"{stem}.npz"
        metric_values = scoring.translation_metrics(out, z_translated, real_a, real_b,
                                                    score_settings)
        metric_values["cycle_error_a"] = float(np.mean((translate(best, translated, "b_to_a",
                                                                  batch) - test_a) ** 2))
        metric_values["cycle_error_b"] = float(np.mean((translate(
            best, translate(best, test_b, "b_to_a", batch), "a_to_b", batch) - test_b) ** 2))
        row = plain_row({"model": name, "epochs": trainer.epoch,
                         "best_epoch": report.best_epoch, "train_seconds": seconds,
                         **metric_values})
        meta = make_meta(__file__, values, run.dataset, run.seed, gan=name, encoder=run.encoder,
                         encoder_b=run.encoder_b, source_embeddings=path_a.name,
                         target_embeddings=path_b.name, embeddings_hash=embedding_hash,
                         train_embeddings=n_train, halves=[len(h) for h in halves],
                         split=split_record(n_train + len(held_out), held_out),
                         checkpoint=str(checkpoint), epochs_trained=trainer.epoch,
                         best_epoch=report.best_epoch, held_out_frechet=report.best_score,
                         diverged=report.diverged, train_seconds=seconds,
                         cycle_error_a=metric_values["cycle_error_a"],
                         cycle_error_b=metric_values["cycle_error_b"],
                         parameters=sum(p.numel() for p in model.parameters()), table_row=row)
        written = [save_npz(out, {"z_translated": z_translated,
                                  "y_test": real_a["y_test"].astype(np.int64)}, meta)]
        if run.plots:
            written += save_pictures(
                trainer, folders["visualizations"] / f"plan2_{stem}",
                f"{name} {run.encoder} -> {run.encoder_b} on {run.dataset}", real_b["z_test"],
                z_translated, f"{name} on {run.dataset}: true {run.encoder_b} test embeddings "
                f"vs {run.encoder} test embeddings translated",
                (f"true {run.encoder_b}", f"translated from {run.encoder}"), run)
        print(f"{name}: wrote {', '.join(str(p) for p in written)}")
        rows.append(row)
    return rows


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    # A folder data set may be named as its embeddings are (their meta holds its path).
    values = resolve_embedded_dataset(values, (values["encoder"], values["encoder_b"]))
    run = pick(Plan2Settings, values)
    check_input_tag(run.tag, run.input_tag)
    config = pick(VectorGANConfig, values)
    score_settings = scoring.ScoringSettings(seed=run.seed)
    generators = [m for m in run.models if m in GENERATORS]
    translators = [m for m in run.models if m in TRANSLATORS]
    if generators and run.ensemble > run.samples:
        raise SettingsError(f"--ensemble {run.ensemble} is more than --samples {run.samples}: "
                            f"every member draws at least one sample")
    if translators and run.encoder_b == run.encoder:
        raise SettingsError(f"--encoder-b {run.encoder_b} is --encoder too; "
                            f"{', '.join(translators)} translate between two different embeddings")
    root = Path(run.data_dir)
    limit_cpu_threads(values["threads"])
    seed_everything(run.seed, run.deterministic)
    device = pick_device(values["device"])
    path_a, real_a = load_source(run.encoder, run)
    n_train = min(run.limit, len(real_a["z_train"])) if run.limit else len(real_a["z_train"])
    if translators:
        path_b, real_b = load_source(run.encoder_b, run)
        check_same_images(path_a, real_a, path_b, real_b)
    # A Fréchet distance needs two vectors: fewer are not held out (the last epoch is kept).
    n_held = held_out_count(n_train, run.held_out_fraction)
    split = held_out_split(n_train, n_held if n_held > 1 else 0)
    kept = len(split[0])
    usable = kept // 2 if translators else kept
    if usable < run.batch_size:
        raise StageError(f"--limit {run.limit} and --held-out-fraction {run.held_out_fraction} "
                         f"leave {usable} training embeddings"
                         f"{' per translation half' if translators else ''}, not one full batch "
                         f"of --batch-size {run.batch_size}")
    # The Wasserstein models take n_critic critic steps per generator step: the one with the
    # fewest training vectors (a translator's half) sets the largest batch size.
    critics = [(kept // 2 if VECTOR_GANS[name].translator else kept, name)
               for name in run.models if VECTOR_GANS[name].wasserstein]
    passes = passes_per_epoch(kept, run.epoch_vectors)
    shortfall = critics and generator_step_shortfall(min(critics)[0], run.batch_size,
                                                     run.n_critic, passes)
    if shortfall:
        (examples, name), (batches, largest) = min(critics), shortfall
        fix = f"--batch-size {largest} or smaller" if largest >= 2 else "more data"
        raise StageError(f"--models {name}: training embeddings"
                         f"{' per translation half' if VECTOR_GANS[name].translator else ''}: "
                         f"{examples} at --batch-size {run.batch_size}"
                         f"{f' in {passes} passes' if passes > 1 else ''} give {batches} "
                         f"batch(es) per epoch, fewer than --n-critic {run.n_critic}, so no "
                         f"generator step; use {fix}, or --n-critic {max(1, batches)}")
    # Every input checked (a refused run writes nothing): one lock per output set, so that a
    # run of generators and one of translators go side by side.
    if generators:
        outputs = tagged(f"{run.dataset}_{run.encoder}", run.tag)
        hold_output_lock(root / f".lock-plan2_gan_training-{outputs}",
                         f"plan2_gan_training.py, {outputs}")
    if translators:
        pair = tagged(f"{run.dataset}_{run.encoder}-to-{run.encoder_b}", run.tag)
        hold_output_lock(root / f".lock-plan2_gan_training-{pair}",
                         f"plan2_gan_training.py, {pair}")
    folders = {name: ensure_output_dir(root / name) for name in
               ("embeddings", "visualizations", "checkpoints/plan2", "samples/plan2", "results")}
    print(f"{run.dataset}: {kept} train ({n_train - kept} more held out: they pick each model's "
          f"epoch), {len(real_a['z_test'])} test embeddings of "
          f"{real_a['z_train'].shape[1]} dims from {path_a}; device {device}; an epoch is "
          f"{passes} pass{'es' if passes > 1 else ''} over them (--epoch-vectors "
          f"{run.epoch_vectors})")
    header = ("Written by `plan2_gan_training.py` from the `meta` of its files in the embeddings "
              "folder: one row per model trained so far, each from its own run, whose settings "
              "that file's meta holds. The last run's settings: "
              f"`{json.dumps(values, default=str)}`; code: `{json.dumps(code_version())}`.\n")
    written = []
    if generators:
        train_generators(generators, real_a, path_a, split, folders, values, device,
                         run, config, score_settings)
        table = generator_table(table_rows(
            folders["embeddings"], f"{run.dataset}_{run.encoder}_*.gen.npz",
            {"dataset": run.dataset, "encoder": run.encoder}))
        print(f"\n{run.dataset} {run.encoder}: {run.samples} generated embeddings against the "
              f"{len(real_a['z_test'])} real test embeddings (floors: as many real train "
              f"embeddings); TSTR: k-NN fitted on generated, scored on real test; ± half the "
              f"95% bootstrap interval over the generated embeddings "
              f"({score_settings.bootstrap} resamples; KID: its sd over subsets)\n\n{table}\n")
        written.append(write_text(
            folders["results"] / f"plan2_{run.dataset}_{run.encoder}.md",
            f"# Plan 2 on {run.dataset} {run.encoder} embeddings\n\n{header}\n"
            f"## Generated embeddings\n\n{table}\n"))
    if translators:
        train_translators(translators, real_a, path_a, real_b, path_b, split, folders,
                          values, device, run, config, score_settings)
        table = translation_table(table_rows(
            folders["embeddings"], f"{run.dataset}_{run.encoder}-to-{run.encoder_b}_*.npz",
            {"dataset": run.dataset, "encoder": run.encoder, "encoder_b": run.encoder_b}))
        print(f"\n{run.dataset} {run.encoder} -> {run.encoder_b}, trained on disjoint halves of "
              f"{kept} training images (no pairs), scored on the {len(real_a['z_test'])} "
              f"test images: cosine in B's standardised space; cycle error: mean squared error "
              f"per dimension in standardised units\n\n{table}\n")
        written.append(write_text(
            folders["results"] / f"plan2_{run.dataset}_{run.encoder}-to-{run.encoder_b}.md",
            f"# Plan 2 on {run.dataset}: translation {run.encoder} -> {run.encoder_b}\n\n"
            f"{header}\n## Translation {run.encoder} -> {run.encoder_b}\n\n{table}\n"))
    print(f"wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    run_stage(main)
