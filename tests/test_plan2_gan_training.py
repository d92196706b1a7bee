"""Plan 2: every GAN through one battery, the losses against their formulas, two toy problems with
known answers (a 2-D Gaussian mixture, a known rotation), the stage end to end on digits (with
evaluate.py reading what it wrote), resume, and bad inputs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from script_runner import run_script
from torch import nn

import plan2_gan_training as p2
from CL_loss_function import nt_xent_loss
from dataio.artifacts import (
    fingerprint,
    load_checkpoint,
    load_embeddings,
    load_npz,
    make_meta,
    save_checkpoint,
    save_npz,
)
from dataio.data_sources import load_dataset
from dataio.splits import held_out_split
from evaluation.metrics import frechet_distance
from models import vector_gans as vg
from models.vector_gans import Sizes, VectorGANConfig, build_vector_gan
from runtime.settings import SettingsError, configure, pick
from runtime.stage import StageError
from training.gans import AdversarialLoss, GANModel, GANTrainer, TrainerSettings, tensor_batches

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Small networks and short runs: the stage's behaviour, not its quality, is under test here.
# An epoch is one pass over digits' 1,437 training embeddings (the default, 60,000 vectors,
# would make it 42; test_an_epoch_is_several_passes_over_a_small_training_set tests that).
QUICK = ["--dataset", "digits", "--device", "cpu", "--threads", "1", "--batch-size", "128",
         "--hidden", "32", "--depth", "2", "--samples", "300", "--held-out-fraction", "0.04",
         "--plot-points", "60", "--epoch-vectors", "0"]


# Small networks for the battery (the other hyper-parameters at their defaults).
SMALL = VectorGANConfig(hidden=16, depth=2, noise_dim=3)
SIZES = Sizes(4, 3, dim_b=5)


def stage_defaults() -> dict:
    """The stage's settings as a run without flags reads them."""
    return configure(vars(p2), [])


def toy_batch(n: int = 12, dim: int = 4, dim_b: int = 5, classes: int = 3) -> dict:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    return {"x": torch.randn(n, dim, generator=gen), "label": labels,
            "groups": torch.from_numpy(vg.class_groups(labels.numpy())),
            "a": torch.randn(n, dim, generator=gen), "b": torch.randn(n, dim_b, generator=gen),
            "label_a": labels, "label_b": labels.flip(0)}


# ---------------------------------------------------------------- the battery
@pytest.mark.parametrize("name", vg.GAN_NAMES)
def test_model_battery(name, tmp_path):
    """Build, shapes, finite losses with an adversarial part (flow matching: its regression),
    one step changes every weight of both groups, a save/load round trip samples identically,
    and the checkpoint alone rebuilds the EMA model (from_checkpoint)."""
    torch.manual_seed(0)
    model = build_vector_gan(name, SIZES, SMALL)
    batch = toy_batch()
    # Flow matching has no discriminator: one loss, its regression term.
    adversarial = isinstance(model, GANModel)
    assert adversarial == (name != "flow_matching") == vg.is_adversarial(name)
    for loss_fn in ((model.discriminator_loss, model.generator_loss) if adversarial
                    else (model.generator_loss,)):
        loss, parts = loss_fn(batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert ("adversarial" if adversarial else "regression") in parts
        total = float(sum(parts.values()).detach())
        assert float(loss.detach()) == pytest.approx(total, rel=1e-5, abs=1e-6)
    translator = name in vg.TRANSLATORS
    condition = batch["a"] if translator else model.condition(batch["label"]) \
        if getattr(model, "conditional", False) else None
    noise = model.sample_noise(12)
    out = model.sample(condition, noise)
    assert out.shape == (12, 5 if translator else 4)
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainer = GANTrainer(model, TrainerSettings(n_critic=1, lr_generator=1e-2,
                                             lr_discriminator=1e-2),
                         vg.architecture(name, SIZES, SMALL))
    trainer.train_epoch([batch])
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    if adversarial and model.adversarial_loss.kind == "wasserstein":
        # The Wasserstein loss and its penalty do not change when D shifts by a constant: the
        # bias of each critic's output layer gets no gradient.
        unchanged = [k for k in unchanged if not k.endswith("head.linear.bias")]
    assert not unchanged, unchanged
    trainer.save(tmp_path / "m.pt", {"x": 1})
    torch.manual_seed(1)
    clone = build_vector_gan(name, SIZES, SMALL)
    GANTrainer(clone, TrainerSettings(n_critic=1)).restore(tmp_path / "m.pt", {"x": 1})
    model.eval()
    clone.eval()
    with torch.no_grad():
        assert torch.equal(model.sample(condition, noise), clone.sample(condition, noise))
    torch.manual_seed(2)
    rebuilt = vg.from_checkpoint(tmp_path / "m.pt")
    assert not rebuilt.training
    trainer.ema.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt.sample(condition, noise), trainer.ema.sample(condition, noise))


@pytest.mark.parametrize("name", ["wgan_gp", "contrastive_gan", "dualgan"])
def test_wasserstein_critics_score_each_vector_on_its_own(name):
    """No normalisation layer in a WGAN-GP critic: a vector's score does not depend on the
    other vectors of its batch (what a per-sample gradient penalty needs); the model's loss is
    Wasserstein with the config's penalty weight."""
    config = dataclasses.replace(SMALL, gradient_penalty=7.5)
    model = build_vector_gan(name, Sizes(4, 3, dim_b=4), config)
    norms = (nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d)
    assert not any(isinstance(m, norms) for m in model.discriminator.modules())
    assert model.adversarial_loss == AdversarialLoss("wasserstein", 7.5)
    critic = model.discriminator["a"] if name == "dualgan" else model.discriminator
    x, classes = torch.randn(6, 4), F.one_hot(torch.arange(6) % 3, 3).float()
    together = critic(x, classes)
    alone = torch.cat([critic(x[i:i + 1], classes[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone)


def test_dualgan_penalises_only_between_a_real_and_a_translated_vector_of_one_class():
    """The conditional critic's gradient penalty mixes a real vector with a translation of the
    same class, scored under that class: pairs drawn within classes, a class the other side
    lacks left out, and no common class means no penalty."""
    pairs_a, pairs_b = vg.same_class_pairs(torch.tensor([0, 1, 2, 2, 0]), torch.tensor([2, 0, 0]))
    assert sorted(pairs_a.tolist()) == [0, 2, 3, 4]  # row 1 (class 1): none in b
    assert torch.equal(torch.tensor([0, 1, 2, 2, 0])[pairs_a], torch.tensor([2, 0, 0])[pairs_b])
    torch.manual_seed(0)
    model = build_vector_gan("dualgan", SIZES, dataclasses.replace(SMALL, gradient_penalty=10.0))
    real, fake = torch.randn(6, 5), torch.randn(6, 5)
    real_labels, fake_labels = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 1, 0, 0, 0, 1])
    torch.manual_seed(1)
    got = model.penalty("b", real, real_labels, fake, fake_labels)
    torch.manual_seed(1)
    i, j = vg.same_class_pairs(fake_labels, real_labels)
    condition = F.one_hot(fake_labels[i], 3).float()
    expected = model.adversarial_loss.penalty(
        lambda v: model.critic("b", v, condition), real[j], fake[i])
    assert len(i) == 6 and torch.equal(real_labels[j], fake_labels[i])
    torch.testing.assert_close(got, expected)
    none = model.penalty("b", real[:2], real_labels[:2], fake[:2], torch.tensor([2, 2]))
    assert float(none) == 0.0


def test_wasserstein_models_train_with_the_wgan_gp_schedule():
    """Gulrajani et al. 2017: penalty weight 10, 5 critic steps per generator step, Adam betas
    (0.5, 0.9); the other models one D step per G step with DCGAN's betas. Each model takes
    the rate of its own kind (told apart here by giving the two kinds different rates)."""
    values = stage_defaults()
    run = pick(p2.Plan2Settings, values)
    assert values["gradient_penalty"] == 10.0 and run.n_critic == 5
    assert pick(VectorGANConfig, values).gradient_penalty == 10.0
    assert VectorGANConfig().gradient_penalty == 10.0
    for rates in ((run.wasserstein_lr, run.learning_rate), (3e-4, 7e-4)):
        run = dataclasses.replace(run, wasserstein_lr=rates[0], learning_rate=rates[1])
        for name in ("wgan_gp", "contrastive_gan", "dualgan"):
            loop = p2.trainer_settings(name, run, 0)
            assert (loop.n_critic, loop.betas, loop.lr_generator,
                    loop.lr_discriminator) == (5, (0.5, 0.9), rates[0], rates[0])
        for name in ("vaegan", "cyclegan"):
            loop = p2.trainer_settings(name, run, 0)
            assert (loop.n_critic, loop.betas, loop.lr_generator,
                    loop.lr_discriminator) == (1, (0.5, 0.999), rates[1], rates[1])


# ---------------------------------------------------------------- losses against formulas
def test_translation_losses_match_their_formulas():
    """CycleGAN: least squares + L1 cycle + L1 identity; DualGAN: Wasserstein + L1
    reconstruction; identity only when the dimensions match."""
    torch.manual_seed(0)
    batch = toy_batch(dim_b=4)
    a, b = batch["a"], batch["b"]
    cycle = vg.TranslationGAN(4, 4, AdversarialLoss("least-squares"), hidden=8, depth=1,
                              reconstruction_weight=10.0, identity_weight=0.5)
    g_ab, g_ba = cycle.generator["a_to_b"], cycle.generator["b_to_a"]
    d_a, d_b = cycle.discriminator["a"], cycle.discriminator["b"]
    expected = {
        "adversarial": 0.5 * ((d_b(g_ab(a)) - 1) ** 2).mean()
        + 0.5 * ((d_a(g_ba(b)) - 1) ** 2).mean(),
        "reconstruction": 10.0 * ((g_ba(g_ab(a)) - a).abs().mean()
                                  + (g_ab(g_ba(b)) - b).abs().mean()),
        "identity": 0.5 * ((g_ab(b) - b).abs().mean() + (g_ba(a) - a).abs().mean())}
    _, parts = cycle.generator_loss(batch)
    assert set(parts) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(parts[key], value)
    _, parts = cycle.discriminator_loss(batch)
    torch.testing.assert_close(parts["adversarial"], 0.5 * ((d_b(b) - 1) ** 2).mean()
                               + 0.5 * (d_b(g_ab(a)) ** 2).mean()
                               + 0.5 * ((d_a(a) - 1) ** 2).mean()
                               + 0.5 * (d_a(g_ba(b)) ** 2).mean())

    dual = vg.TranslationGAN(4, 5, AdversarialLoss("wasserstein", 0.0), hidden=8, depth=1,
                             reconstruction_weight=20.0, identity_weight=0.5)
    batch = toy_batch(dim_b=5)
    a, b = batch["a"], batch["b"]
    g_ab, g_ba = dual.generator["a_to_b"], dual.generator["b_to_a"]
    d_a, d_b = dual.discriminator["a"], dual.discriminator["b"]
    _, parts = dual.generator_loss(batch)
    assert set(parts) == {"adversarial", "reconstruction"}  # 4 -> 5 dims: no identity term
    torch.testing.assert_close(parts["adversarial"], -d_b(g_ab(a)).mean() - d_a(g_ba(b)).mean())
    torch.testing.assert_close(parts["reconstruction"], 20.0 * (
        (g_ba(g_ab(a)) - a).abs().mean() + (g_ab(g_ba(b)) - b).abs().mean()))
    _, parts = dual.discriminator_loss(batch)
    torch.testing.assert_close(parts["adversarial"], d_b(g_ab(a)).mean() - d_b(b).mean()
                               + d_a(g_ba(b)).mean() - d_a(a).mean())


def test_vaegan_gradients_follow_larsen_et_al():
    """The encoder gets the gradient of beta KL + L_llike, the decoder that of
    gamma L_llike + the GAN loss of its reconstructions and prior samples (Larsen et al. 2016)."""
    torch.manual_seed(0)
    model = vg.VAEGAN(4, noise_dim=3, hidden=8, depth=2, beta=0.7, gamma=0.05)
    x = torch.randn(10, 4)
    torch.manual_seed(5)
    loss, _ = model.generator_loss({"x": x})
    encoder, decoder = list(model.encoder.parameters()), list(model.generator.parameters())
    actual = torch.autograd.grad(loss, encoder + decoder)

    torch.manual_seed(5)  # the same draws, in the same order, by hand
    mu, logvar = model.encoder(x).chunk(2, dim=1)
    logvar = logvar.clamp(-12.0, 8.0)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    prior = torch.randn(10, 3)
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()
    features = model.discriminator.features
    llike = 0.5 * ((features(model.generator(z)) - features(x)) ** 2).sum(1).mean()
    fakes = torch.cat([model.generator(z.detach()), model.generator(prior)])
    gan = F.softplus(-model.score(fakes)).mean()
    expected = torch.autograd.grad(0.7 * kl + llike, encoder, retain_graph=True) \
        + torch.autograd.grad(0.05 * llike + gan, decoder)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_scale_gradient_keeps_values_and_scales_gradients():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = vg.scale_gradient(x, 4.0)
    assert torch.equal(y, x)
    (y ** 2).sum().backward()
    torch.testing.assert_close(x.grad, 4.0 * 2 * x.detach())


def test_class_groups_hold_one_example_per_class():
    labels = np.array([2, 0, 1, 2, 2, 0, 1, 0, 2, 1, 0])
    groups = vg.class_groups(labels)
    assert groups.shape == (3, 3)  # 3 classes; the rarest (1) appears 3 times
    for row in groups:
        assert sorted(labels[row]) == [0, 1, 2]
    assert len(np.unique(groups)) == groups.size


def test_contrastive_term_pulls_samples_to_their_class():
    """NT-Xent over the class groups: samples equal to the real vector of their class score far
    lower than samples equal to another class's vector, and the term is the mean over groups."""
    torch.manual_seed(0)
    model = vg.ContrastiveGAN(4, 3, contrastive_weight=2.0, temperature=0.5, noise_dim=3,
                              hidden=8, depth=1)
    batch = toy_batch()
    own = model.generator_extra(batch, batch["x"].clone())["contrastive"]
    swapped = batch["x"][torch.roll(torch.arange(12), 1)]  # labels are arange % 3: classes move
    other = model.generator_extra(batch, swapped)["contrastive"]
    assert float(own) < float(other) - 1.0
    rows = batch["groups"]
    expected = 2.0 * torch.stack([nt_xent_loss(batch["x"][r], batch["x"][r], 0.5)
                                  for r in rows]).mean()
    torch.testing.assert_close(own, expected)


# ---------------------------------------------------------------- toy problems
def mixture(n: int, seed: int, centres: list[list[float]], weights: list[float],
            sd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of a 2-D Gaussian mixture, and the component of each point as its class."""
    gen = torch.Generator().manual_seed(seed)
    which = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=gen)
    return torch.tensor(centres)[which] + sd * torch.randn(n, 2, generator=gen), which


def test_wgan_gp_learns_a_2d_gaussian_mixture():
    """About 200 generator steps (1,024 critic steps) of WGAN-GP bring the Fréchet distance of
    the EMA generator's samples below 5% of its value at initialisation (seeds 0-2 reached 0.8%
    to 1.3%)."""
    data, _ = mixture(4096, 0, [[3.5, -0.2], [3.5, -1.8], [0.5, -0.2], [0.5, -1.8]],
                      [0.4, 0.3, 0.2, 0.1], 0.4)
    torch.manual_seed(0)
    model = vg.WGANGP(2, 0, noise_dim=2, hidden=64, depth=2, gradient_penalty=10.0)
    trainer = GANTrainer(model, TrainerSettings(n_critic=5, lr_generator=2e-3,
                                             lr_discriminator=2e-3, betas=(0.5, 0.9)))

    def distance() -> float:
        return frechet_distance(vg.generate(trainer.ema, None, 2000, 1), data[:2000].numpy())

    start = distance()
    for epoch in range(1, 17):
        torch.manual_seed(epoch)
        trainer.train_epoch(tensor_batches({"x": data}, 64, 0, epoch))
    assert (trainer.d_steps, trainer.g_steps) == (1024, 204)
    assert distance() < 0.05 * start


def test_cyclegan_recovers_a_known_rotation():
    """Domain B is domain A rotated by 70 degrees; CycleGAN (class-aware critics, as the stage
    trains it) sees unpaired samples of each and learns G_AB with a mean cosine (about B's mean)
    to the true rotation above 0.9 on new points, while the identity map scores 0.28."""
    angle = math.radians(70)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)],
                             [math.sin(angle), math.cos(angle)]])
    clusters = ([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]], [0.5, 0.3, 0.2], 0.3)
    (a, label_a), (b, label_b) = mixture(2048, 1, *clusters), mixture(2048, 2, *clusters)
    b = b @ rotation.T
    test, _ = mixture(1000, 3, *clusters)
    truth, centre = test @ rotation.T, b.mean(0)

    def cosine(translated: torch.Tensor) -> float:
        return float(F.cosine_similarity(translated - centre, truth - centre).mean())

    assert cosine(test) < 0.3
    config = dataclasses.replace(pick(VectorGANConfig, stage_defaults()), hidden=64, depth=2)
    torch.manual_seed(0)
    model = build_vector_gan("cyclegan", Sizes(2, 3, dim_b=2), config)
    assert model.num_classes == 3 and model.adversarial_loss == AdversarialLoss("least-squares")
    trainer = GANTrainer(model, TrainerSettings(lr_generator=1e-3, lr_discriminator=1e-3))
    for epoch in range(1, 11):
        torch.manual_seed(epoch)
        halves = zip(tensor_batches({"a": a, "y": label_a}, 128, 0, epoch),
                     tensor_batches({"b": b, "y": label_b}, 128, 1, epoch), strict=True)
        trainer.train_epoch({"a": x["a"], "label_a": x["y"], "b": y["b"], "label_b": y["y"]}
                            for x, y in halves)
    translated = torch.from_numpy(vg.translate(trainer.ema, test.numpy(), "a_to_b"))
    assert cosine(translated) > 0.9


# ---------------------------------------------------------------- the stage on digits
def pixel_pca(dims: int) -> dict[str, np.ndarray]:
    """PCA of the digits pixels: a second real embedding of the same images (for translation)."""
    from sklearn.decomposition import PCA

    data = load_dataset("digits")
    pca = PCA(dims, random_state=0).fit(data.x_train.reshape(-1, 784) / 255.0)
    return {"z_train": pca.transform(data.x_train.reshape(-1, 784) / 255.0).astype(np.float32),
            "y_train": data.y_train, "y_test": data.y_test,
            "z_test": pca.transform(data.x_test.reshape(-1, 784) / 255.0).astype(np.float32)}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """A data folder with a trained digits ae_basic (embeddings and checkpoint) and a PCA
    embedding of the same images."""
    root = tmp_path_factory.mktemp("stage1")
    result = run_script("encoder_models.py", "--dataset", "digits",
                             "--models", "ae_basic", "--epochs", "1", "--device", "cpu",
                             "--data-dir", str(root))
    assert result.returncode == 0, result.stderr
    save_npz(root / "embeddings" / "digits_pca.npz", pixel_pca(12),
             make_meta("tests", {}, "digits", 0))
    return root


def fresh_copy(stage1: Path, target: Path) -> Path:
    shutil.copytree(stage1, target)
    return target


def command_line(data_dir: Path, *args: str) -> list[str]:
    return [*QUICK, "--data-dir", str(data_dir), "--encoder", "ae_basic", "--encoder-b", "pca",
            "--no-plots", *args]


def run_main(data_dir: Path, *args: str) -> None:
    """The stage in this process, with these flags (settings travel in its arguments only)."""
    p2.main(command_line(data_dir, *args))


@pytest.fixture(scope="module")
def end_to_end(stage1, tmp_path_factory) -> dict:
    """Every model for one epoch, run as a user runs it, then evaluate.py on what it wrote."""
    root = fresh_copy(stage1, tmp_path_factory.mktemp("e2e") / "data")
    result = run_script("plan2_gan_training.py", *QUICK, "--data-dir",
                             str(root), "--encoder", "ae_basic", "--encoder-b", "pca",
                             "--epochs", "1")
    assert result.returncode == 0, result.stderr
    evaluated = run_script("evaluate.py", "--data-dir", str(root),
                                "--device", "cpu", "--stages",
                                "plan2,plan2_images,plan2_translation", "--plot-points", "100",
                                "--evaluator-epochs", "2",
                                "--kmeans-init", "2", "--silhouette-samples", "200")
    assert evaluated.returncode == 0, evaluated.stderr
    return {"root": root, "stdout": result.stdout,
            "metrics": json.loads((root / "results" / "metrics.json").read_text())}


def test_stage_writes_every_file_in_its_format(end_to_end):
    root = end_to_end["root"]
    source = load_embeddings(root / "embeddings" / "digits_ae_basic.npz")
    for name in vg.GENERATORS:
        gen = load_npz(root / "embeddings" / f"digits_ae_basic_{name}.gen.npz",
                       {"z_gen": (2, "f")})
        assert gen["z_gen"].shape == (300, 32) and gen["z_gen"].dtype == np.float32
        assert gen["meta"]["source_embeddings"] == "digits_ae_basic.npz"
        assert gen["meta"]["dataset"] == "digits" and gen["meta"]["epochs_trained"] == 1
        conditional = name != "vaegan"
        assert ("y_gen" in gen) == conditional
        images = load_npz(root / "samples" / "plan2" / f"digits_ae_basic_{name}.npz",
                          {"x_gen": (3, "u")})
        assert images["x_gen"].shape == (300, 28, 28) and images["x_gen"].dtype == np.uint8
        if conditional:
            assert gen["y_gen"].dtype == np.int64 and set(gen["y_gen"]) <= set(range(10))
            np.testing.assert_array_equal(images["y_gen"], gen["y_gen"])
        # generated embeddings live in the source's units, not in standardised ones
        assert abs(gen["z_gen"].std() / source["z_test"].std() - 1) < 0.9
        for png in (f"plan2_digits_ae_basic_{name}_losses.png",
                    f"plan2_digits_ae_basic_{name}_real_vs_generated.png"):
            assert (root / "visualizations" / png).stat().st_size > 10_000
        # Held out by construction: the recorded held-out indices are the seeded split's, the
        # model trained on exactly the rest (its checkpoint's fingerprint), and it chose its
        # epoch on the held-out part alone.
        split = gen["meta"]["split"]
        held = np.array(split["held_out"])
        kept, expected = held_out_split(split["of"], len(held), split["seed"])
        np.testing.assert_array_equal(held, expected)
        assert len(held) == 54 and not set(held) & set(kept)
        assert gen["meta"]["train_embeddings"] == len(kept) == 1347 - 54
        state = load_checkpoint(Path(gen["meta"]["checkpoint"]))
        assert state["settings"]["embeddings"] == fingerprint(
            source["z_train"][kept], source["y_train"][kept].astype(np.int64), held)
        assert state["history"]["score_name"].startswith("held-out")
    for name in vg.TRANSLATORS:
        out = load_npz(root / "embeddings" / f"digits_ae_basic-to-pca_{name}.npz",
                       {"z_translated": (2, "f"), "y_test": (1, "i")})
        assert out["z_translated"].shape == (450, 12)
        np.testing.assert_array_equal(out["y_test"], source["y_test"])
        assert out["meta"]["target_embeddings"] == "digits_pca.npz"
        split = out["meta"]["split"]  # 54 of the 1347 held out (0.04), halves of the rest
        assert split["of"] == 1347 and len(split["held_out"]) == 54
        assert out["meta"]["halves"] == [646, 646]
    assert "| wgan_gp | 1 (" in end_to_end["stdout"]
    assert "| cyclegan | 1 (" in end_to_end["stdout"]
    generated = (root / "results" / "plan2_digits_ae_basic.md").read_text()
    translated = (root / "results" / "plan2_digits_ae_basic-to-pca.md").read_text()
    assert generated.count("| wgan_gp |") == 1 and "| dualgan |" not in generated
    assert translated.count("| dualgan |") == 1 and "| wgan_gp |" not in translated


def test_images_are_the_autoencoders_decoding(end_to_end):
    """x_gen is the ae_basic decoder's image of each generated embedding."""
    from models import encoders

    root = end_to_end["root"]
    gen = load_npz(root / "embeddings" / "digits_ae_basic_wgan_gp.gen.npz", {"z_gen": 2})
    images = load_npz(root / "samples" / "plan2" / "digits_ae_basic_wgan_gp.npz", {"x_gen": 3})
    model = encoders.build_encoder("ae_basic", encoders.EncoderConfig(embedding_dim=32))
    model.load_state_dict(load_checkpoint(root / "checkpoints" / "encoders"
                                          / "digits_ae_basic.pt")["model"])
    model.eval()
    with torch.no_grad():
        pixels = torch.sigmoid(model.decoder(torch.from_numpy(gen["z_gen"][:20])))
    expected = (pixels.view(-1, 28, 28) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(images["x_gen"][:20], expected)


def test_evaluate_scores_what_the_stage_wrote(end_to_end):
    document = end_to_end["metrics"]
    assert document["skipped"] == []
    assert set(document["plan2"]["digits"]) == {f"ae_basic_{n}" for n in vg.GENERATORS}
    assert set(document["plan2_images"]["digits"]) == {f"ae_basic_{n}" for n in vg.GENERATORS}
    assert set(document["plan2_translation"]["digits"]) == {f"ae_basic-to-pca_{n}"
                                                            for n in vg.TRANSLATORS}
    wgan = document["plan2"]["digits"]["ae_basic_wgan_gp"]
    for key in ("frechet_distance_floor", "tstr_knn_accuracy", "trtr_knn_accuracy",
                "kmeans_ari", "kmeans_ari_real", "silhouette_real"):
        assert key in wgan
    assert "tstr_knn_accuracy" not in document["plan2"]["digits"]["ae_basic_vaegan"]
    images = document["plan2_images"]["digits"]["ae_basic_contrastive_gan"]
    assert {"fid", "fid_floor", "score", "class_consistency", "class_consistency_real"} <= set(
        images)
    translation = document["plan2_translation"]["digits"]["ae_basic-to-pca_cyclegan"]
    assert translation["cosine_paired_linear"] > 0.5 and translation["knn_accuracy_target"] > 0.8


@pytest.mark.parametrize("schedule", ["decaying", "constant"])
def test_resumed_run_equals_an_uninterrupted_one(stage1, tmp_path, capsys, monkeypatch,
                                                 schedule):
    """A decaying-rate run (the default) interrupted by Ctrl-C after its first epoch, then
    run again with the same command; a constant-rate run of 1 epoch continued to 2: both equal
    an uninterrupted 2-epoch run."""
    straight = fresh_copy(stage1, tmp_path / "straight")
    resumed = fresh_copy(stage1, tmp_path / "resumed")
    args = ("--models", "wgan_gp", "--lr-decay" if schedule == "decaying" else "--no-lr-decay")
    run_main(straight, *args, "--epochs", "2")
    if schedule == "decaying":
        save = GANTrainer.save

        def save_then_interrupt(self, path, settings):
            save(self, path, settings)
            raise KeyboardInterrupt

        monkeypatch.setattr(GANTrainer, "save", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_main(resumed, *args, "--epochs", "2")
        monkeypatch.undo()
    else:
        run_main(resumed, *args, "--epochs", "1")
    capsys.readouterr()
    run_main(resumed, *args, "--epochs", "2")
    assert "wgan_gp: resumed from" in capsys.readouterr().out
    name = "digits_ae_basic_wgan_gp.gen.npz"
    np.testing.assert_array_equal(np.load(straight / "embeddings" / name)["z_gen"],
                                  np.load(resumed / "embeddings" / name)["z_gen"])
    # The training time counts both epochs, the one before the resume too.
    checkpoint = load_checkpoint(resumed / "checkpoints" / "plan2" / "digits_ae_basic_wgan_gp.pt")
    epoch_seconds = [e["seconds"] for e in checkpoint["history"]["epochs"]]
    meta = load_npz(resumed / "embeddings" / name, {"z_gen": (2, "f")})["meta"]
    assert len(epoch_seconds) == 2 and all(t > 0 for t in epoch_seconds)
    assert meta["train_seconds"] == pytest.approx(sum(epoch_seconds))
    with pytest.raises(StageError, match="hidden: now 48, checkpoint 32"):
        run_main(resumed, *args, "--epochs", "2", "--hidden", "48")


def test_nan_loss_stops_and_keeps_the_best_checkpoint(stage1, tmp_path, monkeypatch, capsys):
    root = fresh_copy(stage1, tmp_path / "data")
    run_main(root, "--models", "wgan_gp", "--no-lr-decay", "--epochs", "1")
    checkpoint = root / "checkpoints" / "plan2" / "digits_ae_basic_wgan_gp.pt"
    good = load_checkpoint(checkpoint)["model"]
    original = vg.WGANGP.generator_loss

    def broken(self, batch):
        loss, parts = original(self, batch)
        return loss * float("nan"), parts

    monkeypatch.setattr(vg.WGANGP, "generator_loss", broken)
    capsys.readouterr()
    run_main(root, "--models", "wgan_gp", "--no-lr-decay", "--epochs", "3")
    assert "warning: wgan_gp: training stopped (non-finite loss" in capsys.readouterr().out
    state = load_checkpoint(checkpoint)
    assert state["epoch"] == 1 and state["diverged"]
    for key, value in good.items():
        assert torch.equal(state["model"][key], value)
    gen = load_npz(root / "embeddings" / "digits_ae_basic_wgan_gp.gen.npz", {"z_gen": 2})
    assert gen["meta"]["diverged"] and gen["meta"]["best_epoch"] == 1
    fresh = fresh_copy(stage1, tmp_path / "fresh")
    with pytest.raises(StageError, match="diverged before a first good epoch"):
        run_main(fresh, "--models", "wgan_gp", "--epochs", "3")


@pytest.mark.parametrize("case, message", [
    (("--encoder", "nope"), "digits_nope.npz not found, and no stage makes it: 'nope' is not an "
                            "encoder of encoder_models.py (ae_basic"),
    (("--encoder", "ae_basic+glow"), "'ae_basic+glow' is not an encoder"),
    (("--encoder", "ae_basic+realnvp"), "make it with: python flows.py --dataset digits "
                                        "--encoders ae_basic --flows realnvp"),
    (("--encoder-b", "ae_basic"), "--encoder-b ae_basic is --encoder too"),
    (("--encoder-b", "short"), "hold 1347 and 1000 train embeddings"),
    (("--encoder-b", "shuffled"), "y_test differs at"),
    (("--encoder-b", "mnist"), "its meta says dataset 'mnist', not 'digits'"),
    (("--encoder-b", "nometa"), "digits_nometa.npz: its meta names no dataset"),
    (("--limit", "200"), "--limit 200 and --held-out-fraction 0.04 leave 96 training "
                         "embeddings per translation half"),
    (("--ensemble", "20", "--samples", "10"), "--ensemble 20 is more than --samples 10"),
])
def test_bad_inputs_stop_with_one_clear_error(stage1, tmp_path, case, message):
    root = fresh_copy(stage1, tmp_path / "data")
    pca = pixel_pca(12)
    meta = make_meta("tests", {}, "digits", 0)
    save_npz(root / "embeddings" / "digits_short.npz",
             {**pca, "z_train": pca["z_train"][:1000], "y_train": pca["y_train"][:1000]}, meta)
    save_npz(root / "embeddings" / "digits_shuffled.npz",
             {**pca, "y_test": np.roll(pca["y_test"], 1)}, meta)
    save_npz(root / "embeddings" / "digits_mnist.npz", pca, {**meta, "dataset": "mnist"})
    np.savez(root / "embeddings" / "digits_nometa.npz", **pca)
    with pytest.raises((StageError, SettingsError)) as raised:
        run_main(root, *case, "--epochs", "1")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not (root / "embeddings" / "digits_ae_basic_wgan_gp.gen.npz").exists()


def test_errors_reach_the_shell_as_one_line(tmp_path):
    result = run_script("plan2_gan_training.py", "--dataset", "digits",
                             "--data-dir", str(tmp_path), "--encoder", "ae_basic")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path}/embeddings/digits_ae_basic.npz not found; make it with: python "
        f"encoder_models.py --dataset digits --models ae_basic --data-dir {tmp_path}"]
    with pytest.raises(SystemExit) as raised:
        run_main(tmp_path, "--models", "gan")
    assert raised.value.code == 2


def test_plan1_generators_decode_the_generated_embeddings(stage1, tmp_path, capsys):
    """A Plan 1 generator of the encoder is rebuilt from its checkpoint alone (here a width
    other than plan1's default) and renders every generated embedding (cgan). One trained on
    other embeddings (acgan) is left out with a note, and one without its architecture record
    (infogan) with a note naming the command that remakes it."""
    import plan1_gan_training as plan1
    from models import image_gans

    root = fresh_copy(stage1, tmp_path / "data")
    emb = load_embeddings(root / "embeddings" / "digits_ae_basic.npz")
    folder = root / "checkpoints" / "plan1"
    values = configure(vars(plan1), ["--dataset", "digits", "--encoder", "ae_basic",
                                     "--width", "8"])
    run, config = pick(plan1.Plan1Settings, values), pick(image_gans.ImageGANConfig, values)
    assert config.width == 8 != image_gans.ImageGANConfig().width
    assert configure(vars(plan1), [])["width"] != 8  # the stage's default is another width
    loop = TrainerSettings()
    trainers = {}
    for name, z_train, recorded in (("cgan", emb["z_train"], True),
                                    ("acgan", emb["z_train"] + 1, True),
                                    ("infogan", emb["z_train"], False)):
        torch.manual_seed(0)
        model = image_gans.build_image_gan(name, 32, 10, config)
        model.set_condition_statistics(torch.from_numpy(emb["z_train"]))
        record = image_gans.architecture(name, 32, 10, config) if recorded else None
        trainers[name] = GANTrainer(model, loop, record)
        path = folder / f"digits_ae_basic_{name}.pt"
        trainers[name].save(path, plan1.resume_settings(
            name, fingerprint(z_train, emb["z_test"]), len(z_train), run, config, loop))
        assert ("architecture" in load_checkpoint(path)) == recorded
    capsys.readouterr()
    run_main(root, "--models", "wgan_gp", "--epochs", "1")
    out = capsys.readouterr().out
    assert "digits_ae_basic_acgan.pt: trained on other embeddings" in out
    assert "digits_ae_basic_infogan.pt: holds no record of its model" in out
    assert "remake it with: python plan1_gan_training.py" in out
    assert "digits_ae_basic_cgan.pt" not in out
    samples = root / "samples" / "plan2"
    for name in ("acgan", "infogan"):
        assert not (samples / f"digits_ae_basic_wgan_gp_plan1-{name}.npz").exists()
    gen = load_npz(root / "embeddings" / "digits_ae_basic_wgan_gp.gen.npz", {"z_gen": 2})
    for name in ("cgan",):
        images = load_npz(samples / f"digits_ae_basic_wgan_gp_plan1-{name}.npz",
                          {"x_gen": (3, "u")})
        expected = image_gans.regenerate(trainers[name].ema, torch.from_numpy(gen["z_gen"]), 0)
        assert images["x_gen"].shape == (300, 28, 28)
        np.testing.assert_array_equal(images["x_gen"], expected)
        np.testing.assert_array_equal(images["y_gen"], gen["y_gen"])
        assert images["meta"]["decoded_by"] == f"plan1-{name}"


@pytest.mark.parametrize(("damage", "words"), [
    ("settings", "its settings are a list, not a dict"),
    ("tensor", "cannot rebuild its generator")])
def test_a_damaged_plan1_checkpoint_is_a_note_not_a_stop(stage1, tmp_path, capsys, damage,
                                                         words):
    """Plan 1's generators are optional decoders: one whose checkpoint is damaged inside is left
    out with a note naming it, and Plan 2 writes its own outputs."""
    import plan1_gan_training as plan1
    from models import image_gans

    root = fresh_copy(stage1, tmp_path / "data")
    emb = load_embeddings(root / "embeddings" / "digits_ae_basic.npz")
    values = configure(vars(plan1), ["--dataset", "digits", "--encoder", "ae_basic",
                                     "--width", "8"])
    run, config = pick(plan1.Plan1Settings, values), pick(image_gans.ImageGANConfig, values)
    model = image_gans.build_image_gan("cgan", 32, 10, config)
    model.set_condition_statistics(torch.from_numpy(emb["z_train"]))
    path = root / "checkpoints" / "plan1" / "digits_ae_basic_cgan.pt"
    GANTrainer(model, TrainerSettings(), image_gans.architecture("cgan", 32, 10, config)).save(
        path, plan1.resume_settings("cgan", fingerprint(emb["z_train"], emb["z_test"]),
                                    len(emb["z_train"]), run, config, TrainerSettings()))
    state = load_checkpoint(path)
    if damage == "settings":
        state["settings"] = sorted(state["settings"])
    else:
        state["ema"].pop(next(iter(state["ema"])))
    torch.save(state, path)
    capsys.readouterr()
    run_main(root, "--models", "wgan_gp", "--epochs", "1")
    notes = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("note: Plan 1 generator not used")]
    assert len(notes) == 1 and str(path) in notes[0] and words in notes[0], notes
    assert (root / "embeddings" / "digits_ae_basic_wgan_gp.gen.npz").is_file()
    assert not (root / "samples" / "plan2" / "digits_ae_basic_wgan_gp_plan1-cgan.npz").exists()


def test_learning_rate_decay_follows_the_epoch(stage1, tmp_path):
    """--lr-decay: epoch e of E trains at rate x (1 - (e - 1) / E), in both optimisers; the
    number of epochs joins the settings a checkpoint must share."""
    root = fresh_copy(stage1, tmp_path / "data")
    args = ("--models", "wgan_gp", "--lr-decay", "--wasserstein-lr", "6e-4")
    run_main(root, *args, "--epochs", "2")
    state = load_checkpoint(root / "checkpoints" / "plan2" / "digits_ae_basic_wgan_gp.pt")
    for optimizer in ("optimizer_g", "optimizer_d"):
        assert state[optimizer]["param_groups"][0]["lr"] == pytest.approx(6e-4 / 2)
    with pytest.raises(StageError, match="epochs: now 3, checkpoint 2"):
        run_main(root, *args, "--epochs", "3")


def test_an_epoch_is_several_passes_over_a_small_training_set(stage1, tmp_path):
    """--epoch-vectors V: an epoch over n training embeddings is V / n passes (rounded, at least
    one), so a smaller set trains as many steps per epoch; the checkpoint records the passes,
    and a run with another count does not resume it."""
    args = ("--models", "wgan_gp", "--limit", "512", "--batch-size", "64", "--epochs", "2",
            "--no-lr-decay", "--held-out-fraction", "0")
    steps = {}
    for vectors, passes in ((0, 1), (1536, 3)):
        root = fresh_copy(stage1, tmp_path / f"v{vectors}")
        run_main(root, *args, "--epoch-vectors", str(vectors))
        state = load_checkpoint(root / "checkpoints" / "plan2" / "digits_ae_basic_wgan_gp.pt")
        assert state["settings"]["epoch_passes"] == passes
        steps[passes] = (state["d_steps"], state["g_steps"])
    # 512 embeddings at --batch-size 64: 8 critic steps a pass, a generator step every 5
    assert steps == {1: (16, 3), 3: (48, 9)}
    with pytest.raises(StageError, match="epoch_passes: now 1, checkpoint 3"):
        run_main(tmp_path / "v1536", *args, "--epoch-vectors", "0")
    path = tmp_path / "v0" / "checkpoints" / "plan2" / "digits_ae_basic_wgan_gp.pt"
    run_main(tmp_path / "v0", *args, "--epoch-vectors", "0", "--epochs", "3")
    assert load_checkpoint(path)["d_steps"] == 24  # resumed: one more epoch of one pass
    with pytest.raises(StageError, match="epoch_passes: now 3, checkpoint 1"):
        run_main(tmp_path / "v0", *args, "--epoch-vectors", "1536", "--epochs", "4")


def test_ensemble_members_are_the_single_seed_runs(stage1, tmp_path, capsys):
    """--ensemble 2: member k is the run of --seed k alone (same best weights; its checkpoint
    is accepted as finished when copied in) and the samples interleave the two runs' own
    samples (unconditional, so that each run's first rows are the ensemble's)."""
    args = ("--models", "wgan_gp", "--epochs", "2", "--no-wgan-conditional")
    ensemble = fresh_copy(stage1, tmp_path / "ensemble")
    alone = [fresh_copy(stage1, tmp_path / f"seed{seed}") for seed in (0, 1)]
    run_main(ensemble, *args, "--ensemble", "2")
    for seed, root in enumerate(alone):
        run_main(root, *args, "--seed", str(seed))
    folder = "checkpoints/plan2/digits_ae_basic_wgan_gp"
    for member, root in enumerate(alone):
        made = load_checkpoint(ensemble / f"{folder}{'_member1' if member else ''}.pt")
        single = load_checkpoint(root / f"{folder}.pt")
        assert made["settings"] == single["settings"]
        for key, value in single["best_ema"].items():
            torch.testing.assert_close(made["best_ema"][key], value, rtol=0, atol=0)
    name = "embeddings/digits_ae_basic_wgan_gp.gen.npz"
    gen = load_npz(ensemble / name, {"z_gen": (2, "f")})
    singles = [np.load(root / name)["z_gen"] for root in alone]
    assert gen["z_gen"].shape == singles[0].shape == (300, 32)
    np.testing.assert_array_equal(gen["z_gen"][0::2], singles[0][:150])
    np.testing.assert_array_equal(gen["z_gen"][1::2], singles[1][:150])
    meta = gen["meta"]
    assert meta["ensemble"] == 2 and meta["member_seeds"] == [0, 1]
    assert meta["epochs_trained"] == [2, 2] and len(meta["best_epoch"]) == 2
    # a finished --seed 1 run joins an ensemble as its member 1 without training again
    gathered = fresh_copy(stage1, tmp_path / "gathered")
    (gathered / "checkpoints" / "plan2").mkdir(parents=True, exist_ok=True)
    shutil.copy(alone[0] / f"{folder}.pt", gathered / f"{folder}.pt")
    shutil.copy(alone[1] / f"{folder}.pt", gathered / f"{folder}_member1.pt")
    capsys.readouterr()
    run_main(gathered, *args, "--ensemble", "2")
    assert capsys.readouterr().out.count("(nothing left to train)") == 2
    np.testing.assert_array_equal(np.load(gathered / name)["z_gen"], gen["z_gen"])


def test_sampling_bench_reproduces_the_stage_at_its_seed(stage1, tmp_path):
    """bench/bench_plan2_sampling.py, run as a user runs it on a finished --ensemble 2 run: its
    row for sampling seed 0 (the stage's --seed) is scoring.plan2_metrics of the stage's own
    file, and another seed gives other samples."""
    from evaluation import scoring

    root = fresh_copy(stage1, tmp_path / "data")
    run_main(root, "--models", "wgan_gp", "--epochs", "1", "--ensemble", "2")
    result = run_script("bench/bench_plan2_sampling.py", "--dataset",
                             "digits", "--data-dir", str(root), "--encoder", "ae_basic",
                             "--samples", "300", "--sampling-seeds", "0,1")
    assert result.returncode == 0, result.stderr
    assert "(2 members)" in result.stdout
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:6]
            for line in result.stdout.splitlines() if line.startswith("| ")}
    source = root / "embeddings" / "digits_ae_basic.npz"
    gen = load_npz(root / "embeddings" / "digits_ae_basic_wgan_gp.gen.npz", {"z_gen": (2, "f")})
    values = scoring.plan2_metrics(source, gen, load_embeddings(source),
                                   scoring.ScoringSettings(seed=0))
    expected = [f"{values['frechet_distance'] / values['frechet_distance_floor']:.2f}",
                *(f"{values[k]:.3f}" for k in ("precision", "recall", "density", "coverage"))]
    assert rows["0"] == expected
    assert rows["1"] != rows["0"] and "GMM-20 full (fitted)" in rows


def test_energy_distance_term_against_its_formula():
    """2 E||x - y|| - E||y - y'|| over the pairs of one class (y != y') against a loop, with and
    without classes; in the WGAN-GP generator loss with its weight, on the batch's own rows."""
    gen = torch.Generator().manual_seed(2)
    real, fake = torch.randn(9, 4, generator=gen), torch.randn(9, 4, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1])
    for classes in (labels, None):
        cross, within = [], []
        for i in range(9):
            for j in range(9):
                if classes is None or classes[i] == classes[j]:
                    cross.append((fake[i] - real[j]).norm())
                    if i != j:
                        within.append((fake[i] - fake[j]).norm())
        expected = 2 * sum(cross) / len(cross) - sum(within) / len(within)
        torch.testing.assert_close(vg.energy_distance_term(real, fake, classes), expected)
    model = vg.WGANGP(4, num_classes=3, noise_dim=3, hidden=8, depth=2, energy_weight=0.5)
    batch = toy_batch()
    noise = torch.randn(len(batch["x"]), 3, generator=gen)
    model.sample_noise = lambda n, generator=None: noise[:n]
    _, parts = model.generator_loss(batch)
    fake = model.sample(model.condition(batch["label"]), noise)
    torch.testing.assert_close(parts["energy"],
                               0.5 * vg.energy_distance_term(batch["x"], fake, batch["label"]))


def test_energy_distance_term_is_smallest_at_the_real_spread():
    """With the real points' own term added, the energy distance of scaled copies s * x' of the
    real distribution is near 0 at s = 1 and grows when the samples are spread too far or too
    little, which is what keeps its spreading part from inflating the spread."""
    gen = torch.Generator().manual_seed(3)
    real, other = torch.randn(600, 8, generator=gen), torch.randn(600, 8, generator=gen)
    real_term = torch.cdist(real, real).sum() / (600 * 599)
    energy = {s: float(vg.energy_distance_term(real, s * other) - real_term)
              for s in (0.7, 1.0, 1.4)}
    assert abs(energy[1.0]) < 0.02
    assert energy[0.7] > energy[1.0] + 0.05 and energy[1.4] > energy[1.0] + 0.05


def test_mode_seeking_term_against_its_formula():
    """MSGAN's term, 1 / (mean over rows i of |G(z_i, c_i) - G(z'_i, c_i)|_1 / |z_i - z'_i|_1 +
    eps) with means over dimensions, against a loop; in the WGAN-GP generator loss, with its
    weight, the second sample of each row has the row's own class and fresh noise; with weight
    0 the term is absent."""
    gen = torch.Generator().manual_seed(1)
    fake, other = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    noise, other_noise = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    ratios = [(fake[i] - other[i]).abs().mean() / (noise[i] - other_noise[i]).abs().mean()
              for i in range(5)]
    expected = 1.0 / (sum(ratios) / 5 + 1e-5)
    torch.testing.assert_close(vg.mode_seeking_loss(fake, other, noise, other_noise), expected)
    model = vg.WGANGP(4, num_classes=3, noise_dim=3, hidden=8, depth=2, mode_seeking=2.0)
    batch = toy_batch()
    n = len(batch["x"])
    first, second = torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen)
    draws = iter([first, second])
    model.sample_noise = lambda n, generator=None: next(draws)
    _, parts = model.generator_loss(batch)
    c = model.condition(batch["label"])
    pairs = [(model.sample(c[i:i + 1], first[i:i + 1]), model.sample(c[i:i + 1], second[i:i + 1]))
             for i in range(n)]
    ratios = [(a - b).abs().mean() / (first[i] - second[i]).abs().mean()
              for i, (a, b) in enumerate(pairs)]
    torch.testing.assert_close(parts["mode_seeking"], 2.0 / (sum(ratios) / n + 1e-5))
    plain = vg.WGANGP(4, num_classes=3, noise_dim=3, hidden=8, depth=2)
    plain.sample_noise = lambda n, generator=None: first[:n]
    assert "mode_seeking" not in plain.generator_loss(batch)[1]


# ---------------------------------------------------------------- flow matching
def test_flow_matching_regresses_the_straight_path_velocity():
    """The loss is the mean of ||v(x_t, t, y) - (x_1 - x_0)||^2 over rows and dims, at
    x_t = (1 - t) x_0 + t x_1: checked row by row against the formula."""
    torch.manual_seed(0)
    model = vg.FlowMatching(3, num_classes=2, hidden=8, depth=1, steps=4)
    x0, x1 = torch.randn(5, 3), torch.randn(5, 3) + 2.0
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    condition = model.condition(torch.tensor([0, 1, 1, 0, 1]))
    expected = []
    for i in range(5):
        xt = (1 - t[i]) * x0[i] + t[i] * x1[i]
        v = model.velocity(xt[None], t[i:i + 1], condition[i:i + 1])[0]
        expected.append(((v - (x1[i] - x0[i])) ** 2).mean())
    torch.testing.assert_close(model.regression_loss(x0, x1, t, condition),
                               torch.stack(expected).mean())
    assert model.discriminator_parameters() == [] and not isinstance(model, GANModel)
    assert not hasattr(model, "discriminator_loss") and not hasattr(model, "adversarial_loss")


def test_flow_matching_learns_a_two_dimensional_mixture_through_the_gan_loop(tmp_path):
    """Trained by GANTrainer (one step per batch, no discriminator), its samples' Fréchet
    distance to a 2-D mixture falls well below that at initialisation."""
    rng = np.random.default_rng(0)
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    labels = rng.integers(0, 3, 3000)
    data = (centres[labels] + 0.4 * rng.normal(size=(3000, 2))).astype(np.float32)
    torch.manual_seed(0)
    model = vg.FlowMatching(2, num_classes=3, hidden=64, depth=2, steps=20)
    before = frechet_distance(vg.generate(model, labels, 3000, 1), data)
    trainer = GANTrainer(model, TrainerSettings(lr_generator=2e-3, betas=(0.9, 0.999),
                                             ema_decay=0.99, seed=0))
    tensors = {"x": torch.from_numpy(data), "label": torch.from_numpy(labels)}
    report = trainer.fit(lambda epoch: tensor_batches(tensors, 100, 0, epoch), 15,
                         tmp_path / "fm.pt", {"test": 1})
    after = frechet_distance(vg.generate(trainer.best_model(), labels, 3000, 1), data)
    assert report.trained_epochs == 15 and "d/loss" not in trainer.history["epochs"][-1]
    assert after < before / 20 and after < 0.5, (before, after)
    rebuilt = GANTrainer(vg.FlowMatching(2, num_classes=3, hidden=64, depth=2, steps=20),
                         TrainerSettings(lr_generator=2e-3, betas=(0.9, 0.999), ema_decay=0.99))
    assert rebuilt.fit(lambda epoch: tensor_batches(tensors, 100, 0, epoch), 15,
                       tmp_path / "fm.pt", {"test": 1}).trained_epochs == 0  # resumed finished


def test_tables_hold_every_model_on_disk_each_from_its_own_run(stage1, tmp_path, capsys):
    """A run of one model keeps the rows of the models trained before it (rebuilt from the
    files' meta), in registry order; a broken file of someone else's is left out with a line."""
    root = fresh_copy(stage1, tmp_path / "data")
    run_main(root, "--models", "wgan_gp,cyclegan", "--epochs", "1")
    first = (root / "results" / "plan2_digits_ae_basic.md").read_text()
    wgan_row = next(line for line in first.splitlines() if line.startswith("| wgan_gp |"))
    (root / "embeddings" / "digits_ae_basic_broken.gen.npz").write_bytes(b"not a zip")
    capsys.readouterr()
    run_main(root, "--models", "flow_matching", "--epochs", "2")
    assert "warning: left out of the table:" in capsys.readouterr().out
    table = (root / "results" / "plan2_digits_ae_basic.md").read_text().splitlines()
    models = [line.split(" | ")[0][2:] for line in table if line.startswith("| ")][2:]
    assert models == ["wgan_gp", "flow_matching"]  # registry order, the earlier row kept
    assert wgan_row in table  # as its own run wrote it (1 epoch), not restated
    assert any(line.startswith("| flow_matching | 2 (") for line in table)
    translation = (root / "results" / "plan2_digits_ae_basic-to-pca.md").read_text()
    assert translation.count("| cyclegan | 1 (") == 1


def test_a_checkpoint_of_another_kind_where_the_encoder_should_be_is_named(tmp_path):
    """The evaluator CNN's checkpoint saved as the VAE's: the note says what the file lacks (the
    record of an encoder), not an 'embedding size None'."""
    from evaluation.evaluator_cnn import EvaluatorCNN
    from models.decoding import autoencoder_decoder

    path = tmp_path / "digits_vae.pt"
    save_checkpoint(path, {"model": EvaluatorCNN(10).state_dict(), "settings": {"epochs": 4},
                           "epoch": 4, "dataset": "digits"})
    data = load_dataset("digits")
    decode, why = autoencoder_decoder(path, "vae", np.zeros((450, 32), np.float32),
                                      data.x_test, 100, "python encoder_models.py --models vae")
    assert decode is None and "None" not in why
    assert why.startswith("holds no record of its model") and "encoder_models.py" in why
