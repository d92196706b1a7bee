"""Plan 2: GANs that generate embedding vectors, and GANs that translate between two embeddings.

Generators of embeddings (learn the distribution of data/embeddings/<ds>_<enc>.npz, or of a
flow-refined <ds>_<enc>+<flow>.npz): WGAN-GP (optionally class-conditional), VAE-GAN and a
contrastive GAN (class-conditional, NT-Xent towards real embeddings of the class asked for).
Translators between two encoders' embeddings of the same images, trained without pairs: CycleGAN
and DualGAN. The training images are cut into two disjoint halves, one seen only as domain A
(--encoder), the other only as domain B (--encoder-b); on the test split both embeddings of each
image are known, which measures how well A->B recovers the true B embedding. Every model is an
MLP over standardised vectors (train statistics) trained through the shared loop in gans.py.

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

import functools
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.preprocessing import StandardScaler
from torch import nn

import evaluate
from artifacts import (
    ensure_output_dir,
    load_checkpoint,
    load_embeddings,
    make_meta,
    save_figure,
    save_npz,
    write_text,
)
from CL_loss_function import nt_xent_loss
from data_sources import CLASS_NAMES, ImageDataset, load_dataset
from gans import (
    AdversarialLoss,
    GANModel,
    GANTrainer,
    LoopSettings,
    loss_curves_figure,
    tensor_batches,
)
from metrics import frechet_distance
from nets import ProjectionHead, mlp
from runtime import StageError, limit_cpu_threads, pick_device, run_stage, seed_everything
from settings import configure

# Internal tables (no same-line comment, so not settings).
GAN_NAMES = ("wgan_gp", "vaegan", "contrastive_gan", "cyclegan", "dualgan")
GENERATORS = ("wgan_gp", "vaegan", "contrastive_gan")
TRANSLATORS = ("cyclegan", "dualgan")
# Adam betas: WGAN-GP's paper (0.5, 0.9) for the Wasserstein models, DCGAN's for the others.
WASSERSTEIN_BETAS = (0.5, 0.9)
ADAM_BETAS = (0.5, 0.999)

DATASET = "fashion-mnist"  # dataset the embeddings are of [in data_sources.DATASETS]
DATA_DIR = "data"  # where embeddings are read and every output is written
ENCODER = "ae_advanced"  # embedding to learn (an autoencoder's decodes to images); domain A
ENCODER_B = "vae"  # domain B of CycleGAN and DualGAN: another encoder of the same images
MODELS = GAN_NAMES  # GANs to train, comma-separated [in GAN_NAMES]
EPOCHS = 120  # total epochs per model (with --lr-decay false, more continues a finished run) [>= 1]
BATCH_SIZE = 256  # embeddings per step [>= 2]
LIMIT = 0  # train on the first N training embeddings only (0: all) [>= 0]
SEED = 0  # seeds weights, batch order, noise, the halves and the saved samples [>= 0]
ENSEMBLE = 1  # generators per model, member k trained as --seed SEED+k; samples split evenly [>= 1]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
NOISE_DIM = 32  # size of the generator's noise (VAE-GAN: of its latent code) [>= 1]
HIDDEN = 256  # width of every hidden layer of every network [>= 1]
DEPTH = 3  # hidden layers of every generator, critic and encoder [>= 1]
WGAN_CONDITIONAL = True  # WGAN-GP generates a class asked for (writes y_gen)
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
SAMPLES = 10000  # embeddings generated per model into <ds>_<enc>_<gan>.gen.npz [>= 10]
VALIDATION_SAMPLES = 2000  # samples per epoch whose Fréchet distance picks the best epoch [>= 0]
PLOTS = True  # draw loss curves and the PCA / t-SNE picture of real vs generated embeddings
PLOT_POINTS = 1000  # real and generated points (each) in the PCA / t-SNE picture [>= 10]
LOG_EVERY = 50  # steps between reads of the summed losses (progress bar, curves) [>= 1]
SAMPLE_BATCH_SIZE = 2000  # vectors per generator pass when writing samples and images [>= 1]


# ---------------------------------------------------------------- building blocks
class Critic(nn.Module):
    """Discriminator over vectors: features f(x) by an MLP (LeakyReLU(0.2), no normalisation
    layer, so each vector is scored on its own, as a per-sample gradient penalty requires), then
    a projection head (Miyato & Koyama 2018): score = w.f(x) + b + <V c, f(x)> for a one-hot
    class c, i.e. one linear score per class; with no classes, w.f(x) + b."""

    def __init__(self, dim: int, hidden: int, depth: int, num_classes: int = 0) -> None:
        super().__init__()
        self.features = mlp([dim, *[hidden] * depth], activation=functools.partial(
            nn.LeakyReLU, 0.2), last_activation=True)
        self.head = ProjectionHead(hidden, num_classes)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x), condition)


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x in the forward pass; the gradient that flows back through it is multiplied by factor."""
    return x.detach() + factor * (x - x.detach())


def mode_seeking_loss(fake: torch.Tensor, other: torch.Tensor, noise: torch.Tensor,
                      other_noise: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mode-seeking term (Mao et al. 2019, MSGAN): 1 / (mean ratio + eps), the ratio of row i
    being the mean absolute difference of two samples ``fake[i]``, ``other[i]`` drawn under one
    condition over that of their noises. Minimising it spreads the samples of one condition
    whose noises differ."""
    d_sample = (fake - other).abs().mean(dim=1)
    d_noise = (noise - other_noise).abs().mean(dim=1)
    return 1.0 / ((d_sample / d_noise).mean() + eps)


def energy_distance_term(real: torch.Tensor, fake: torch.Tensor,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
    """The part of the energy distance (Szekely & Rizzo 2013) between fake and real samples
    that depends on the fake ones: 2 E||x - y|| - E||y - y'||, x real, y and y' fake, Euclidean
    norms over the pairs of one class (every pair without ``labels``; y != y'). It is smallest
    when the fake samples are distributed as the real ones: the first part pulls samples
    towards real points, the second spreads them, no further than the real points are spread.
    (``torch.cdist``'s gradient is finite at the zero distances on the diagonal.)"""
    n = len(fake)
    same = (torch.ones(n, n, dtype=torch.bool, device=fake.device) if labels is None
            else labels[:, None] == labels[None, :])
    apart = same & ~torch.eye(n, dtype=torch.bool, device=fake.device)
    return 2 * torch.cdist(fake, real)[same].mean() - torch.cdist(fake, fake)[apart].mean()


def class_groups(labels: np.ndarray) -> np.ndarray:
    """(G, K) batch positions, K the classes present and G the fewest examples of one: row g
    holds the g-th example of each class, so a row never holds two of one class."""
    classes, counts = np.unique(labels, return_counts=True)
    rows = int(counts.min())
    return np.stack([np.flatnonzero(labels == c)[:rows] for c in classes], axis=1)


# ---------------------------------------------------------------- generators of embeddings
class WGANGP(GANModel):
    """WGAN-GP (Gulrajani et al. 2017) over vectors: critic D(x[, y]) without normalisation,
    D loss E[D(G(z))] - E[D(x)] + lambda E[(||grad D(x_hat)||_2 - 1)^2] on per-sample
    interpolates x_hat, G loss -E[D(G(z))]. Conditional: a one-hot class is concatenated to G's
    input (Mirza & Osindero 2014) and selects D's projection score; the penalty interpolates x
    only."""

    def __init__(self, dim: int, num_classes: int = 0, noise_dim: int = 32, hidden: int = 256,
                 depth: int = 3, gradient_penalty: float = 10.0,
                 mode_seeking: float = 0.0, energy_weight: float = 0.0) -> None:
        super().__init__()
        self.adversarial_loss = AdversarialLoss("wasserstein", gradient_penalty)
        self.dim, self.noise_dim, self.num_classes = dim, noise_dim, num_classes
        self.mode_seeking, self.energy_weight = mode_seeking, energy_weight
        self.generator = mlp([noise_dim + num_classes, *[hidden] * depth, dim])
        self.discriminator = Critic(dim, hidden, depth, num_classes)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def condition(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """One-hot classes for a conditional model, None otherwise."""
        if not self.conditional:
            return None
        return F.one_hot(labels, self.num_classes).float()

    @staticmethod
    def _join(x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return x if condition is None else torch.cat([x, condition], dim=1)

    def sample(self, condition: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """Standardised embeddings (B, dim) for one-hot classes (or None) and noise."""
        return self.generator(self._join(noise, condition))

    def critic(self, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return self.discriminator(x, condition)

    def discriminator_loss(self, batch: dict[str, torch.Tensor]
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, c = batch["x"], self.condition(batch.get("label"))
        fake = self.sample(c, self.sample_noise(len(x)))  # G is frozen here: no graph
        parts = {"adversarial": self.adversarial_loss.discriminator(self.critic(x, c),
                                                                    self.critic(fake, c))}
        if self.adversarial_loss.gradient_penalty:
            parts["gradient_penalty"] = self.adversarial_loss.penalty(
                lambda v: self.critic(v, c), x, fake)
        return sum(parts.values()), parts

    def generator_loss(self, batch: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.condition(batch.get("label"))
        noise = self.sample_noise(len(batch["x"]))
        fake = self.sample(c, noise)
        parts = {"adversarial": self.adversarial_loss.generator(self.critic(fake, c))}
        if self.mode_seeking:  # a second sample of each row's class from other noise
            other_noise = self.sample_noise(len(noise))
            parts["mode_seeking"] = self.mode_seeking * mode_seeking_loss(
                fake, self.sample(c, other_noise), noise, other_noise)
        if self.energy_weight:  # real and fake rows of one batch have the same classes
            parts["energy"] = self.energy_weight * energy_distance_term(
                batch["x"], fake, batch["label"] if self.conditional else None)
        parts.update(self.generator_extra(batch, fake))
        return sum(parts.values()), parts

    def generator_extra(self, batch: dict[str, torch.Tensor],
                        fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted extra terms of the generator loss (none for WGAN-GP)."""
        return {}


class ContrastiveGAN(WGANGP):
    """Class-conditional WGAN-GP whose generator loss adds NT-Xent (Chen et al. 2020,
    ``CL_loss_function.nt_xent_loss``) between generated and real embeddings: in each group of
    the batch (one example of each class, ``class_groups``), the sample G(z_i, y_i) and the real
    x_i of its class are a positive pair and the other classes' vectors its negatives, so samples
    are pulled towards real embeddings of the class asked for and pushed from other classes.
    Cosines are taken in the standardised embedding space; the group losses are averaged."""

    def __init__(self, dim: int, num_classes: int, contrastive_weight: float = 1.0,
                 temperature: float = 0.5, **kwargs: Any) -> None:
        if num_classes < 2:
            raise ValueError("the contrastive GAN needs at least 2 classes")
        super().__init__(dim, num_classes, **kwargs)
        self.contrastive_weight, self.temperature = contrastive_weight, temperature

    def generator_extra(self, batch, fake):
        groups = batch["groups"]
        if groups.shape[1] < 2:  # one class in the batch: no negatives
            return {"contrastive": fake.new_zeros(())}
        losses = [nt_xent_loss(fake[row], batch["x"][row], self.temperature) for row in groups]
        return {"contrastive": self.contrastive_weight * torch.stack(losses).mean()}


class VAEGAN(GANModel):
    """VAE-GAN (Larsen et al. 2016) over vectors: encoder q(z|x) = N(mu, diag exp(logvar)),
    decoder G (the generator, sampling G(z), z ~ N(0, I)) and a discriminator D with a feature
    layer f. Losses, with x~ = G(z), z ~ q(z|x), and x_p = G(z_p):
      D: the GAN loss on x (real) against x~ and x_p (fake, weighted equally);
      encoder: beta KL(q(z|x) || N(0, I)) + L_llike,  L_llike = 1/2 ||f(x) - f(x~)||^2;
      decoder: gamma L_llike + the GAN loss of x~ and x_p.
    One loss serves both networks: the encoder's share of L_llike reaches it through a gradient
    scaled by 1/gamma, and the GAN term sees x~ = G(z) with z detached from the encoder.
    """

    def __init__(self, dim: int, noise_dim: int = 32, hidden: int = 256, depth: int = 3,
                 beta: float = 1.0, gamma: float = 0.1) -> None:
        super().__init__()
        self.adversarial_loss = AdversarialLoss("non-saturating")
        self.dim, self.noise_dim, self.beta, self.gamma = dim, noise_dim, beta, gamma
        self.encoder = mlp([dim, *[hidden] * depth, 2 * noise_dim])
        self.generator = mlp([noise_dim, *[hidden] * depth, dim])
        self.discriminator = Critic(dim, hidden, depth)

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.generator.parameters()]

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def sample(self, condition: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(noise)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x)

    def discriminator_loss(self, batch):
        x = batch["x"]
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        fakes = torch.cat([self.generator(z), self.generator(self.sample_noise(len(x)))])
        adversarial = self.adversarial_loss.discriminator(self.score(x), self.score(fakes))
        return adversarial, {"adversarial": adversarial}

    def generator_loss(self, batch):
        x = batch["x"]
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation
        kl = (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)).mean()
        features = self.discriminator.features
        reconstructed = self.generator(scale_gradient(z, 1.0 / self.gamma))
        llike = 0.5 * ((features(reconstructed) - features(x).detach()) ** 2).sum(1).mean()
        fakes = torch.cat([self.generator(z.detach()),
                           self.generator(self.sample_noise(len(x)))])
        parts = {"adversarial": self.adversarial_loss.generator(self.score(fakes)),
                 "kl": self.beta * kl, "feature_reconstruction": self.gamma * llike}
        return sum(parts.values()), parts


# ---------------------------------------------------------------- translators
class TranslationGAN(GANModel):
    """Two generators G_AB, G_BA and two discriminators D_A, D_B over unpaired vectors.

    With ``num_classes`` > 0 the discriminators also see each vector's class (projection scores):
    D_B judges G_AB(a) as a B vector of a's class. Each domain's own labels are used, never a
    pairing, and the generators never see a class, so that unlabelled vectors translate. Without
    classes, the distributions alone rarely pin the map down: on a labelled 2-D mixture rotated
    by 70 or 150 degrees, 1 of 6 unconditional runs found the rotation, 6 of 6 conditional ones.

    G loss: adversarial terms of G_AB(a) under D_B and of G_BA(b) under D_A
      + reconstruction weight x (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)  (means over
        elements)
      + identity weight x (|G_AB(b) - b|_1 + |G_BA(a) - a|_1), only when the dims match.
    D loss: the adversarial loss of each domain (plus its gradient penalty), summed.
    CycleGAN (Zhu et al. 2017): least-squares losses, cycle weight 10, identity optional.
    DualGAN (Yi et al. 2017): Wasserstein losses (here with a gradient penalty instead of the
    paper's weight clipping) and the paper's L1 reconstruction loss.
    """

    noise_dim = 0

    def __init__(self, dim_a: int, dim_b: int, loss: AdversarialLoss, hidden: int = 256,
                 depth: int = 3, reconstruction_weight: float = 10.0,
                 identity_weight: float = 0.0, num_classes: int = 0) -> None:
        super().__init__()
        self.adversarial_loss = loss
        self.dim_a, self.dim_b, self.num_classes = dim_a, dim_b, num_classes
        self.reconstruction_weight = reconstruction_weight
        self.identity_weight = identity_weight if dim_a == dim_b else 0.0
        self.generator = nn.ModuleDict({"a_to_b": mlp([dim_a, *[hidden] * depth, dim_b]),
                                        "b_to_a": mlp([dim_b, *[hidden] * depth, dim_a])})
        self.discriminator = nn.ModuleDict({"a": Critic(dim_a, hidden, depth, num_classes),
                                            "b": Critic(dim_b, hidden, depth, num_classes)})

    def translate(self, x: torch.Tensor, direction: str = "a_to_b") -> torch.Tensor:
        return self.generator[direction](x)

    def sample(self, condition: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """G_AB(condition): the condition is a batch of (standardised) domain-A vectors."""
        if condition is None:
            raise ValueError("a translator samples from a batch of domain-A vectors")
        return self.translate(condition)

    def classes(self, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One-hot classes of the batch's A and B vectors (None, None when unconditional)."""
        if not self.num_classes:
            return None, None
        return (F.one_hot(batch["label_a"], self.num_classes).float(),
                F.one_hot(batch["label_b"], self.num_classes).float())

    def critic(self, domain: str, x: torch.Tensor, condition: torch.Tensor | None = None
               ) -> torch.Tensor:
        return self.discriminator[domain](x, condition)

    def discriminator_loss(self, batch):
        a, b = batch["a"], batch["b"]
        c_a, c_b = self.classes(batch)
        fake_b, fake_a = self.translate(a, "a_to_b"), self.translate(b, "b_to_a")
        loss_fn = self.adversarial_loss
        parts = {"adversarial": loss_fn.discriminator(self.critic("b", b, c_b),
                                                      self.critic("b", fake_b, c_a))
                 + loss_fn.discriminator(self.critic("a", a, c_a),
                                         self.critic("a", fake_a, c_b))}
        if loss_fn.gradient_penalty:  # interpolates scored with the real vectors' classes
            parts["gradient_penalty"] = (
                loss_fn.penalty(lambda v: self.critic("b", v, c_b), b, fake_b)
                + loss_fn.penalty(lambda v: self.critic("a", v, c_a), a, fake_a))
        return sum(parts.values()), parts

    def generator_loss(self, batch):
        a, b = batch["a"], batch["b"]
        c_a, c_b = self.classes(batch)
        fake_b, fake_a = self.translate(a, "a_to_b"), self.translate(b, "b_to_a")
        loss_fn = self.adversarial_loss
        parts = {"adversarial": loss_fn.generator(self.critic("b", fake_b, c_a))
                 + loss_fn.generator(self.critic("a", fake_a, c_b)),
                 "reconstruction": self.reconstruction_weight * (
                     (self.translate(fake_b, "b_to_a") - a).abs().mean()
                     + (self.translate(fake_a, "a_to_b") - b).abs().mean())}
        if self.identity_weight:
            parts["identity"] = self.identity_weight * (
                (self.translate(b, "a_to_b") - b).abs().mean()
                + (self.translate(a, "b_to_a") - a).abs().mean())
        return sum(parts.values()), parts


def build_model(name: str, dim: int, num_classes: int, dim_b: int = 0) -> GANModel:
    """A Plan 2 GAN by name, with the hyper-parameters of the current settings."""
    common = {"hidden": HIDDEN, "depth": DEPTH}
    if name == "wgan_gp":
        return WGANGP(dim, num_classes if WGAN_CONDITIONAL else 0, NOISE_DIM,
                      gradient_penalty=GRADIENT_PENALTY, mode_seeking=MODE_SEEKING,
                      energy_weight=ENERGY_WEIGHT, **common)
    if name == "contrastive_gan":
        return ContrastiveGAN(dim, num_classes, CONTRASTIVE_WEIGHT, CONTRASTIVE_TEMPERATURE,
                              noise_dim=NOISE_DIM, gradient_penalty=GRADIENT_PENALTY,
                              mode_seeking=MODE_SEEKING, energy_weight=ENERGY_WEIGHT,
                              **common)
    if name == "vaegan":
        return VAEGAN(dim, NOISE_DIM, beta=VAE_BETA, gamma=VAEGAN_GAMMA, **common)
    classes = num_classes if TRANSLATION_CLASSES else 0
    if name == "cyclegan":
        return TranslationGAN(dim, dim_b, AdversarialLoss("least-squares"),
                              reconstruction_weight=CYCLE_WEIGHT,
                              identity_weight=IDENTITY_WEIGHT, num_classes=classes, **common)
    if name == "dualgan":
        return TranslationGAN(dim, dim_b, AdversarialLoss("wasserstein", GRADIENT_PENALTY),
                              reconstruction_weight=DUALGAN_RECONSTRUCTION, num_classes=classes,
                              **common)
    raise StageError(f"unknown model {name!r}; valid names: {', '.join(GAN_NAMES)}")


def loop_settings(name: str, seed: int) -> LoopSettings:
    """The optimiser schedule of a model: WGAN-GP's paper for the Wasserstein models."""
    wasserstein = name in ("wgan_gp", "contrastive_gan", "dualgan")
    lr = WASSERSTEIN_LR if wasserstein else LEARNING_RATE
    return LoopSettings(n_critic=N_CRITIC if wasserstein else 1, lr_generator=lr,
                        lr_discriminator=lr,
                        betas=WASSERSTEIN_BETAS if wasserstein else ADAM_BETAS,
                        ema_decay=EMA_DECAY, log_every=LOG_EVERY, seed=seed)


# ---------------------------------------------------------------- data
class Standardiser:
    """Per-dimension standardisation with train statistics (a constant column keeps scale 1);
    float32 out, float64 inside."""

    def __init__(self, z_train: np.ndarray) -> None:
        self.scaler = StandardScaler().fit(z_train.astype(np.float64))

    def forward(self, z: np.ndarray) -> np.ndarray:
        return self.scaler.transform(z.astype(np.float64)).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return self.scaler.inverse_transform(z.astype(np.float64)).astype(np.float32)


def making_command(encoder: str) -> str:
    """The command that writes data/embeddings/<ds>_<encoder>.npz."""
    base, plus, flow = encoder.partition("+")
    if plus:
        command = f"python flows.py --dataset {DATASET} --encoders {base} --flows {flow}"
    else:
        command = f"python encoder_models.py --dataset {DATASET} --models {encoder}"
    return command + (f" --data-dir {DATA_DIR}" if DATA_DIR != "data" else "")


def load_source(encoder: str) -> tuple[Path, dict[str, Any]]:
    """An embedding file of --dataset, checked: labels are class indices, its meta agrees."""
    path = Path(DATA_DIR) / "embeddings" / f"{DATASET}_{encoder}.npz"
    if not path.is_file():
        raise StageError(f"{path} not found; make it with: {making_command(encoder)}")
    data = load_embeddings(path)
    recorded = data["meta"].get("dataset")
    if recorded is not None and recorded != DATASET:
        raise StageError(f"{path}: its meta says dataset {recorded!r}, not {DATASET!r}")
    classes = len(CLASS_NAMES[DATASET])
    for key in ("y_train", "y_test"):
        labels = data[key]
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise StageError(f"{path}: {key} spans [{labels.min()}, {labels.max()}], not class "
                             f"indices of {DATASET} (0..{classes - 1})")
    return path, data


def check_same_images(path_a: Path, a: dict[str, Any], path_b: Path, b: dict[str, Any]) -> None:
    """Two embedding files for translation must embed the same images in the same order."""
    between = f"{path_a.name} and {path_b.name}"
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


def fingerprint(*arrays: np.ndarray) -> str:
    """A short hash of arrays' bytes: a checkpoint is only resumed on the same embeddings."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded halves of range(n): images seen only as A, and only as B."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:2 * half])


def index_batches(n: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Shuffled CPU index batches of range(n), the order fixed by (seed, epoch)."""
    for batch in tensor_batches({"i": torch.arange(n)}, BATCH_SIZE, seed, epoch):
        yield batch["i"]


# ---------------------------------------------------------------- sampling and scoring
def class_draw(y_train: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """n classes drawn with the training classes' frequencies (seeded)."""
    frequencies = np.bincount(y_train, minlength=num_classes) / len(y_train)
    return np.random.default_rng(seed).choice(num_classes, n, p=frequencies).astype(np.int64)


@torch.no_grad()
def generate(model: GANModel, labels: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """n standardised samples in eval mode, noise from a CPU generator seeded with ``seed`` (the
    same on every device); ``labels`` are the classes asked for of a conditional model."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n, SAMPLE_BATCH_SIZE):
        count = min(SAMPLE_BATCH_SIZE, n - start)
        condition = None
        if labels is not None and getattr(model, "conditional", False):
            condition = model.condition(torch.from_numpy(labels[start:start + count])
                                        .to(model.device))
        parts.append(model.sample(condition, model.sample_noise(count, generator))
                     .float().cpu().numpy())
    return np.concatenate(parts)


def generate_ensemble(models: list[GANModel], labels: np.ndarray | None, n: int,
                      seed: int) -> np.ndarray:
    """n standardised samples split evenly over the members, interleaved: row i comes from
    member i mod M, with noise seeded ``seed + member``. One member: ``generate(model, labels,
    n, seed)``."""
    rows = [np.arange(member, n, len(models)) for member in range(len(models))]
    parts = [generate(model, None if labels is None else labels[index], len(index), seed + k)
             for k, (model, index) in enumerate(zip(models, rows, strict=True))]
    out = np.empty((n, parts[0].shape[1]), dtype=parts[0].dtype)
    for index, part in zip(rows, parts, strict=True):
        out[index] = part
    return out


def member_suffix(member: int) -> str:
    """The file-name suffix of an ensemble member: none for member 0 (the model's own files)."""
    return f"_member{member}" if member else ""


@torch.no_grad()
def translate(model: TranslationGAN, z: np.ndarray, direction: str) -> np.ndarray:
    """Translate standardised vectors in eval mode, in batches."""
    model.eval()
    parts = [model.translate(torch.from_numpy(chunk).to(model.device), direction).float()
             .cpu().numpy() for chunk in np.array_split(z, max(1, -(-len(z) // SAMPLE_BATCH_SIZE)))]
    return np.concatenate(parts)


def real_vs_generated_figure(real: np.ndarray, generated: np.ndarray, title: str,
                             real_label: str, generated_label: str) -> Any:
    """PCA (axes of the real points) and a joint t-SNE of seeded subsets of both sets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(SEED)
    real = real[np.sort(rng.choice(len(real), min(PLOT_POINTS, len(real)), replace=False))]
    generated = generated[np.sort(rng.choice(len(generated), min(PLOT_POINTS, len(generated)),
                                             replace=False))]
    both = np.concatenate([real, generated]).astype(np.float64)
    pca = PCA(n_components=2, random_state=SEED).fit(real.astype(np.float64))
    tsne = TSNE(n_components=2, init="pca", learning_rate="auto", random_state=SEED,
                perplexity=min(30.0, (len(both) - 1) / 3)).fit_transform(both)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for axis, points, name in ((axes[0], pca.transform(both), "PCA (axes of the real points)"),
                               (axes[1], tsne, "t-SNE of both sets")):
        for part, label, colour in ((points[:len(real)], f"{real_label} ({len(real)})",
                                     "tab:blue"),
                                    (points[len(real):], f"{generated_label} ({len(generated)})",
                                     "tab:orange")):
            axis.scatter(part[:, 0], part[:, 1], s=5, alpha=0.5, color=colour, linewidths=0,
                         label=label)
        axis.set_title(name, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(markerscale=3, loc="best", fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.text(0.01, 0.01, "t-SNE sizes and gaps carry no meaning; distances are measured in "
                "the embedding space", fontsize=8, color="0.35")
    return figure


def save_plot(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    save_figure(figure, path)
    plt.close(figure)
    return path


# ---------------------------------------------------------------- from embeddings to images
def save_pictures(trainer: GANTrainer, stem: Path, losses_title: str, real: np.ndarray,
                  fake: np.ndarray, title: str, labels: tuple[str, str]) -> list[Path]:
    """The loss curves (<stem>_losses.png) and the PCA / t-SNE picture of real against generated
    or translated vectors (<stem>_real_vs_generated.png)."""
    return [save_plot(loss_curves_figure(trainer.history, f"{losses_title}: losses per "
                                         f"{LOG_EVERY} steps"),
                      stem.with_name(stem.name + "_losses.png")),
            save_plot(real_vs_generated_figure(real, fake, title, *labels),
                      stem.with_name(stem.name + "_real_vs_generated.png"))]


def autoencoder_decoder(z_test: np.ndarray, data: ImageDataset):
    """decode(z) -> uint8 images with the decoder of the --encoder autoencoder, or (None, why).

    The checkpoint must reproduce the embedding file: the first test images are embedded again
    and compared, so that images never come from a decoder trained further or on other data."""
    import encoder_models

    path = Path(DATA_DIR) / "checkpoints" / "encoders" / f"{DATASET}_{ENCODER}.pt"
    if "+" in ENCODER:
        return None, "flow-refined embeddings live in the flow's base space, not the decoder's"
    if ENCODER not in encoder_models.ENCODER_NAMES:
        return None, f"{ENCODER!r} is not an encoder of encoder_models.py"
    model = encoder_models.build_model(ENCODER, z_test.shape[1], DATASET)
    if model.kind != "autoencoder":
        return None, f"{ENCODER} has no decoder"
    if not path.is_file():
        return None, f"{path} not found"
    state = load_checkpoint(path, required=("model", "settings"))
    if state["settings"].get("embedding_dim") != z_test.shape[1]:
        return None, (f"{path} has embedding size {state['settings'].get('embedding_dim')}, the "
                      f"embeddings {z_test.shape[1]}")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        return None, f"{path} holds another architecture ({str(err).splitlines()[0]})"
    model.eval()
    with torch.no_grad():
        check = model.embed(encoder_models.to_unit(torch.from_numpy(data.x_test[:64]))).numpy()
    gap = float(np.abs(check - z_test[:64]).max())
    if gap > 1e-3 * (1.0 + float(np.abs(z_test[:64]).max())):
        return None, (f"{path} does not reproduce the test embeddings (largest difference "
                      f"{gap:.3g}): trained further since the embeddings were written?")

    @torch.no_grad()
    def decode(z: np.ndarray) -> np.ndarray:
        parts = []
        for chunk in np.array_split(z, max(1, -(-len(z) // SAMPLE_BATCH_SIZE))):
            pixels = torch.sigmoid(model.decoder(torch.from_numpy(chunk))).view(-1, 28, 28)
            parts.append((pixels * 255.0).round().clamp(0, 255).to(torch.uint8).numpy())
        return np.concatenate(parts)

    return decode, f"decoder of {path}"


def plan1_decoders(z_train: np.ndarray, z_test: np.ndarray, num_classes: int,
                   device: torch.device) -> tuple[dict[str, Any], list[str]]:
    """decode(z) -> uint8 images through each Plan 1 generator trained on these embeddings
    (data/checkpoints/plan1/<ds>_<enc>_<gan>.pt), and notes on those that cannot be used."""
    folder = Path(DATA_DIR) / "checkpoints" / "plan1"
    paths = sorted(folder.glob(f"{DATASET}_{ENCODER}_*.pt"))
    if not paths:
        return {}, []
    import plan1_gan_training as plan1

    decoders, notes = {}, []
    for path in paths:
        gan = path.stem.removeprefix(f"{DATASET}_{ENCODER}_")
        if gan not in plan1.GAN_NAMES:
            continue
        state = load_checkpoint(path)
        saved = state.get("settings", {})
        n_train = saved.get("train_images")
        if not isinstance(n_train, int) or saved.get("embeddings") != plan1.fingerprint(
                z_train[:n_train], z_test):
            notes.append(f"{path}: trained on other embeddings than {DATASET}_{ENCODER}.npz")
            continue
        # Build the generator with the checkpoint's hyper-parameters, then restore plan1's own.
        names = [key.upper() for key in saved if hasattr(plan1, key.upper())]
        kept = {name: getattr(plan1, name) for name in names}
        try:
            for name in names:
                value = saved[name.lower()]
                setattr(plan1, name, tuple(value) if isinstance(value, list) else value)
            model = plan1.build_model(gan, z_test.shape[1], num_classes).to(device)
            model.load_state_dict(state["best_ema"] or state["ema"])
        except (RuntimeError, KeyError, TypeError, ValueError) as err:
            notes.append(f"{path}: cannot rebuild its generator "
                         f"({str(err).splitlines()[0]})")
            continue
        finally:
            for name, value in kept.items():
                setattr(plan1, name, value)

        def decode(z: np.ndarray, model: Any = model) -> np.ndarray:
            return plan1.regenerate(model, torch.from_numpy(z).to(device), SEED)

        decoders[gan] = decode
    return decoders, notes


# ---------------------------------------------------------------- the stage
def resume_settings(name: str, embedding_hash: str, n_train: int, seed: int) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued."""
    loop = loop_settings(name, seed)
    settings = {"model": name, "dataset": DATASET, "encoder": ENCODER,
                "embeddings": embedding_hash, "train_embeddings": n_train,
                "batch_size": BATCH_SIZE, "seed": seed, "hidden": HIDDEN, "depth": DEPTH,
                "n_critic": loop.n_critic, "learning_rate": loop.lr_generator,
                "betas": list(loop.betas), "ema_decay": EMA_DECAY,
                "validation_samples": VALIDATION_SAMPLES, "lr_decay": LR_DECAY}
    if LR_DECAY:  # the schedule's shape depends on the number of epochs
        settings["epochs"] = EPOCHS
    if name in GENERATORS:
        settings["noise_dim"] = NOISE_DIM
    if name in ("wgan_gp", "contrastive_gan", "dualgan"):
        settings["gradient_penalty"] = GRADIENT_PENALTY
    if name in ("wgan_gp", "contrastive_gan") and MODE_SEEKING:  # older checkpoints: none
        settings["mode_seeking"] = MODE_SEEKING
        settings["mode_seeking_pairs"] = "same class"  # earlier: rows i, i + B/2 of a batch
    if name in ("wgan_gp", "contrastive_gan") and ENERGY_WEIGHT:
        settings["energy_weight"] = ENERGY_WEIGHT
    settings.update({
        "wgan_gp": {"conditional": WGAN_CONDITIONAL},
        "contrastive_gan": {"contrastive_weight": CONTRASTIVE_WEIGHT,
                            "contrastive_temperature": CONTRASTIVE_TEMPERATURE},
        "vaegan": {"vae_beta": VAE_BETA, "vaegan_gamma": VAEGAN_GAMMA},
        "cyclegan": {"encoder_b": ENCODER_B, "cycle_weight": CYCLE_WEIGHT,
                     "identity_weight": IDENTITY_WEIGHT,
                     "translation_classes": TRANSLATION_CLASSES},
        "dualgan": {"encoder_b": ENCODER_B, "dualgan_reconstruction": DUALGAN_RECONSTRUCTION,
                    "translation_classes": TRANSLATION_CLASSES},
    }[name])
    return settings


def train(name: str, model: GANModel, make_batches: Any, steps: int, score: Any,
          embedding_hash: str, n_train: int, checkpoint: Path, seed: int
          ) -> tuple[GANTrainer, Any, float | None]:
    """Train (or resume) one model; returns its trainer, the fit report and the seconds of every
    epoch trained (resumed runs included; ``GANTrainer.training_seconds``)."""
    loop = loop_settings(name, seed)
    trainer = GANTrainer(model, loop)
    started = time.time()

    def scheduled_batches(epoch: int) -> Any:
        """The epoch's batches, after setting the epoch's learning rates (from the epoch alone,
        so that a resumed run follows the same schedule)."""
        factor = 1.0 - (epoch - 1) / EPOCHS if LR_DECAY else 1.0
        for optimizer, rate in ((trainer.opt_g, loop.lr_generator),
                                (trainer.opt_d, loop.lr_discriminator)):
            for group in optimizer.param_groups:
                group["lr"] = rate * factor
        return make_batches(epoch)

    def on_epoch(epoch: int, record: dict[str, Any]) -> None:
        shown = "" if record["score"] is None else f", validation FD {record['score']:.4f}"
        print(f"{name}: epoch {epoch}/{EPOCHS} D {record['d/loss']:.3f} G "
              f"{record['g/loss']:.3f}{shown} ({time.time() - started:.0f} s)", flush=True)

    report = trainer.fit(scheduled_batches, EPOCHS, checkpoint,
                         resume_settings(name, embedding_hash, n_train, seed),
                         steps_per_epoch=steps,
                         score=score, score_name="validation Fréchet distance (standardised)",
                         on_epoch=on_epoch, desc=name)
    if report.resumed_from:
        print(f"{name}: resumed from {checkpoint} after epoch {report.resumed_from}"
              + ("" if report.trained_epochs else " (nothing left to train)"))
    if report.diverged:
        print(f"warning: {name}: training stopped ({report.diverged}); the best checkpoint "
              f"(epoch {report.best_epoch}) is used")
    return trainer, report, trainer.training_seconds()


def generator_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | epochs (best) | Fréchet distance (floor) | ratio | precision (floor) | "
             "recall (floor) | density (floor) | coverage (floor) | k-NN class match (real "
             "test acc.) | TSTR k-NN acc. (TRTR) | k-means ARI vs class asked (real) | "
             "train time |", "| --- " * 12 + "|"]
    for r in rows:
        conditional = "knn_class_consistency" in r
        lines.append(
            f"| {r['model']} | {r['epochs']} ({r['best_epoch']}) | {r['frechet_distance']:.3f} "
            f"({r['frechet_distance_floor']:.3f}) | "
            f"{r['frechet_distance'] / r['frechet_distance_floor']:.2f} | "
            + " | ".join(f"{r[m]:.3f} ({r[m + '_floor']:.3f})"
                         for m in ("precision", "recall", "density", "coverage"))
            + (f" | {r['knn_class_consistency']:.3f} ({r['knn_accuracy_real']:.3f}) | "
               f"{r['tstr_knn_accuracy']:.3f} ({r['trtr_knn_accuracy']:.3f}) | "
               f"{r['kmeans_ari']:.3f} ({r['kmeans_ari_real']:.3f})" if conditional
               else " | — | — | —")
            + (" | — |" if r["train_seconds"] is None else f" | {r['train_seconds']:.0f} s |"))
    return "\n".join(lines)


def translation_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | epochs (best) | cosine to true B (paired linear map) | k-NN acc. of "
             "A->B (B's own) | cycle error A (B) | train time |", "| --- " * 6 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['epochs']} ({r['best_epoch']}) | {r['cosine']:.3f} "
                     f"({r['cosine_paired_linear']:.3f}) | {r['knn_accuracy']:.3f} "
                     f"({r['knn_accuracy_target']:.3f}) | {r['cycle_error_a']:.3f} "
                     f"({r['cycle_error_b']:.3f}) | "
                     + ("— |" if r["train_seconds"] is None else f"{r['train_seconds']:.0f} s |"))
    return "\n".join(lines)


def validation_score(reference: np.ndarray, labels: np.ndarray, seed: int):
    """score(ema): Fréchet distance between samples (the same noise and classes every epoch) and
    a fixed subset of the standardised training embeddings; lower is better. Never the test."""
    def score(model: GANModel) -> float:
        return frechet_distance(generate(model, labels, len(reference), seed + 1), reference)

    return score


def train_generators(names: list[str], real: dict[str, Any], source: Path, n_train: int,
                     folders: dict[str, Path], settings: dict[str, Any],
                     device: torch.device) -> list[dict[str, Any]]:
    """Train the generators of embeddings; write their samples, images and pictures."""
    num_classes = len(CLASS_NAMES[DATASET])
    z_train_raw, y_train = real["z_train"][:n_train], real["y_train"][:n_train].astype(np.int64)
    scaler = Standardiser(z_train_raw)
    z_train = torch.from_numpy(scaler.forward(z_train_raw)).to(device)
    labels = torch.from_numpy(y_train).to(device)
    embedding_hash = fingerprint(z_train_raw, y_train)
    decoders: dict[str, Any] = {}
    decode, why = autoencoder_decoder(real["z_test"], load_dataset(DATASET, DATA_DIR))
    if decode is None:
        print(f"note: no images from {ENCODER} embeddings through an autoencoder: {why}")
    else:
        decoders["decoder"] = decode
    plan1, notes = plan1_decoders(real["z_train"], real["z_test"], num_classes, device)
    for note in notes:
        print(f"note: Plan 1 generator not used: {note}")
    decoders.update({f"plan1-{gan}": f for gan, f in plan1.items()})

    def train_member(name: str, member: int) -> tuple[GANTrainer, Any, float | None, Path]:
        """Member ``member`` of a model's ensemble, trained (or resumed) exactly as a run with
        ``--seed SEED+member`` trains the model alone: weights, batch order, noise and the
        validation subset all follow that seed. Member 0's checkpoint is the model's own."""
        seed = SEED + member
        chosen = np.random.default_rng(seed).choice(n_train, min(VALIDATION_SAMPLES, n_train),
                                                    replace=False)

        def make_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            for index in index_batches(n_train, seed, epoch):
                groups = torch.from_numpy(class_groups(y_train[index.numpy()]))
                index = index.to(device)
                yield {"x": z_train[index], "label": labels[index], "groups": groups}

        seed_everything(seed, DETERMINISTIC)
        model = build_model(name, z_train.shape[1], num_classes).to(device)
        score = validation_score(z_train[chosen].cpu().numpy(), y_train[chosen], seed) \
            if len(chosen) > 1 else None
        checkpoint = (folders["checkpoints/plan2"]
                      / f"{DATASET}_{ENCODER}_{name}{member_suffix(member)}.pt")
        if ENSEMBLE > 1:
            print(f"{name}: ensemble member {member + 1}/{ENSEMBLE} (seed {seed})")
        return (*train(name, model, make_batches, n_train // BATCH_SIZE, score, embedding_hash,
                       n_train, checkpoint, seed), checkpoint)

    rows = []
    for name in names:
        tag = f"{DATASET}_{ENCODER}_{name}"
        members = [train_member(name, member) for member in range(ENSEMBLE)]
        trainers = [m[0] for m in members]
        reports = [m[1] for m in members]
        bests = [trainer.best_model() for trainer in trainers]
        conditional = getattr(bests[0], "conditional", False)
        y_gen = class_draw(y_train, SAMPLES, num_classes, SEED) if conditional else None
        z_gen = scaler.inverse(generate_ensemble(bests, y_gen, SAMPLES, SEED))
        seconds = [m[2] for m in members]
        one = ENSEMBLE == 1  # one member: scalars, as before ensembles; several: lists
        per_member = {
            "checkpoint": [str(m[3]) for m in members],
            "epochs_trained": [trainer.epoch for trainer in trainers],
            "best_epoch": [report.best_epoch for report in reports],
            "validation_frechet": [report.best_score for report in reports],
            "diverged": [report.diverged for report in reports]}
        if one:
            per_member = {key: value[0] for key, value in per_member.items()}
        classes = {"y_gen": y_gen} if conditional else {}
        out = folders["embeddings"] / f"{tag}.gen.npz"
        values = evaluate.plan2_metrics(out, {"z_gen": z_gen, **classes}, real)
        meta = make_meta(__file__, settings, DATASET, SEED, gan=name, encoder=ENCODER,
                         source_embeddings=source.name, embeddings_hash=embedding_hash,
                         train_embeddings=n_train, ensemble=ENSEMBLE,
                         member_seeds=[SEED + k for k in range(ENSEMBLE)], **per_member,
                         train_seconds=None if None in seconds else sum(seconds),
                         conditional=conditional,
                         parameters=sum(p.numel() for p in bests[0].parameters()))
        written = [save_npz(out, {"z_gen": z_gen, **classes}, meta)]
        for decoder, decode in decoders.items():
            suffix = "" if decoder == "decoder" else f"_{decoder}"
            made_by = f"{ENCODER} autoencoder decoder" if decoder == "decoder" else decoder
            written.append(save_npz(folders["samples/plan2"] / f"{tag}{suffix}.npz",
                                    {"x_gen": decode(z_gen), **classes},
                                    {**meta, "decoded_by": made_by}))
        if PLOTS:
            written += save_pictures(
                trainers[0], folders["visualizations"] / f"plan2_{tag}",
                f"{name} on {DATASET} {ENCODER} embeddings", real["z_test"], z_gen,
                f"{name} on {DATASET} {ENCODER}: real test vs generated embeddings",
                ("real test", "generated"))
            for member, trainer in enumerate(trainers[1:], start=1):
                written.append(save_plot(
                    loss_curves_figure(trainer.history, f"{name} on {DATASET} {ENCODER} "
                                       f"embeddings, ensemble member {member + 1} (seed "
                                       f"{SEED + member}): losses per {LOG_EVERY} steps"),
                    folders["visualizations"] / f"plan2_{tag}{member_suffix(member)}_losses.png"))
        print(f"{name}: wrote {', '.join(str(p) for p in written)}")
        rows.append({"model": name if one else f"{name} x{ENSEMBLE}",
                     "epochs": ", ".join(str(t.epoch) for t in trainers),
                     "best_epoch": ", ".join(str(r.best_epoch) for r in reports),
                     "train_seconds": meta["train_seconds"], **values})
    return rows


def train_translators(names: list[str], real_a: dict[str, Any], path_a: Path,
                      real_b: dict[str, Any], path_b: Path, n_train: int,
                      folders: dict[str, Path], settings: dict[str, Any],
                      device: torch.device) -> list[dict[str, Any]]:
    """Train the translators A -> B on disjoint halves; write the translated test embeddings."""
    num_classes = len(CLASS_NAMES[DATASET])
    halves = split_halves(n_train, SEED)
    za_train, zb_train = real_a["z_train"][:n_train], real_b["z_train"][:n_train]
    y_train = real_a["y_train"][:n_train].astype(np.int64)  # checked equal to B's
    scaler_a, scaler_b = Standardiser(za_train), Standardiser(zb_train)
    # Each half with its own labels; the images of the other half are never seen.
    a_half = torch.from_numpy(scaler_a.forward(za_train[halves[0]])).to(device)
    b_half = torch.from_numpy(scaler_b.forward(zb_train[halves[1]])).to(device)
    label_a = torch.from_numpy(y_train[halves[0]]).to(device)
    label_b = torch.from_numpy(y_train[halves[1]]).to(device)
    embedding_hash = fingerprint(za_train, zb_train, y_train, halves[0])
    test_a, test_b = scaler_a.forward(real_a["z_test"]), scaler_b.forward(real_b["z_test"])
    checked = min(VALIDATION_SAMPLES, len(halves[0]))
    check_a, check_b = a_half[:checked].cpu().numpy(), b_half[:checked].cpu().numpy()

    def make_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        # Independent orders for the two halves: no pair is ever formed.
        for ia, ib in zip(index_batches(len(halves[0]), SEED, epoch),
                          index_batches(len(halves[1]), SEED + 1, epoch), strict=True):
            ia, ib = ia.to(device), ib.to(device)
            yield {"a": a_half[ia], "label_a": label_a[ia], "b": b_half[ib],
                   "label_b": label_b[ib]}

    def score(model: GANModel) -> float:
        """Distribution match both ways on the training halves (no pairs); lower is better."""
        return (frechet_distance(translate(model, check_a, "a_to_b"), check_b)
                + frechet_distance(translate(model, check_b, "b_to_a"), check_a))

    rows = []
    for name in names:
        tag = f"{DATASET}_{ENCODER}-to-{ENCODER_B}_{name}"
        seed_everything(SEED, DETERMINISTIC)
        model = build_model(name, a_half.shape[1], num_classes, b_half.shape[1]).to(device)
        checkpoint = folders["checkpoints/plan2"] / f"{tag}.pt"
        trainer, report, seconds = train(name, model, make_batches, len(halves[0]) // BATCH_SIZE,
                                         score if checked > 1 else None, embedding_hash, n_train,
                                         checkpoint, SEED)
        best = trainer.best_model()
        translated = translate(best, test_a, "a_to_b")
        z_translated = scaler_b.inverse(translated)
        out = folders["embeddings"] / f"{tag}.npz"
        values = evaluate.translation_metrics(out, z_translated, real_a, real_b)
        values["cycle_error_a"] = float(np.mean((translate(best, translated, "b_to_a")
                                                 - test_a) ** 2))
        values["cycle_error_b"] = float(np.mean((translate(
            best, translate(best, test_b, "b_to_a"), "a_to_b") - test_b) ** 2))
        meta = make_meta(__file__, settings, DATASET, SEED, gan=name, encoder=ENCODER,
                         encoder_b=ENCODER_B, source_embeddings=path_a.name,
                         target_embeddings=path_b.name, embeddings_hash=embedding_hash,
                         train_embeddings=n_train, halves=[len(h) for h in halves],
                         checkpoint=str(checkpoint), epochs_trained=trainer.epoch,
                         best_epoch=report.best_epoch, validation_frechet=report.best_score,
                         diverged=report.diverged, train_seconds=seconds,
                         cycle_error_a=values["cycle_error_a"],
                         cycle_error_b=values["cycle_error_b"],
                         parameters=sum(p.numel() for p in model.parameters()))
        written = [save_npz(out, {"z_translated": z_translated,
                                  "y_test": real_a["y_test"].astype(np.int64)}, meta)]
        if PLOTS:
            written += save_pictures(
                trainer, folders["visualizations"] / f"plan2_{tag}",
                f"{name} {ENCODER} -> {ENCODER_B} on {DATASET}", real_b["z_test"], z_translated,
                f"{name} on {DATASET}: true {ENCODER_B} test embeddings vs {ENCODER} test "
                f"embeddings translated", (f"true {ENCODER_B}", f"translated from {ENCODER}"))
        print(f"{name}: wrote {', '.join(str(p) for p in written)}")
        rows.append({"model": name, "epochs": trainer.epoch, "best_epoch": report.best_epoch,
                     "train_seconds": seconds, **values})
    return rows


def main() -> None:
    settings = configure(globals())
    generators = [m for m in MODELS if m in GENERATORS]
    translators = [m for m in MODELS if m in TRANSLATORS]
    if translators and ENCODER_B == ENCODER:
        raise StageError(f"--encoder-b {ENCODER_B} is --encoder too; {', '.join(translators)} "
                         f"translate between two different embeddings")
    root = Path(DATA_DIR)
    folders = {name: ensure_output_dir(root / name) for name in
               ("embeddings", "visualizations", "checkpoints/plan2", "samples/plan2", "results")}
    limit_cpu_threads(THREADS)
    seed_everything(SEED, DETERMINISTIC)
    device = pick_device(DEVICE)
    path_a, real_a = load_source(ENCODER)
    n_train = min(LIMIT, len(real_a["z_train"])) if LIMIT else len(real_a["z_train"])
    if translators:
        path_b, real_b = load_source(ENCODER_B)
        check_same_images(path_a, real_a, path_b, real_b)
    usable = n_train // 2 if translators else n_train
    if usable < BATCH_SIZE:
        raise StageError(f"--limit {LIMIT} leaves {usable} training embeddings"
                         f"{' per translation half' if translators else ''}, not one full batch "
                         f"of --batch-size {BATCH_SIZE}")
    print(f"{DATASET}: {n_train} train, {len(real_a['z_test'])} test embeddings of "
          f"{real_a['z_train'].shape[1]} dims from {path_a}; device {device}")
    evaluate.SEED = SEED  # the metric code evaluate.py uses, with this run's seed
    header = f"Written by `plan2_gan_training.py`; settings: `{json.dumps(settings)}`.\n"
    written = []
    if generators:
        rows = train_generators(generators, real_a, path_a, n_train, folders, settings, device)
        table = generator_table(rows)
        print(f"\n{DATASET} {ENCODER}: {SAMPLES} generated embeddings against the "
              f"{len(real_a['z_test'])} real test embeddings (floors: as many real train "
              f"embeddings); TSTR: k-NN fitted on generated, scored on real test\n\n{table}\n")
        written.append(write_text(
            folders["results"] / f"plan2_{DATASET}_{ENCODER}.md",
            f"# Plan 2 on {DATASET} {ENCODER} embeddings\n\n{header}\n"
            f"## Generated embeddings\n\n{table}\n"))
    if translators:
        rows = train_translators(translators, real_a, path_a, real_b, path_b, n_train, folders,
                                 settings, device)
        table = translation_table(rows)
        print(f"\n{DATASET} {ENCODER} -> {ENCODER_B}, trained on disjoint halves of {n_train} "
              f"training images (no pairs), scored on the {len(real_a['z_test'])} test images: "
              f"cosine in B's standardised space; cycle error: mean squared error per dimension "
              f"in standardised units\n\n{table}\n")
        written.append(write_text(
            folders["results"] / f"plan2_{DATASET}_{ENCODER}-to-{ENCODER_B}.md",
            f"# Plan 2 on {DATASET}: translation {ENCODER} -> {ENCODER_B}\n\n{header}\n"
            f"## Translation {ENCODER} -> {ENCODER_B}\n\n{table}\n"))
    print(f"wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    run_stage(main)
