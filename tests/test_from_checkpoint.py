"""Every model family rebuilds a trained model from its checkpoint alone (``from_checkpoint``),
and refuses another family's checkpoint, or one without the record of its model, in one line
that names the command that remakes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import encoder_models
from dataio.artifacts import load_checkpoint, load_embeddings, save_checkpoint
from dataio.data_sources import load_dataset
from models import encoders, image_gans, vector_gans
from runtime.stage import StageError
from training.gans import GANTrainer, TrainerSettings


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """One epoch of ae_basic and ntxent on 256 digits, as a user runs the stage."""
    folder = tmp_path_factory.mktemp("encoders")
    torch.set_num_threads(1)
    encoder_models.main(["--dataset", "digits", "--models", "ae_basic,ntxent", "--epochs", "1",
                         "--limit", "256", "--data-dir", str(folder)])
    return folder


@pytest.mark.parametrize("name", ["ae_basic", "ntxent"])
def test_an_encoder_is_rebuilt_from_its_checkpoint(encoder_run, tmp_path, name):
    checkpoint = encoder_run / "checkpoints" / "encoders" / f"digits_{name}.pt"
    embeddings = load_embeddings(encoder_run / "embeddings" / f"digits_{name}.npz")
    images = torch.from_numpy(load_dataset("digits").x_test)
    model = encoders.from_checkpoint(checkpoint)
    assert not model.training
    np.testing.assert_array_equal(encoders.embed_all(model, images), embeddings["z_test"])
    state = load_checkpoint(checkpoint)
    assert state["architecture"]["name"] == name
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, {k: v for k, v in state.items() if k != "architecture"})
    with pytest.raises(StageError, match="bare.pt: holds no record of its model .*; remake it "
                                         "with: python encoder_models.py"):
        encoders.from_checkpoint(bare)


def test_a_family_refuses_another_familys_checkpoint(encoder_run):
    checkpoint = encoder_run / "checkpoints" / "encoders" / "digits_ae_basic.pt"
    with pytest.raises(StageError, match="holds a encoders 'ae_basic' model, not one of the "
                                         "image GANs"):
        image_gans.from_checkpoint(checkpoint)
    with pytest.raises(StageError, match="not one of the vector GANs"):
        vector_gans.from_checkpoint(checkpoint)


def test_a_vector_gan_is_rebuilt_and_one_without_its_record_refused(tmp_path):
    """Plan 2's model sizes live only in the record: with it the model samples as the trained
    one did; without it the checkpoint is refused, naming the stage that remakes it."""
    sizes, config = vector_gans.Sizes(4, 3), vector_gans.VectorGANConfig(hidden=8, depth=1)
    torch.manual_seed(0)
    model = vector_gans.build_vector_gan("wgan_gp", sizes, config)
    state = GANTrainer(model, TrainerSettings()).state_dict()
    save_checkpoint(tmp_path / "bare.pt", state)
    with pytest.raises(StageError) as error:
        vector_gans.from_checkpoint(tmp_path / "bare.pt")
    message = str(error.value)
    assert "\n" not in message and "bare.pt" in message
    assert message.endswith("remake it with: python plan2_gan_training.py")
    record = vector_gans.architecture("wgan_gp", sizes, config)
    save_checkpoint(tmp_path / "new.pt", {**state, "architecture": record})
    rebuilt = vector_gans.from_checkpoint(tmp_path / "new.pt")
    noise = torch.randn(5, config.noise_dim)
    labels = torch.nn.functional.one_hot(torch.arange(5) % 3, 3).float()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.sample(labels, noise),
                                   model.eval().sample(labels, noise))


@pytest.mark.parametrize("family", ["vector", "image"])
def test_a_rebuilt_gan_holds_its_trained_discriminator_not_the_emas(tmp_path, family):
    """The EMA copy of a GAN averages only the generator: its discriminator keeps its initial
    weights. ``from_checkpoint`` gives the trained discriminator beside the best epoch's EMA
    generator, never the untrained one under the name of a trained model."""
    torch.manual_seed(0)
    if family == "vector":
        sizes, config = vector_gans.Sizes(4, 3), vector_gans.VectorGANConfig(hidden=8, depth=1)
        model = vector_gans.build_vector_gan("wgan_gp", sizes, config)
        record = vector_gans.architecture("wgan_gp", sizes, config)
        batch = {"x": torch.randn(16, 4), "label": torch.arange(16) % 3,
                 "groups": torch.from_numpy(vector_gans.class_groups(np.arange(16) % 3))}
        rebuild = vector_gans.from_checkpoint
    else:
        config = image_gans.ImageGANConfig(width=4, feature_dim=8, noise_dim=4)
        model = image_gans.build_image_gan("cgan", 6, 3, config)
        record = image_gans.architecture("cgan", 6, 3, config)
        batch = {"x": torch.rand(8, 1, 28, 28) * 2 - 1, "condition": torch.randn(8, 6),
                 "label": torch.arange(8) % 3}
        rebuild = image_gans.from_checkpoint
    trainer = GANTrainer(model, TrainerSettings(n_critic=1, lr_discriminator=1e-2), record)
    trainer.fit(lambda epoch: [batch, batch], 2, tmp_path / "c.pt", {})
    rebuilt = rebuild(tmp_path / "c.pt")
    trained, initial = model.discriminator.state_dict(), trainer.ema.discriminator.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)
    for key, value in rebuilt.discriminator.state_dict().items():
        torch.testing.assert_close(value, trained[key])
    for key, value in rebuilt.generator.state_dict().items():
        torch.testing.assert_close(value, trainer.best_model().generator.state_dict()[key])
