"""self_consuming_loop.py --generator diffusion on a tiny random Stable Diffusion pipeline built
from configs (tests/tiny_pipeline.py), as a user runs it: the seed's folders with COCO-named
images that the extraction stage reads, fine-tuning (LoRA and the whole UNet) that changes the
next generation and nothing else, a resume inside a generation and shards that give the images
of one straight run, DistributedDataParallel on two CPU processes that trains the weights of one
process at the same global batch, the regimes' real and fresh images, and bad input refused in one
line before anything is written."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_generation_drift as drift
import torch
from PIL import Image
from script_runner import run_script
from tiny_pipeline import build_tiny_pipeline

import self_consuming_loop as loop
from stable_diffusion.pipelines import draw, load_pipeline, use_sampler

ROOT = Path(__file__).resolve().parent.parent
tiny_clip = drift.tiny_clip  # the drift tests' CLIP fixture, built again here
IDS = [3, 8, 21, 34, 55, 89, 144, 233, 377, 610]  # 4 prompts, the rest the fresh pool
NAME = "sd_to_sd_cfg_7_steps_3"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pipeline, a COCO captions file (two captions for the first id, the lower
    annotation id first in sorted order but last in the file) and a folder of real images."""
    root = tmp_path_factory.mktemp("sd_inputs")
    pipeline = build_tiny_pipeline(root / "pipeline")
    annotations = [{"id": 1000 + n, "image_id": i, "caption": f"a picture of thing {n}"}
                   for n, i in enumerate(IDS)]
    annotations.append({"id": 5, "image_id": IDS[0], "caption": "the first caption of id 3"})
    (root / "captions.json").write_text(json.dumps({"annotations": annotations}))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for image_id in IDS:
        pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"COCO_train2014_{image_id:012d}.jpg")
    return {"pipeline": pipeline, "captions": root / "captions.json", "images": images}


def flags(inputs: dict[str, Path], data_dir: Path, *extra: str) -> list[str]:
    return ["--generator", "diffusion", "--pipeline", str(inputs["pipeline"]),
            "--annotation-file", str(inputs["captions"]), "--num-captions", "4",
            "--generations", "2", "--steps", "3", "--image-size", "16", "--sd-epochs", "2",
            "--sd-batch-size", "2", "--sd-learning-rate", "1e-2", "--draw-batch-size", "3",
            "--device", "cpu", "--data-dir", str(data_dir), *extra]


def run(inputs: dict[str, Path], data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    result = run_script("self_consuming_loop.py", *flags(inputs, data_dir, *extra))
    assert result.returncode == 0, result.stderr
    return result


def images_of(data_dir: Path, name: str = NAME, generations: int = 2) -> list[np.ndarray]:
    ids = sorted(IDS)[:4]
    return [np.stack([np.asarray(Image.open(data_dir / "coco" / f"{name}_gen_{g}"
                                            / f"COCO_train2014_{i:012d}.png")) for i in ids])
            for g in range(generations + 1)]


def digest(folder: Path) -> str:
    hashes = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            hashes.update(path.name.encode() + path.read_bytes())
    return hashes.hexdigest()


@pytest.fixture(scope="module")
def straight(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted LoRA loop of generations 0, 1 and 2; the pipeline's folder is hashed
    before and after (fine-tuning changes nothing of it)."""
    data_dir = tmp_path_factory.mktemp("sd_straight")
    before = digest(inputs["pipeline"])
    run(inputs, data_dir)
    assert digest(inputs["pipeline"]) == before
    return data_dir


def test_the_seeds_folders_hold_one_coco_named_image_per_prompt(straight, inputs, tiny_clip,
                                                                 tmp_path):
    """Generations 0-2 in data/coco/sd_to_sd_cfg_7_steps_3_gen_<g>/, one 16-pixel RGB PNG per
    prompt (the first 4 ids), which the extraction stage pairs with their captions."""
    ids = sorted(IDS)[:4]
    for g in range(3):
        folder = straight / "coco" / f"{NAME}_gen_{g}"
        assert sorted(p.name for p in folder.iterdir()) == [
            f"COCO_train2014_{i:012d}.png" for i in ids]
        assert Image.open(next(folder.iterdir())).size == (16, 16)
    out = tmp_path / "embeddings"
    drift.run_script(drift.EXTRACT, "--annotation-file", str(inputs["captions"]),
                     "--generation-dir-pattern", str(straight / "coco" / f"{NAME}_gen_{{g}}"),
                     "--generations", "0,1,2", "--num-captions", "4", "--model",
                     str(tiny_clip), "--device", "cpu", "--output-dir", str(out))
    captions = np.load(out / "coco_caption_embeddings.npz")
    assert captions["image_ids"].tolist() == ids
    assert captions["captions"][0] == "the first caption of id 3"
    for g in range(3):
        assert np.load(out / f"gen_{g}_embeddings.npz")["image_ids"].tolist() == ids


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fine_tuning_changes_the_next_generation_and_nothing_else(straight, inputs, tmp_path,
                                                                  method):
    """Every generation starts from the same noise per caption: generation 0 is the pipeline as
    given, so generation 1 differs from it only because fine-tuning changed the model; the
    pipeline's own folder is left as it was (LoRA: the straight run; full: a run of its own)."""
    data_dir = straight
    name = NAME
    if method == "full":
        data_dir, name = tmp_path / "full", f"{NAME}_full"
        before = digest(inputs["pipeline"])
        run(inputs, data_dir, "--finetune", "full", "--generations", "1")
        assert digest(inputs["pipeline"]) == before
        assert (data_dir / "checkpoints" / "sd_loop" / name / "gen_1" / "weights" / "unet"
                / "config.json").is_file()
    else:
        assert (straight / "checkpoints" / "sd_loop" / NAME / "gen_1" / "weights"
                / "pytorch_lora_weights.safetensors").is_file()
    images = images_of(data_dir, name, 1)
    assert np.abs(images[1].astype(int) - images[0]).mean() > 0.5
    # Generation 0 is the pipeline as given: what it draws for the prompts with the loop's noise.
    pipe = load_pipeline(str(inputs["pipeline"]), torch.device("cpu"))
    use_sampler(pipe, "ddim")
    ids = np.array(sorted(IDS)[:4])
    captions = ["the first caption of id 3"] + [f"a picture of thing {n}" for n in range(1, 4)]
    np.testing.assert_array_equal(draw(pipe, captions, ids, 0, 16, 3, 7.0, 4), images[0])


def test_a_loop_interrupted_inside_generation_1_resumes_to_the_same_images(
        straight, inputs, tmp_path, monkeypatch):
    """Ctrl-C after generation 1's first fine-tuning epoch (its checkpoint written): the run
    again resumes at epoch 2 and ends with the straight run's images."""
    real_finetune = loop.finetune

    def stop(epoch: int, loss: float) -> None:
        raise KeyboardInterrupt

    def interrupted(pipe, latents, states, settings, checkpoint, accelerator, resume, on_epoch):
        return real_finetune(pipe, latents, states, settings, checkpoint, accelerator, resume,
                             stop)

    monkeypatch.setattr(loop, "finetune", interrupted)
    stopped = run_script("self_consuming_loop.py", *flags(inputs, tmp_path))
    assert stopped.returncode == 130
    state = torch.load(tmp_path / "checkpoints" / "sd_loop" / NAME / "gen_1" / "finetune.pt",
                       weights_only=True)
    assert state["epoch"] == 1
    monkeypatch.setattr(loop, "finetune", real_finetune)
    resumed = run(inputs, tmp_path)
    assert "gen 1: fine-tuning epoch 2/2" in resumed.stdout
    assert "gen 1: fine-tuning epoch 1/2" not in resumed.stdout
    for mine, theirs in zip(images_of(tmp_path), images_of(straight), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_two_shards_merged_give_the_straight_runs_images(straight, inputs, tmp_path):
    """--shard 0/2 and 1/2 draw halves of generation 0 and stop; a run without --shard merges
    them and goes on: every generation equals the straight run's."""
    for shard in ("0/2", "1/2"):
        result = run(inputs, tmp_path, "--shard", shard)
        assert f"shard {shard}, 2 images" in result.stdout
        assert not (tmp_path / "coco" / f"{NAME}_gen_0").exists()
    merged = run(inputs, tmp_path)
    assert "gen 0: 0 images drawn" in merged.stdout and "(4 from shards)" in merged.stdout
    for mine, theirs in zip(images_of(tmp_path), images_of(straight), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert not (tmp_path / "coco" / f".{NAME}_gen_0.shards").exists()


def test_two_processes_train_the_weights_of_one_at_the_same_global_batch(inputs, tmp_path):
    """torchrun with 2 CPU processes (what accelerate launch --multi_gpu runs; on CPUs accelerate
    launch hands several processes to mpirun) at batch 2 each against one process at batch 4:
    the same LoRA weights after two epochs, to float rounding."""
    helper = str(ROOT / "tests" / "accelerate_finetune.py")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    for command, out in (([sys.executable, helper], one),
                         ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", helper], two)):
        result = subprocess.run([*command, str(inputs["pipeline"]), "lora",
                                 "4" if out == one else "2", str(out)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_accumulate_with_fresh_data_trains_on_real_and_fresh_images(inputs, tmp_path):
    """--regime accumulate --fresh-fraction 0.5 --image-dir: generation 1 trains on the
    prompts' 4 real images, 2 of generation 0's and 2 fresh real images of captions after the
    prompts."""
    run(inputs, tmp_path, "--regime", "accumulate", "--fresh-fraction", "0.5", "--image-dir",
        str(inputs["images"]), "--generations", "1", "--sd-epochs", "1")
    name = f"{NAME}_accumulate_fresh50"
    record = json.loads((tmp_path / "results" / f"{name}_metrics.json").read_text())
    assert record["generations"][1]["train_sources"] == {"real": 6, "gen_0": 2}
    assert (tmp_path / "coco" / f"{name}_gen_1").is_dir()


@pytest.mark.parametrize(("change", "code", "words"), [
    ("not-a-pipeline", 1, "model_index.json: not found"),
    ("no-captions", 1, "holds no captions"),
    ("steps", 2, "--steps 0: must be >= 1"),
    ("missing-images", 1, "no image of 1 prompt id(s) (e.g. [3]), which --regime accumulate"),
    ("no-image-dir", 2, "--regime accumulate trains on real images: give their folder"),
    ("no-pipeline", 2, "--generator diffusion draws with a Stable Diffusion pipeline"),
    ("image-size", 1, "--image-size 20: must be a positive multiple of 8"),
])
def test_bad_input_is_refused_in_one_line_before_anything_is_written(inputs, tmp_path, change,
                                                                     code, words):
    data_dir = tmp_path / "data"
    extra: list[str] = []
    pipeline, captions = inputs["pipeline"], inputs["captions"]
    if change == "not-a-pipeline":
        pipeline = tmp_path / "junk"
        pipeline.mkdir()
        (pipeline / "weights.bin").write_bytes(b"junk")
    elif change == "no-captions":
        captions = tmp_path / "empty.json"
        captions.write_text(json.dumps({"annotations": []}))
    elif change == "steps":
        extra = ["--steps", "0"]
    elif change in ("missing-images", "no-image-dir"):
        images = tmp_path / "images"
        shutil.copytree(inputs["images"], images)
        (images / "COCO_train2014_000000000003.jpg").unlink()
        extra = ["--regime", "accumulate"] + (
            ["--image-dir", str(images)] if change == "missing-images" else [])
    elif change == "image-size":
        extra = ["--image-size", "20"]
    argv = flags({**inputs, "pipeline": pipeline, "captions": captions}, data_dir, *extra)
    if change == "no-pipeline":
        argv = [a for a in argv if a != str(pipeline)]
        argv.remove("--pipeline")
    result = run_script("self_consuming_loop.py", *argv)
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not data_dir.exists() or not any(data_dir.rglob("*.png"))
