"""Feature spaces for image metrics: the evaluator CNN (offline default), Inception-v3 (through
torch-fidelity, the space of published FIDs), DINOv2 and CLIP (through transformers; dgm-eval,
Stein et al. 2023, recommends DINOv2 ViT-L/14 for final numbers).

A space turns uint8 images, (N, H, W) grey or (N, H, W, 3) colour, into features (N, D) as
float64 (the pretrained networks take colour as it is and grey repeated to three channels).
Numbers computed in different spaces are different metrics: every table names the space its
columns were computed in, and a space is chosen once per run (``--feature-space``).
"""

from __future__ import annotations

import abc
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.evaluator_cnn import check_images, evaluator_outputs
from runtime.stage import StageError

SPACES = ("evaluator", "inception", "dinov2", "clip")
# The models dgm-eval uses for final numbers, loaded by hub name when no model is given.
DEFAULT_MODELS = {"dinov2": "facebook/dinov2-large", "clip": "openai/clip-vit-large-patch14"}
# torch-fidelity's Inception-v3 port of the TensorFlow FID network: its 2048-d pool features.
INCEPTION_FEATURES = "2048"


@dataclass(frozen=True)
class FeatureSpaceSettings:
    """Which space image features are taken in, and how."""

    name: str = "evaluator"  # one of SPACES
    model: str = ""  # dinov2 / clip: a hub name or a local directory ('': DEFAULT_MODELS)
    batch_size: int = 100  # images per forward pass of an inception / dinov2 / clip model


class FeatureSpace(abc.ABC):
    """A named map from images to features; ``title`` is what tables print."""

    name = "evaluator"
    title = "evaluator CNN"

    @abc.abstractmethod
    def features(self, images: np.ndarray, device: Any) -> np.ndarray:
        """Features (N, D) float64 of uint8 images (N, H, W) or (N, H, W, 3)."""


class EvaluatorSpace(FeatureSpace):
    """The penultimate layer of the dataset's evaluator CNN (not comparable across datasets or
    with published numbers; compare with the floors)."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 1000) -> None:
        self.model, self.batch_size = model, batch_size

    def features(self, images: np.ndarray, device: Any) -> np.ndarray:
        return evaluator_outputs(self.model, images, device, self.batch_size)[0]


def to_rgb(images: np.ndarray, source: str) -> np.ndarray:
    """uint8 (N, H, W, 3): colour images as they are, grey ones (N, H, W) with their channel
    three times."""
    checked = check_images(images, source)
    return checked if checked.ndim == 4 else np.repeat(checked[..., None], 3, axis=-1)


class InceptionSpace(FeatureSpace):
    """torch-fidelity's Inception-v3 (``inception-v3-compat``), 2048-d pool features: the space
    of the FIDs papers report (resized to 299 inside the network, as TensorFlow did)."""

    name, title = "inception", "Inception-v3 (torch-fidelity)"

    def __init__(self, device: Any, batch_size: int) -> None:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import (
                URL_INCEPTION_V3,
                FeatureExtractorInceptionV3,
            )
        except ImportError as err:
            raise StageError("--feature-space inception needs torch-fidelity (pip install "
                             "torch-fidelity, with the torchvision build of your torch; see "
                             "the README)") from err
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
        if not path.is_file():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=False)
            except (OSError, urllib.error.URLError) as err:
                raise StageError(f"--feature-space inception: the Inception weights are not at "
                                 f"{path} and could not be downloaded (offline?); put "
                                 f"{Path(URL_INCEPTION_V3).name} from {URL_INCEPTION_V3} "
                                 f"there") from err
        try:  # tensors only, before torch-fidelity loads the file itself
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise StageError(f"{path}: not a readable weights file ({type(err).__name__}); "
                             f"delete it and run again to download it") from err
        self.model = FeatureExtractorInceptionV3(
            "inception-v3-compat", [INCEPTION_FEATURES],
            feature_extractor_weights_path=str(path)).to(device).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def features(self, images: np.ndarray, device: Any) -> np.ndarray:
        rgb = torch.from_numpy(to_rgb(images, "images")).permute(0, 3, 1, 2)
        parts = [self.model(chunk.to(device))[0].double().cpu().numpy()
                 for chunk in rgb.split(self.batch_size)]
        return np.concatenate(parts)


class TransformersSpace(FeatureSpace):
    """A vision model of transformers and its image processor, by hub name or local directory:
    DINOv2 (the CLS token after the last layer norm, ``pooler_output``) or CLIP (the projected
    image embedding, ``get_image_features``)."""

    def __init__(self, name: str, model: str, device: Any, batch_size: int) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.name, self.batch_size = name, batch_size
        source = model or DEFAULT_MODELS[name]
        self.title = f"{name} ({source})"
        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).to(device).eval()
        except (OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            where = "a local directory" if Path(source).exists() else "a hub name"
            raise StageError(f"--feature-model {source} ({where}): cannot load a {name} model "
                             f"and its image processor ({first}); offline, give a directory "
                             f"written by save_pretrained") from err
        kind = type(self.model).__name__.lower()
        if name not in kind:
            raise StageError(f"--feature-model {source} holds a {type(self.model).__name__}, "
                             f"not a {name} model")

    @torch.no_grad()
    def features(self, images: np.ndarray, device: Any) -> np.ndarray:
        rgb = to_rgb(images, "images")
        parts = []
        for start in range(0, len(rgb), self.batch_size):
            inputs = self.processor(images=list(rgb[start:start + self.batch_size]),
                                    return_tensors="pt")
            pixels = inputs["pixel_values"].to(device)
            if self.name == "clip":
                output = self.model.get_image_features(pixel_values=pixels)
                output = output if isinstance(output, torch.Tensor) else output.pooler_output
            else:
                output = self.model(pixel_values=pixels).pooler_output
            parts.append(output.double().cpu().numpy())
        return np.concatenate(parts)


def feature_space(settings: FeatureSpaceSettings, evaluator: torch.nn.Module, device: Any,
                  evaluator_batch_size: int = 1000) -> FeatureSpace:
    """The space ``settings`` names, loaded once (the evaluator's is the dataset's CNN)."""
    if settings.name == "evaluator":
        return EvaluatorSpace(evaluator, evaluator_batch_size)
    if settings.name == "inception":
        return InceptionSpace(device, settings.batch_size)
    if settings.name in DEFAULT_MODELS:
        return TransformersSpace(settings.name, settings.model, device, settings.batch_size)
    raise StageError(f"--feature-space {settings.name}: one of {', '.join(SPACES)}")
