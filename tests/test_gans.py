"""The shared GAN loop: losses against their formulas, the gradient penalty against closed forms,
the D/G schedule, EMA, checkpoints and exact resume, divergence, and a toy GAN that learns."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dataio.artifacts import save_checkpoint
from reporting import figures
from runtime.stage import StageError
from training import gans
from training.gans import AdversarialLoss, GANModel, GANTrainer, TrainerSettings

torch.set_num_threads(1)


class VectorGAN(GANModel):
    """A small MLP GAN over vectors, optionally conditioned: the protocol as Plan 2 uses it."""

    def __init__(self, loss: AdversarialLoss | None = None, dim: int = 1, noise_dim: int = 2,
                 condition_dim: int = 0, hidden: int = 16) -> None:
        super().__init__()
        self.adversarial_loss = loss or AdversarialLoss("non-saturating")
        self.noise_dim, self.condition_dim = noise_dim, condition_dim
        self.generator = nn.Sequential(nn.Linear(noise_dim + condition_dim, hidden), nn.ReLU(),
                                       nn.Linear(hidden, dim))
        self.discriminator = nn.Sequential(nn.Linear(dim + condition_dim, hidden),
                                           nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        self.calls = {"d": 0, "g": 0}

    def _join(self, x, condition):
        return x if condition is None else torch.cat([x, condition], dim=1)

    def sample(self, condition, noise):
        return self.generator(self._join(noise, condition))

    def critic(self, x, condition=None):
        return self.discriminator(self._join(x, condition)).squeeze(1)

    def discriminator_loss(self, batch):
        self.calls["d"] += 1
        x, c = batch["x"], batch.get("condition")
        fake = self.sample(c, self.sample_noise(len(x)))
        parts = {"adversarial": self.adversarial_loss.discriminator(self.critic(x, c),
                                                                    self.critic(fake, c))}
        if self.adversarial_loss.gradient_penalty:
            parts["gradient_penalty"] = self.adversarial_loss.penalty(
                lambda v: self.critic(v, c), x, fake)
        return sum(parts.values()), parts

    def generator_loss(self, batch):
        self.calls["g"] += 1
        c = batch.get("condition")
        fake = self.sample(c, self.sample_noise(len(batch["x"])))
        parts = {"adversarial": self.adversarial_loss.generator(self.critic(fake, c))}
        return parts["adversarial"], parts


def gaussian_batches(n_batches: int, batch_size: int = 32, mean: float = 3.0, sd: float = 0.5,
                     seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{"x": mean + sd * torch.randn(batch_size, 1, generator=gen)}
            for _ in range(n_batches)]


# ---------------------------------------------------------------- losses
REAL = [2.0, -1.0, 0.5, 0.0]
FAKE = [-0.5, 3.0, 1.5]


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def naive_losses(kind: str) -> tuple[float, float]:
    """(D loss, G loss) by a plain loop over the formulas of each GAN loss."""
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    if kind == "non-saturating":  # -log sigmoid(r) - log(1 - sigmoid(f)); -log sigmoid(f)
        d = mean([-math.log(1 / (1 + math.exp(-r))) for r in REAL]) + \
            mean([-math.log(1 - 1 / (1 + math.exp(-f))) for f in FAKE])
        return d, mean([-math.log(1 / (1 + math.exp(-f))) for f in FAKE])
    if kind == "hinge":
        d = mean([max(0.0, 1 - r) for r in REAL]) + mean([max(0.0, 1 + f) for f in FAKE])
        return d, -mean(FAKE)
    if kind == "least-squares":
        d = 0.5 * mean([(r - 1) ** 2 for r in REAL]) + 0.5 * mean([f ** 2 for f in FAKE])
        return d, 0.5 * mean([(f - 1) ** 2 for f in FAKE])
    return mean(FAKE) - mean(REAL), -mean(FAKE)


@pytest.mark.parametrize("kind", gans.LOSS_KINDS)
def test_losses_match_their_formulas(kind):
    loss = AdversarialLoss(kind)
    d_expected, g_expected = naive_losses(kind)
    real, fake = torch.tensor(REAL, dtype=torch.float64), torch.tensor(FAKE, dtype=torch.float64)
    assert float(loss.discriminator(real, fake)) == pytest.approx(d_expected, rel=1e-6)
    assert float(loss.generator(fake)) == pytest.approx(g_expected, rel=1e-6)
    # scores of shape (B, 1) are the same scores
    assert float(loss.discriminator(real[:, None], fake[:, None])) == pytest.approx(d_expected,
                                                                                    rel=1e-6)
    assert loss.bounded_below_by_zero == (kind != "wasserstein")


def test_loss_settings_are_checked():
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        AdversarialLoss("wgan")
    with pytest.raises(ValueError, match=">= 0"):
        AdversarialLoss("wasserstein", -1.0)
    assert float(AdversarialLoss("hinge").penalty(lambda v: v.sum(), torch.ones(2, 3),
                                                  torch.zeros(2, 3))) == 0.0


def test_gradient_penalty_of_quadratic_critic_is_closed_form():
    """D(x) = 1/2 ||x||^2 per sample: grad = x_hat, so the penalty is mean (||x_hat_i|| - 1)^2,
    with the norm over all of a sample's pixels (not over the batch, not per row)."""
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(5, 1, 4, 4, generator=gen), torch.randn(5, 1, 4, 4, generator=gen)
    alpha = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    penalty = gans.gradient_penalty(lambda v: 0.5 * (v ** 2).flatten(1).sum(1), real, fake,
                                    alpha).detach()
    expected = 0.0
    for i in range(5):
        mixed = alpha[i] * real[i] + (1 - alpha[i]) * fake[i]
        expected += (math.sqrt(float((mixed ** 2).sum())) - 1.0) ** 2 / 5
    assert float(penalty) == pytest.approx(expected, rel=1e-5)


def test_gradient_penalty_of_linear_critic_and_its_gradient():
    """D(x) = <w, x>: grad = w for every sample, penalty (||w|| - 1)^2, and d penalty / dw =
    2 (||w|| - 1) w / ||w||: the penalty itself is differentiable (create_graph)."""
    w = torch.tensor([[0.6, -1.2], [2.0, 0.3]], requires_grad=True)
    real, fake = torch.randn(7, 2, 2), torch.randn(7, 2, 2)
    penalty = gans.gradient_penalty(lambda v: (v * w).flatten(1).sum(1), real, fake)
    norm = float(w.detach().norm())
    assert float(penalty.detach()) == pytest.approx((norm - 1) ** 2, rel=1e-5)
    penalty.backward()
    torch.testing.assert_close(w.grad, 2 * (norm - 1) * w.detach() / norm)
    weighted = AdversarialLoss("wasserstein", 10.0).penalty(
        lambda v: (v * w).flatten(1).sum(1), real, fake)
    assert float(weighted.detach()) == pytest.approx(10 * (norm - 1) ** 2, rel=1e-5)


def test_gradient_penalty_interpolates_each_sample_on_its_own_segment():
    seen = []

    def critic(v):
        seen.append(v.detach().clone())
        return v.flatten(1).sum(1)

    torch.manual_seed(0)
    real, fake = torch.randn(64, 3, 2), torch.randn(64, 3, 2)
    gans.gradient_penalty(critic, real, fake)
    mixed = seen[0]
    # x_hat_i - fake_i = a_i (real_i - fake_i) with one a_i per sample, 0 <= a_i <= 1
    a = ((mixed - fake).flatten(1) / (real - fake).flatten(1))
    torch.testing.assert_close(a, a[:, :1].expand_as(a), rtol=1e-4, atol=1e-4)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and float(a[:, 0].std()) > 0.1


# ---------------------------------------------------------------- networks and groups
def test_spectral_norm_scales_each_layer_to_unit_largest_singular_value():
    torch.manual_seed(0)
    net = gans.apply_spectral_norm(nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.Flatten(),
                                                 nn.Linear(8 * 14 * 14, 5)))
    for _ in range(100):  # power iterations happen in training-mode forward passes
        net(torch.randn(2, 1, 28, 28))
    conv, linear = net[0], net[2]
    with torch.no_grad():
        assert float(torch.linalg.matrix_norm(linear.weight, 2)) == pytest.approx(1.0, abs=5e-3)
        assert float(torch.linalg.matrix_norm(conv.weight.flatten(1), 2)) == pytest.approx(
            1.0, abs=5e-3)
        original = linear.parametrizations.weight.original
        assert abs(float(torch.linalg.matrix_norm(original, 2)) - 1.0) > 0.05


def test_every_parameter_must_be_in_exactly_one_group():
    model = VectorGAN()
    model.extra = nn.Linear(2, 2)  # trained by nothing
    with pytest.raises(ValueError, match="in neither: extra.weight, extra.bias"):
        GANTrainer(model, TrainerSettings())
    model = VectorGAN()
    model.generator_parameters = lambda: [*model.generator.parameters(),
                                          *model.discriminator.parameters()]
    with pytest.raises(ValueError, match="in both: discriminator"):
        GANTrainer(model, TrainerSettings())


# ---------------------------------------------------------------- the schedule and EMA
def test_n_critic_counts_discriminator_steps_across_epochs():
    torch.manual_seed(0)
    model = VectorGAN()
    trainer = GANTrainer(model, TrainerSettings(n_critic=3))
    trainer.train_epoch(gaussian_batches(10))
    assert model.calls == {"d": 10, "g": 3} and trainer.g_steps == 3
    trainer.train_epoch(gaussian_batches(10))  # generator steps after D steps 12, 15, 18
    assert model.calls == {"d": 20, "g": 6} and trainer.d_steps == 20


def test_each_step_trains_only_its_own_group():
    torch.manual_seed(0)
    model = VectorGAN()
    frozen_in_g_step = []
    original = model.generator_loss

    def generator_loss(batch):
        frozen_in_g_step.extend(p.requires_grad for p in model.discriminator.parameters())
        return original(batch)

    model.generator_loss = generator_loss
    trainer = GANTrainer(model, TrainerSettings(n_critic=2))
    def unchanged(before, module):
        return [torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True)]

    g_before = [p.clone() for p in model.generator.parameters()]
    d_before = [p.clone() for p in model.discriminator.parameters()]
    trainer.train_epoch(gaussian_batches(1))  # one D step, no G step
    assert all(unchanged(g_before, model.generator))
    assert not any(unchanged(d_before, model.discriminator))
    trainer.train_epoch(gaussian_batches(1, seed=1))  # a D step, then a G step
    assert not any(unchanged(g_before, model.generator))
    assert frozen_in_g_step and not any(frozen_in_g_step)  # no weight gradients for D
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_ema_follows_its_formula():
    torch.manual_seed(0)
    model = VectorGAN()
    trainer = GANTrainer(model, TrainerSettings(ema_decay=0.9))
    expected = [p.detach().clone() for p in model.generator.parameters()]
    for t in range(1, 6):
        trainer.train_epoch(gaussian_batches(1, seed=t))
        decay = min(0.9, (1 + t) / (10 + t))
        expected = [decay * e + (1 - decay) * p.detach()
                    for e, p in zip(expected, model.generator.parameters(), strict=True)]
    for e, p in zip(expected, trainer.ema.generator.parameters(), strict=True):
        torch.testing.assert_close(p, e)
    assert not any(p.requires_grad for p in trainer.ema.parameters())


# ---------------------------------------------------------------- checkpoints and divergence
def fit(tmp_path, epochs, model=None, score=None, settings=None, **loop):
    torch.manual_seed(0)
    model = model or VectorGAN()
    trainer = GANTrainer(model, TrainerSettings(log_every=3, **loop))
    data = {"x": 3.0 + 0.5 * torch.randn(96, 1, generator=torch.Generator().manual_seed(1))}
    resumed = []
    report = trainer.fit(lambda epoch: gans.tensor_batches(data, 16, 0, epoch), epochs,
                         tmp_path / "gan.pt", settings or {"kind": "test"}, score=score,
                         on_resume=resumed.append)
    assert resumed == ([report.resumed_from] if report.resumed_from else [])
    return trainer, report


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    def score(ema):
        return float(ema.sample(None, torch.zeros(1, 2)).abs().sum())

    straight, _ = fit(tmp_path / "a", 3, score=score, n_critic=2)
    fit(tmp_path / "b", 1, score=score, n_critic=2)
    resumed, report = fit(tmp_path / "b", 3, score=score, n_critic=2)
    assert report.resumed_from == 1 and report.trained_epochs == 2
    for a, b in (straight.state_dict(), resumed.state_dict()), :
        for key in ("model", "ema", "best_ema"):
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), (key, name)
        assert a["optimizer_g"]["state"][0]["exp_avg"].equal(b["optimizer_g"]["state"][0]
                                                             ["exp_avg"])
        assert (a["d_steps"], a["g_steps"], a["best_epoch"]) == (b["d_steps"], b["g_steps"],
                                                                 b["best_epoch"])
        untimed = [[{k: v for k, v in e.items() if k != "seconds"} for e in h["history"]["epochs"]]
                   for h in (a, b)]
        assert untimed[0] == untimed[1] and all(e["seconds"] > 0 for e in a["history"]["epochs"])
    again, report = fit(tmp_path / "b", 3, score=score, n_critic=2)
    assert report.trained_epochs == 0 and again.epoch == 3


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    fit(tmp_path, 1, settings={"loss": "hinge"})
    with pytest.raises(StageError, match="loss: now 'wasserstein', checkpoint 'hinge'"):
        fit(tmp_path, 2, settings={"loss": "wasserstein"})
    (tmp_path / "gan.pt").write_bytes(b"")
    with pytest.raises(StageError, match="empty"):
        fit(tmp_path, 2)


def test_best_epoch_follows_the_validation_score(tmp_path):
    scores = iter([3.0, 1.0, 2.0])
    saved = {}

    def score(ema):
        saved[len(saved) + 1] = {k: v.clone() for k, v in ema.state_dict().items()}
        return next(scores)

    trainer, report = fit(tmp_path, 3, score=score)
    assert report.best_epoch == 2 and report.best_score == 1.0
    best = trainer.best_model()
    for name, value in best.state_dict().items():
        assert torch.equal(value, saved[2][name])
    assert not torch.equal(trainer.ema.generator[0].weight, best.generator[0].weight)


class NanFromEpoch(VectorGAN):
    """Its discriminator loss turns NaN once ``bad_from`` discriminator steps have run."""

    def __init__(self, bad_from: int) -> None:
        super().__init__()
        self.bad_from = bad_from

    def discriminator_loss(self, batch):
        loss, parts = super().discriminator_loss(batch)
        if self.calls["d"] > self.bad_from:
            loss = loss * float("nan")
        return loss, parts


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    _, report = fit(tmp_path, 4, model=NanFromEpoch(bad_from=7))  # 6 batches per epoch
    assert report.diverged and "non-finite loss" in report.diverged
    assert "epoch 2" in report.diverged and report.best_epoch == 1
    state = torch.load(tmp_path / "gan.pt", weights_only=True)
    assert state["epoch"] == 1 and state["diverged"] == report.diverged
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    again, report = fit(tmp_path, 4, model=NanFromEpoch(bad_from=0))
    assert report.trained_epochs == 0 and report.diverged and again.epoch == 1


def test_nan_in_the_first_epoch_is_an_error(tmp_path):
    with pytest.raises(StageError, match="diverged before a first good epoch"):
        fit(tmp_path, 2, model=NanFromEpoch(bad_from=2))
    assert not (tmp_path / "gan.pt").exists()


class PinnedAfter(VectorGAN):
    """A discriminator that wins outright (adversarial loss 1e-6) from epoch ``epoch`` on."""

    def __init__(self, epoch: int, loss: AdversarialLoss | None = None) -> None:
        super().__init__(loss)
        self.epoch = epoch

    def discriminator_loss(self, batch):
        loss, parts = super().discriminator_loss(batch)
        if self.calls["d"] > 6 * (self.epoch - 1):
            parts["adversarial"] = parts["adversarial"] * 0 + 1e-6
        return loss, parts


def test_discriminator_pinned_near_zero_for_an_epoch_is_divergence(tmp_path):
    trainer, report = fit(tmp_path, 5, model=PinnedAfter(epoch=3))
    assert report.diverged and "stayed below 0.001 on every step of epoch 3" in report.diverged
    assert trainer.epoch == 3 and report.best_epoch == 2  # the pinned epoch is not the best
    _, report = fit(tmp_path, 5, model=PinnedAfter(epoch=1))
    assert report.trained_epochs == 0  # diverged checkpoints are not trained again
    _, report = fit(tmp_path / "w", 2, model=PinnedAfter(1, AdversarialLoss("wasserstein")))
    assert report.diverged is None  # an unbounded loss near zero means nothing


# ---------------------------------------------------------------- it learns
@pytest.mark.parametrize("kind, penalty, n_critic, betas", [
    ("non-saturating", 0.0, 1, (0.5, 0.999)),
    ("hinge", 0.0, 1, (0.5, 0.999)),
    ("least-squares", 0.0, 1, (0.5, 0.999)),
    ("wasserstein", 10.0, 5, (0.5, 0.9)),
])
def test_toy_gan_learns_a_gaussian(kind, penalty, n_critic, betas):
    """A GAN over 2-d vectors moves its samples from about 0 to the data's N((3, -2), 0.5^2 I).

    (In 1-d a gradient penalty traps a critic that starts with the wrong slope: (|g| - 1)^2 has
    minima at g = -1 and g = 1 with a barrier between; in 2-d the gradient can turn round.)"""
    torch.manual_seed(0)
    target = torch.tensor([3.0, -2.0])
    model = VectorGAN(AdversarialLoss(kind, penalty), dim=2, hidden=32)
    trainer = GANTrainer(model, TrainerSettings(n_critic=n_critic, lr_generator=2e-3,
                                             lr_discriminator=2e-3, betas=betas, ema_decay=0.99))
    noise = model.sample_noise(2000, torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model.sample(None, noise)
    gen = torch.Generator().manual_seed(0)
    trainer.train_epoch([{"x": target + 0.5 * torch.randn(64, 2, generator=gen)}
                         for _ in range(300 * n_critic)])
    with torch.no_grad():
        after = trainer.ema.sample(None, noise)
    assert float((before.mean(0) - target).norm()) > 3.0
    assert float((after.mean(0) - target).norm()) < 0.4, after.mean(0)
    assert bool((after.std(0) > 0.2).all() and (after.std(0) < 1.5).all()), after.std(0)


def test_conditional_toy_gan_follows_its_condition():
    """Condition +1 or -1 (a one-hot-like code): samples move to +3 or -3 accordingly."""
    torch.manual_seed(0)
    model = VectorGAN(AdversarialLoss("hinge"), condition_dim=1)
    trainer = GANTrainer(model, TrainerSettings(lr_generator=2e-3, lr_discriminator=2e-3,
                                             ema_decay=0.99))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(400):
        sign = torch.randint(0, 2, (64, 1), generator=gen).float() * 2 - 1
        batches.append({"x": 3 * sign + 0.3 * torch.randn(64, 1, generator=gen),
                        "condition": sign})
    trainer.train_epoch(batches)
    noise = model.sample_noise(500, torch.Generator().manual_seed(1))
    with torch.no_grad():
        plus = trainer.ema.sample(torch.ones(500, 1), noise).mean()
        minus = trainer.ema.sample(-torch.ones(500, 1), noise).mean()
    assert abs(float(plus) - 3) < 0.5 and abs(float(minus) + 3) < 0.5


# ---------------------------------------------------------------- batches and figures
def test_tensor_batches_are_full_aligned_and_seeded_per_epoch():
    data = {"x": torch.arange(10).float()[:, None], "y": torch.arange(10)}
    first = list(gans.tensor_batches(data, 3, seed=0, epoch=1))
    assert len(first) == 3 and all(len(b["y"]) == 3 for b in first)  # the last 1 is dropped
    assert all(torch.equal(b["x"][:, 0].long(), b["y"]) for b in first)
    again = list(gans.tensor_batches(data, 3, seed=0, epoch=1))
    other = list(gans.tensor_batches(data, 3, seed=0, epoch=2))
    assert all(torch.equal(a["y"], b["y"]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a["y"], b["y"]) for a, b in zip(first, other, strict=True))
    assert len(set(torch.cat([b["y"] for b in first]).tolist())) == 9
    with pytest.raises(ValueError, match="different lengths"):
        list(gans.tensor_batches({"x": torch.zeros(4), "y": torch.zeros(5)}, 2, 0, 1))


def test_an_epoch_of_several_passes_keeps_the_first_pass_order():
    """passes_per_epoch: epoch_vectors / examples rounded half up, at least one, 0 meaning one;
    pass 0 of an epoch is the order an epoch of one pass has (old runs resume unchanged), and
    the other passes are other permutations, fixed by (seed, epoch, pass)."""
    cases = {(60000, 60000): 1, (50000, 60000): 1, (40000, 60000): 2, (24000, 60000): 3,
             (10000, 60000): 6, (1437, 60000): 42, (70000, 60000): 1, (10000, 0): 1}
    for (examples, vectors), passes in cases.items():
        assert gans.passes_per_epoch(examples, vectors) == passes, (examples, vectors)
    data = {"y": torch.arange(12)}
    order = torch.randperm(12, generator=torch.Generator().manual_seed(
        gans.epoch_seed(5, 3)))  # what an epoch has always drawn
    first = torch.cat([b["y"] for b in gans.tensor_batches(data, 4, seed=5, epoch=3)])
    assert torch.equal(first, order)
    assert torch.equal(first, torch.cat([b["y"] for b in gans.tensor_batches(
        data, 4, seed=5, epoch=3, part=0)]))
    parts = [torch.cat([b["y"] for b in gans.tensor_batches(data, 4, 5, 3, part)])
             for part in (1, 2)]
    assert not torch.equal(parts[0], first) and not torch.equal(parts[0], parts[1])
    assert all(sorted(p.tolist()) == list(range(12)) for p in parts)
    again = torch.cat([b["y"] for b in gans.tensor_batches(data, 4, 5, 3, 1)])
    assert torch.equal(again, parts[0])


def test_figures_have_a_panel_per_image_and_per_loss_group(tmp_path):
    rows = [np.zeros((4, 28, 28), np.uint8), np.full((3, 28, 28), 255, np.uint8)]
    figure = figures.image_grid_figure(rows, ["real", "generated"], "grid")
    assert len(figure.axes) == 8 and figure.axes[0].get_ylabel() == "real"
    trainer, _ = fit(tmp_path, 2, score=lambda ema: 1.0)
    figure = figures.loss_curves_figure(trainer.history, "curves")
    assert len(figure.axes) == 3
    labels = {line.get_label() for line in figure.axes[0].get_lines()}
    assert labels == {"adversarial"}  # the total equals its one term: drawn once
    trainer, _ = fit(tmp_path / "gp", 1, model=VectorGAN(AdversarialLoss("wasserstein", 10.0)))
    figure = figures.loss_curves_figure(trainer.history, "curves")
    labels = {line.get_label() for line in figure.axes[0].get_lines()}
    assert labels == {"loss", "adversarial", "gradient_penalty"} and len(figure.axes) == 2


def test_fit_stops_when_an_epoch_makes_no_generator_step(tmp_path):
    """Two batches an epoch with n_critic 3: the first epoch trains no generator; fit stops with
    one line instead of a KeyError (a stage refuses this up front, check_generator_steps)."""
    torch.manual_seed(0)
    trainer = GANTrainer(VectorGAN(), TrainerSettings(n_critic=3))
    with pytest.raises(StageError, match="epoch 1 made no generator step"):
        trainer.fit(lambda epoch: gaussian_batches(2, seed=epoch), 2, tmp_path / "c.pt", {})
    assert not (tmp_path / "c.pt").exists()
    assert gans.generator_step_shortfall(64, 32, 3) == (2, 21)  # 21 * 3 <= 64
    assert gans.generator_step_shortfall(96, 32, 3) is None  # three batches: one step
    assert gans.generator_step_shortfall(64, 32, 3, passes=2) is None  # 2 passes: 4 batches
    assert gans.generator_step_shortfall(4, 4, 3) == (1, 1)  # no batch size would do


def test_a_checkpoint_of_another_model_is_not_resumed(tmp_path):
    """A trainer resumes only a checkpoint whose model record is its own: one without a record,
    or with another, is refused in one line and left as it is."""
    torch.manual_seed(0)
    path = tmp_path / "c.pt"
    GANTrainer(VectorGAN(), TrainerSettings()).fit(
        lambda epoch: gaussian_batches(2, seed=epoch), 1, path, {"s": 1})
    before = path.read_bytes()
    record = {"family": "test", "name": "vector", "config": {"width": 8}}
    for saved in (None, {**record, "name": "other"}):
        if saved is not None:
            state = torch.load(path, weights_only=True)
            save_checkpoint(path, {**state, "architecture": saved})
            before = path.read_bytes()
        trainer = GANTrainer(VectorGAN(), TrainerSettings(), architecture=record)
        with pytest.raises(StageError, match="c.pt holds another model"):
            trainer.fit(lambda epoch: gaussian_batches(2, seed=epoch), 2, path, {"s": 1})
        assert path.read_bytes() == before


def test_a_warm_start_begins_at_the_weights_that_drew_the_samples(tmp_path):
    """A finished run whose best epoch (2) is not its last (4): a warm start's generator is the
    best epoch's EMA generator, the one ``best_model()`` samples with, and its discriminator the
    last trained one (the EMA copy holds an untrained discriminator), in model and EMA alike."""
    torch.manual_seed(0)
    scores = iter([5.0, 1.0, 3.0, 4.0])
    first = GANTrainer(VectorGAN(), TrainerSettings(ema_decay=0.5))
    first.fit(lambda epoch: gaussian_batches(4, seed=epoch), 4, tmp_path / "c.pt", {},
              score=lambda model: next(scores))
    assert first.best_epoch == 2
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    second = GANTrainer(VectorGAN(), TrainerSettings())
    second.warm_start(state)
    best, noise = first.best_model(), torch.randn(16, 2)
    with torch.no_grad():
        for model in (second.model, second.ema):
            torch.testing.assert_close(model.sample(None, noise), best.sample(None, noise))
            for name, value in model.discriminator.state_dict().items():
                torch.testing.assert_close(value, first.model.discriminator.state_dict()[name])
    last = {k: v for k, v in state["ema"].items() if k.startswith("generator.")}
    assert any(not torch.equal(v, second.model.state_dict()[k]) for k, v in last.items())


def test_fit_stops_after_patience_epochs_without_a_better_score_and_stays_stopped(tmp_path):
    """Scores 5, 3, 4, 4, 2...: with patience 2 the run stops after epoch 4 (epochs 3 and 4 did
    not beat epoch 2), keeps epoch 2's weights, and a resumed run with more epochs trains none."""
    torch.manual_seed(0)
    scores = iter([5.0, 3.0, 4.0, 4.0, 2.0, 1.0])
    trainer = GANTrainer(VectorGAN(), TrainerSettings())
    report = trainer.fit(lambda epoch: gaussian_batches(2, seed=epoch), 6, tmp_path / "c.pt",
                         {}, score=lambda model: next(scores), patience=2)
    assert report.stopped_early and trainer.epoch == 4 and report.best_epoch == 2
    again = GANTrainer(VectorGAN(), TrainerSettings())
    report = again.fit(lambda epoch: gaussian_batches(2, seed=epoch), 10, tmp_path / "c.pt", {},
                       score=lambda model: 0.0, patience=2)
    assert report.trained_epochs == 0 and report.stopped_early and again.best_epoch == 2
