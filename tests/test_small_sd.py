"""train_small_sd.py on digits as a user runs it: the pipeline it writes loads with
StableDiffusionPipeline.from_pretrained and samples; a run interrupted in the UNet phase resumes to
the uninterrupted run's weights; settings the networks cannot take stop in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from script_runner import run_script

import train_small_clip  # noqa: F401  (imported so the runner finds it as a module)

QUICK = ["--dataset", "digits", "--limit", "256", "--vae-epochs", "1", "--unet-epochs", "2",
         "--held-out-fraction", "0.4", "--validation-samples", "64", "--validation-steps", "3",
         "--batch-size", "32", "--device", "cpu", "--vae-channels", "16,32",
         "--unet-channels", "16,32,32"]


@pytest.fixture(scope="module")
def with_clip(tmp_path_factory: pytest.TempPathFactory):
    """A data folder holding a small CLIP of digits and the digits evaluator."""
    folder = tmp_path_factory.mktemp("sd")
    result = run_script("train_small_clip.py", "--dataset", "digits", "--limit", "256",
                        "--epochs", "1", "--device", "cpu", "--data-dir", str(folder))
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def trained(with_clip, tmp_path_factory: pytest.TempPathFactory):
    """One straight run on a copy of the folder: (folder, stdout)."""
    import shutil

    folder = tmp_path_factory.mktemp("sd_straight")
    shutil.copytree(with_clip, folder, dirs_exist_ok=True)
    result = run_script("train_small_sd.py", *QUICK, "--data-dir", str(folder))
    assert result.returncode == 0, result.stderr
    return folder, result.stdout


def test_the_pipeline_loads_like_any_stable_diffusion_and_samples(trained):
    from diffusers import StableDiffusionPipeline

    folder, stdout = trained
    assert "VAE: test reconstruction MSE" in stdout and "scaling factor" in stdout
    assert "UNet epoch 2/2" in stdout and "held-out FID" in stdout
    pipe = StableDiffusionPipeline.from_pretrained(folder / "checkpoints" / "sd_digits")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on these latents
    out = pipe(prompt=["a photo of the digit 3", "a photo of the digit 7"], height=32, width=32,
               num_inference_steps=3, guidance_scale=7.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 32, 32, 3) and np.isfinite(out.images).all()
    assert (folder / "visualizations" / "sd_digits_epoch002.png").stat().st_size > 1000
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    for path in (folder / "checkpoints" / "sd_digits").rglob("*.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path  # not safetensors' 0600


def test_a_run_interrupted_in_the_unet_phase_resumes_to_the_same_weights(trained, with_clip,
                                                                         tmp_path,
                                                                         monkeypatch):
    """Ctrl-C after the UNet's first epoch (its checkpoint written): the run again trains the
    second epoch only and saves the straight run's weights."""
    import shutil

    import train_small_sd

    shutil.copytree(with_clip, tmp_path, dirs_exist_ok=True)
    real_finetune = train_small_sd.finetune

    def interrupted(pipe, latents, states, settings, checkpoint, accelerator, resume, on_epoch,
                    empty):
        def stop(epoch: int, loss: float) -> None:
            on_epoch(epoch, loss)
            raise KeyboardInterrupt

        return real_finetune(pipe, latents, states, settings, checkpoint, accelerator, resume,
                             stop, empty)

    monkeypatch.setattr(train_small_sd, "finetune", interrupted)
    assert run_script("train_small_sd.py", *QUICK, "--data-dir", str(tmp_path)).returncode == 130
    assert not (tmp_path / "checkpoints" / "sd_digits").exists()
    monkeypatch.setattr(train_small_sd, "finetune", real_finetune)
    resumed = run_script("train_small_sd.py", *QUICK, "--data-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert "UNet epoch 1/2" not in resumed.stdout and "UNet epoch 2/2" in resumed.stdout
    # The straight run kept epoch 1 of 2 (its held-out FID was lower): what it saved must be
    # epoch 1's weights, not the last epoch's, which the resumed run reads back from its file.
    import json

    from safetensors.torch import load_file

    assert json.loads((trained[0] / "results" / "sd_digits_training.json").read_text())[
        "best_epoch"] == 1
    for part in ("unet", "vae"):
        mine = load_file(tmp_path / "checkpoints" / "sd_digits" / part
                         / "diffusion_pytorch_model.safetensors")
        theirs = load_file(trained[0] / "checkpoints" / "sd_digits" / part
                           / "diffusion_pytorch_model.safetensors")
        for key, value in theirs.items():
            torch.testing.assert_close(mine[key], value)


@pytest.mark.parametrize(("flags", "words"), [
    (["--image-size", "36"], "--image-size 36: the VAE and UNet halve it 3 times and the "
                             "pipeline needs a multiple of 8: use a multiple of 8"),
    (["--image-size", "24"], "--image-size 24: smaller than the 28x28 images"),
    (["--caption-dropout", "0"], "--guidance-scale 7 needs an unconditional model"),
    (["--vae-channels", "16,20"], "channels [20] are not multiples"),
])
def test_settings_the_networks_cannot_take_stop_in_one_line(with_clip, tmp_path, flags, words):
    result = run_script("train_small_sd.py", *QUICK, "--data-dir", str(tmp_path / "none"),
                        *flags)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "none").exists()


def test_the_loop_runs_two_generations_on_it_with_the_gan_loops_metrics(trained, tmp_path):
    """self_consuming_loop.py --generator diffusion --prompts dataset on the pipeline: the first
    test images' class captions as prompts, generations 0 and 1 written as the GAN loop's
    (test_<id>.png, captions.json) and scored with its metrics beside their floors."""
    import json
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(trained[0], folder)
    result = run_script("self_consuming_loop.py", "--generator", "diffusion", "--prompts",
                        "dataset", "--dataset", "digits", "--pipeline",
                        str(folder / "checkpoints" / "sd_digits"), "--num-captions", "40",
                        "--generations", "1", "--steps", "3", "--sd-epochs", "1",
                        "--sd-batch-size", "8", "--kid-subsets", "3", "--bootstrap", "0",
                        "--cas-epochs", "1", "--device", "cpu", "--data-dir", str(folder))
    assert result.returncode == 0, result.stderr
    records = json.loads((folder / "results" / "digits_loop_sd_metrics.json").read_text())
    assert [r["generation"] for r in records["generations"]] == [0, 1]
    for record in records["generations"]:
        for key in ("fid", "fid_floor", "class_consistency", "recall", "within_class_spread"):
            assert np.isfinite(record[key]), key
    assert records["generations"][1]["train_sources"] == {"gen_0": 40}
    for g in (0, 1):
        names = sorted(p.name for p in (folder / "digits_loop_sd" / f"gen_{g}").iterdir())
        assert names[:2] == ["test_00000.png", "test_00001.png"] and len(names) == 40
    captions = json.loads((folder / "digits_loop_sd" / "captions.json").read_text())
    assert len(captions["annotations"]) == 40


@pytest.mark.parametrize("stored", [(7, 9), (7, 9, 3)])
def test_pipeline_images_pad_the_data_and_crop_back_to_its_layout(stored):
    from stable_diffusion.miniature import from_pipeline_images, to_pipeline_images

    images = np.random.default_rng(0).integers(0, 256, (4, *stored), dtype=np.uint8)
    rgb = to_pipeline_images(images, 16)
    assert rgb.shape == (4, 16, 16, 3) and rgb.dtype == np.uint8
    assert rgb[:, :4].max() == 0 and rgb[:, :, :3].max() == 0  # black border (top 4, left 3)
    if len(stored) == 2:
        assert np.array_equal(rgb[:, 4:11, 3:12, 1], images)  # a grey image in every channel
    np.testing.assert_array_equal(from_pipeline_images(rgb, stored), images)
