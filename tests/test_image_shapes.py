"""Every image network is built from the data's (C, H, W) through the same battery at 28x28 grey,
32x32 colour and 64x64 colour: the shapes it takes and makes, one optimiser step changes its
weights, save and load give identical outputs, and (for the families with a record) the
checkpoint alone rebuilds it. 28x28 grey given explicitly builds what the default builds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dataio.artifacts import save_checkpoint
from dataio.data_sources import ImageDataset
from dataio.image_layout import GREY_28, stored_shape
from evaluation.evaluator_cnn import EvaluatorCNN, train_evaluator
from models import encoders, image_gans
from models.image_gans import ImageGANConfig
from training.gans import GANTrainer, TrainerSettings

SHAPES = [GREY_28, (3, 32, 32), (3, 64, 64)]
IDS = ["1x28x28", "3x32x32", "3x64x64"]


def pixels(shape: tuple[int, int, int], n: int = 6, seed: int = 0) -> torch.Tensor:
    """uint8 images in the stored layout of ``shape``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *stored_shape(shape)), generator=generator,
                         dtype=torch.uint8)


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    return [name for name, value in model.state_dict().items()
            if value.is_floating_point() and not torch.equal(before[name], value)]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


# ---------------------------------------------------------------- encoders
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("name", encoders.ENCODER_NAMES)
def test_an_encoder_takes_the_shape_learns_and_is_rebuilt_from_its_checkpoint(name, shape,
                                                                              tmp_path):
    torch.manual_seed(0)
    config = encoders.EncoderConfig(embedding_dim=8)
    model = encoders.build_encoder(name, config, shape)
    x = encoders.to_unit(pixels(shape))
    assert x.shape == (6, *shape)
    model.train()
    assert model.embed(x).shape == (6, 8)
    if hasattr(model, "reconstruct"):
        assert model.reconstruct(x).shape == x.shape
    before = snapshot(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model.training_loss(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.isfinite(loss)
    loss.backward()
    optimiser.step()
    assert changed(before, model)
    record = encoders.architecture(name, config, shape)
    assert ("image_shape" in record) == (shape != GREY_28)
    save_checkpoint(tmp_path / "e.pt", {"model": model.state_dict(), "architecture": record})
    rebuilt = encoders.from_checkpoint(tmp_path / "e.pt")
    np.testing.assert_array_equal(encoders.embed_all(rebuilt, pixels(shape, seed=1)),
                                  encoders.embed_all(model, pixels(shape, seed=1)))
    if hasattr(model, "decoder"):
        decoded = encoders.decode_images(rebuilt, np.zeros((3, 8), np.float32))
        assert decoded.shape == (3, *stored_shape(shape)) and decoded.dtype == np.uint8


# ---------------------------------------------------------------- image GANs
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("name", image_gans.GAN_NAMES)
def test_an_image_gan_takes_the_shape_learns_and_is_rebuilt_from_its_checkpoint(name, shape,
                                                                                tmp_path):
    torch.manual_seed(0)
    config = ImageGANConfig(noise_dim=8, width=8, feature_dim=16, info_categories=3)
    model = image_gans.build_image_gan(name, 3, 3, config, shape)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    conditions = image_gans.class_condition(labels, 3)
    noise = model.sample_noise(6, torch.Generator().manual_seed(0))
    assert model.sample(conditions, noise).shape == (6, *shape)
    trainer = GANTrainer(model, TrainerSettings(n_critic=1, ema_decay=0.0))
    before = snapshot(model)
    batch = {"x": image_gans.to_signed(pixels(shape)), "condition": conditions, "label": labels}
    trainer.train_epoch([batch], total=1)
    moved = changed(before, model)
    assert any(n.startswith("generator.") for n in moved)
    assert any(n.startswith("discriminator.") for n in moved)
    record = image_gans.architecture(name, 3, 3, config, shape)
    save_checkpoint(tmp_path / "g.pt", {**trainer.state_dict(), "architecture": record})
    rebuilt = image_gans.from_checkpoint(tmp_path / "g.pt")
    drawn = image_gans.regenerate(rebuilt, conditions, seed=3)
    assert drawn.shape == (6, *stored_shape(shape)) and drawn.dtype == np.uint8
    np.testing.assert_array_equal(drawn, image_gans.regenerate(
        rebuilt, conditions, seed=3))
    assert image_gans.regenerate(rebuilt, conditions[:0], seed=3).shape == (
        0, *stored_shape(shape))


# ---------------------------------------------------------------- the evaluator CNN
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_the_evaluator_takes_the_shape_learns_and_is_loaded_back(shape, tmp_path):
    x_train, x_test = pixels(shape, 40).numpy(), pixels(shape, 10, seed=1).numpy()
    data = ImageDataset("shapes", x_train, np.arange(40) % 2, x_test, np.arange(10) % 2,
                        ["a", "b"], "test")
    torch.manual_seed(0)
    initial = EvaluatorCNN(2, image_shape=shape)
    trained = train_evaluator(data, tmp_path / "ev.pt", torch.device("cpu"), epochs=1,
                              batch_size=20, learning_rate=1e-2, seed=0)
    assert changed(initial.state_dict(), trained.model)
    loaded = train_evaluator(data, tmp_path / "ev.pt", torch.device("cpu"), epochs=1,
                             batch_size=20, learning_rate=1e-2, seed=0)  # finished: loads
    images = torch.from_numpy(x_test).float()
    from evaluation.evaluator_cnn import to_unit

    with torch.no_grad():
        logits = trained.model.eval()(to_unit(images))
        assert logits.shape == (10, 2)
        torch.testing.assert_close(loaded.model.eval()(to_unit(images)), logits, rtol=0,
                                   atol=0)


# ---------------------------------------------------------------- the small CLIP
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_the_small_clip_takes_the_shape_learns_and_is_loaded_back(shape, tmp_path):
    from transformers import CLIPModel

    import train_small_clip

    settings = train_small_clip.ClipSettings(
        dataset="shapes", data_dir="", output_dir="", epochs=1, batch_size=4,
        learning_rate=1e-3, weight_decay=0.0, limit=0, seed=0, deterministic=True, tag="",
        hidden_size=16, vision_layers=1, text_layers=1, heads=2,
        patch_size=train_small_clip.patch_size_for(shape[1], 0), projection_dim=8,
        vocab_size=400, eval_batch_size=4)
    torch.manual_seed(0)
    model = train_small_clip.build_clip(50, 0, 1, settings, shape[1])
    images = pixels(shape, 4)
    mean, std = train_small_clip.pixel_statistics(images.numpy())
    assert train_small_clip.pixel_values(images, mean, std).shape == (4, 3, *shape[1:])
    tokens = {"input_ids": torch.tensor([[0, 5, 1], [0, 6, 1]]),
              "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    before = snapshot(model)
    loss = train_small_clip.contrastive_step_loss(model, images, torch.tensor([0, 1, 0, 1]),
                                                  tokens, mean, std)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(n.startswith("vision_model.") for n in changed(before, model))
    model.save_pretrained(tmp_path / "clip")
    loaded = CLIPModel.from_pretrained(tmp_path / "clip").eval()
    with torch.no_grad():
        torch.testing.assert_close(train_small_clip.image_features(loaded, images, mean, std),
                                   train_small_clip.image_features(model.eval(), images, mean,
                                                                   std))


# ---------------------------------------------------------------- 28x28 grey as before
def test_28x28_grey_given_builds_the_default_networks():
    def built(make):
        torch.manual_seed(0)
        return make().state_dict()

    pairs = [(lambda n=n: encoders.build_encoder(n, encoders.EncoderConfig()),
              lambda n=n: encoders.build_encoder(n, encoders.EncoderConfig(), GREY_28))
             for n in encoders.ENCODER_NAMES]
    pairs += [(lambda n=n: image_gans.build_image_gan(n, 10, 10, ImageGANConfig()),
               lambda n=n: image_gans.build_image_gan(n, 10, 10, ImageGANConfig(), GREY_28))
              for n in image_gans.GAN_NAMES]
    pairs += [(lambda: EvaluatorCNN(10), lambda: EvaluatorCNN(10, image_shape=GREY_28))]
    for default, explicit in pairs:
        a, b = built(default), built(explicit)
        assert list(a) == list(b)
        for key in a:
            assert torch.equal(a[key], b[key]), key
    # The layer sizes the 28x28 networks always had: 784 pixels into the MLP autoencoder, 64
    # channels at 7x7 into the conv encoders' code.
    def first_linear_inputs(name: str, prefix: str) -> int:
        state = encoders.build_encoder(name, encoders.EncoderConfig()).state_dict()
        return next(v for k, v in state.items() if k.startswith(prefix) and v.ndim == 2).shape[1]

    assert first_linear_inputs("ae_basic", "encoder.") == 784
    assert first_linear_inputs("ntxent", "backbone.") == 64 * 7 * 7
    assert copy.deepcopy(EvaluatorCNN(10)).embed[2].in_features == 32 * 7 * 7
