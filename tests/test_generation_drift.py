"""Generation drift: extract_generation_embeddings.py and plot_generation_clusters.py, offline.

A tiny CLIP (random weights, a character-level BPE vocabulary) is saved with save_pretrained into a
temp dir, beside a temp COCO layout: an annotation JSON and three generation folders of small
PNG/JPEG files named by COCO id, one corrupt file and one image whose id has no caption. The
stages run in-process through runpy with their settings passed as command-line flags.
"""

from __future__ import annotations

import json
import runpy
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics.pairwise import cosine_distances
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from dataio.artifacts import make_meta, save_npz
from evaluation.generation_metrics import (
    centre_distance,
    frechet,
    l2_normalise,
    mean_cosine,
    mean_pairwise_cosine_distance,
    modality_gap,
    split_half_frechet,
    total_variance,
)

ROOT = Path(__file__).resolve().parents[1]
EXTRACT = ROOT / "extract_generation_embeddings.py"
PLOT = ROOT / "plot_generation_clusters.py"
# image id -> captions as (annotation id, text); id 9's first caption by annotation id comes last.
CAPTIONS = {
    9: [(700, "a bowl of broccoli and rice"), (12, "a plate with green vegetables")],
    25: [(30, "a giraffe eating leaves from a tree")],
    30: [(41, "a red bus parked on a street")],
    34: [(55, "two zebras standing in the grass")],
    36: [(60, "a woman holding an umbrella in the rain")],
    42: [(71, "a cat sleeping on a laptop"), (72, "a kitten on a keyboard")],
    49: [(90, "a man riding a horse on the beach")],
}
COCO_NAME = "COCO_train2014_{:012d}.{}"


def run_script(script: Path, *flags: str) -> None:
    """Run a stage as `python script flags...` would, in this process."""
    saved = sys.argv
    sys.argv = [str(script), *flags]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved


def write_image(path: Path, seed: int) -> None:
    """A small distinct picture: a colour field with a bright square at a seeded place."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((40, 48, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    top, left = rng.integers(0, 20, 2)
    pixels[top:top + 20, left:left + 20] = 255 - pixels[0, 0]
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP with 2-layer 32-wide towers, a 32-pixel input and a character vocabulary, on disk."""
    directory = tmp_path_factory.mktemp("tiny_clip")
    symbols = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32},
                                         crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": len(vocab), "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Annotations and three generation folders; gen 1 has a corrupt file, gen 2 an id (777)
    without a caption, gen 0 a text file that is not an image."""
    root = tmp_path_factory.mktemp("coco")
    annotations = [{"id": ann_id, "image_id": image_id, "caption": text}
                   for image_id, entries in CAPTIONS.items() for ann_id, text in entries]
    (root / "annotations").mkdir()
    (root / "annotations" / "captions.json").write_text(json.dumps({
        "images": [{"id": i} for i in CAPTIONS], "annotations": annotations[::-1]}))
    for generation in range(3):
        folder = root / f"gen_{generation}"
        folder.mkdir()
        for number, image_id in enumerate([9, 25, 30, 34, 36, 42, 49]):
            suffix = "jpg" if number % 2 else "png"
            write_image(folder / COCO_NAME.format(image_id, suffix), 100 * generation + image_id)
    (root / "gen_0" / "notes.txt").write_text("not an image")
    (root / "gen_1" / COCO_NAME.format(49, "png")).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_image(root / "gen_2" / COCO_NAME.format(777, "png"), 777)
    return root


def extract_flags(tiny_clip: Path, coco: Path, output: Path, *extra: str) -> list[str]:
    return ["--annotation-file", str(coco / "annotations" / "captions.json"),
            "--generation-dir-pattern", str(coco / "gen_{g}"), "--generations", "0,1,2",
            "--model", str(tiny_clip), "--num-captions", "10", "--batch-size", "3",
            "--workers", "1", "--device", "cpu", "--output-dir", str(output), *extra]


@pytest.fixture(scope="module")
def extracted(tiny_clip: Path, coco: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, str]:
    """The extraction stage run once over the three folders; its output dir and stdout."""
    output = tmp_path_factory.mktemp("embeddings")
    printed = StringIO()
    with redirect_stdout(printed):
        run_script(EXTRACT, *extract_flags(tiny_clip, coco, output))
    return output, printed.getvalue()


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def test_captions_first_by_annotation_id_in_ascending_id_order(extracted: tuple[Path, str]
                                                               ) -> None:
    data = load(extracted[0] / "coco_caption_embeddings.npz")
    assert data["image_ids"].tolist() == [9, 25, 30, 34, 36, 42, 49]
    assert data["captions"].dtype.kind == "U"
    assert data["captions"][0] == "a plate with green vegetables"
    assert data["captions"][5] == "a cat sleeping on a laptop"
    assert json.loads(str(data["meta"]))["n_captions"] == 7
    # Distinct captions, distinct embeddings: the tokenizer saw the words, not unknown tokens.
    similarities = data["text_embeddings"] @ data["text_embeddings"].T
    assert similarities[np.triu_indices(7, 1)].max() < 0.99


def test_images_paired_by_id_and_embeddings_match_clip_forward(
        extracted: tuple[Path, str], tiny_clip: Path, coco: Path) -> None:
    output, _ = extracted
    captions = load(output / "coco_caption_embeddings.npz")
    generation = load(output / "gen_0_embeddings.npz")
    assert generation["image_ids"].tolist() == [9, 25, 30, 34, 36, 42, 49]
    for key in ("image_embeddings", "text_embeddings"):
        assert generation[key].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(generation[key], axis=1), 1.0, atol=1e-5)
    for row, image_id in enumerate(generation["image_ids"]):
        assert generation["image_files"][row] in (COCO_NAME.format(image_id, "png"),
                                                  COCO_NAME.format(image_id, "jpg"))
        caption_row = captions["image_ids"].tolist().index(image_id)
        assert generation["captions"][row] == captions["captions"][caption_row]
        np.testing.assert_array_equal(generation["text_embeddings"][row],
                                      captions["text_embeddings"][caption_row])
    # Independent reference: CLIPModel.forward normalises image_embeds and text_embeds itself.
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    row = generation["image_ids"].tolist().index(34)
    image = Image.open(coco / "gen_0" / str(generation["image_files"][row])).convert("RGB")
    inputs = processor(text=["two zebras standing in the grass"], images=image,
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**inputs)
    # The fast preprocessing (the default) agrees with the processor's pixels up to rounding.
    assert float(generation["image_embeddings"][row] @ reference.image_embeds[0].numpy()) > 0.9999
    np.testing.assert_allclose(generation["text_embeddings"][row],
                               reference.text_embeds[0].numpy(), atol=1e-5)
    # Different pictures give different embeddings (the pairing is not the identity by accident).
    assert not np.allclose(generation["image_embeddings"][0], generation["image_embeddings"][1])


def test_processor_preprocessing_equals_clip_forward(tiny_clip: Path, coco: Path,
                                                     tmp_path: Path) -> None:
    run_script(EXTRACT, *extract_flags(tiny_clip, coco, tmp_path, "--generations", "0",
                                       "--preprocessing", "processor", "--workers", "0"))
    generation = load(tmp_path / "gen_0_embeddings.npz")
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    images = [Image.open(coco / "gen_0" / str(name)).convert("RGB")
              for name in generation["image_files"]]
    with torch.no_grad():
        reference = model(**processor(text=list(generation["captions"]), images=images,
                                      return_tensors="pt", padding=True))
    np.testing.assert_allclose(generation["image_embeddings"], reference.image_embeds.numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(generation["text_embeddings"], reference.text_embeds.numpy(),
                               atol=1e-5)


def test_corrupt_image_reported_skipped_and_counted(extracted: tuple[Path, str]) -> None:
    output, printed = extracted
    generation = load(output / "gen_1_embeddings.npz")
    meta = json.loads(str(generation["meta"]))
    broken = COCO_NAME.format(49, "png")
    assert broken in printed
    assert 49 not in generation["image_ids"].tolist()
    assert meta["n_unreadable"] == 1 and meta["unreadable_files"][0]["file"] == broken
    assert meta["n_embedded"] == 6 == len(generation["image_embeddings"])
    assert meta["n_image_files"] == 7


def test_image_without_caption_reported_and_skipped(extracted: tuple[Path, str]) -> None:
    output, printed = extracted
    generation = load(output / "gen_2_embeddings.npz")
    meta = json.loads(str(generation["meta"]))
    assert 777 not in generation["image_ids"].tolist()
    assert meta["n_no_caption"] == 1 and meta["no_caption_files"] == [COCO_NAME.format(777, "png")]
    assert meta["n_embedded"] == 7 and meta["n_unreadable"] == 0
    assert COCO_NAME.format(777, "png") in printed
    assert json.loads(str(load(output / "gen_0_embeddings.npz")["meta"]))[
        "n_other_files_ignored"] == 1


def test_fewer_captions_than_ids_skips_the_rest(tiny_clip: Path, coco: Path,
                                                tmp_path: Path) -> None:
    flags = extract_flags(tiny_clip, coco, tmp_path, "--generations", "0", "--num-captions", "3",
                          "--workers", "0")
    run_script(EXTRACT, *flags)
    generation = load(tmp_path / "gen_0_embeddings.npz")
    assert generation["image_ids"].tolist() == [9, 25, 30]
    assert json.loads(str(generation["meta"]))["n_no_caption"] == 4


@pytest.mark.parametrize("change, expected", [
    (("--generations", "0,3"), "gen_3: generation folder not found"),
    (("--annotation-file", "/nonexistent/captions.json"), "/nonexistent/captions.json"),
    (("--model", "/nonexistent/clip"), "/nonexistent/clip: no such directory"),
    (("--pairing", "position"), "carry COCO image ids"),
])
def test_bad_input_rejected_with_the_path(tiny_clip: Path, coco: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture, change: tuple[str, str],
                                          expected: str) -> None:
    with pytest.raises(SystemExit) as exited:
        run_script(EXTRACT, *extract_flags(tiny_clip, coco, tmp_path, *change))
    assert exited.value.code == 1
    assert expected in capsys.readouterr().err
    assert not list(tmp_path.glob("*.npz"))


def test_folder_mixing_named_and_unnamed_files_refused(tiny_clip: Path, coco: Path,
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "gen_0"
    folder.mkdir()
    write_image(folder / COCO_NAME.format(9, "png"), 1)
    write_image(folder / "sample.png", 2)
    with pytest.raises(SystemExit):
        run_script(EXTRACT, *extract_flags(tiny_clip, coco, tmp_path / "out", "--generations",
                                           "0", "--generation-dir-pattern",
                                           str(tmp_path / "gen_{g}")))
    error = capsys.readouterr().err
    assert "some files carry ids and others do not" in error and "sample.png" in error


def test_folder_without_images_rejected(tiny_clip: Path, coco: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "gen_0").mkdir()
    (tmp_path / "gen_0" / "readme.txt").write_text("no pictures here")
    with pytest.raises(SystemExit):
        run_script(EXTRACT, *extract_flags(tiny_clip, coco, tmp_path / "out", "--generations",
                                           "0", "--generation-dir-pattern",
                                           str(tmp_path / "gen_{g}")))
    assert f"no images to embed in {tmp_path / 'gen_0'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_position_pairing_for_folders_without_ids(tiny_clip: Path, coco: Path,
                                                  tmp_path: Path) -> None:
    folder = tmp_path / "gen_0"
    folder.mkdir()
    for number in (1, 2, 10):  # natural order: sample_1, sample_2, sample_10
        write_image(folder / f"sample_{number}.png", number)
    run_script(EXTRACT, *extract_flags(
        tiny_clip, coco, tmp_path / "out", "--generations", "0", "--pairing", "position",
        "--generation-dir-pattern", str(tmp_path / "gen_{g}"), "--workers", "0"))
    generation = load(tmp_path / "out" / "gen_0_embeddings.npz")
    assert generation["image_files"].tolist() == ["sample_1.png", "sample_2.png", "sample_10.png"]
    assert generation["image_ids"].tolist() == [9, 25, 30]


# ---- metrics against synthetic embeddings with known answers ----

def test_centre_movement_and_frechet_of_a_known_shift() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 8))
    shift = np.array([0.3, -0.4, 0, 0, 0, 0, 0, 1.2])
    assert centre_distance(points, points + shift) == pytest.approx(np.linalg.norm(shift))
    # Equal covariances: the Fréchet distance is the squared shift of the mean.
    assert frechet(points, points + shift) == pytest.approx(shift @ shift, rel=1e-6)


def test_total_variance_ratio_of_a_known_scaling() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(300, 6)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    assert total_variance(points) == pytest.approx(np.trace(np.cov(points.T)))
    assert total_variance(0.6 * points + 5.0) / total_variance(points) == pytest.approx(0.36)


def test_mean_cosine_diversity_and_gap_on_constructed_vectors() -> None:
    angles = np.array([0.0, np.pi / 3, np.pi / 2])
    images = np.tile([1.0, 0.0, 0.0], (3, 1))
    texts = np.stack([np.cos(angles), np.sin(angles), np.zeros(3)], axis=1)
    assert mean_cosine(images, texts) == pytest.approx(np.cos(angles).mean())
    rng = np.random.default_rng(2)
    spread = l2_normalise(rng.normal(size=(50, 5)))
    distances = cosine_distances(spread)
    assert mean_pairwise_cosine_distance(spread) == pytest.approx(
        distances[np.triu_indices(50, 1)].mean())
    assert mean_pairwise_cosine_distance(np.eye(4)) == pytest.approx(1.0)
    # float32 unit vectors: 1 - cos is zero up to float32 rounding.
    assert mean_pairwise_cosine_distance(np.tile(spread[:1], (5, 1))) == pytest.approx(0.0,
                                                                                       abs=1e-6)
    assert modality_gap(np.tile([0.0, 1.0], (4, 1)), np.tile([1.0, 0.0], (4, 1))) == \
        pytest.approx(np.sqrt(2.0))


def test_diversity_equals_total_variance_on_the_unit_sphere() -> None:
    points = l2_normalise(np.random.default_rng(5).normal(size=(40, 7)) + 1.5)
    assert mean_pairwise_cosine_distance(points) == pytest.approx(total_variance(points),
                                                                  rel=1e-5)


def test_split_half_frechet_against_its_floor() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(400, 4))
    value, floor, half = split_half_frechet(reference, reference, seed=0)
    assert half == 200 and value == floor  # no drift: exactly the floor
    value, floor, _ = split_half_frechet(reference, rng.normal(size=(400, 4)), seed=0)
    assert value < 0.2 and floor < 0.2  # a fresh sample of the same Gaussian: near the floor
    value, floor, _ = split_half_frechet(reference, reference + np.array([10.0, 0, 0, 0]), seed=0)
    assert value - floor == pytest.approx(100.0, rel=0.1)  # the squared shift dominates


# ---- the plot stage ----

def synthetic_embeddings(directory: Path, generations: list[int], count: int = 12,
                         dims: int = 16) -> None:
    """Caption and generation files whose images move along one axis and shrink in spread."""
    rng = np.random.default_rng(4)
    ids = np.arange(100, 100 + count, dtype=np.int64)
    texts = l2_normalise(rng.normal(size=(count, dims)) + 3 * np.eye(dims)[0])
    captions = np.array([f"caption {i}" for i in ids])
    settings = {"test": True}
    save_npz(directory / "coco_caption_embeddings.npz",
             {"text_embeddings": texts, "captions": captions, "image_ids": ids},
             make_meta("test", settings, "synthetic", 0, model="none"))
    for step, generation in enumerate(generations):
        images = rng.normal(size=(count, dims)) * 0.8 ** step + 3 * np.eye(dims)[1] \
            + 0.7 * step * np.eye(dims)[2]
        save_npz(directory / f"gen_{generation}_embeddings.npz",
                 {"image_embeddings": l2_normalise(images), "text_embeddings": texts,
                  "captions": captions, "image_files": np.array([f"{i}.png" for i in ids]),
                  "image_ids": ids}, make_meta("test", settings, "synthetic", 0, model="none"))


def plot_flags(embeddings: Path, out: Path, generations: str) -> list[str]:
    return ["--embedding-dir", str(embeddings), "--generations", generations,
            "--visualization-dir", str(out / "vis"), "--results-dir", str(out / "results"),
            "--tsne-max-iter", "250", "--figure-dpi", "60"]


FIGURES = ("generation_clusters_tsne_clean.png", "generation_metrics_tsne_clean.png",
           "generation_clusters_pca.png")


def test_plot_stage_with_five_generations_and_metrics_from_embedding_space(
        tmp_path: Path) -> None:
    generations = [0, 1, 2, 5, 9]
    synthetic_embeddings(tmp_path, generations)
    run_script(PLOT, *plot_flags(tmp_path, tmp_path, ",".join(map(str, generations))))
    for name in FIGURES:
        assert (tmp_path / "vis" / name).stat().st_size > 5_000
    results = json.loads((tmp_path / "results" / "generation_metrics.json").read_text())
    assert [e["generation"] for e in results["generations"]] == generations
    first = load(tmp_path / "gen_0_embeddings.npz")["image_embeddings"].astype(np.float64)
    last = load(tmp_path / "gen_9_embeddings.npz")["image_embeddings"].astype(np.float64)
    first_to_last = [m for m in results["movements"] if m["kind"] == "first_to_last"]
    assert first_to_last[0]["centre_distance"] == pytest.approx(
        np.linalg.norm(first.mean(0) - last.mean(0)))
    variances = [e["total_variance"] for e in results["generations"]]
    assert variances[0] == pytest.approx(np.trace(np.cov(first.T)))
    assert variances[-1] < variances[0]  # the spread shrinks generation after generation
    assert len([m for m in results["movements"] if m["kind"] == "consecutive"]) == 4
    assert results["meta"]["settings"]["generations"] == generations
    for entry, generation in zip(results["generations"], generations, strict=True):
        data = load(tmp_path / f"gen_{generation}_embeddings.npz")
        cosines = np.sum(data["image_embeddings"].astype(np.float64) * data["text_embeddings"],
                         axis=1)
        assert entry["mean_cosine"] == pytest.approx(cosines.mean())
        assert entry["clipscore"] == pytest.approx(max(100 * cosines.mean(), 0.0))


def test_plot_stage_with_two_extracted_generations(extracted: tuple[Path, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    run_script(PLOT, *plot_flags(extracted[0], tmp_path, "0,2"), "--tsne-pca-dims", "8")
    for name in FIGURES:
        assert (tmp_path / "vis" / name).is_file()
    results = json.loads((tmp_path / "results" / "generation_metrics.json").read_text())
    assert [e["n_images"] for e in results["generations"]] == [7, 7]
    assert results["movements"][0]["kind"] == "consecutive" and len(results["movements"]) == 1
    printed = capsys.readouterr().out
    assert "mean cos" in printed and "CLIPScore" in printed
    assert results["meta"]["tsne"]["metric"] == "euclidean" and results["meta"]["tsne"][
        "pca_dims"] == 8


def test_drift_against_a_reference_that_is_a_generation_gives_the_floors(
        extracted: tuple[Path, str], tiny_clip: Path, coco: Path, tmp_path: Path) -> None:
    """--reference-dir: the real images embedded with the captions' CLIP; a generation that is
    the reference itself is at distance 0 with precision and recall 1, another one is not."""
    run_script(PLOT, *plot_flags(extracted[0], tmp_path, "0,2"), "--reference-dir",
               str(coco / "gen_0"), "--device", "cpu")
    results = json.loads((tmp_path / "results" / "generation_metrics.json").read_text())
    same, other = results["generations"]
    assert same["n_reference"] == 7
    assert same["centre_distance_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert same["frechet_to_reference"] == pytest.approx(0.0, abs=1e-4)
    assert same["precision_to_reference"] == same["recall_to_reference"] == 1.0
    assert other["centre_distance_to_reference"] > 1e-3 and other["frechet_to_reference"] > 1e-3
    assert (tmp_path / "vis" / "generation_reference_metrics.png").stat().st_size > 5_000


def test_plot_stage_rejects_unnormalised_embeddings(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    synthetic_embeddings(tmp_path, [0, 1])
    data = load(tmp_path / "gen_1_embeddings.npz")
    meta = json.loads(str(data.pop("meta")))
    data["image_embeddings"] = data["image_embeddings"] * 2.0
    save_npz(tmp_path / "gen_1_embeddings.npz", data, meta)
    with pytest.raises(SystemExit):
        run_script(PLOT, *plot_flags(tmp_path, tmp_path, "0,1"))
    assert "gen_1_embeddings.npz: key 'image_embeddings' is not L2-normalised" in \
        capsys.readouterr().err
