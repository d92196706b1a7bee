"""Plan 1: GANs that regenerate 28x28 images from their stage-1 embeddings.

Given the embedding e(x) of each training image x (data/embeddings/<ds>_<enc>.npz, written by
encoder_models.py), train generators G(z, e(x)) whose images resemble x, judged by discriminators
that see the same condition: a conditional GAN with a projection discriminator, an ACGAN (an
auxiliary class head on real labels) and an InfoGAN (categorical and continuous codes recovered by
a Q head). All three train through the shared loop in gans.py. Per epoch: a grid of real test
images and their regenerations in data/visualizations/; at the end: every test image regenerated
from its embedding in data/samples/plan1/<ds>_<enc>_<gan>.npz (the format evaluate.py reads), a
loss-curve PNG, and a report (FID on the evaluator's features with its floor, Inception-style
score, class consistency, pixel error to the source image).

The default condition is the VAE's embedding (its posterior mean): it was trained to carry what
is needed to rebuild the image, in a space the KL term keeps smooth and near N(0, I), so that a
generator trained on training embeddings meets familiar conditions on test embeddings. The
contrastive and triplet embeddings are trained to forget what varies within a class.

    python plan1_gan_training.py --dataset digits --epochs 2 --models cgan,acgan
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import evaluate
import metrics
from artifacts import ensure_output_dir, load_embeddings, make_meta, save_figure, save_npz
from data_sources import ImageDataset, load_dataset
from evaluator_cnn import FEATURE_DIM as EVALUATOR_FEATURE_DIM
from evaluator_cnn import evaluator_outputs
from gans import (
    AdversarialLoss,
    GANModel,
    GANTrainer,
    LoopSettings,
    apply_spectral_norm,
    image_grid_figure,
    loss_curves_figure,
    tensor_batches,
)
from nets import ConvCritic, ConvGenerator, ProjectionHead, mlp
from runtime import StageError, limit_cpu_threads, pick_device, run_stage, seed_everything
from settings import configure

# Internal tables (no same-line comment, so not settings).
GAN_NAMES = ("cgan", "acgan", "infogan")
LOSS_NAMES = ("non-saturating", "hinge", "least-squares", "wasserstein")

DATASET = "fashion-mnist"  # dataset whose images are regenerated [in data_sources.DATASETS]
DATA_DIR = "data"  # where embeddings are read and every output is written
ENCODER = "vae"  # stage-1 embedding to condition on: embeddings/<ds>_<enc>.npz
MODELS = GAN_NAMES  # GANs to train, comma-separated [in GAN_NAMES]
EPOCHS = 15  # total epochs per model (more continues a finished run) [>= 1]
BATCH_SIZE = 128  # images per step [>= 2]
LIMIT = 0  # train on the first N training images only (0: all) [>= 0]
SEED = 0  # seeds weights, batch order, noise and the saved samples [>= 0]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
NOISE_DIM = 32  # size of the generator's noise z [>= 1]
WIDTH = 32  # channels of the 14x14 conv layers of G and D (twice as many at 7x7) [>= 1]
FEATURE_DIM = 256  # width of the discriminator's feature layer [>= 1]
LOSS = "hinge"  # adversarial loss [in LOSS_NAMES]
GRADIENT_PENALTY = 0.0  # weight of the WGAN-GP gradient penalty (10 with wasserstein) [>= 0]
SPECTRAL_NORM = True  # spectral normalisation of every discriminator layer
N_CRITIC = 1  # discriminator steps per generator step [>= 1]
LR_GENERATOR = 2e-4  # Adam learning rate of the generator (and Q head) [> 0]
LR_DISCRIMINATOR = 2e-4  # Adam learning rate of the discriminator [> 0]
BETA1 = 0.5  # Adam beta1 (DCGAN: 0.5) [>= 0, < 1]
BETA2 = 0.999  # Adam beta2 [>= 0, < 1]
EMA_DECAY = 0.999  # decay of the generator's weight average used for sampling [>= 0, < 1]
AUX_WEIGHT = 1.0  # ACGAN: weight of the auxiliary class cross-entropy [>= 0]
INFO_CATEGORIES = 10  # InfoGAN: categories of the categorical code [>= 2]
INFO_CONTINUOUS = 2  # InfoGAN: continuous codes, uniform in [-1, 1] [>= 0]
INFO_WEIGHT = 1.0  # InfoGAN: weight of the categorical mutual-information term [>= 0]
INFO_CONTINUOUS_WEIGHT = 0.1  # InfoGAN: weight of the continuous codes' term [>= 0]
VALIDATION_IMAGES = 2000  # training images regenerated per epoch to pick the best epoch [>= 0]
TEST_IMAGES = 0  # regenerate the first N test images only, for quick runs (0: all) [>= 0]
GRID_NOISE_ROWS = 3  # rows of regenerations (one noise each) under the real row [>= 1]
LOG_EVERY = 50  # steps between reads of the summed losses (progress bar, curves) [>= 1]
SAMPLE_BATCH_SIZE = 1000  # images per generator pass when writing samples [>= 1]


# ---------------------------------------------------------------- models
class ConditionalGAN(GANModel):
    """cGAN (Mirza & Osindero 2014) with a projection discriminator (Miyato & Koyama 2018):
    G(z, c) and D(x, c) = w.phi(x) + b + <V c, phi(x)>; c is the standardised condition.

    The condition is any vector: a stage-1 embedding here, a one-hot class in the self-consuming
    loop (``condition_dim`` = number of classes; the first layers then learn class embeddings).
    ``set_condition_statistics`` stores the training conditions' mean and standard deviation as
    buffers, so that checkpoints carry them.
    """

    def __init__(self, condition_dim: int, noise_dim: int = 32,
                 loss: AdversarialLoss | None = None, spectral_norm: bool = True,
                 widths: tuple[int, int] = (32, 64), feature_dim: int = 256) -> None:
        super().__init__()
        self.adversarial_loss = loss or AdversarialLoss("hinge")
        self.noise_dim, self.condition_dim = noise_dim, condition_dim
        self.register_buffer("condition_mean", torch.zeros(condition_dim))
        self.register_buffer("condition_std", torch.ones(condition_dim))
        self.generator = ConvGenerator(self.generator_input_dim(), condition_dim, widths)
        self.discriminator = nn.ModuleDict({"trunk": ConvCritic(widths, feature_dim),
                                            "score": ProjectionHead(feature_dim, condition_dim)})
        self.add_discriminator_heads(feature_dim)
        if spectral_norm:
            apply_spectral_norm(self.discriminator)

    def generator_input_dim(self) -> int:
        return self.noise_dim

    def add_discriminator_heads(self, feature_dim: int) -> None:
        """Extra heads on the discriminator's features (ACGAN's class head)."""

    def set_condition_statistics(self, conditions: torch.Tensor) -> None:
        """Standardise conditions with these training conditions' per-dimension mean and std."""
        std = conditions.float().std(dim=0)
        self.condition_mean.copy_(conditions.float().mean(dim=0))
        self.condition_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def normalise(self, condition: torch.Tensor) -> torch.Tensor:
        return (condition.float() - self.condition_mean) / self.condition_std

    def sample(self, condition: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 1, 28, 28), for raw (unstandardised) conditions."""
        return self.generator(noise, self.normalise(condition))

    def score(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.discriminator["score"](features, self.normalise(condition))

    # ------------------------------------------------------------ losses
    def discriminator_loss(self, batch: dict[str, torch.Tensor]
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, c = batch["x"], batch["condition"]
        noise = self.sample_noise(len(x))
        fake = self.sample(c, noise)  # the generator's weights are frozen here: no graph
        features = self.discriminator["trunk"](torch.cat([x, fake]))
        real_features, fake_features = features.chunk(2)
        loss_fn = self.adversarial_loss
        adversarial = loss_fn.discriminator(self.score(real_features, c),
                                            self.score(fake_features, c))
        parts = {"adversarial": adversarial}
        if loss_fn.gradient_penalty:
            parts["gradient_penalty"] = loss_fn.penalty(
                lambda v: self.score(self.discriminator["trunk"](v), c), x, fake)
        parts.update(self.discriminator_extra(batch, real_features, fake_features, noise))
        return sum(parts.values()), parts

    def generator_loss(self, batch: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = batch["condition"]
        noise = self.sample_noise(len(c))
        fake_features = self.discriminator["trunk"](self.sample(c, noise))
        parts = {"adversarial": self.adversarial_loss.generator(self.score(fake_features, c))}
        parts.update(self.generator_extra(batch, fake_features, noise))
        return sum(parts.values()), parts

    def discriminator_extra(self, batch: dict[str, torch.Tensor], real_features: torch.Tensor,
                            fake_features: torch.Tensor, noise: torch.Tensor
                            ) -> dict[str, torch.Tensor]:
        """Weighted extra terms of the discriminator loss (none for the plain cGAN)."""
        return {}

    def generator_extra(self, batch: dict[str, torch.Tensor], fake_features: torch.Tensor,
                        noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted extra terms of the generator loss (none for the plain cGAN)."""
        return {}


class ACGAN(ConditionalGAN):
    """ACGAN (Odena et al. 2017) conditioned on the embedding: the discriminator's features feed
    the projection score and an auxiliary class head whose logits go into cross-entropy (no
    softmax in front). D's head learns the real images' labels; G is trained so that its image is
    classified as the class of the image whose embedding it was given."""

    def __init__(self, condition_dim: int, num_classes: int, aux_weight: float = 1.0,
                 **kwargs: Any) -> None:
        self.num_classes, self.aux_weight = num_classes, aux_weight
        super().__init__(condition_dim, **kwargs)

    def add_discriminator_heads(self, feature_dim: int) -> None:
        self.discriminator["classes"] = nn.Linear(feature_dim, self.num_classes)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.discriminator["classes"](features)

    def discriminator_extra(self, batch, real_features, fake_features, noise):
        logits = self.class_logits(real_features)
        return {"classes": self.aux_weight * F.cross_entropy(logits, batch["label"])}

    def generator_extra(self, batch, fake_features, noise):
        logits = self.class_logits(fake_features)
        return {"classes": self.aux_weight * F.cross_entropy(logits, batch["label"])}


class InfoGAN(ConditionalGAN):
    """InfoGAN (Chen et al. 2016) on top of the embedding condition: G(z, k, u, e) with a
    categorical code k (one-hot) and continuous codes u ~ U(-1, 1); a Q head on the
    discriminator's features predicts them. The mutual-information lower bound is maximised by
    minimising CE(Q_k(x), k) + 1/2 ||Q_u(x) - u||^2 (a unit-variance Gaussian for u). In the
    discriminator step it trains the shared trunk; in the generator step G and the Q head (which
    sits in the generator's optimiser group), on every step."""

    def __init__(self, condition_dim: int, categories: int = 10, continuous: int = 2,
                 info_weight: float = 1.0, continuous_weight: float = 0.1,
                 **kwargs: Any) -> None:
        self.categories, self.continuous = categories, continuous
        self.info_weight, self.continuous_weight = info_weight, continuous_weight
        super().__init__(condition_dim, **kwargs)
        feature_dim = self.discriminator["trunk"].feature_dim
        self.q_head = mlp([feature_dim, 128, categories + continuous], activation=nn.LeakyReLU)

    def generator_input_dim(self) -> int:
        return self.noise_dim + self.categories + self.continuous

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.generator.parameters(), *self.q_head.parameters()]

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[z ~ N(0, I), one-hot k ~ uniform, u ~ U(-1, 1)] of size noise_dim + codes."""
        device = None if generator is not None else self.device
        z = torch.randn(n, self.noise_dim, generator=generator, device=device)
        k = torch.randint(self.categories, (n,), generator=generator, device=device)
        u = torch.rand(n, self.continuous, generator=generator, device=device) * 2 - 1
        one_hot = (k[:, None] == torch.arange(self.categories, device=k.device)).float()
        return torch.cat([z, one_hot, u], dim=1).to(self.device)  # (F.one_hot syncs on CUDA)

    def information_loss(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """CE of the categorical code (logits) + continuous weight x 1/2 squared error."""
        predicted = self.q_head(features)
        codes = noise[:, self.noise_dim:]
        k = codes[:, :self.categories].argmax(dim=1)
        loss = F.cross_entropy(predicted[:, :self.categories], k)
        if self.continuous:
            error = predicted[:, self.categories:] - codes[:, self.categories:]
            loss = loss + self.continuous_weight * 0.5 * (error ** 2).sum(dim=1).mean()
        return self.info_weight * loss

    def discriminator_extra(self, batch, real_features, fake_features, noise):
        return {"information": self.information_loss(fake_features, noise)}

    def generator_extra(self, batch, fake_features, noise):
        return {"information": self.information_loss(fake_features, noise)}


def class_condition(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot float conditions (B, num_classes) for class-conditioned generation: the first
    linear layers of G and D then learn an embedding of each class."""
    return (labels[:, None] == torch.arange(num_classes, device=labels.device)).float()


def build_model(name: str, condition_dim: int, num_classes: int) -> ConditionalGAN:
    """A Plan 1 GAN by name, with the hyper-parameters of the current settings."""
    common = {"noise_dim": NOISE_DIM, "spectral_norm": SPECTRAL_NORM, "widths": (WIDTH, 2 * WIDTH),
              "feature_dim": FEATURE_DIM, "loss": AdversarialLoss(LOSS, GRADIENT_PENALTY)}
    if name == "cgan":
        return ConditionalGAN(condition_dim, **common)
    if name == "acgan":
        return ACGAN(condition_dim, num_classes, AUX_WEIGHT, **common)
    if name == "infogan":
        return InfoGAN(condition_dim, INFO_CATEGORIES, INFO_CONTINUOUS, INFO_WEIGHT,
                       INFO_CONTINUOUS_WEIGHT, **common)
    raise StageError(f"unknown model {name!r}; valid names: {', '.join(GAN_NAMES)}")


# ---------------------------------------------------------------- data
def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [-1, 1]."""
    return images.unsqueeze(1).float() / 127.5 - 1.0


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1], (B, 1, 28, 28) -> uint8 (B, 28, 28)."""
    pixels = ((images[:, 0].float() + 1.0) * 127.5).round().clamp(0, 255)
    return pixels.to(torch.uint8).cpu().numpy()


def encoder_command(dataset: str, encoder: str, limit: int, data_dir: str) -> str:
    """The stage-1 command that writes the embedding file this stage needs."""
    command = f"python encoder_models.py --dataset {dataset} --models {encoder}"
    if limit:
        command += f" --limit {limit}"
    if data_dir != "data":
        command += f" --data-dir {data_dir}"
    return command


def paired_embeddings(path: Path, data: ImageDataset, n_train: int
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The embeddings of the first ``n_train`` training images and of every test image, checked
    to be the embeddings of exactly these images: meta dataset and limit, split sizes, labels."""
    if not path.is_file():
        raise StageError(f"{path} not found; make it with: "
                         f"{encoder_command(data.name, ENCODER, LIMIT, DATA_DIR)}")
    emb = load_embeddings(path)
    meta = emb["meta"]
    if meta.get("dataset") != data.name:
        raise StageError(f"{path}: embeds dataset {meta.get('dataset')!r} (its meta), not "
                         f"{data.name!r}")
    file_limit = meta.get("settings", {}).get("limit")
    if not isinstance(file_limit, int):
        raise StageError(f"{path}: its meta does not record the --limit it was made with, so "
                         f"its pairing with the images cannot be checked; remake it with: "
                         f"{encoder_command(data.name, ENCODER, LIMIT, DATA_DIR)}")
    full = len(data.x_train)
    embedded = min(file_limit, full) if file_limit else full
    if len(emb["z_train"]) != embedded:
        raise StageError(f"{path}: holds {len(emb['z_train'])} training embeddings, but its meta "
                         f"says it embeds the first {embedded} training images (--limit "
                         f"{file_limit})")
    if embedded < n_train:
        raise StageError(f"{path}: embeds the first {embedded} training images (made with "
                         f"--limit {file_limit}), fewer than the {n_train} this run trains on; "
                         f"run with --limit {embedded} or remake it with: "
                         f"{encoder_command(data.name, ENCODER, LIMIT, DATA_DIR)}")
    if len(emb["z_test"]) != len(data.x_test):
        raise StageError(f"{path}: holds {len(emb['z_test'])} test embeddings, the {data.name} "
                         f"test split has {len(data.x_test)} images")
    for split, labels, truth in (("train", emb["y_train"][:n_train], data.y_train[:n_train]),
                                 ("test", emb["y_test"], data.y_test)):
        wrong = int(np.sum(labels != truth))
        if wrong:
            raise StageError(f"{path}: y_{split} differs from the {data.name} {split} labels at "
                             f"{wrong} of {len(truth)} positions: these embeddings are not "
                             f"paired with these images")
    return emb["z_train"][:n_train], emb["z_test"], meta


def fingerprint(*arrays: np.ndarray) -> str:
    """A short hash of arrays' bytes: a checkpoint is only resumed on the same embeddings."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- sampling and scoring
@torch.no_grad()
def regenerate(model: ConditionalGAN, conditions: torch.Tensor, seed: int) -> np.ndarray:
    """uint8 images (N, 28, 28), one per condition, in eval mode, with noise fixed by ``seed``
    (drawn on the CPU, so the same on every device)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for chunk in conditions.split(SAMPLE_BATCH_SIZE):
        parts.append(to_pixels(model.sample(chunk, model.sample_noise(len(chunk), generator))))
    return np.concatenate(parts)


def grid_sources(labels: np.ndarray, count: int = 10) -> np.ndarray:
    """Indices of up to ``count`` test images: the first of each class, then the next ones."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:count]
    rest = [i for i in range(len(labels)) if i not in firsts]
    return np.array(firsts + rest[:count - len(firsts)])


def save_epoch_grid(model: ConditionalGAN, x_test: np.ndarray, z_test: torch.Tensor,
                    chosen: np.ndarray, path: Path, title: str) -> None:
    """Real test images on top, under them regenerations from their embeddings (one noise per
    row, the same noise every epoch)."""
    rows = [x_test[chosen]]
    for row in range(GRID_NOISE_ROWS):
        rows.append(regenerate(model, z_test[chosen], SEED * 7919 + row))
    labels = ["real"] + [f"noise {r + 1}" for r in range(GRID_NOISE_ROWS)]
    figure = image_grid_figure(rows, labels, title)
    save_figure(figure, path)
    import matplotlib.pyplot as plt

    plt.close(figure)


def validation_fid(evaluator: nn.Module, x_real: np.ndarray, z_real: torch.Tensor,
                   device: torch.device):
    """score(model): FID on the evaluator's features between these training images and their
    regenerations (the same noise every epoch); lower is better. Test images are never used."""
    real_features, _ = evaluator_outputs(evaluator, x_real, device)

    def score(model: ConditionalGAN) -> float:
        generated = regenerate(model, z_real, SEED + 1)
        features, _ = evaluator_outputs(evaluator, generated, device)
        return metrics.frechet_distance(features, real_features)

    return score


# ---------------------------------------------------------------- the stage
def resume_settings(name: str, embedding_hash: str, n_train: int) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued."""
    settings = {"dataset": DATASET, "encoder": ENCODER, "embeddings": embedding_hash,
                "train_images": n_train, "batch_size": BATCH_SIZE, "seed": SEED,
                "noise_dim": NOISE_DIM, "width": WIDTH, "feature_dim": FEATURE_DIM,
                "loss": LOSS, "gradient_penalty": GRADIENT_PENALTY,
                "spectral_norm": SPECTRAL_NORM, "n_critic": N_CRITIC,
                "lr_generator": LR_GENERATOR, "lr_discriminator": LR_DISCRIMINATOR,
                "betas": [BETA1, BETA2], "ema_decay": EMA_DECAY,
                "validation_images": VALIDATION_IMAGES, "model": name}
    if name == "acgan":
        settings["aux_weight"] = AUX_WEIGHT
    if name == "infogan":
        settings.update(info_categories=INFO_CATEGORIES, info_continuous=INFO_CONTINUOUS,
                        info_weight=INFO_WEIGHT, info_continuous_weight=INFO_CONTINUOUS_WEIGHT)
    return settings


def report_table(rows: list[dict[str, Any]]) -> str:
    """The printed results: one row per GAN, the floors in the header row."""
    lines = ["| model | epochs (best) | FID (floor) | IS-style (real) | precision | recall | "
             "class consistency (real) | pixel MAE | training time (all epochs) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['epochs']} ({r['best_epoch']}) | {r['fid']:.2f} "
                     f"({r['fid_floor']:.2f}) | {r['score']:.2f} ({r['score_real']:.2f}) | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['class_consistency']:.3f} "
                     f"({r['class_consistency_real']:.3f}) | {r['pixel_mae']:.4f} | "
                     + ("— |" if r["train_seconds"] is None else f"{r['train_seconds']:.0f} s |"))
    return "\n".join(lines)


def main() -> None:
    settings = configure(globals())
    root = Path(DATA_DIR)
    folders = {name: ensure_output_dir(root / name) for name in
               ("samples/plan1", "visualizations", "checkpoints/plan1")}
    limit_cpu_threads(THREADS)
    seed_everything(SEED, DETERMINISTIC)
    device = pick_device(DEVICE)
    data = load_dataset(DATASET, DATA_DIR)  # all of it: the evaluator trains on every image
    n_train = min(LIMIT, len(data.x_train)) if LIMIT else len(data.x_train)
    if n_train < BATCH_SIZE:
        raise StageError(f"--limit {LIMIT} leaves {n_train} training images, not one full batch "
                         f"of --batch-size {BATCH_SIZE}")
    n_test = min(TEST_IMAGES, len(data.x_test)) if TEST_IMAGES else len(data.x_test)
    if n_test <= EVALUATOR_FEATURE_DIM:
        raise StageError(f"--test-images {TEST_IMAGES}: the FID on {EVALUATOR_FEATURE_DIM}-d "
                         f"features needs more than {EVALUATOR_FEATURE_DIM} images")
    embedding_path = root / "embeddings" / f"{DATASET}_{ENCODER}.npz"
    z_train_np, z_test_np, embedding_meta = paired_embeddings(embedding_path, data, n_train)
    embedding_hash = fingerprint(z_train_np, z_test_np)
    print(f"{data.name}: {n_train} train, {len(data.x_test)} test images from {data.source}; "
          f"conditions: {embedding_path} ({z_train_np.shape[1]}-d); device {device}")

    evaluate.DATA_DIR, evaluate.SEED = DATA_DIR, SEED  # the evaluator cache evaluate.py uses
    real = evaluate.real_images_for(data, device)
    x_train = torch.from_numpy(data.x_train[:n_train]).to(device)
    y_train = torch.from_numpy(data.y_train[:n_train]).to(device)
    z_train = torch.from_numpy(z_train_np).to(device)
    z_test = torch.from_numpy(z_test_np).to(device)
    n_valid = min(VALIDATION_IMAGES, n_train)
    score = None
    if n_valid > EVALUATOR_FEATURE_DIM:
        score = validation_fid(real.evaluator.model, data.x_train[:n_valid], z_train[:n_valid],
                               device)
    elif VALIDATION_IMAGES:
        print(f"note: {n_valid} validation images are too few for a FID on "
              f"{EVALUATOR_FEATURE_DIM}-d features; the last epoch is kept instead of the best")
    chosen = grid_sources(data.y_test)
    loop = LoopSettings(n_critic=N_CRITIC, lr_generator=LR_GENERATOR,
                        lr_discriminator=LR_DISCRIMINATOR, betas=(BETA1, BETA2),
                        ema_decay=EMA_DECAY, log_every=LOG_EVERY, seed=SEED)
    tensors = {"x": x_train, "condition": z_train, "label": y_train}

    def make_batches(epoch: int):
        for batch in tensor_batches(tensors, BATCH_SIZE, SEED, epoch):
            yield {**batch, "x": to_signed(batch["x"])}

    rows = []
    for name in MODELS:
        tag = f"{DATASET}_{ENCODER}_{name}"
        seed_everything(SEED, DETERMINISTIC)
        model = build_model(name, z_train.shape[1], data.num_classes).to(device)
        model.set_condition_statistics(z_train)
        trainer = GANTrainer(model, loop)
        checkpoint = folders["checkpoints/plan1"] / f"{tag}.pt"
        started = time.time()

        def on_epoch(epoch: int, record: dict[str, Any], name: str = name, tag: str = tag,
                     trainer: GANTrainer = trainer, started: float = started) -> None:
            png = folders["visualizations"] / f"plan1_{tag}_epoch{epoch:03d}.png"
            save_epoch_grid(trainer.ema, data.x_test, z_test, chosen, png,
                            f"{name} on {DATASET} {ENCODER} embeddings, epoch {epoch}: test "
                            f"images (top) regenerated from their embeddings (EMA generator)")
            fid = "" if record["score"] is None else f", validation FID {record['score']:.2f}"
            print(f"{name}: epoch {epoch}/{EPOCHS} D {record['d/loss']:.3f} G "
                  f"{record['g/loss']:.3f}{fid} ({time.time() - started:.0f} s); {png}",
                  flush=True)

        def on_resume(epoch: int, name: str = name, checkpoint: Path = checkpoint,
                      trainer: GANTrainer = trainer) -> None:
            print(f"{name}: resuming from {checkpoint} after epoch {epoch}" + (
                f", continuing at epoch {epoch + 1}/{EPOCHS}"
                if epoch < EPOCHS and not trainer.diverged else "; nothing left to train"))

        resume = resume_settings(name, embedding_hash, n_train)
        report = trainer.fit(make_batches, EPOCHS, checkpoint, resume,
                             steps_per_epoch=n_train // BATCH_SIZE, score=score,
                             score_name=f"validation FID ({n_valid} training images)",
                             on_epoch=on_epoch, desc=name, on_resume=on_resume)
        if report.diverged:
            print(f"warning: {name}: training diverged ({report.diverged}); stopped, and the "
                  f"best checkpoint (epoch {report.best_epoch}) is used", file=sys.stderr)
        train_seconds = trainer.training_seconds()
        best = trainer.best_model()
        x_gen = regenerate(best, z_test[:n_test], SEED)
        arrays = {"x_gen": x_gen, "idx_src": np.arange(n_test, dtype=np.int64),
                  "y_src": data.y_test[:n_test].astype(np.int64)}
        out = folders["samples/plan1"] / f"{tag}.npz"
        evaluate.check_sources(out, arrays, data)
        values = evaluate.plan1_metrics(out, arrays, real, device)
        pixel_mae = float(np.abs(x_gen.astype(np.float64) - data.x_test[:n_test]).mean() / 255)
        meta = make_meta(__file__, settings, DATASET, SEED, encoder=ENCODER, gan=name,
                         embeddings=str(embedding_path), embeddings_hash=embedding_hash,
                         embeddings_time=embedding_meta.get("time"), checkpoint=str(checkpoint),
                         epochs_trained=trainer.epoch, best_epoch=report.best_epoch,
                         validation_fid=report.best_score, diverged=report.diverged,
                         train_images=n_train, test_images=n_test, pixel_mae=pixel_mae,
                         train_seconds=train_seconds,
                         parameters=sum(p.numel() for p in model.parameters()))
        save_npz(out, arrays, meta)
        curves = loss_curves_figure(trainer.history, f"{name} on {DATASET} {ENCODER} "
                                    f"embeddings: losses per {LOG_EVERY} steps")
        png = save_figure(curves, folders["visualizations"] / f"plan1_{tag}_losses.png")
        import matplotlib.pyplot as plt

        plt.close(curves)
        print(f"{name}: wrote {out} and {png}")
        rows.append({"model": name, "epochs": trainer.epoch, "best_epoch": report.best_epoch,
                     "pixel_mae": pixel_mae, "train_seconds": train_seconds, **values})
    print(f"\n{DATASET}, conditions {ENCODER}, {n_test} test images regenerated; FID "
          f"and precision/recall on the evaluator CNN's features (not Inception: compare with "
          f"the floor), IS-style score over 10 splits, pixel MAE in [0, 1] units\n")
    print(report_table(rows))


if __name__ == "__main__":
    run_stage(main)
