"""extract_generation_embeddings.py at scale: the fast preprocessing against the Hugging Face
processor on real photographs, and sharded runs merged against an unsharded one."""

from __future__ import annotations

from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import test_generation_drift as drift
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from clip_tools.clip_embedding import embed_images
from clip_tools.clip_images import PixelPipeline, image_batches
from runtime.stage import StageError

CPU = torch.device("cpu")
EXTRACT, extract_flags, load, run_script = (drift.EXTRACT, drift.extract_flags, drift.load,
                                            drift.run_script)
tiny_clip, coco = drift.tiny_clip, drift.coco  # the drift tests' fixtures, built again here


def photographs(folder: Path) -> list[Path]:
    """Real photographs (scikit-learn's china.jpg and flower.jpg, 640x427) as the files a
    generator writes: 512x512 JPEG crops and rescales, the originals, a PNG, a small picture."""
    files = []
    for number, photo in enumerate(load_sample_images().images):
        image = Image.fromarray(photo)
        variants = {
            "square_crop.jpg": image.crop((64, 0, 491, 427)).resize((512, 512),
                                                                    Image.Resampling.LANCZOS),
            "squeezed.jpg": image.resize((512, 512), Image.Resampling.LANCZOS),
            "detail.jpg": image.crop((200, 100, 456, 356)).resize((512, 512),
                                                                  Image.Resampling.LANCZOS),
            "original.jpg": image,
            "portrait.png": image.crop((100, 0, 420, 427)),
            "squeezed.png": image.resize((512, 512), Image.Resampling.LANCZOS),  # box-reduced
            "small.jpg": image.resize((200, 150), Image.Resampling.LANCZOS),
        }
        for name, picture in variants.items():
            path = folder / f"photo{number}_{name}"
            picture.save(path, quality=90) if path.suffix == ".jpg" else picture.save(path)
            files.append(path)
    return files


@pytest.fixture(scope="module")
def clip_224() -> CLIPModel:
    """A small random CLIP with ViT-B/32's input geometry (224 pixels, 32-pixel patches)."""
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2}
    config = CLIPConfig(text_config={**tower, "vocab_size": 100},
                        vision_config={**tower, "image_size": 224, "patch_size": 32},
                        projection_dim=16)
    torch.manual_seed(0)
    return CLIPModel(config).eval()


def embed(model: CLIPModel, files: list[Path], preprocessing: str,
          processor: CLIPImageProcessor) -> np.ndarray:
    pipeline = PixelPipeline.from_processor(processor) if preprocessing == "fast" else None
    blocks = [list(range(start, min(start + 4, len(files)))) for start in range(0, len(files), 4)]
    batches = image_batches(files, blocks, preprocessing, processor, pipeline, 0, CPU)
    embeddings, rows, failed = embed_images(model, batches, pipeline, CPU)
    assert not failed and rows.tolist() == list(range(len(files)))
    return embeddings


def test_fast_preprocessing_agrees_with_the_processor_on_photographs(
        clip_224: CLIPModel, tmp_path: Path) -> None:
    files = photographs(tmp_path)
    processor = CLIPImageProcessor()  # openai/clip-vit-base-patch32's configuration
    fast = embed(clip_224, files, "fast", processor)
    exact = embed(clip_224, files, "processor", processor)
    cosines = np.sum(fast * exact, axis=1)
    print(f"fast vs processor: cosine per image {np.sort(cosines).round(5)}")
    assert cosines.min() >= 0.999, dict(zip([p.name for p in files], cosines.round(5),
                                            strict=True))
    # The model inputs themselves: same shape, same value range, close values.
    pipeline = PixelPipeline.from_processor(processor)
    batch, _ = next(iter(image_batches(files[:1], [[0]], "fast", processor, pipeline, 0, CPU)))
    _, pixels, target = batch[0]
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 256, 256, 3)  # draft: 512 / 2
    inputs = pipeline(pixels, target)
    reference = processor(images=Image.open(files[0]).convert("RGB"),
                          return_tensors="pt")["pixel_values"]
    assert inputs.shape == reference.shape == (1, 3, 224, 224) and inputs.dtype == torch.float32
    low = (0 - np.array(processor.image_mean)) / np.array(processor.image_std)
    high = (1 - np.array(processor.image_mean)) / np.array(processor.image_std)
    for channel in range(3):
        assert low[channel] - 1e-5 <= inputs[0, channel].min() <= inputs[0, channel].max() \
            <= high[channel] + 1e-5
    # JPEG draft decoding at half size costs about 2.5 grey levels on average here.
    assert (inputs - reference).abs().mean() < 0.05


def test_pipeline_follows_the_processor_config(tmp_path: Path) -> None:
    processor = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 36,
                                                                          "width": 30},
                                   resample=Image.Resampling.BILINEAR, image_mean=[0.2, 0.5, 0.7],
                                   image_std=[0.1, 0.3, 0.2])
    path = tmp_path / "odd.png"
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize(
        (71, 53), Image.Resampling.BICUBIC)  # under twice the target: decoded at full size
    smooth.save(path)
    pipeline = PixelPipeline.from_processor(processor)
    batch, _ = next(iter(image_batches([path], [[0]], "fast", processor, pipeline, 0, CPU)))
    _, pixels, target = batch[0]
    assert target == (40, 53) and pixels.shape == (1, 53, 71, 3)  # int(40 * 71 / 53)
    inputs = pipeline(pixels, target)
    reference = processor(images=smooth, return_tensors="pt")["pixel_values"]
    assert inputs.shape == reference.shape == (1, 3, 36, 30)
    # uint8 resize as PIL does it: at most one grey level apart, over the smallest std.
    assert (inputs - reference).abs().max() <= 1.01 / 255 / 0.1
    with pytest.raises(StageError, match="--preprocessing processor"):
        PixelPipeline.from_processor(CLIPImageProcessor(resample=Image.Resampling.NEAREST))


def extract(tiny_clip: Path, coco: Path, output: Path, *extra: str) -> str:
    printed = StringIO()
    with redirect_stdout(printed):
        run_script(EXTRACT, *extract_flags(tiny_clip, coco, output, "--batch-size", "2",
                                           "--workers", "0", *extra))
    return printed.getvalue()


OUTPUTS = ("coco_caption_embeddings.npz", "gen_0_embeddings.npz", "gen_1_embeddings.npz",
           "gen_2_embeddings.npz")


def test_shards_merged_equal_an_unsharded_run(tiny_clip: Path, coco: Path,
                                              tmp_path: Path) -> None:
    extract(tiny_clip, coco, tmp_path / "whole")
    printed = [extract(tiny_clip, coco, tmp_path / "sharded", "--shard", f"{i}/3")
               for i in (2, 0, 1)]
    assert "not merging yet" in printed[0] and "not merging yet" in printed[1]
    assert "all 3 shards present: merged" in printed[2]
    for name in OUTPUTS:
        whole, merged = load(tmp_path / "whole" / name), load(tmp_path / "sharded" / name)
        for key in whole:
            if key != "meta":
                assert whole[key].dtype == merged[key].dtype, (name, key)
                np.testing.assert_array_equal(whole[key], merged[key], err_msg=f"{name} {key}")
    # The shards are disjoint and together hold every embedded image of a generation.
    ids = [load(tmp_path / "sharded" / "shards" / f"gen_1_embeddings.shard-{i}-of-3.npz")[
        "image_ids"].tolist() for i in range(3)]
    assert sorted(sum(ids, [])) == load(tmp_path / "whole" / "gen_1_embeddings.npz")[
        "image_ids"].tolist() and all(ids)
    # --merge alone rebuilds the same files.
    for name in OUTPUTS:
        (tmp_path / "sharded" / name).unlink()
    extract(tiny_clip, coco, tmp_path / "sharded", "--merge")
    for name in OUTPUTS:
        np.testing.assert_array_equal(load(tmp_path / "whole" / name)["image_embeddings"
                                      if name != OUTPUTS[0] else "text_embeddings"],
                                      load(tmp_path / "sharded" / name)[
                                          "image_embeddings" if name != OUTPUTS[0]
                                          else "text_embeddings"])


def test_shards_of_different_runs_are_not_merged(tiny_clip: Path, coco: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    extract(tiny_clip, coco, tmp_path, "--shard", "0/2")
    printed = extract(tiny_clip, coco, tmp_path, "--shard", "1/2", "--num-captions", "5")
    assert "not merging yet" in printed and "was made with other settings" in printed
    # The line names the setting that differs and both values.
    assert "(--num-captions 5 there, " in printed and "in coco_caption_embeddings.shard-0" \
        in printed
    assert not (tmp_path / "gen_0_embeddings.npz").exists()
    with pytest.raises(SystemExit) as exited:
        extract(tiny_clip, coco, tmp_path, "--merge", "true")
    assert exited.value.code == 1
    assert "--num-captions 5 there" in capsys.readouterr().err


def test_shards_of_one_run_with_other_inputs_are_not_merged(tiny_clip: Path, coco: Path,
                                                            tmp_path: Path) -> None:
    """The same settings over changed folders: the line says the inputs changed."""
    extract(tiny_clip, coco, tmp_path, "--shard", "0/2")
    folder = coco / "gen_0"
    moved = sorted(folder.iterdir())[0]
    hidden = moved.with_name("." + moved.name)
    moved.rename(hidden)
    try:
        printed = extract(tiny_clip, coco, tmp_path, "--shard", "1/2")
    finally:
        hidden.rename(moved)
    assert "embeds other captions or image files" in printed
