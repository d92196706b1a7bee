"""From embeddings back to images: through the decoder of the autoencoder that made them, or
through a Plan 1 generator trained on them. Each decoder is checked to belong to the embeddings
before it is handed out, so that images never come from a model trained further or on other data;
a model that cannot be used is returned as a reason, not an error (decoding is optional)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dataio.artifacts import fingerprint, load_checkpoint
from models import encoders, image_gans
from runtime.stage import StageError

Decode = Callable[[np.ndarray], np.ndarray]


def autoencoder_decoder(checkpoint: Path, encoder: str, z_test: np.ndarray, x_test: np.ndarray,
                        batch_size: int, remake: str) -> tuple[Decode | None, str]:
    """decode(z) -> uint8 images with the decoder of the autoencoder in ``checkpoint``, and what
    it is; or (None, why it cannot be used).

    The checkpoint must reproduce the embeddings: the first 64 test images ``x_test`` are
    embedded again and compared with ``z_test``. ``remake`` is the command that writes the
    checkpoint (said when it is broken)."""
    if "+" in encoder:
        return None, "flow-refined embeddings live in the flow's base space, not the decoder's"
    if encoder not in encoders.ENCODER_NAMES:
        return None, f"{encoder!r} is not an encoder of encoder_models.py"
    if not checkpoint.is_file():
        return None, f"{checkpoint} not found"
    state = load_checkpoint(checkpoint, required=("model",), advice=f"remake it with: {remake}")
    try:  # first what the file holds: an encoder at all, then its size
        model = encoders.from_checkpoint(checkpoint, state=state)
    except StageError as err:
        return None, str(err).removeprefix(f"{checkpoint}: ")
    size = state["architecture"]["config"].get("embedding_dim")
    if size != z_test.shape[1]:
        return None, f"{checkpoint} has embedding size {size}, the embeddings {z_test.shape[1]}"
    if model.kind != "autoencoder":
        return None, f"{encoder} has no decoder"
    check = encoders.embed_all(model, torch.from_numpy(x_test[:64]))
    gap = float(np.abs(check - z_test[:64]).max())
    if gap > 1e-3 * (1.0 + float(np.abs(z_test[:64]).max())):
        return None, (f"{checkpoint} does not reproduce the test embeddings (largest difference "
                      f"{gap:.3g}): trained further since the embeddings were written?")

    def decode(z: np.ndarray) -> np.ndarray:
        return encoders.decode_images(model, z, batch_size)

    return decode, f"decoder of {checkpoint}"


def plan1_decoders(checkpoints: list[Path], prefix: str, source: str, z_train: np.ndarray,
                   z_test: np.ndarray, device: torch.device, seed: int,
                   remake: Callable[[str], str], tag: str = ""
                   ) -> tuple[dict[str, Decode], list[str]]:
    """decode(z) -> uint8 images through each Plan 1 generator among ``checkpoints`` (files
    named ``<prefix><gan>.pt``, or ``<prefix><gan>@<tag>.pt`` for a ``tag``; other tags are
    not theirs) trained on exactly these embeddings (the fingerprint of the
    training embeddings it used and of ``z_test``), keyed by GAN name, and notes on those that
    cannot be used. ``source`` names the embedding file (for the notes); ``remake(gan)`` is the
    command that writes a GAN's checkpoint."""
    decoders, notes = {}, []
    for path in checkpoints:
        gan, _, file_tag = path.stem.removeprefix(prefix).partition("@")
        if gan not in image_gans.GAN_NAMES or file_tag != tag:
            continue
        try:
            state = load_checkpoint(path, advice=f"remake it with: {remake(gan)}")
            saved = state.get("settings", {})
            n_train = saved.get("train_images")
            if not isinstance(n_train, int) or saved.get("embeddings") != fingerprint(
                    z_train[:n_train], z_test):
                notes.append(f"{path}: trained on other embeddings than {source}")
                continue
            model = image_gans.from_checkpoint(path, device, state=state)
        except StageError as err:
            notes.append(str(err))
            continue

        def decode(z: np.ndarray, model: image_gans.ConditionalGAN = model) -> np.ndarray:
            return image_gans.regenerate(model, torch.from_numpy(z).to(device), seed)

        decoders[gan] = decode
    return decoders, notes
