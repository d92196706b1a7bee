"""The feature spaces' real loading and feature code, offline, on tiny random DINOv2 and CLIP
models saved with save_pretrained; the Inception path's one-line errors without its weights."""

from __future__ import annotations

import sys
import types
import urllib.error

import numpy as np
import pytest
import torch

from dataio.data_sources import load_dataset
from evaluation import feature_spaces
from evaluation.feature_spaces import FeatureSpaceSettings
from runtime.stage import StageError


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_dataset("digits").x_test[:12]


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, image_size=28, patch_size=7)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                      image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
             "num_hidden_layers": 1}
    config = CLIPConfig(text_config={**tower, "vocab_size": 50},
                        vision_config={**tower, "image_size": 28, "patch_size": 7},
                        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 28},
                       crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def test_dinov2_features_are_the_cls_token_of_the_saved_model(tiny_dinov2, images):
    from transformers import AutoImageProcessor, Dinov2Model

    space = feature_spaces.feature_space(FeatureSpaceSettings("dinov2", str(tiny_dinov2), 5),
                                         None, "cpu")
    got = space.features(images, "cpu")
    model = Dinov2Model.from_pretrained(tiny_dinov2).eval()
    pixels = AutoImageProcessor.from_pretrained(tiny_dinov2)(
        images=[np.stack([x] * 3, -1) for x in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).pooler_output.double().numpy()
    assert got.shape == (12, 16) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert str(tiny_dinov2) in space.title and space.name == "dinov2"


def test_clip_features_are_the_projected_image_embeddings(tiny_clip, images):
    from transformers import CLIPModel

    space = feature_spaces.feature_space(FeatureSpaceSettings("clip", str(tiny_clip), 4), None,
                                         "cpu")
    got = space.features(images, "cpu")
    assert got.shape == (12, 8)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    pixels = space.processor(images=[np.stack([x] * 3, -1) for x in images[:3]],
                             return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = model.get_image_features(pixel_values=pixels)
    output = output if isinstance(output, torch.Tensor) else output.pooler_output
    np.testing.assert_allclose(got[:3], output.double().numpy(), rtol=1e-5, atol=1e-6)


def test_a_model_that_cannot_be_loaded_or_is_of_another_kind_is_one_line(tiny_clip, tmp_path):
    with pytest.raises(StageError, match="cannot load a dinov2 model") as error:
        feature_spaces.feature_space(FeatureSpaceSettings("dinov2", str(tmp_path / "none")),
                                     None, "cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(StageError, match="holds a CLIPModel, not a dinov2 model"):
        feature_spaces.feature_space(FeatureSpaceSettings("dinov2", str(tiny_clip)), None, "cpu")


def test_inception_needs_torch_fidelity_and_says_where_its_weights_go(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # not installed
    with pytest.raises(StageError, match="needs torch-fidelity"):
        feature_spaces.feature_space(FeatureSpaceSettings("inception"), None, "cpu")
    stub = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    stub.URL_INCEPTION_V3 = "https://example.org/weights-inception-2015-12-05-6726825d.pth"
    stub.FeatureExtractorInceptionV3 = object
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", stub)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, path, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(StageError) as error:
        feature_spaces.feature_space(FeatureSpaceSettings("inception"), None, "cpu")
    where = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert f"the Inception weights are not at {where}" in str(error.value)
    assert "\n" not in str(error.value)


def test_evaluate_names_its_feature_space_and_reports_the_new_metrics(tiny_dinov2, tmp_path):
    """evaluate.py on one Plan 1 file (test images shifted by a pixel), in the evaluator's space
    and in a tiny DINOv2's: every table and file names the space, and the metrics of the
    metrics issue are there with their intervals and floors."""
    import csv
    import json

    import evaluate
    from dataio.artifacts import make_meta, save_npz

    data = load_dataset("digits")
    folder = tmp_path / "data" / "samples" / "plan1"
    save_npz(folder / "digits_vae_cgan.npz",
             {"x_gen": np.roll(data.x_test, 1, axis=2), "idx_src": np.arange(len(data.x_test)),
              "y_src": data.y_test}, make_meta("test", {}, "digits", 0))
    results = tmp_path / "data" / "results"
    runs = {}
    for space in ("evaluator", "dinov2"):
        evaluate.main(["--data-dir", str(tmp_path / "data"), "--stages", "plan1", "--bootstrap",
                       "3", "--kid-subsets", "5", "--kid-subset-size", "100",
                       "--feature-space", space, "--feature-model",
                       str(tiny_dinov2) if space == "dinov2" else "", "--no-plots"])
        runs[space] = (json.loads((results / "metrics.json").read_text()),
                       (results / "summary.md").read_text(),
                       list(csv.reader((results / "metrics.csv").open())))
    for space, (document, summary, rows) in runs.items():
        values = document["plan1"]["digits"]["vae_cgan"]
        assert values["feature_space"] == space
        title = "evaluator CNN" if space == "evaluator" else f"dinov2 ({tiny_dinov2})"
        assert f"FID, {title} features (floor: train vs test)" in summary
        for key in ("fid", "kid", "precision", "recall", "density", "coverage", "vendi",
                    "intra_fid", "cas", "class_consistency", "score"):
            assert np.isfinite(values[key]), key
        for key in ("fid", "precision", "recall", "vendi", "intra_fid", "cas", "score"):
            low, high = values[f"{key}_ci95"]
            assert low <= values[key] <= high, key
        assert {"kid_std", "kid_floor", "vendi_real", "intra_fid_floor", "cas_real"} <= set(values)
        names = {row[3] for row in rows}
        assert {"kid", "vendi", "cas", "fid_ci95_low", "fid_ci95_high"} <= names
    # The spaces give different distribution metrics; the classifier's own metrics agree.
    evaluator_values = runs["evaluator"][0]["plan1"]["digits"]["vae_cgan"]
    dinov2_values = runs["dinov2"][0]["plan1"]["digits"]["vae_cgan"]
    assert evaluator_values["fid"] != dinov2_values["fid"]
    for key in ("score", "class_consistency", "cas"):
        assert evaluator_values[key] == dinov2_values[key]
