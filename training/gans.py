"""The one adversarial training loop of the project: D/G steps, GAN losses, EMA, divergence checks.

Plan 1 (images from embeddings), Plan 2 (embedding vectors) and the self-consuming loop (images
from a class) all train through ``GANTrainer``. A GAN variant is its networks plus its losses;
it never copies the loop. Nothing here depends on the data's shape or on what the condition is.

The model protocol (subclass ``GANModel``, an ``nn.Module`` holding every network; a generator
trained without a discriminator, such as flow matching, subclasses ``GenerativeModel`` and has no
``discriminator_loss``: the loop then makes one generator step per batch):

- ``discriminator_loss(batch)`` and ``generator_loss(batch)`` return ``(loss, parts)``: the scalar
  to minimise and a dict of named scalars to log (detached or not; the loop detaches them).
  ``batch`` is whatever the batch source yields, usually a dict of tensors (data, a condition,
  labels; two unpaired domains for CycleGAN); the model reads the keys it needs. The discriminator
  parts must include ``"adversarial"``, the pure adversarial term, watched for divergence.
  Build losses from ``model.adversarial_loss`` (an ``AdversarialLoss``: non-saturating, hinge,
  least-squares or Wasserstein, plus an optional per-sample gradient penalty); a model with two
  discriminators sums its terms.
- ``generator_parameters()`` and ``discriminator_parameters()``: the two optimiser groups. Every
  trainable parameter belongs to exactly one (checked). Extra networks join the group whose loss
  trains them: VAE-GAN's encoder and InfoGAN's Q head the generator group, CycleGAN's two
  generators the generator group and its two discriminators the discriminator group. The
  defaults return ``self.generator`` and ``self.discriminator``'s parameters.
- ``sample_noise(n)`` and ``sample(condition, noise)``: generator input and output; the EMA copy
  of the model is what a stage samples from. ``condition`` is any tensor the model understands
  (an embedding, a one-hot class, a domain-A batch) or None.

What the loop does: per batch one discriminator step and, after every ``n_critic``-th, one
generator step. In a discriminator step the generator group does not require gradients (fakes
come without a graph); in a generator step the discriminator group does not (no weight gradients
for D, input gradients still flow). Every gradient is cleared before each step. After each
generator step an exponential moving average of the generator group's weights is updated (buffers
are copied). Losses are summed on the device and read once per log interval (no per-step host
syncs on CUDA, where the loss passes run under bf16 autocast). DivergenceError stops training with a
reason: a non-finite loss or weight (the last good checkpoint stays, and the epoch that diverged
is not saved), or a discriminator adversarial loss pinned near zero for a whole epoch (losses
bounded below by 0 only). ``fit`` writes a checkpoint after every epoch (every network,
both optimisers, the EMA, step counters, loss history, RNG states and the best EMA weights by an
optional validation score) and resumes from it exactly: each epoch reseeds from (seed, epoch).
"""

from __future__ import annotations

import abc
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dataio.artifacts import check_settings_match, load_checkpoint, restoring, save_checkpoint
from runtime.stage import StageError
from runtime.tracking import RunLog

LOSS_KINDS = ("non-saturating", "hinge", "least-squares", "wasserstein")
CHECKPOINT_FORMAT = "gans.GANTrainer/1"


# ---------------------------------------------------------------- losses
def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty without its weight (Gulrajani et al. 2017): mean_i (||grad D(x_i)||_2 - 1)^2.

    x_i = a_i real_i + (1 - a_i) fake_i with one a_i ~ U(0, 1) per sample (or ``alpha``, shape
    (B,)); the norm is taken per sample over all of its dimensions. The critic must score each
    sample on its own (no batch norm), or the gradient mixes samples. Runs in float32.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    shape = (len(real),) + (1,) * (real.dim() - 1)
    if alpha is None:
        alpha = torch.rand(shape, device=real.device)
    alpha = alpha.to(real.device, torch.float32).reshape(shape)
    mixed = alpha * real.detach().float() + (1 - alpha) * fake.detach().float()
    mixed.requires_grad_(True)
    with torch.autocast(real.device.type, enabled=False):
        scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
    norms = torch.linalg.vector_norm(grad.flatten(1), dim=1)
    return ((norms - 1.0) ** 2).mean()


@dataclass(frozen=True)
class AdversarialLoss:
    """One of the GAN losses, as discriminator and generator terms on raw scores (no sigmoid).

    non-saturating (Goodfellow et al. 2014): D: E[softplus(-D(x))] + E[softplus(D(G(z)))],
        G: E[softplus(-D(G(z)))]  (= -log sigmoid, the binary cross-entropy on logits);
    hinge (Lim & Ye 2017; Miyato et al. 2018): D: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],
        G: -E[D(G(z))];
    least-squares (Mao et al. 2017, a=0, b=c=1): D: 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2],
        G: 1/2 E[(D(G(z)) - 1)^2];
    wasserstein (Arjovsky et al. 2017): D: E[D(G(z))] - E[D(x)], G: -E[D(G(z))].
    ``gradient_penalty`` > 0 adds that weight times ``gradient_penalty()`` to the D loss
    (WGAN-GP: wasserstein with weight 10).
    """

    kind: str = "non-saturating"
    gradient_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown GAN loss {self.kind!r}; choose one of "
                             f"{', '.join(LOSS_KINDS)}")
        if not (math.isfinite(self.gradient_penalty) and self.gradient_penalty >= 0):
            raise ValueError(f"gradient penalty weight must be >= 0, got {self.gradient_penalty}")

    @property
    def bounded_below_by_zero(self) -> bool:
        """Whether the D loss is >= 0, so that 'pinned near zero' means D has won."""
        return self.kind != "wasserstein"

    def discriminator(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        """The D loss on scores of real and generated samples (any shapes, averaged)."""
        real, fake = real_scores.float().flatten(), fake_scores.float().flatten()
        if self.kind == "non-saturating":
            return F.softplus(-real).mean() + F.softplus(fake).mean()
        if self.kind == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        if self.kind == "least-squares":
            return 0.5 * ((real - 1.0) ** 2).mean() + 0.5 * (fake ** 2).mean()
        return fake.mean() - real.mean()

    def generator(self, fake_scores: torch.Tensor) -> torch.Tensor:
        """The G loss on the discriminator's scores of generated samples."""
        fake = fake_scores.float().flatten()
        if self.kind == "non-saturating":
            return F.softplus(-fake).mean()
        if self.kind == "least-squares":
            return 0.5 * ((fake - 1.0) ** 2).mean()
        return -fake.mean()

    def penalty(self, critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                fake: torch.Tensor) -> torch.Tensor:
        """Weighted gradient penalty (a zero tensor when the weight is 0)."""
        if self.gradient_penalty == 0:
            return real.new_zeros((), dtype=torch.float32)
        return self.gradient_penalty * gradient_penalty(critic, real, fake)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) on every Linear and (transposed) conv inside
    ``module``: each weight is divided by its largest singular value, estimated by one power
    iteration per training forward pass. Returns ``module``."""
    targets = [m for m in module.modules()
               if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d)]
    for layer in targets:
        dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        nn.utils.parametrizations.spectral_norm(layer, dim=dim)
    return module


# ---------------------------------------------------------------- the model protocol
class GenerativeModel(nn.Module, abc.ABC):
    """A generator the loop trains by its own loss alone (flow matching: one generator step per
    batch, with the same EMA, checkpoints and resume); a ``GANModel`` adds a discriminator. See
    the module docstring for the protocol the loop relies on."""

    noise_dim: int

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The discriminator group: none without a discriminator."""
        return []

    @abc.abstractmethod
    def generator_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Implemented by every variant (see the module docstring)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal generator input (n, noise_dim), drawn on the CPU when a torch
        ``generator`` is given (reproducible across devices), else on the model's device."""
        if generator is not None:
            return torch.randn(n, self.noise_dim, generator=generator).to(self.device)
        return torch.randn(n, self.noise_dim, device=self.device)

    @abc.abstractmethod
    def sample(self, condition: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """Implemented by every variant (see the module docstring)."""


class GANModel(GenerativeModel):
    """A generator and its discriminator(s), trained against each other with ``adversarial_loss``
    (see the module docstring)."""

    adversarial_loss: AdversarialLoss

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    @abc.abstractmethod
    def discriminator_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Implemented by every variant (see the module docstring)."""


# ---------------------------------------------------------------- batches
def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: training after a resume draws what it would have drawn."""
    return seed * 1_000_003 + epoch


def passes_per_epoch(examples: int, epoch_vectors: int) -> int:
    """Shuffled passes over ``examples`` training items that make an epoch of about
    ``epoch_vectors`` items: epoch_vectors / examples rounded half up, at least 1 (0: one
    pass). An epoch so defined holds about as many steps whatever the size of the data, so that a
    training budget in epochs tuned on a large set still trains a small one."""
    return max(1, math.floor(epoch_vectors / examples + 0.5)) if epoch_vectors > 0 else 1


def batch_order(n: int, batch_size: int, seed: int, epoch: int,
                part: int = 0) -> list[torch.Tensor]:
    """The index batches (CPU) of one pass over n examples, in an order fixed by (seed, epoch,
    part); the last partial batch is dropped (batch norm and the GAN losses want full batches).
    ``part`` numbers the passes of an epoch of several (``passes_per_epoch``); part 0 draws from
    ``epoch_seed(seed, epoch)``, so that an epoch's first pass does not depend on how many passes
    it has."""
    key = (epoch_seed(seed, epoch) if part == 0
           else int(np.random.SeedSequence([seed, epoch, part]).generate_state(1)[0]))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(key))
    return [order[start:start + batch_size] for start in range(0, n - batch_size + 1, batch_size)]


def tensor_batches(tensors: Mapping[str, torch.Tensor], batch_size: int, seed: int,
                   epoch: int, part: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled aligned batches of same-length tensors (on their own device), in the order of
    ``batch_order``."""
    lengths = {k: len(v) for k, v in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"tensors of different lengths: {lengths}")
    n = next(iter(lengths.values()))
    device = next(iter(tensors.values())).device
    for idx in batch_order(n, batch_size, seed, epoch, part):
        idx = idx.to(device)
        yield {k: v[idx] for k, v in tensors.items()}


# ---------------------------------------------------------------- the loop
@dataclass(frozen=True)
class TrainerSettings:
    """How the loop trains; the model brings its own networks and losses."""

    n_critic: int = 1  # discriminator steps per generator step
    lr_generator: float = 2e-4  # Adam learning rate of the generator group
    lr_discriminator: float = 2e-4  # Adam learning rate of the discriminator group
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of both groups (DCGAN's)
    ema_decay: float = 0.999  # EMA of the generator weights; warm-up min(decay, (1+t)/(10+t))
    log_every: int = 50  # discriminator steps between reads of the summed losses
    pinned_threshold: float = 1e-3  # D adversarial loss below this on every step of an epoch
    amp: bool = True  # bf16 autocast on CUDA (ignored elsewhere)
    seed: int = 0  # per-epoch reseeding: exact resume


class DivergenceError(Exception):
    """Training produced a non-finite loss or weight."""


@dataclass
class FitReport:
    """What ``fit`` did: epochs trained in this call, and why it stopped early (if it did)."""

    trained_epochs: int
    resumed_from: int
    diverged: str | None
    best_epoch: int
    best_score: float | None
    stopped_early: bool = False


def generator_step_shortfall(examples: int, batch_size: int, n_critic: int,
                             passes: int = 1) -> tuple[int, int] | None:
    """None when an epoch of ``passes`` passes over ``examples`` items in full batches makes a
    generator step (at least ``n_critic`` batches, one discriminator step each); otherwise the
    epoch's batch count and the largest batch size that would make a step (below 2: none would),
    so that a stage can refuse the run before training a generator that would never learn."""
    batches = passes * (examples // batch_size)
    if batches >= n_critic:
        return None
    return batches, examples // math.ceil(n_critic / passes)


def trained_weights(model: GenerativeModel, state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights of a trained ``model`` from a checkpoint ``state`` written by ``GANTrainer``:
    the generator group's at the best epoch's EMA (what ``best_model()`` samples with), the
    discriminator group's as last trained. The EMA copy averages only the generator group, so
    its discriminator is the untrained one; it is never handed out as a trained model."""
    best = state["best_ema"] if state.get("best_ema") is not None else state["ema"]
    d_ids = {id(p) for p in model.discriminator_parameters()}
    d_modules = {name.rpartition(".")[0] for name, p in model.named_parameters() if id(p) in d_ids}

    def discriminator_key(key: str) -> bool:
        return any(key.startswith(module + ".") for module in d_modules)

    return {key: (state["model"][key] if discriminator_key(key) else best[key])
            for key in state["model"]}


class GANTrainer:
    """Trains a ``GenerativeModel`` (a ``GANModel`` against its discriminator): optimisers, EMA,
    step counters, history, checkpoints.

    ``architecture`` (the model family's record of its name, sizes and config) is stored in every
    checkpoint, so that the family's ``from_checkpoint`` rebuilds the model from the file alone."""

    def __init__(self, model: GenerativeModel, settings: TrainerSettings,
                 architecture: Mapping[str, Any] | None = None) -> None:
        self.model, self.settings = model, settings
        self.architecture = dict(architecture) if architecture is not None else None
        g_params, d_params = model.generator_parameters(), model.discriminator_parameters()
        g_ids, d_ids = {id(p) for p in g_params}, {id(p) for p in d_params}
        named = dict(model.named_parameters())
        both = [n for n, p in named.items() if id(p) in g_ids and id(p) in d_ids]
        neither = [n for n, p in named.items() if p.requires_grad and id(p) not in g_ids | d_ids]
        if both or neither:
            raise ValueError(f"every trainable parameter must be in exactly one group; in both: "
                             f"{', '.join(both) or 'none'}; in neither: "
                             f"{', '.join(neither) or 'none'}")
        self.g_params, self.d_params = g_params, d_params
        self.opt_g = torch.optim.Adam(g_params, lr=settings.lr_generator, betas=settings.betas)
        self.opt_d = torch.optim.Adam(d_params, lr=settings.lr_discriminator,
                                      betas=settings.betas) if d_params else None
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        ema_named = dict(self.ema.named_parameters())
        self._ema_pairs = [(ema_named[n], p) for n, p in named.items() if id(p) in g_ids]
        self.epoch = 0
        self.d_steps = 0
        self.g_steps = 0
        self.history: dict[str, Any] = {"epochs": [], "intervals": [], "score_name": None}
        self.best_epoch, self.best_score = 0, None
        self.best_ema: dict[str, torch.Tensor] | None = None
        self.diverged: str | None = None
        self.stopped_early = False
        # Where the stage's TensorBoard log is (runtime.tracking.RunLog): each log interval's
        # means by discriminator step, each epoch's record by epoch; None: not logged.
        self.log: RunLog | None = None

    # ------------------------------------------------------------ one epoch
    def _autocast(self) -> Any:
        device = self.model.device
        return torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=self.settings.amp and device.type == "cuda")

    def _step(self, loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]],
              batch: Any, train: list[nn.Parameter], frozen: list[nn.Parameter],
              optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for p in frozen:
            p.requires_grad_(False)
        try:
            self.model.zero_grad(set_to_none=True)
            with self._autocast():
                loss, parts = loss_fn(batch)
            loss.backward()
            optimizer.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return loss.detach().float(), {k: v.detach().float() for k, v in parts.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.settings.ema_decay, (1 + self.g_steps) / (10 + self.g_steps))
        for ema_p, p in self._ema_pairs:
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            ema_b.copy_(b)

    def train_epoch(self, batches: Iterable[Any], total: int | None = None,
                    desc: str = "") -> dict[str, float]:
        """One pass over ``batches``; returns the mean of each logged term.

        Raises DivergenceError on a non-finite loss or weight."""
        self.model.train()
        device = self.model.device
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        interval: dict[str, torch.Tensor] = {}
        interval_counts: dict[str, int] = {}
        d_adversarial_max = torch.full((), -math.inf, device=device)
        adversarial = isinstance(self.model, GANModel)
        watch_pinned = adversarial and self.model.adversarial_loss.bounded_below_by_zero

        def add(prefix: str, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
            for key, value in {f"{prefix}/loss": loss,
                               **{f"{prefix}/{k}": v for k, v in parts.items()}}.items():
                for store, count in ((sums, counts), (interval, interval_counts)):
                    store[key] = store[key] + value if key in store else value.clone()
                    count[key] = count.get(key, 0) + 1

        def read(store: dict[str, torch.Tensor], count: dict[str, int]) -> dict[str, float]:
            if not store:
                return {}
            keys = list(store)
            values = torch.stack([store[k] for k in keys]).cpu().tolist()  # one host sync
            means = {k: v / count[k] for k, v in zip(keys, values, strict=True)}
            bad = [k for k, v in means.items() if not math.isfinite(v)]
            if bad:
                listed = ", ".join(f"{k} = {means[k]}" for k in bad)
                raise DivergenceError(f"non-finite loss ({listed}) at discriminator step "
                                      f"{self.d_steps}")
            return means

        bar = tqdm(batches, total=total, desc=desc, leave=False, disable=None)
        steps = 0
        for batch in bar:
            if adversarial:
                loss, parts = self._step(self.model.discriminator_loss, batch, self.d_params,
                                         self.g_params, self.opt_d)
                if "adversarial" not in parts:
                    raise ValueError("the discriminator loss parts must include 'adversarial'")
                d_adversarial_max = torch.maximum(d_adversarial_max, parts["adversarial"])
                add("d", loss, parts)
            self.d_steps += 1
            steps += 1
            if not adversarial or self.d_steps % self.settings.n_critic == 0:
                loss, parts = self._step(self.model.generator_loss, batch, self.g_params,
                                         self.d_params, self.opt_g)
                add("g", loss, parts)
                self.g_steps += 1
                self._update_ema()
            if steps % self.settings.log_every == 0:
                means = read(interval, interval_counts)
                self.history["intervals"].append({"epoch": self.epoch + 1,
                                                  "d_steps": self.d_steps, **means})
                if self.log is not None:
                    self.log.scalars(means, self.d_steps, "steps/")
                interval.clear()
                interval_counts.clear()
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k.endswith("/loss")})
        if steps == 0:
            raise ValueError("the batch source yielded no batch")
        if interval:  # the epoch's last, shorter interval
            means = read(interval, interval_counts)
            self.history["intervals"].append({"epoch": self.epoch + 1, "d_steps": self.d_steps,
                                              **means})
            if self.log is not None:
                self.log.scalars(means, self.d_steps, "steps/")
        means = read(sums, counts)
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise DivergenceError(f"non-finite weights after discriminator step {self.d_steps}")
        self.epoch += 1
        if adversarial:
            means["d/adversarial_max"] = float(d_adversarial_max)
        if watch_pinned and means["d/adversarial_max"] < self.settings.pinned_threshold:
            self.diverged = (f"the discriminator's adversarial loss stayed below "
                             f"{self.settings.pinned_threshold:g} on every step of epoch "
                             f"{self.epoch} (largest {means['d/adversarial_max']:.2e}): the "
                             f"discriminator wins and the generator learns nothing")
        return means

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "optimizer_g": self.opt_g.state_dict(),
                "optimizer_d": self.opt_d.state_dict() if self.opt_d is not None else {},
                "epoch": self.epoch,
                "d_steps": self.d_steps, "g_steps": self.g_steps, "history": self.history,
                "best_epoch": self.best_epoch, "best_score": self.best_score,
                "best_ema": self.best_ema, "diverged": self.diverged, "rng": rng,
                "stopped_early": self.stopped_early,
                **({"architecture": self.architecture} if self.architecture else {})}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["optimizer_g"])
        if self.opt_d is not None:
            self.opt_d.load_state_dict(state["optimizer_d"])
        self.epoch, self.d_steps, self.g_steps = (int(state["epoch"]), int(state["d_steps"]),
                                                  int(state["g_steps"]))
        self.history = state["history"]
        self.best_epoch, self.best_score = int(state["best_epoch"]), state["best_score"]
        self.best_ema, self.diverged = state["best_ema"], state["diverged"]
        self.stopped_early = bool(state["stopped_early"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])

    def restore(self, path: Path, settings: Mapping[str, Any]) -> None:
        """Load a checkpoint written by ``fit``, refusing one made with other settings or for
        another architecture."""
        state = load_checkpoint(path, map_location=self.model.device)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise StageError(f"{path} is not a GAN checkpoint of this project; delete it to "
                             "start again")
        check_settings_match(path, state.get("settings", {}), settings)
        if self.architecture is not None and state.get("architecture") != self.architecture:
            raise StageError(f"{path} holds another model ({state.get('architecture')}); delete "
                             f"it to start again")
        with restoring(path):
            self.load_state_dict(state)
            if self.best_ema is not None:  # the weights best_model() will load, checked now
                copy.deepcopy(self.ema).load_state_dict(self.best_ema)

    def save(self, path: Path, settings: Mapping[str, Any]) -> None:
        save_checkpoint(path, {**self.state_dict(), "settings": dict(settings)})

    def training_seconds(self) -> float:
        """Seconds of every epoch trained so far, resumed runs included."""
        return sum(e["seconds"] for e in self.history["epochs"])

    def warm_start(self, state: Mapping[str, Any]) -> None:
        """Start from a finished run's checkpoint ``state``: the generator group at the weights
        its ``best_model()`` samples with (the best epoch's EMA), so that training continues from
        the model that drew its outputs; the discriminator group at its last trained weights
        (the EMA holds no trained discriminator). Both the model and its EMA start there; the
        optimisers and counters start afresh."""
        weights = trained_weights(self.model, state)
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(weights)

    def best_model(self) -> GenerativeModel:
        """The EMA model with the weights of the best epoch (the last one without a score)."""
        model = copy.deepcopy(self.ema)
        if self.best_ema is not None:
            model.load_state_dict(self.best_ema)
        return model.eval()

    # ------------------------------------------------------------ training with checkpoints
    def fit(self, make_batches: Callable[[int], Iterable[Any]], epochs: int, checkpoint: Path,
            settings: Mapping[str, Any], steps_per_epoch: int | None = None,
            score: Callable[[GenerativeModel], float] | None = None, score_name: str | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None,
            desc: str = "", on_resume: Callable[[int], None] | None = None,
            patience: int = 0) -> FitReport:
        """Train up to ``epochs`` epochs with a checkpoint after each, resuming from
        ``checkpoint`` when it exists (made with the same ``settings``).

        ``make_batches(epoch)`` gives the batches of that epoch (1-based); ``score(ema_model)``,
        lower is better, picks the best epoch's EMA weights (kept in the checkpoint);
        The history's epoch records hold the means, the score and the epoch's wall-clock
        ``seconds`` (training and scoring). ``on_epoch(epoch, record)`` is called after each
        checkpoint, ``on_resume(epoch)`` after
        loading a checkpoint of that many epochs. With ``patience`` > 0 and a ``score``, training
        stops early once that many epochs in a row have not improved on the best (the stop is
        kept in the checkpoint: a resumed run does not train on). On divergence training
        stops, ``FitReport.diverged`` says why, the checkpoint keeps the last good epoch and the
        best weights, and a later run does not train it again.
        """
        checkpoint = Path(checkpoint)
        if checkpoint.exists():
            self.restore(checkpoint, settings)
            if on_resume is not None:
                on_resume(self.epoch)
        resumed_from = self.epoch
        self.history["score_name"] = score_name
        trained = 0
        while self.epoch < epochs and self.diverged is None and not self.stopped_early:
            epoch = self.epoch + 1
            torch.manual_seed(epoch_seed(self.settings.seed, epoch))
            started = time.perf_counter()
            try:
                means = self.train_epoch(make_batches(epoch), steps_per_epoch,
                                         f"{desc} epoch {epoch}/{epochs}".strip())
            except DivergenceError as err:
                reason = f"{err} in epoch {epoch}"
                if not checkpoint.exists():
                    raise StageError(f"{desc or 'GAN'}: training diverged before a first good "
                                     f"epoch ({reason}); nothing to keep (try a lower learning "
                                     f"rate)") from err
                self.restore(checkpoint, settings)
                self.diverged = reason
                self.save(checkpoint, settings)
                break
            if "g/loss" not in means:
                raise StageError(f"{desc or 'GAN'}: epoch {epoch} made no generator step (fewer "
                                 f"batches than n_critic {self.settings.n_critic})")
            record: dict[str, Any] = {"epoch": epoch, **means, "score": None}
            if score is not None:
                record["score"] = float(score(self.ema))
                if not math.isfinite(record["score"]):
                    raise StageError(f"{desc or 'GAN'}: the validation score of epoch {epoch} "
                                     f"is {record['score']}; the checkpoint of epoch "
                                     f"{epoch - 1} is kept")
            record["seconds"] = time.perf_counter() - started
            improved = self.best_ema is None or score is None or (
                self.best_score is None or record["score"] < self.best_score)
            if improved and not (self.diverged and self.best_ema is not None):
                self.best_epoch, self.best_score = epoch, record["score"]
                self.best_ema = {k: v.detach().clone() for k, v in self.ema.state_dict().items()}
            self.history["epochs"].append(record)
            if patience and score is not None and epoch - self.best_epoch >= patience:
                self.stopped_early = True
            self.save(checkpoint, settings)
            trained += 1
            if self.log is not None:
                self.log.scalars({k: v for k, v in record.items() if k != "epoch"}, epoch,
                                 "epochs/")
            if on_epoch is not None:
                on_epoch(epoch, record)
        return FitReport(trained, resumed_from, self.diverged, self.best_epoch, self.best_score,
                         self.stopped_early)
