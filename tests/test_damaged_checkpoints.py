"""Checkpoints that load but are damaged inside (a tensor missing, settings that are not a dict)
and save errors of foreign writers: one line naming the file, never a traceback, earlier outputs
kept. The GAN loop's checks serve Plan 1, Plan 2 and the self-consuming loop alike."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from script_runner import run_script
from sklearn.decomposition import PCA

from dataio.artifacts import load_checkpoint, make_meta, restoring, save_checkpoint, save_npz
from dataio.data_sources import load_dataset
from models import vector_gans
from runtime.stage import StageError
from training.gans import GANTrainer, TrainerSettings

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_settings_that_are_not_a_dict_are_refused_with_the_advice(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "settings": "epochs=3"})
    with pytest.raises(StageError) as error:
        load_checkpoint(path, advice="delete it to start again")
    assert str(error.value) == (f"{path}: its settings are a str, not a dict; delete it to start "
                                "again")
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "settings": {"epochs": 3}})
    assert load_checkpoint(path)["settings"] == {"epochs": 3}


def test_restoring_turns_a_state_dict_error_into_one_line(tmp_path):
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(StageError) as error, restoring(tmp_path / "x.pt"):
        layer.load_state_dict({"weight": torch.zeros(2, 2)})  # no bias
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'x.pt'} holds weights")
    assert "Missing key" in message and message.endswith(")")
    with restoring(tmp_path / "x.pt"):  # a good state passes untouched
        layer.load_state_dict({"weight": torch.ones(2, 2), "bias": torch.ones(2)})
    assert float(layer.bias.detach().sum()) == 2.0


def finished_gan(path: Path) -> GANTrainer:
    """A tiny vector GAN's checkpoint as the GAN loop writes it (with a best epoch's weights)."""
    torch.manual_seed(0)
    sizes, config = vector_gans.Sizes(4, 3), vector_gans.VectorGANConfig(hidden=8, depth=1)
    trainer = GANTrainer(vector_gans.build_vector_gan("wgan_gp", sizes, config), TrainerSettings(),
                         vector_gans.architecture("wgan_gp", sizes, config))
    trainer.best_ema = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer.save(path, {"epochs": 2})
    return trainer


@pytest.mark.parametrize("damage", ["model tensor", "best_ema tensor", "settings", "history"])
def test_a_gan_checkpoint_damaged_inside_is_one_line_at_resume(tmp_path, damage):
    path = tmp_path / "gan.pt"
    trainer = finished_gan(path)
    state = load_checkpoint(path)
    if damage == "model tensor":
        state["model"].pop(next(iter(state["model"])))
    elif damage == "best_ema tensor":
        state["best_ema"].pop(next(iter(state["best_ema"])))
    elif damage == "settings":
        state["settings"] = ["epochs", 2]
    else:
        state["epoch"] = None
    torch.save(state, path)
    with pytest.raises(StageError) as error:
        trainer.restore(path, {"epochs": 2})
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    if damage == "best_ema tensor":  # nor is a model rebuilt from it
        with pytest.raises(StageError, match="cannot rebuild its model"):
            vector_gans.from_checkpoint(path)


def test_an_undamaged_gan_checkpoint_still_resumes(tmp_path):
    path = tmp_path / "gan.pt"
    trainer = finished_gan(path)
    trainer.restore(path, {"epochs": 2})
    assert trainer.best_ema is not None and vector_gans.from_checkpoint(path) is not None


# ---------------------------------------------------------------- the small CLIP's save
TINY_CLIP = ["--dataset", "digits", "--device", "cpu", "--epochs", "1", "--limit", "256",
             "--batch-size", "32", "--hidden-size", "16", "--heads", "2", "--vision-layers",
             "1", "--text-layers", "1", "--projection-dim", "8", "--threads", "1"]


def limit_file_size() -> None:
    """A 20 kB file-size limit; writing past it raises EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock-")}


def test_a_file_size_limit_while_saving_the_clip_is_one_line_and_keeps_the_old_model(tmp_path):
    """The finished checkpoint (236 kB) exists, so the rerun only saves the model with
    save_pretrained, whose 65 kB safetensors file passes the 20 kB limit: safetensors' own
    error type, not an OSError."""
    run = [sys.executable, "train_small_clip.py", *TINY_CLIP, "--data-dir", str(tmp_path)]
    first = run_script(*run[1:])  # in this process; the limited rerun needs its own
    assert first.returncode == 0, first.stderr
    before = snapshot(tmp_path)
    result = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV,
                            preexec_fn=limit_file_size)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "clip_digits: the model could not be saved" in errors[0]
    assert "File too large" in errors[0] and "what was there before is kept" in errors[0]
    assert snapshot(tmp_path) == before
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".partial-" in p.name]


# ---------------------------------------------------------------- bench_plan2.py
def bench_plan2(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_script("bench/bench_plan2.py", "--dataset", "digits", "--data-dir", str(data_dir),
                      "--threads", "1", *args)


@pytest.mark.parametrize(("pairs", "words"), [
    ("ae_basic", "expected SOURCE:TARGET"), ("ae_basic:", "expected SOURCE:TARGET"),
    ("a:b:c", "expected SOURCE:TARGET"), ("vae:vae", "a translation needs two different encoders")])
def test_bench_plan2_checks_its_pairs_before_anything_trains(tmp_path, pairs, words):
    data_dir = tmp_path / "data"
    result = bench_plan2(data_dir, "--pairs", pairs)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"--pairs {pairs}: {words}" in result.stderr
    assert not data_dir.exists()


def test_bench_plan2_stops_in_one_line_when_its_stage_fails(tmp_path):
    """On an embedding file of its own (8 PCA dimensions of the digits), the bench fits the
    baselines, then plan2_gan_training.py refuses a flag: the bench names the stage and its
    exit code, once, after the stage's own message, and leaves the embeddings as they were."""
    data_dir = tmp_path / "data"
    data = load_dataset("digits")
    pixels_train, pixels_test = (x.reshape(len(x), -1) / 255.0 for x in (data.x_train,
                                                                          data.x_test))
    pca = PCA(8, random_state=0).fit(pixels_train)
    source = save_npz(data_dir / "embeddings" / "digits_pca.npz",
                      {"z_train": pca.transform(pixels_train).astype(np.float32),
                       "y_train": data.y_train, "y_test": data.y_test,
                       "z_test": pca.transform(pixels_test).astype(np.float32)},
                      make_meta("tests", {}, "digits", 0))
    before = source.read_bytes()
    # A process of its own: the stage's message goes to the bench's standard error.
    result = subprocess.run([sys.executable, "bench/bench_plan2.py", "--dataset", "digits",
                             "--data-dir", str(data_dir), "--threads", "1", "--encoders", "pca",
                             "--flows", "", "--pairs", "", "--seeds", "0", "--samples", "200",
                             "--stage-args=--no-such-flag"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=ENV)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors[-1] == ("error: plan2_gan_training.py stopped with exit code 2 (its message is "
                          "above)")
    assert source.read_bytes() == before


@pytest.mark.parametrize(("bench", "flags", "words"), [
    ("bench/bench_loop_study.py", ["--stage-args", "--width '8"],
     "--stage-args \"--width '8\": No closing quotation"),
    ("bench/bench_plan2_target.py", ["--candidates", "--lr 1e-3,--n-critic \"5"],
     "--candidates '--n-critic \"5': No closing quotation"),
    ("bench/bench_plan2_target.py", ["--encoders", "bogus"], "--encoders bogus: must be one of"),
])
def test_a_bench_refuses_flags_it_cannot_pass_on_before_anything_trains(tmp_path, bench, flags,
                                                                       words):
    """Flags a bench hands to its stages (or a name no stage makes) are read first: one line,
    exit 2, no folder made, instead of a traceback after an encoder or evaluator has trained."""
    result = run_script(bench, "--data-dir", str(tmp_path / "bench"), *flags)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "bench").exists()
