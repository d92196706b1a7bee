"""One battery over every encoder, and the stage script end to end on digits."""

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from script_runner import run_script

import encoder_models
from dataio.artifacts import load_checkpoint, load_embeddings
from models import encoders
from models.encoders import FLIP_KEEPS_CLASS, EncoderConfig, build_encoder
from runtime.settings import configure, pick
from runtime.stage import StageError

ROOT = Path(__file__).resolve().parent.parent
NAMES = encoders.ENCODER_NAMES
# One thread per stage process: tiny batches gain nothing from more, and lose much when the
# machine is busy.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_stage(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = run_script("encoder_models.py", "--dataset", "digits", "--data-dir", str(data_dir),
                        "--device", "cpu", *args)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def small_config(dataset: str) -> EncoderConfig:
    """The default hyper-parameters with 8-d embeddings, for images of ``dataset``."""
    return EncoderConfig(embedding_dim=8, flips=FLIP_KEEPS_CLASS[dataset])


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 28, 28, generator=gen), torch.arange(16) % 4


@pytest.mark.parametrize("name", NAMES)
def test_encoder_battery(name, batch, tmp_path):
    x, y = batch
    torch.manual_seed(0)
    model = build_encoder(name, small_config("fashion-mnist"))
    model.eval()
    assert model.embed(x).shape == (16, 8)
    if model.kind == "autoencoder":
        recon = model.reconstruct(x)
        assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    model.train()
    loss = model.training_loss(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss.backward()
    optimizer.step()
    changed = [k for k, v in model.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    trainable = [k for k, p in model.named_parameters()]
    assert set(trainable) <= set(changed), set(trainable) - set(changed)
    model.eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    clone = build_encoder(name, small_config("fashion-mnist"))
    clone.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    clone.eval()
    with torch.no_grad():
        assert torch.equal(model.embed(x), clone.embed(x))


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(StageError, match="valid names: ae_basic, ae_intermediate"):
        build_encoder("resnet", small_config("digits"))


def test_augment_keeps_range_and_shape_and_varies():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    a, b = encoders.augment(x, flips=True), encoders.augment(x, flips=True)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, b)


def test_augment_without_randomness_is_identity_or_mirror():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    still = dict(max_zoom=1.0, max_shift=0.0, jitter=0.0, gamma=0.0, noise=0.0)
    assert torch.allclose(encoders.augment(x, flips=False, **still), x, atol=1e-5)
    flipped = encoders.augment(x, flips=True, **still)
    mirrored = torch.tensor([torch.allclose(f, m, atol=1e-5)
                             for f, m in zip(flipped, x.flip(-1), strict=True)])
    same = torch.tensor([torch.allclose(f, o, atol=1e-5)
                         for f, o in zip(flipped, x, strict=True)])
    assert bool((mirrored ^ same).all()) and 10 < int(mirrored.sum()) < 54


def test_augment_zoom_magnifies_by_at_most_max_zoom():
    x = torch.zeros(256, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0  # a centred 8x8 square: area 64
    torch.manual_seed(0)
    out = encoders.augment(x, flips=False, max_zoom=1.4, max_shift=0.0, jitter=0.0,
                                 gamma=0.0, noise=0.0)
    area = out.sum(dim=(1, 2, 3))
    assert bool((area > 64 - 1e-3).all()) and bool((area < 64 * 1.4**2 + 1e-3).all())
    assert float(area.max()) > 64 * 1.3**2  # the range of zooms is used


def test_augment_gamma_bends_intensities_within_its_range():
    x = torch.full((512, 1, 28, 28), 0.5)
    torch.manual_seed(0)
    out = encoders.augment(x, flips=False, max_zoom=1.0, max_shift=0.0, jitter=0.0,
                                 gamma=0.7, noise=0.0)
    exponents = torch.log(out[:, 0, 14, 14]) / math.log(0.5)  # 0.5 ** g = out
    assert torch.allclose(out, out[:, :, 14:15, 14:15].expand_as(out))  # one curve per image
    assert float(exponents.min()) >= math.exp(-0.7) - 1e-4
    assert float(exponents.max()) <= math.exp(0.7) + 1e-4
    assert float(exponents.min()) < 0.6 and float(exponents.max()) > 1.8


def test_one_cycle_schedule():
    values = configure(vars(encoder_models), ["--learning-rate", "2e-3", "--lr-schedule",
                                              "one-cycle"])
    train = pick(encoder_models.EncoderTraining, values)
    rates = [encoder_models.learning_rate_at(step, 1000, train) for step in range(1000)]
    assert rates[0] == pytest.approx(2e-3 / 25) and max(rates) == pytest.approx(2e-3)
    assert rates[100] == pytest.approx(2e-3) and rates[-1] < 1e-7
    assert all(a <= b for a, b in zip(rates[:100], rates[1:101], strict=True))
    assert all(a >= b for a, b in zip(rates[100:-1], rates[101:], strict=True))
    # halfway through the decay, cos(pi / 2) = 0 leaves half the peak
    assert rates[550] == pytest.approx(1e-3)
    constant = dataclasses.replace(train, lr_schedule="constant")
    assert encoder_models.learning_rate_at(999, 1000, constant) == 2e-3


def test_stage_writes_valid_files_for_every_encoder(tmp_path):
    result = run_stage(tmp_path, "--epochs", "1", "--limit", "512", "--embedding-dim", "16")
    for name in NAMES:
        data = load_embeddings(tmp_path / "embeddings" / f"digits_{name}.npz")
        assert data["z_train"].shape == (512, 16) and data["z_test"].shape == (450, 16)
        assert data["z_train"].dtype == np.float32 and data["y_train"].dtype == np.int64
        meta = data["meta"]
        assert meta["encoder"] == name and meta["seed"] == 0 and meta["dataset"] == "digits"
        assert meta["settings"]["limit"] == 512 and meta["epochs_trained"] == 1
        assert load_checkpoint(tmp_path / "checkpoints" / "encoders" / f"digits_{name}.pt")[
            "epoch"] == 1
    for name in ("ae_basic", "ae_intermediate", "ae_advanced", "vae"):
        assert (tmp_path / "visualizations" / f"digits_{name}_reconstructions.png").stat().st_size
    assert "wrote" in result.stdout


def test_unknown_model_on_command_line_fails_cleanly(tmp_path):
    result = run_stage(tmp_path, "--models", "ae_basic,gan", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --models gan: must be one of ae_basic, "
                                     "ae_intermediate, ae_advanced, vae, ntxent, triplet")
    assert not tmp_path.exists() or not any(tmp_path.rglob("*.npz"))


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    models = ("--models", "ae_basic,vae,ntxent", "--limit", "128")
    run_stage(tmp_path / "straight", "--epochs", "2", *models)
    run_stage(tmp_path / "resumed", "--epochs", "1", *models)
    second = run_stage(tmp_path / "resumed", "--epochs", "2", *models)
    assert "resuming" in second.stdout and "continuing at epoch 2/2" in second.stdout
    for name in ("ae_basic", "vae", "ntxent"):
        a = load_embeddings(tmp_path / "straight" / "embeddings" / f"digits_{name}.npz")
        b = load_embeddings(tmp_path / "resumed" / "embeddings" / f"digits_{name}.npz")
        np.testing.assert_allclose(a["z_test"], b["z_test"], rtol=1e-5, atol=1e-5)


def test_streamed_training_equals_training_from_memory(tmp_path):
    """Past --max-device-images the set stays on the CPU and a DataLoader with workers gathers
    each batch: the same batches, the same noise, the same embeddings."""
    models = ("--models", "vae,ntxent", "--limit", "128", "--epochs", "1")
    run_stage(tmp_path / "memory", *models)
    streamed = run_stage(tmp_path / "streamed", *models, "--max-device-images", "100",
                         "--loader-workers", "2")
    assert "DataLoader" in streamed.stdout
    for name in ("vae", "ntxent"):
        a = load_embeddings(tmp_path / "memory" / "embeddings" / f"digits_{name}.npz")
        b = load_embeddings(tmp_path / "streamed" / "embeddings" / f"digits_{name}.npz")
        np.testing.assert_array_equal(a["z_test"], b["z_test"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seeded_cuda_runs_repeat_exactly(tmp_path):
    """cuDNN convolutions and atomics are not deterministic unless asked to be: a seeded run, a
    second identical run, and a resumed run must give the same embeddings on CUDA."""
    models = ("--models", "ae_advanced,ntxent", "--limit", "256", "--device", "cuda")
    run_stage(tmp_path / "a", "--epochs", "2", *models)
    run_stage(tmp_path / "b", "--epochs", "2", *models)
    run_stage(tmp_path / "c", "--epochs", "1", *models)
    run_stage(tmp_path / "c", "--epochs", "2", *models)
    for name in ("ae_advanced", "ntxent"):
        a, b, c = (load_embeddings(tmp_path / run / "embeddings" / f"digits_{name}.npz")
                   for run in "abc")
        np.testing.assert_array_equal(a["z_test"], b["z_test"])
        np.testing.assert_array_equal(a["z_test"], c["z_test"])


def test_changed_settings_refuse_to_resume(tmp_path):
    run_stage(tmp_path, "--epochs", "1", "--limit", "64", "--models", "ae_basic")
    result = run_stage(tmp_path, "--epochs", "2", "--limit", "64", "--models", "ae_basic",
                       "--embedding-dim", "8", check=False)
    assert result.returncode == 1 and "embedding_dim: now 8, checkpoint 32" in result.stderr


def test_one_cycle_run_refuses_to_resume_with_other_epochs(tmp_path):
    args = ("--limit", "64", "--models", "ae_basic", "--lr-schedule", "one-cycle")
    run_stage(tmp_path, "--epochs", "1", *args)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "encoders" / "digits_ae_basic.pt")
    # training used the schedule: the one step (64 images) runs at the warm-up start, 1e-3 / 25
    assert ckpt["optimizer"]["param_groups"][0]["lr"] < 1e-4
    result = run_stage(tmp_path, "--epochs", "2", *args, check=False)
    assert result.returncode == 1 and "epochs: now 2, checkpoint 1" in result.stderr
    bad = run_stage(tmp_path, "--epochs", "1", "--limit", "64", "--lr-schedule", "step",
                    check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --lr-schedule step: must be one of constant, one-cycle"


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    run_stage(tmp_path, "--epochs", "1", "--limit", "64", "--models", "ae_basic")
    ckpt = tmp_path / "checkpoints" / "encoders" / "digits_ae_basic.pt"
    state = load_checkpoint(ckpt)
    state["model"].pop(next(iter(state["model"])))  # as if a layer had been renamed
    torch.save(state, ckpt)
    result = run_stage(tmp_path, "--epochs", "2", "--limit", "64", "--models", "ae_basic",
                       check=False)
    assert result.returncode == 1 and "another architecture" in result.stderr
    assert str(ckpt) in result.stderr and "Traceback" not in result.stderr


def default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and children inherit that; give the
    stage the default disposition, so that Python turns SIGINT into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_last_epoch_and_resumes(tmp_path):
    args = ["--models", "ae_intermediate", "--epochs", "3", "--batch-size", "8", "--limit", "320"]
    ckpt = tmp_path / "checkpoints" / "encoders" / "digits_ae_intermediate.pt"
    proc = subprocess.Popen([sys.executable, "encoder_models.py", "--dataset", "digits",
                             "--data-dir", str(tmp_path), "--device", "cpu", *args],
                            cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    done = load_checkpoint(ckpt)["epoch"]
    assert 1 <= done < 3
    result = run_stage(tmp_path, *args)
    assert f"continuing at epoch {done + 1}/3" in result.stdout
    assert load_checkpoint(ckpt)["epoch"] == 3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints" / "encoders" / "digits_ae_basic.pt"
    argv = ["--dataset", "digits", "--data-dir", str(tmp_path), "--models", "ae_basic",
            "--limit", "64"]
    encoder_models.main([*argv, "--epochs", "1"])
    good = ckpt.read_bytes()
    original = encoders.Autoencoder.training_loss
    monkeypatch.setattr(encoders.Autoencoder, "training_loss",
                        lambda self, x, y: original(self, x, y) * float("nan"))
    with pytest.raises(StageError, match="loss became nan at epoch 2"):
        encoder_models.main([*argv, "--epochs", "2"])
    assert ckpt.read_bytes() == good
