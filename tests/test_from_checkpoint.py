"""Every model family rebuilds a trained model from its checkpoint alone (``from_checkpoint``),
including checkpoints written before they stored their architecture, and refuses another
family's checkpoint or an old one it cannot rebuild in one line that says what to do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import encoder_models
from dataio.artifacts import load_checkpoint, load_embeddings, save_checkpoint
from dataio.data_sources import load_dataset
from models import encoders, image_gans, vector_gans
from runtime.stage import StageError
from training.gans import GANTrainer, LoopSettings


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """One epoch of ae_basic and ntxent on 256 digits, as a user runs the stage."""
    folder = tmp_path_factory.mktemp("encoders")
    torch.set_num_threads(1)
    encoder_models.main(["--dataset", "digits", "--models", "ae_basic,ntxent", "--epochs", "1",
                         "--limit", "256", "--data-dir", str(folder)])
    return folder


@pytest.mark.parametrize("name", ["ae_basic", "ntxent"])
def test_an_encoder_is_rebuilt_from_its_checkpoint_new_and_old(encoder_run, tmp_path, name):
    checkpoint = encoder_run / "checkpoints" / "encoders" / f"digits_{name}.pt"
    embeddings = load_embeddings(encoder_run / "embeddings" / f"digits_{name}.npz")
    images = torch.from_numpy(load_dataset("digits").x_test)
    model = encoders.from_checkpoint(checkpoint)
    assert not model.training
    np.testing.assert_array_equal(encoders.embed_all(model, images), embeddings["z_test"])
    state = load_checkpoint(checkpoint)
    assert state["architecture"]["name"] == name
    old = tmp_path / "old.pt"  # as written before checkpoints stored their architecture
    save_checkpoint(old, {k: v for k, v in state.items() if k != "architecture"})
    np.testing.assert_array_equal(encoders.embed_all(encoders.from_checkpoint(old), images),
                                  embeddings["z_test"])


def test_a_family_refuses_another_familys_checkpoint(encoder_run):
    checkpoint = encoder_run / "checkpoints" / "encoders" / "digits_ae_basic.pt"
    with pytest.raises(StageError, match="holds a encoders 'ae_basic' model, not one of the "
                                         "image GANs"):
        image_gans.from_checkpoint(checkpoint)
    with pytest.raises(StageError, match="not one of the vector GANs"):
        vector_gans.from_checkpoint(checkpoint)


def test_an_old_vector_gan_checkpoint_is_refused_with_what_to_do(tmp_path):
    """Plan 2's checkpoints did not hold the vector sizes; one written before the architecture
    record is refused, naming the stage run that adds the record without training."""
    sizes, config = vector_gans.Sizes(4, 3), vector_gans.VectorGANConfig(hidden=8, depth=1)
    torch.manual_seed(0)
    model = vector_gans.build_vector_gan("wgan_gp", sizes, config)
    state = GANTrainer(model, LoopSettings()).state_dict()
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in state.items() if k != "architecture"})
    with pytest.raises(StageError) as error:
        vector_gans.from_checkpoint(tmp_path / "old.pt")
    message = str(error.value)
    assert "\n" not in message and "old.pt" in message
    assert "run plan2_gan_training.py once more with the flags that made it" in message
    record = vector_gans.architecture("wgan_gp", sizes, config)
    save_checkpoint(tmp_path / "new.pt", {**state, "architecture": record})
    rebuilt = vector_gans.from_checkpoint(tmp_path / "new.pt")
    noise = torch.randn(5, config.noise_dim)
    labels = torch.nn.functional.one_hot(torch.arange(5) % 3, 3).float()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.sample(labels, noise),
                                   model.eval().sample(labels, noise))
