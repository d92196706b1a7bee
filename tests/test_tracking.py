"""TensorBoard logs of a training stage as a user runs it: on by default under data/runs/,
read back with tensorboard's own reader; --no-tensorboard writes none; --wandb without the package
stops in one line."""

from __future__ import annotations

import importlib.util

import pytest
from script_runner import run_script

ENCODER = ["--dataset", "digits", "--device", "cpu", "--models", "ae_basic", "--limit", "256",
           "--embedding-dim", "8", "--epochs", "2"]


def test_the_encoder_stage_logs_each_epoch_and_its_reconstructions(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_script("encoder_models.py", *ENCODER, "--data-dir", str(tmp_path), "--tag",
                        "t1")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "runs" / "encoders" / "digits_ae_basic@t1"
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}).Reload()
    losses = events.Scalars("epochs/loss")
    assert [e.step for e in losses] == [1, 2]
    assert losses[1].value < losses[0].value  # the printed losses, falling
    assert [e.step for e in events.Images("reconstructions")] == [2]
    text = events.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"tag": "t1"' in text and '"epochs": 2' in text


def test_no_tensorboard_writes_no_log(tmp_path):
    result = run_script("encoder_models.py", *ENCODER, "--data-dir", str(tmp_path),
                        "--no-tensorboard")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "embeddings" / "digits_ae_basic.npz").is_file()
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_package_stops_in_one_line(tmp_path):
    result = run_script("encoder_models.py", *ENCODER, "--data-dir", str(tmp_path), "--wandb",
                        "my-project")
    assert result.returncode == 1
    assert "--wandb my-project: the wandb package is not installed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wandb_without_tensorboard_is_refused(tmp_path):
    result = run_script("encoder_models.py", *ENCODER, "--data-dir", str(tmp_path), "--wandb",
                        "p", "--no-tensorboard")
    assert result.returncode == 1 and "mirrors the TensorBoard log" in result.stderr
