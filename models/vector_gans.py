"""Plan 2's vector GANs: generators of embedding vectors and translators between two embeddings.

Generators (learn the distribution of one embedding): WGAN-GP (optionally class-conditional),
VAE-GAN and a contrastive GAN (class-conditional, NT-Xent towards real embeddings of the class
asked for). Translators (map one encoder's embeddings to another's without pairs): CycleGAN and
DualGAN. Every model is an MLP over standardised vectors, trained by the one loop in
training/gans.py.

A variant is a class and one registry entry (``VECTOR_GANS``: how to build it, whether it
generates or translates, whether it is a Wasserstein model, and the config fields only it reads).
Its hyper-parameters are a ``VectorGANConfig``, which every checkpoint stores beside the vector
sizes (``architecture``), so that ``from_checkpoint(path)`` rebuilds the model without settings.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.preprocessing import StandardScaler
from torch import nn

from CL_loss_function import nt_xent_loss
from dataio.artifacts import read_architecture
from models.nets import ProjectionHead, mlp
from runtime.stage import StageError
from training.gans import AdversarialLoss, GANModel, GenerativeModel, trained_weights

FAMILY = "vector_gans"
# Adam betas: WGAN-GP's paper (0.5, 0.9) for the Wasserstein models, DCGAN's for the others.
WASSERSTEIN_BETAS = (0.5, 0.9)
ADAM_BETAS = (0.5, 0.999)


@dataclass(frozen=True)
class VectorGANConfig:
    """Hyper-parameters of the vector GANs (each variant reads the ones it has)."""

    noise_dim: int = 32  # size of the generator's noise (VAE-GAN: of its latent code)
    hidden: int = 256  # width of every hidden layer of every network
    depth: int = 3  # hidden layers of every generator, critic and encoder
    wgan_conditional: bool = True  # WGAN-GP and flow matching generate a class asked for
    gradient_penalty: float = 10.0  # penalty weight of the Wasserstein models
    energy_weight: float = 0.0  # WGAN-GP and contrastive GAN: energy-distance term
    mode_seeking: float = 1.5  # WGAN-GP and contrastive GAN: mode-seeking term (MSGAN)
    vae_beta: float = 1.0  # VAE-GAN: weight of the KL term
    vaegan_gamma: float = 0.1  # VAE-GAN: the decoder's weight of the feature reconstruction
    contrastive_weight: float = 1.0  # contrastive GAN: weight of the NT-Xent term
    contrastive_temperature: float = 0.5  # contrastive GAN: NT-Xent temperature
    translation_classes: bool = True  # CycleGAN/DualGAN critics see each half's own labels
    cycle_weight: float = 1.0  # CycleGAN: weight of the L1 cycle-consistency loss
    identity_weight: float = 0.0  # CycleGAN: weight of the L1 identity loss, when dims match
    dualgan_reconstruction: float = 20.0  # DualGAN: weight of its L1 reconstruction loss
    fm_steps: int = 100  # flow matching: Euler steps of the sampler from t = 0 to 1


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
class OneHotConditioned:
    """A generator conditioned on one-hot classes when ``num_classes`` > 0 (WGAN-GP and its
    contrastive variant, flow matching)."""

    num_classes: int

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def condition(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """One-hot classes for a conditional model, None otherwise."""
        if not self.conditional:
            return None
        return F.one_hot(labels, self.num_classes).float()


class WGANGP(OneHotConditioned, GANModel):
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
def same_class_pairs(labels_a: torch.Tensor, labels_b: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) with labels_a[i] == labels_b[j]: each row of a whose class b has is
    paired with a row of b of its class drawn uniformly (torch's generator); rows of a class b
    lacks are left out."""
    pairs_a, pairs_b = [], []
    for label in torch.unique(labels_a):
        rows_a = torch.nonzero(labels_a == label).flatten()
        rows_b = torch.nonzero(labels_b == label).flatten()
        if len(rows_b):
            pairs_a.append(rows_a)
            pairs_b.append(rows_b[torch.randint(len(rows_b), (len(rows_a),),
                                                device=rows_b.device)])
    if not pairs_a:
        empty = labels_a.new_zeros(0, dtype=torch.long)
        return empty, empty
    return torch.cat(pairs_a), torch.cat(pairs_b)


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
        if loss_fn.gradient_penalty:
            parts["gradient_penalty"] = (self.penalty("b", b, batch.get("label_b"), fake_b,
                                                      batch.get("label_a"))
                                         + self.penalty("a", a, batch.get("label_a"), fake_a,
                                                        batch.get("label_b")))
        return sum(parts.values()), parts

    def penalty(self, domain: str, real: torch.Tensor, real_labels: torch.Tensor | None,
                fake: torch.Tensor, fake_labels: torch.Tensor | None) -> torch.Tensor:
        """The weighted gradient penalty of one domain's critic. A class-conditional critic is
        penalised only between a real and a translated vector of the same class, scored under
        that class (``same_class_pairs``): a real vector of class c_b mixed with a translation of
        class c_a belongs to neither class. No common class in the batch: no penalty."""
        loss_fn = self.adversarial_loss
        if not self.num_classes:
            return loss_fn.penalty(lambda v: self.critic(domain, v), real, fake)
        fake_index, real_index = same_class_pairs(fake_labels, real_labels)
        if not len(fake_index):
            return real.new_zeros((), dtype=torch.float32)
        condition = F.one_hot(fake_labels[fake_index], self.num_classes).float()
        return loss_fn.penalty(lambda v: self.critic(domain, v, condition), real[real_index],
                               fake[fake_index])

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


# ---------------------------------------------------------------- flow matching
TIME_FREQUENCIES = 8  # octaves of the sinusoidal features of flow matching's time t


def time_feature_size(frequencies: int = TIME_FREQUENCIES) -> int:
    """The width of ``time_features``: t itself and a sine and cosine per octave."""
    return 1 + 2 * frequencies


def time_features(t: torch.Tensor, frequencies: int = TIME_FREQUENCIES) -> torch.Tensor:
    """t (B,) in [0, 1] -> [t, sin(2^k pi t), cos(2^k pi t)] for k < frequencies (B, 1 + 2F)."""
    scales = (2.0 ** torch.arange(frequencies, device=t.device, dtype=t.dtype)) * math.pi
    angles = t[:, None] * scales[None, :]
    return torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=1)


class FlowMatching(OneHotConditioned, GenerativeModel):
    """Class-conditional flow matching with straight (optimal-transport) paths (Lipman et al.
    2023; Tong et al. 2024, "conditional flow matching", sigma_min = 0): a velocity field
    v(x, t, y), an MLP over [x, time features of t, one-hot y], is regressed on the straight
    path from noise to data: for x_0 ~ N(0, I), x_1 a data vector of class y and t ~ U(0, 1),
    x_t = (1 - t) x_0 + t x_1 and the loss is E ||v(x_t, t, y) - (x_1 - x_0)||^2 (mean over
    dims). Sampling integrates dx/dt = v from t = 0 to 1 with ``steps`` Euler steps. No
    discriminator: the one loop of training/gans.py trains it with one step per batch and keeps
    its EMA, checkpoints and resume."""

    def __init__(self, dim: int, num_classes: int = 0, hidden: int = 256, depth: int = 3,
                 steps: int = 100) -> None:
        super().__init__()
        self.dim, self.noise_dim, self.num_classes, self.steps = dim, dim, num_classes, steps
        self.generator = mlp([dim + time_feature_size() + num_classes, *[hidden] * depth, dim],
                             activation=nn.SiLU)

    def velocity(self, x: torch.Tensor, t: torch.Tensor,
                 condition: torch.Tensor | None) -> torch.Tensor:
        parts = [x, time_features(t)] + ([condition] if condition is not None else [])
        return self.generator(torch.cat(parts, dim=1))

    def sample(self, condition: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """x_1 from x_0 = noise by Euler steps of dx/dt = v(x, t, y)."""
        x = noise
        for step in range(self.steps):
            t = torch.full((len(x),), step / self.steps, device=x.device)
            x = x + self.velocity(x, t, condition) / self.steps
        return x

    def generator_loss(self, batch: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x1 = batch["x"]
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1), device=x1.device)
        loss = self.regression_loss(x0, x1, t, self.condition(batch.get("label")))
        return loss, {"regression": loss}

    def regression_loss(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                        condition: torch.Tensor | None) -> torch.Tensor:
        """E ||v(x_t, t, y) - (x_1 - x_0)||^2 / dim at x_t = (1 - t) x_0 + t x_1."""
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return ((self.velocity(xt, t, condition) - (x1 - x0)) ** 2).mean()


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Sizes:
    """The vectors a model is built for: dims of A (and B for a translator), classes."""

    dim: int
    num_classes: int
    dim_b: int = 0


@dataclass(frozen=True)
class VectorGANSpec:
    """A variant: how to build it; a translator or a generator; Wasserstein (n_critic critic
    steps, WGAN-GP's Adam rate and betas) or not; whether the mode-seeking and energy terms
    apply; and its own settings as (checkpoint key, config field) pairs."""

    build: Callable[[Sizes, VectorGANConfig], GenerativeModel]
    translator: bool = False
    wasserstein: bool = False
    spreading_terms: bool = False
    own_settings: tuple[tuple[str, str], ...] = ()
    betas: tuple[float, float] | None = None  # Adam betas, when not the family's default


def _spread(config: VectorGANConfig) -> dict[str, Any]:
    return {"noise_dim": config.noise_dim, "hidden": config.hidden, "depth": config.depth,
            "gradient_penalty": config.gradient_penalty, "mode_seeking": config.mode_seeking,
            "energy_weight": config.energy_weight}


def _translator_classes(sizes: Sizes, config: VectorGANConfig) -> int:
    return sizes.num_classes if config.translation_classes else 0


VECTOR_GANS: dict[str, VectorGANSpec] = {
    "wgan_gp": VectorGANSpec(
        lambda s, c: WGANGP(s.dim, s.num_classes if c.wgan_conditional else 0, **_spread(c)),
        wasserstein=True, spreading_terms=True, own_settings=(("conditional",
                                                               "wgan_conditional"),)),
    "vaegan": VectorGANSpec(
        lambda s, c: VAEGAN(s.dim, c.noise_dim, hidden=c.hidden, depth=c.depth, beta=c.vae_beta,
                            gamma=c.vaegan_gamma),
        own_settings=(("vae_beta", "vae_beta"), ("vaegan_gamma", "vaegan_gamma"))),
    "contrastive_gan": VectorGANSpec(
        lambda s, c: ContrastiveGAN(s.dim, s.num_classes, c.contrastive_weight,
                                    c.contrastive_temperature, **_spread(c)),
        wasserstein=True, spreading_terms=True,
        own_settings=(("contrastive_weight", "contrastive_weight"),
                      ("contrastive_temperature", "contrastive_temperature"))),
    "flow_matching": VectorGANSpec(
        lambda s, c: FlowMatching(s.dim, s.num_classes if c.wgan_conditional else 0, c.hidden,
                                  c.depth, c.fm_steps),
        own_settings=(("conditional", "wgan_conditional"), ("fm_steps", "fm_steps")),
        betas=(0.9, 0.999)),
    "cyclegan": VectorGANSpec(
        lambda s, c: TranslationGAN(s.dim, s.dim_b, AdversarialLoss("least-squares"), c.hidden,
                                    c.depth, c.cycle_weight, c.identity_weight,
                                    _translator_classes(s, c)),
        translator=True, own_settings=(("cycle_weight", "cycle_weight"),
                                       ("identity_weight", "identity_weight"),
                                       ("translation_classes", "translation_classes"))),
    "dualgan": VectorGANSpec(
        lambda s, c: TranslationGAN(s.dim, s.dim_b,
                                    AdversarialLoss("wasserstein", c.gradient_penalty), c.hidden,
                                    c.depth, c.dualgan_reconstruction,
                                    num_classes=_translator_classes(s, c)),
        translator=True, wasserstein=True,
        own_settings=(("dualgan_reconstruction", "dualgan_reconstruction"),
                      ("translation_classes", "translation_classes"))),
}
GAN_NAMES = tuple(VECTOR_GANS)


def is_adversarial(name: str) -> bool:
    """Whether the model ``name`` trains against a discriminator (a GAN), not by a regression
    such as flow matching's: read off a tiny instance of it."""
    return isinstance(build_vector_gan(name, Sizes(2, 2, 2),
                                       VectorGANConfig(noise_dim=1, hidden=2, depth=1)), GANModel)
GENERATORS = tuple(name for name, spec in VECTOR_GANS.items() if not spec.translator)
TRANSLATORS = tuple(name for name, spec in VECTOR_GANS.items() if spec.translator)


def build_vector_gan(name: str, sizes: Sizes, config: VectorGANConfig) -> GenerativeModel:
    """A vector GAN by name for vectors of these sizes."""
    if name not in VECTOR_GANS:
        raise StageError(f"unknown model {name!r}; valid names: {', '.join(GAN_NAMES)}")
    return VECTOR_GANS[name].build(sizes, config)


def adam_betas(name: str) -> tuple[float, float]:
    """WGAN-GP's betas for the Wasserstein models, DCGAN's for the other GANs, a variant's own
    where it names them (flow matching: Adam's defaults, a plain regression)."""
    spec = VECTOR_GANS[name]
    if spec.betas is not None:
        return spec.betas
    return WASSERSTEIN_BETAS if spec.wasserstein else ADAM_BETAS


def model_settings(name: str, config: VectorGANConfig) -> dict[str, Any]:
    """The hyper-parameters a checkpoint of ``name`` must share with a run to be continued."""
    spec = VECTOR_GANS[name]
    settings: dict[str, Any] = {"hidden": config.hidden, "depth": config.depth}
    if not spec.translator:
        settings["noise_dim"] = config.noise_dim
    if spec.wasserstein:
        settings["gradient_penalty"] = config.gradient_penalty
    if spec.spreading_terms:
        settings["mode_seeking"] = config.mode_seeking
        settings["energy_weight"] = config.energy_weight
    settings.update({key: getattr(config, field) for key, field in spec.own_settings})
    return settings


def architecture(name: str, sizes: Sizes, config: VectorGANConfig) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its model: family, name, sizes and config."""
    return {"family": FAMILY, "name": name, "sizes": asdict(sizes), "config": asdict(config)}


def from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    state: Mapping[str, Any] | None = None) -> GenerativeModel:
    """The model of a checkpoint written by plan2_gan_training.py, rebuilt from the checkpoint
    alone, in eval mode: its EMA generator at the best epoch's weights and its discriminator as
    trained (``trained_weights``). ``state``: the checkpoint, when the caller has loaded it
    already."""
    path = Path(path)
    state, record = read_architecture(path, state, FAMILY, GAN_NAMES, "vector GANs",
                                      "python plan2_gan_training.py")
    try:
        model = build_vector_gan(record["name"], Sizes(**record["sizes"]),
                                 VectorGANConfig(**record["config"]))
        model.load_state_dict(trained_weights(model, state))
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise StageError(f"{path}: cannot rebuild its model "
                         f"({str(err).splitlines()[0]})") from err
    return model.to(device).eval()


# ---------------------------------------------------------------- data and sampling
class Standardiser:
    """Per-dimension standardisation with train statistics (a constant column keeps scale 1);
    float32 out, float64 inside."""

    def __init__(self, z_train: np.ndarray) -> None:
        self.scaler = StandardScaler().fit(z_train.astype(np.float64))

    def forward(self, z: np.ndarray) -> np.ndarray:
        return self.scaler.transform(z.astype(np.float64)).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return self.scaler.inverse_transform(z.astype(np.float64)).astype(np.float32)


def class_draw(y_train: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """n classes drawn with the training classes' frequencies (seeded)."""
    frequencies = np.bincount(y_train, minlength=num_classes) / len(y_train)
    return np.random.default_rng(seed).choice(num_classes, n, p=frequencies).astype(np.int64)


@torch.no_grad()
def generate(model: GenerativeModel, labels: np.ndarray | None, n: int, seed: int,
             batch_size: int = 2000) -> np.ndarray:
    """n standardised samples in eval mode, noise from a CPU generator seeded with ``seed`` (the
    same on every device); ``labels`` are the classes asked for of a conditional model."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        condition = None
        if labels is not None and getattr(model, "conditional", False):
            condition = model.condition(torch.from_numpy(labels[start:start + count])
                                        .to(model.device))
        parts.append(model.sample(condition, model.sample_noise(count, generator))
                     .float().cpu().numpy())
    return np.concatenate(parts)


def generate_ensemble(models: list[GenerativeModel], labels: np.ndarray | None, n: int, seed: int,
                      batch_size: int = 2000) -> np.ndarray:
    """n standardised samples split evenly over the members, interleaved: row i comes from
    member i mod M, with noise seeded ``seed + member``. One member: ``generate(model, labels,
    n, seed)``."""
    rows = [np.arange(member, n, len(models)) for member in range(len(models))]
    parts = [generate(model, None if labels is None else labels[index], len(index), seed + k,
                      batch_size)
             for k, (model, index) in enumerate(zip(models, rows, strict=True))]
    out = np.empty((n, parts[0].shape[1]), dtype=parts[0].dtype)
    for index, part in zip(rows, parts, strict=True):
        out[index] = part
    return out


@torch.no_grad()
def translate(model: TranslationGAN, z: np.ndarray, direction: str,
              batch_size: int = 2000) -> np.ndarray:
    """Translate standardised vectors in eval mode, in batches."""
    model.eval()
    parts = [model.translate(torch.from_numpy(chunk).to(model.device), direction).float()
             .cpu().numpy() for chunk in np.array_split(z, max(1, -(-len(z) // batch_size)))]
    return np.concatenate(parts)
