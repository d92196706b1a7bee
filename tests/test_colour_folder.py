"""A folder of 32x32 colour shapes through every image stage as a user runs them (evaluate.py
finding the folder from the files' meta alone): the evaluator CNN, the encoders (colour
reconstructions), Plan 1 (colour samples), Plan 2 (decoded colour images), evaluate.py, the small
CLIP, the self-consuming loop (RGB PNG folders) and the miniature Stable Diffusion."""

from __future__ import annotations

import json

import numpy as np
import pytest
from colour_shapes import write_shapes_folder
from PIL import Image
from script_runner import run_script

from dataio import data_sources
from dataio.artifacts import load_meta

CPU = ("--device", "cpu", "--no-tensorboard")


def run(script: str, *args: str) -> str:
    result = run_script(script, *args)
    assert result.returncode == 0, f"{script}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("colour")
    folder = write_shapes_folder(tmp / "Shapes", per_class=60, test_per_class=35)
    data_dir = tmp / "data"
    spec = ("--dataset", f"folder:{folder}", "--data-dir", str(data_dir))
    out = {"data_dir": data_dir}
    out["evaluator"] = run("train_evaluator.py", *spec, *CPU)
    run("encoder_models.py", *spec, *CPU, "--models", "ae_basic,ntxent", "--epochs", "1",
        "--embedding-dim", "8", "--batch-size", "32")
    data_sources._FOLDERS.clear()  # as in a new process: each stage registers it again
    run("plan1_gan_training.py", *spec, *CPU, "--encoder", "ae_basic", "--models", "cgan",
        "--epochs", "1", "--batch-size", "16", "--held-out-fraction", "0.2", "--test-images", "0",
        "--width", "8", "--feature-dim", "16")
    # The stages that read embeddings take the folder's short name: its meta holds the path.
    short = ("--dataset", "shapes", "--data-dir", str(data_dir))
    run("flows.py", *short, *CPU, "--encoders", "ae_basic", "--flows", "realnvp", "--epochs", "1")
    run("plan2_gan_training.py", *short, *CPU, "--encoder", "ae_basic", "--encoder-b", "ntxent",
        "--models", "wgan_gp,cyclegan", "--epochs", "1", "--batch-size", "32", "--hidden", "16",
        "--depth", "1", "--samples", "40", "--epoch-vectors", "0", "--no-plots")
    data_sources._FOLDERS.clear()
    run("evaluate.py", "--data-dir", str(data_dir), "--device", "cpu", "--no-plots",
        "--kmeans-init", "1", "--silhouette-samples", "100", "--baseline-components", "8",
        "--bootstrap", "0", "--kid-subsets", "2", "--cas-epochs", "1")
    run("train_small_clip.py", *spec, *CPU, "--epochs", "1", "--batch-size", "16",
        "--hidden-size", "16", "--heads", "2", "--vision-layers", "1", "--text-layers", "1",
        "--projection-dim", "8")
    run("self_consuming_loop.py", *spec, *CPU, "--generations", "1", "--train-images", "160",
        "--held-out-fraction", "0.2", "--batch-size", "16", "--epochs-first", "1",
        "--patience", "1", "--epochs", "1", "--n-images", "24", "--width", "8",
        "--feature-dim", "16", "--noise-dim", "8", "--kid-subsets", "2", "--bootstrap", "0",
        "--cas-epochs", "1")
    run("train_small_sd.py", *spec, "--device", "cpu", "--no-tensorboard", "--limit", "160",
        "--vae-epochs", "1", "--unet-epochs", "1", "--held-out-fraction", "0.25",
        "--validation-samples", "30", "--validation-steps", "2", "--batch-size", "32",
        "--vae-channels", "16,32", "--unet-channels", "16,32,32")
    return out


def test_a_short_name_no_embedding_records_is_one_line(colour_run):
    result = run_script("plan2_gan_training.py", "--dataset", "circles", "--data-dir",
                        str(colour_run["data_dir"]), "--encoder", "ae_basic")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --dataset circles: must be one of mnist, digits, "
                                     "fashion-mnist, cifar10, or folder:PATH, or the name of a "
                                     "folder data set whose embeddings record it (")
    assert "circles_ae_basic.npz" in result.stderr and "not found" in result.stderr


def test_every_stage_names_its_outputs_after_the_folder_and_keeps_the_colour(colour_run):
    root = colour_run["data_dir"]
    assert "test accuracy" in colour_run["evaluator"]
    assert load_meta(root / "embeddings" / "shapes_ae_basic.npz")["image_shape"] == [3, 32, 32]
    flow_meta = load_meta(root / "embeddings" / "shapes_ae_basic+realnvp.npz")
    assert flow_meta["settings"]["dataset_spec"].endswith("/Shapes")
    for samples in (root / "samples" / "plan1" / "shapes_ae_basic_cgan.npz",
                    root / "samples" / "plan2" / "shapes_ae_basic_wgan_gp.npz"):
        with np.load(samples, allow_pickle=False) as saved:
            assert saved["x_gen"].shape[1:] == (32, 32, 3) and saved["x_gen"].dtype == np.uint8
    metrics = json.loads((root / "results" / "metrics.json").read_text())
    plan1 = metrics["plan1"]["shapes"]
    assert np.isfinite(plan1["ae_basic_cgan"]["fid"]), plan1
    assert plan1["ae_basic_cgan"]["fid_floor"] < plan1["ae_basic_cgan"]["fid"]
    reconstructions = Image.open(root / "visualizations" / "shapes_ae_basic_reconstructions.png")
    pixels = np.asarray(reconstructions.convert("RGB")).astype(int)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() > 50  # drawn in colour, not grey
    clip = json.loads((root / "results" / "clip_shapes_zero_shot.json").read_text())
    assert clip["pixel_mean"] != [clip["pixel_mean"][0]] * 3  # three channels of their own
    generation = sorted(root.glob("shapes_loop*/gen_1"))
    assert generation, sorted(p.name for p in root.iterdir())
    first = next(generation[0].glob("*.png"))
    assert Image.open(first).mode == "RGB" and Image.open(first).size == (32, 32)
    assert (root / "results" / "sd_shapes_training.json").is_file()
    grid = sorted((root / "visualizations").glob("sd_shapes_epoch*.png"))
    assert grid and Image.open(grid[0]).mode in ("RGB", "RGBA")
