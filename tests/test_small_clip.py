"""The small CLIP: its loss against the formula, and the stage run on digits, saved, loaded back by
transformers and embedded through extract_generation_embeddings.py as any CLIP would be."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

import train_small_clip
from CL_loss_function import clip_contrastive_loss
from dataio.data_sources import load_dataset

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--dataset", "digits", "--device", "cpu", "--epochs", "1", "--limit", "256",
        "--batch-size", "32", "--hidden-size", "16", "--heads", "2", "--vision-layers", "1",
        "--text-layers", "1", "--projection-dim", "8", "--threads", "1"]


def run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=ENV)
    if check:
        assert result.returncode == 0, result.stderr
    return result


# ---------------------------------------------------------------- the loss
def naive_clip_loss(images: torch.Tensor, texts: torch.Tensor, scale: float) -> float:
    """1/2 [mean_i -log softmax_j(s_ij)[i] + mean_j -log softmax_i(s_ij)[j]], element by
    element."""
    n = len(images)
    u = [images[i] / math.sqrt(sum(float(v) ** 2 for v in images[i])) for i in range(n)]
    v = [texts[j] / math.sqrt(sum(float(t) ** 2 for t in texts[j])) for j in range(n)]
    s = [[scale * float(sum(a * b for a, b in zip(u[i], v[j], strict=True))) for j in range(n)]
         for i in range(n)]
    image_to_text = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n)))
                        for i in range(n)) / n
    text_to_image = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(n)))
                        for j in range(n)) / n
    return (image_to_text + text_to_image) / 2


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_clip_loss_matches_naive_loop(scale):
    generator = torch.Generator().manual_seed(int(scale))
    images = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    texts = images + 0.8 * torch.randn(7, 5, generator=generator, dtype=torch.float64)
    loss = clip_contrastive_loss(images, texts, scale)
    assert loss.item() == pytest.approx(naive_clip_loss(images, texts, scale), rel=1e-5)


def test_clip_loss_is_symmetric_in_images_and_texts():
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(9, 6, generator=generator), torch.randn(9, 6, generator=generator)
    assert clip_contrastive_loss(texts, images, 11.0).item() == pytest.approx(
        clip_contrastive_loss(images, texts, 11.0).item(), rel=1e-6)


def test_clip_loss_closed_forms():
    images = torch.randn(8, 4)
    # scale 0: every logit is 0 and each side is log N.
    assert clip_contrastive_loss(images, torch.randn(8, 4), 0.0).item() == pytest.approx(
        math.log(8), rel=1e-6)
    # Orthonormal pairs: s_ii = scale, s_ij = 0, loss = log(1 + (N-1) e^-scale).
    eye = torch.eye(4)
    assert clip_contrastive_loss(eye, 3 * eye, 5.0).item() == pytest.approx(
        math.log(1 + 3 * math.exp(-5.0)), rel=1e-6)
    with pytest.raises(ValueError):
        clip_contrastive_loss(torch.randn(3, 4), torch.randn(4, 4), 1.0)


# ---------------------------------------------------------------- captions and tokenizer
def test_captions_name_the_class_and_the_tokenizer_knows_every_word():
    table = train_small_clip.class_captions("fashion-mnist", ["Sneaker", "Ankle boot"])
    assert table[0][0] == "a photo of a Sneaker" and table[1][0] == "a photo of an Ankle boot"
    assert train_small_clip.class_captions("digits", ["3"])[0][3] == \
        "a black and white photo of the digit 3"
    captions = [c for row in table for c in row]
    tokenizer = train_small_clip.build_tokenizer(captions, 400)
    for caption in captions + ["an unseen caption: 42 zebras!"]:
        ids = tokenizer(caption)["input_ids"]
        # The unknown token is the end token: it may only close the sequence.
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in ids[1:-1], tokenizer.tokenize(caption)
    # Learned merges: a caption's known words are whole tokens, not letters.
    assert len(tokenizer(captions[0])["input_ids"]) <= 2 + 5
    assert train_small_clip.tokenizer_fingerprint(tokenizer) == \
        train_small_clip.tokenizer_fingerprint(train_small_clip.build_tokenizer(captions, 400))


# ---------------------------------------------------------------- the stage on digits
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The stage run once on digits with tiny towers: (data dir, stdout)."""
    data_dir = tmp_path_factory.mktemp("clip")
    result = run("train_small_clip.py", *TINY, "--data-dir", str(data_dir))
    return data_dir, result.stdout


def test_stage_saves_a_clip_that_transformers_loads(trained):
    data_dir, stdout = trained
    model_dir = data_dir / "checkpoints" / "clip_digits"
    model = CLIPModel.from_pretrained(model_dir)
    processor = CLIPProcessor.from_pretrained(model_dir)
    meta = json.loads((model_dir / "training_meta.json").read_text())
    assert model.config.vision_config.image_size == 28 and model.config.projection_dim == 8
    assert meta["zero_shot_accuracy"] == pytest.approx(json.loads(
        (data_dir / "results" / "clip_digits_zero_shot.json").read_text())["zero_shot_accuracy"])
    assert 0.0 <= meta["zero_shot_accuracy"] <= 1.0
    assert f"zero-shot test accuracy {meta['zero_shot_accuracy']:.4f}" in stdout
    assert (data_dir / "visualizations" / "clip_digits_zero_shot.png").stat().st_size > 0
    # The saved image processor makes from a grey image what training fed the model.
    data = load_dataset("digits", str(data_dir))
    pixels = data.x_test[:4]
    from_processor = processor(images=[Image.fromarray(p) for p in pixels],
                               return_tensors="pt")["pixel_values"]
    ours = train_small_clip.pixel_values(torch.from_numpy(pixels), meta["pixel_mean"],
                                         meta["pixel_std"])
    torch.testing.assert_close(from_processor, ours, atol=1e-5, rtol=0)
    assert meta["pixel_mean"] == pytest.approx([float(data.x_train[:256].mean() / 255)] * 3,
                                               rel=1e-6)
    # Every file follows the umask, not safetensors' 0600.
    umask = os.umask(0o022)
    os.umask(umask)
    for path in model_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name


def test_loss_equals_transformers_clip_loss_on_the_trained_model(trained):
    """CLIPModel(return_loss=True) computes CLIP's loss its own way: the same number."""
    model_dir = trained[0] / "checkpoints" / "clip_digits"
    model, processor = CLIPModel.from_pretrained(model_dir), CLIPProcessor.from_pretrained(
        model_dir)
    data = load_dataset("digits", str(trained[0]))
    inputs = processor(text=[f"a photo of the digit {d}" for d in data.y_test[:6]],
                       images=[Image.fromarray(p) for p in data.x_test[:6]], padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs, return_loss=True)
        ours = clip_contrastive_loss(output.image_embeds, output.text_embeds,
                                     model.logit_scale.exp())
    assert ours.item() == pytest.approx(output.loss.item(), rel=1e-5)


def test_text_embedding_does_not_depend_on_padding(trained):
    """The pad token is the end token; the text embedding is read at the first end token."""
    model_dir = trained[0] / "checkpoints" / "clip_digits"
    model, processor = CLIPModel.from_pretrained(model_dir), CLIPProcessor.from_pretrained(
        model_dir)
    short, long = "a photo of the digit 3", "a black and white photo of the digit 3"
    with torch.no_grad():
        alone = train_small_clip.features(model.get_text_features(
            **processor.tokenizer([short], return_tensors="pt")))
        padded = train_small_clip.features(model.get_text_features(
            **processor.tokenizer([short, long], padding=True, return_tensors="pt")))
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(padded[0], padded[1])


def test_round_trip_through_extract_generation_embeddings(trained, tmp_path):
    """PNGs named by id and a COCO caption file, embedded by the drift stage with --model DIR
    (its default fast preprocessing, read from the saved processor), give the saved model's own
    image and text embeddings. (The processor path gives the same pixels: tested above.)"""
    data_dir = trained[0]
    model_dir = data_dir / "checkpoints" / "clip_digits"
    data = load_dataset("digits", str(data_dir))
    ids = [3, 5, 8, 13, 21]
    captions = {i: f"a photo of the digit {data.y_test[i]}" for i in ids}
    folder = tmp_path / "gen_0"
    folder.mkdir()
    for i in ids:
        Image.fromarray(data.x_test[i]).save(folder / f"test_{i:05d}.png")
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({"images": [{"id": i} for i in ids], "annotations": [
        {"id": n, "image_id": i, "caption": captions[i]} for n, i in enumerate(ids)]}))
    run("extract_generation_embeddings.py", "--annotation-file", str(annotations),
        "--generation-dir-pattern", str(tmp_path / "gen_{g}"), "--generations", "0",
        "--model", str(model_dir), "--num-captions", "10", "--batch-size", "2", "--workers", "0",
        "--device", "cpu", "--output-dir", str(tmp_path))
    with np.load(tmp_path / "gen_0_embeddings.npz", allow_pickle=False) as saved:
        assert saved["image_ids"].tolist() == ids
        image_embeddings, text_embeddings = saved["image_embeddings"], saved["text_embeddings"]
        assert saved["captions"].tolist() == [captions[i] for i in ids]
    model, processor = CLIPModel.from_pretrained(model_dir), CLIPProcessor.from_pretrained(
        model_dir)
    meta = json.loads((model_dir / "training_meta.json").read_text())
    with torch.no_grad():
        images = train_small_clip.image_features(model, torch.from_numpy(data.x_test[ids]),
                                                 meta["pixel_mean"], meta["pixel_std"])
        texts = train_small_clip.features(model.get_text_features(**processor.tokenizer(
            [captions[i] for i in ids], padding=True, return_tensors="pt")))
    np.testing.assert_allclose(image_embeddings, F.normalize(images, dim=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(text_embeddings, F.normalize(texts, dim=1).numpy(), atol=1e-5)


def test_colour_pixels_are_what_the_saved_processor_makes_with_per_channel_statistics():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    images[..., 2] //= 4  # channels with unlike statistics
    mean, std = train_small_clip.pixel_statistics(images)
    pixels = images.reshape(-1, 3) / 255.0
    assert mean == pytest.approx(pixels.mean(axis=0).tolist(), rel=1e-6)
    assert std == pytest.approx(pixels.std(axis=0).tolist(), rel=1e-6)
    processor = train_small_clip.build_image_processor(mean, std, 20)
    expected = processor(images=[Image.fromarray(x) for x in images],
                         return_tensors="pt")["pixel_values"]
    ours = train_small_clip.pixel_values(torch.from_numpy(images), mean, std)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("side", "asked", "patch"), [(28, 0, 7), (32, 0, 8), (64, 0, 16),
                                                      (30, 0, 6), (28, 14, 14), (17, 0, 1)])
def test_the_patch_size_divides_the_image_side(side, asked, patch):
    assert train_small_clip.patch_size_for(side, asked) == patch


def test_a_patch_size_not_dividing_the_side_names_the_divisors():
    with pytest.raises(train_small_clip.SettingsError, match=r"--patch-size 5: must be one of "
                       r"1, 2, 4, 8, 16, 32 \(the divisors of the image side 32\)"):
        train_small_clip.patch_size_for(32, 5)


def run_in_process(*args: str) -> int:
    """Run the stage in this process (no start-up cost); its exit code (0: it returned)."""
    saved = sys.argv
    sys.argv = ["train_small_clip.py", *args]
    try:
        runpy.run_path(str(ROOT / "train_small_clip.py"), run_name="__main__")
    except SystemExit as stopped:
        return int(stopped.code)
    finally:
        sys.argv = saved
    return 0


def test_rerun_resumes_the_finished_checkpoint_and_other_settings_are_refused(trained, capsys):
    data_dir = trained[0]
    weights = data_dir / "checkpoints" / "clip_digits" / "model.safetensors"
    before = weights.read_bytes()
    assert run_in_process(*TINY, "--data-dir", str(data_dir)) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "training is finished" in out
    assert weights.read_bytes() == before
    code = run_in_process(*TINY, "--data-dir", str(data_dir), "--learning-rate", "1e-4")
    assert code == 1
    assert "learning_rate: now 0.0001, checkpoint 0.003" in capsys.readouterr().err
    code = run_in_process(*TINY, "--data-dir", str(data_dir), "--patch-size", "5")
    assert code == 2
    assert "--patch-size 5: must be one of 1, 2, 4, 7, 14, 28" in capsys.readouterr().err
    code = run_in_process(*TINY, "--data-dir", str(data_dir), "--heads", "3")
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --heads 3 does not divide --hidden-size 16"


def test_an_output_dir_the_stage_did_not_write_is_refused_before_training(trained, tmp_path,
                                                                           capsys):
    """--output-dir on a folder or file of the user's, or '.': one line, exit 1, untouched,
    nothing trained; the stage's own folder (marked) is replaced by a rerun."""
    data_dir = trained[0]
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    paper = tmp_path / "paper.pdf"
    paper.write_text("keep me too")
    for target in (mine, paper, Path(".")):
        code = run_in_process(*TINY, "--data-dir", str(data_dir), "--output-dir", str(target),
                              "--learning-rate", "1e-4")  # other settings: would train anew
        err = capsys.readouterr().err
        assert code == 1 and "this project's stages did not write" in err, err
        assert len(err.strip().splitlines()) == 1 and "CLIP epoch" not in err
    assert (mine / "thesis.tex").read_text() == "keep me" and sorted(mine.iterdir()) == [
        mine / "thesis.tex"]
    assert paper.read_text() == "keep me too"
    assert (ROOT / "README.md").is_file() and (ROOT / ".git").is_dir()
    assert (data_dir / "checkpoints" / "clip_digits" / ".written-by-stage").is_file()
