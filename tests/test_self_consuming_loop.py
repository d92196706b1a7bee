"""The self-consuming loop on digits: two generations of a handful of images, as a user runs it
(folders, file names, the COCO caption file, what each generation trains on, Ctrl-C and resume)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from script_runner import run_script

import self_consuming_loop as loop
from clip_tools.captions import CAPTION_TEMPLATES
from clip_tools.clip_embedding import image_id_from_name
from dataio.artifacts import load_checkpoint, load_npz
from dataio.coco import read_first_captions
from dataio.data_sources import load_dataset
from evaluation import scoring
from models.image_gans import ImageGANConfig
from runtime.settings import configure
from runtime.stage import run_stage
from training import loop_regimes
from training.loop_regimes import REAL, ImageSet, Regime

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
N_IMAGES = 12
TINY = ["--dataset", "digits", "--device", "cpu", "--threads", "1", "--generations", "1",
        "--train-images", "640", "--held-out-fraction", "0.22", "--batch-size", "16",
        "--epochs-first", "2", "--patience", "1", "--epochs", "3", "--n-images", str(N_IMAGES),
        "--width", "16", "--feature-dim", "32", "--noise-dim", "8", "--kid-subsets", "5",
        "--bootstrap", "3", "--cas-epochs", "2"]
RUN = "digits_loop"


def run(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = run_script("self_consuming_loop.py", *TINY, "--data-dir", str(data_dir), *args)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def with_evaluator(source: Path, target: Path) -> Path:
    """A fresh data dir holding the digits evaluator already trained in ``source``."""
    evaluator = target / "checkpoints" / "evaluator"
    evaluator.mkdir(parents=True)
    shutil.copy(source / "checkpoints" / "evaluator" / "digits.pt", evaluator)
    return target


def run_in_process(data_dir: Path, *args: str, capsys: pytest.CaptureFixture
                   ) -> tuple[int, str, str]:
    """Run the stage in this process (no start-up cost) as `python self_consuming_loop.py`
    runs it, errors becoming exit codes: (exit code, stdout, stderr)."""
    argv = [*TINY, "--data-dir", str(data_dir), *args]
    code = 0
    try:
        run_stage(lambda: loop.main(argv))
    except SystemExit as stopped:
        code = int(stopped.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def loop_context(data, *args: str, seed: int = 0) -> tuple[loop.Loop, dict]:
    """The loop of one seed as main() builds it from a command line, and the settings."""
    values = configure(vars(loop), list(args))
    return loop.make_loop(values, seed, data, torch.device("cpu")), values


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One uninterrupted loop of generations 0 and 1: (data dir, stdout)."""
    data_dir = tmp_path_factory.mktemp("loop")
    return data_dir, run(data_dir).stdout


def test_generation_folders_hold_one_png_per_prompt_named_by_its_test_id(straight):
    data_dir, stdout = straight
    run_dir = data_dir / RUN
    for generation in (0, 1):
        files = sorted((run_dir / f"gen_{generation}").iterdir())
        assert [image_id_from_name(p) for p in files] == list(range(N_IMAGES))
        assert [p.name for p in files][:2] == ["test_00000.png", "test_00001.png"]
        saved = load_npz(run_dir / f"gen_{generation}.npz", {"x_gen": (3, "u"),
                                                            "idx_src": (1, "i"),
                                                            "y_src": (1, "i")})
        pngs = np.stack([np.array(Image.open(p)) for p in files])
        assert pngs.dtype == np.uint8 and pngs.shape == (N_IMAGES, 28, 28)
        np.testing.assert_array_equal(pngs, saved["x_gen"])
        assert saved["idx_src"].tolist() == list(range(N_IMAGES))
        assert saved["meta"]["generation"] == generation
    assert not np.array_equal(*(np.array(Image.open(run_dir / f"gen_{g}" / "test_00000.png"))
                                for g in (0, 1)))
    assert not list(run_dir.glob(".*partial*"))
    results = json.loads((data_dir / "results" / f"{RUN}_metrics.json").read_text())
    records = results["generations"]
    assert [r["generation"] for r in records] == [0, 1]
    assert [r["trained_on"] for r in records] == ["real", "gen 0"]
    assert all(r["feature_space"] == "evaluator" for r in records)
    for r in records:  # a metric is a number, or None with the reason it is undefined
        for key in loop.METRIC_KEYS:
            if key != "feature_space":
                assert np.isfinite(r[key]) if r[key] is not None else key in r["undefined"]
    # 12 prompts leave a class with one image: no intra-class FID, and its reason.
    assert all("class" in r["undefined"]["intra_fid"] for r in records)
    for key in ("fid", "precision", "recall", "vendi", "class_consistency"):
        assert all(r[f"{key}_ci95"][0] <= r[key] <= r[f"{key}_ci95"][1] for r in records), key
        if key != "fid":
            assert all(r[f"{key}_ci95"][0] >= 0 and r[f"{key}_ci95"][1] <= (
                1 if key != "vendi" else np.inf) for r in records), key
    assert "| 1 | gen 0 |" in stdout
    for figure in ("samples", "metrics"):
        assert (data_dir / "visualizations" / f"{RUN}_{figure}.png").stat().st_size > 0


def test_caption_file_is_coco_and_captions_name_the_prompts_class(straight):
    data_dir = straight[0]
    path = data_dir / RUN / "captions.json"
    document = json.loads(path.read_text())
    assert [image["id"] for image in document["images"]] == list(range(N_IMAGES))
    assert document["images"][3]["file_name"] == "test_00003.png"
    captions = read_first_captions(path)  # as extract_generation_embeddings.py reads it
    assert sorted(captions) == list(range(N_IMAGES))
    data = load_dataset("digits", str(data_dir))
    for image_id, caption in captions.items():
        assert caption.endswith(f"the digit {data.y_test[image_id]}")
        assert any(caption == t.format(f"the digit {data.y_test[image_id]}")
                   for t in CAPTION_TEMPLATES)
    assert len(set(captions.values())) > 1  # the templates vary with the seed
    saved = load_npz(data_dir / RUN / "gen_1.npz", {"y_src": (1, "i")})
    np.testing.assert_array_equal(saved["y_src"], data.y_test[:N_IMAGES])


def test_generation_1_trains_only_on_generation_0s_images(straight, tmp_path):
    data_dir = straight[0]
    checkpoints = data_dir / "checkpoints" / "loop" / RUN
    addition = load_npz(checkpoints / "addition_1.npz", loop.ADDITION_KEYS)
    assert len(addition["x"]) == 640 and (addition["origin"] == 0).all()
    data = load_dataset("digits", str(data_dir))
    # The labels are generation 0's, reshuffled; the images are generation 0's drawings of them.
    np.testing.assert_array_equal(np.sort(addition["y"]), np.sort(data.y_train[:640]))
    records = json.loads((data_dir / "results" / f"{RUN}_metrics.json").read_text())
    assert [r["train_sources"] for r in records["generations"]] == [{"real": 640},
                                                                    {"gen_0": 640}]
    # Made again from generation 0's checkpoint, in another folder: the same images.
    copy = tmp_path / "again"
    shutil.copytree(data_dir / "checkpoints", copy / "checkpoints")
    (copy / "checkpoints" / "loop" / RUN / "addition_1.npz").unlink()
    context, values = loop_context(data, *TINY, "--data-dir", str(copy))
    assert context.regime == Regime("replace", 640, 0.0) and context.config.width == 16
    assert context.start.parent.name == "start" and context.start.is_file()
    additions, _ = loop.additions_up_to(1, context, None, context.start, values)
    np.testing.assert_array_equal(additions[1].x, addition["x"])
    np.testing.assert_array_equal(additions[1].y, addition["y"])
    assert load_checkpoint(checkpoints / "gen_1.pt")["epoch"] == 3
    start = load_checkpoint(context.start)
    assert start["epoch"] <= 2 and start["history"]["score_name"] == "held-out FID"


def synthetic(n: int, made_by: int, start: int = 0) -> ImageSet:
    """n distinguishable images (pixel 0 holds a running number) made by ``made_by``."""
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, 0, 0] = np.arange(start, start + n) % 256
    return ImageSet(x, np.arange(n) % 10, np.full(n, made_by))


@pytest.mark.parametrize("fresh", [0.0, 0.3])
def test_each_regime_trains_generations_1_and_2_on_the_images_it_names(fresh):
    n = 300
    real_x = np.arange(2000 * 784, dtype=np.int64).reshape(2000, 28, 28).astype(np.uint8)
    real_y = np.arange(2000) % 10
    first = loop_regimes.first_addition(real_x, real_y, Regime("replace", n, fresh))
    expected = {  # per regime, the sources of generations 1 and 2
        "replace": [{"gen_0": n - round(fresh * n)}, {"gen_1": n - round(fresh * n)}],
        "accumulate": [{"real": n, "gen_0": n - round(fresh * n)},
                       {"real": n, "gen_0": n - round(fresh * n), "gen_1": n - round(fresh * n)}],
    }
    for regime_name in loop_regimes.REGIMES:
        regime = Regime(regime_name, n, fresh)
        additions = [first]
        for generation in (1, 2):
            labels = loop_regimes.addition_labels(first.y, generation, regime, 0)
            made = synthetic(len(labels), generation - 1, 1000 * generation).x
            fresh_index, _ = loop_regimes.fresh_indices(np.arange(n, 2000), generation, regime, 0)
            additions.append(loop_regimes.addition(made, labels, generation - 1, real_x, real_y,
                                                   fresh_index))
            train = loop_regimes.training_set(additions, regime, seed=0)
            sources = loop_regimes.sources(train)
            if regime_name == "accumulate-subsample":  # a fixed budget drawn from the pool
                assert len(train) == n and set(sources) <= {"real", "gen_0", "gen_1"}
                assert len(sources) == generation + 1  # every source of the pool is drawn on
                assert sources == loop_regimes.sources(
                    loop_regimes.training_set(additions, regime, seed=0))  # seeded
            else:
                wanted = dict(expected[regime_name][generation - 1])
                if fresh:  # fresh real images join each addition
                    wanted["real"] = wanted.get("real", 0) + round(fresh * n) * (
                        generation if regime_name == "accumulate" else 1)
                assert sources == dict(sorted(wanted.items(), key=lambda p: p[0] != "real")), \
                    (regime_name, generation)


def test_fresh_images_are_unseen_real_training_images_none_fresh_twice_while_they_last():
    """The fresh images of A_k are real training images with their labels from the pool outside
    generation 0's set and the held-out images; no image is fresh twice until the pool is used
    up, then the draws start again and say so."""
    data = load_dataset("digits", "data")
    regime = Regime("replace", 100, 0.3)  # 30 fresh images per generation
    first = loop_regimes.first_addition(data.x_train, data.y_train, regime)
    pool = np.arange(100, len(data.x_train) - 300)  # not A_0, not the last 300 (held out)
    real_rows = {data.x_train[i].tobytes(): (i, data.y_train[i]) for i in pool}
    seen: set[int] = set()
    for generation in range(1, len(pool) // 30 + 1):
        labels = loop_regimes.addition_labels(first.y, generation, regime, 0)
        fresh, repeats = loop_regimes.fresh_indices(pool, generation, regime, 0)
        assert not repeats and len(fresh) == 30 and set(fresh) <= set(pool)
        assert not set(fresh) & seen  # never fresh twice while the pool lasts
        seen |= set(fresh)
        if generation <= 2:
            made = synthetic(len(labels), 1, 50_000).x
            images = loop_regimes.addition(made, labels, generation - 1, data.x_train,
                                           data.y_train, fresh)
            assert len(images) == 100 and int((images.origin == REAL).sum()) == 30
            for image, label in zip(images.x[images.origin == REAL],
                                    images.y[images.origin == REAL], strict=True):
                assert real_rows[image.tobytes()][1] == label  # a pool image with its label
            assert np.all(np.bincount(labels, minlength=10) <= np.bincount(first.y, minlength=10))
    fresh, repeats = loop_regimes.fresh_indices(pool, len(pool) // 30 + 1, regime, 0)
    assert repeats and set(fresh) <= set(pool)  # the pool ran out: said, not hidden


def test_truncation_shrinks_the_spread_of_the_samples():
    torch.manual_seed(0)
    model = loop.build_model(10, ImageGANConfig(width=8, feature_dim=16, noise_dim=8))
    labels = np.repeat(np.arange(10), 40)
    spreads = []
    for psi in (0.0, 1.0, 0.3):
        images = loop.generate(model, labels, 10, 5, torch.device("cpu"), 100, psi)
        spreads.append(np.mean([images[labels == c].astype(np.float64).var(axis=0).mean()
                                for c in range(10)]))
    assert spreads[0] > spreads[1] > spreads[2] > 0
    with pytest.raises(ValueError, match="not to InfoGAN"):
        from models.image_gans import build_image_gan

        info = build_image_gan("infogan", 10, 10, ImageGANConfig(width=8, feature_dim=16))
        loop.generate(info, labels[:5], 10, 0, torch.device("cpu"), 5, 0.5)


def test_within_class_variance_of_constructed_features():
    features = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.0, 3.0], [1.0, 5.0], [9.0, 9.0]])
    labels = np.array([0, 0, 1, 1, 1, 2])  # class 2 has one image: no variance, left out
    # class 0: tr Cov = var(0, 2) = 2; class 1: var(1, 3, 5) = 4; mean 3.
    assert scoring.within_class_variance(features, labels) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        scoring.within_class_variance(features[:1], labels[:1])


def default_sigint() -> None:
    """Background shells start children with SIGINT ignored; restore Python's handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("extra", "name"), [
    ((), RUN),
    (("--regime", "accumulate-subsample", "--fresh-fraction", "0.25", "--seeds", "1"),
     "digits_loop_accsub_fresh25_seed1")], ids=["replace", "accumulate-subsample-seed1"])
def test_ctrl_c_in_generation_1_resumes_there_and_equals_the_straight_run(straight, tmp_path,
                                                                          extra, name):
    if extra:  # the uninterrupted run of this regime and seed
        reference = with_evaluator(straight[0], tmp_path / "straight")
        run(reference, *extra)
    else:
        reference = straight[0]
    data_dir = with_evaluator(straight[0], tmp_path / "interrupted")
    checkpoint = data_dir / "checkpoints" / "loop" / name / "gen_1.pt"
    proc = subprocess.Popen([sys.executable, "self_consuming_loop.py", *TINY, "--data-dir",
                             str(data_dir), *extra], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the loop ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert 1 <= load_checkpoint(checkpoint)["epoch"] < 3
    assert (data_dir / name / "gen_0").is_dir() and not (data_dir / name / "gen_1").exists()
    gen_0_time = (data_dir / name / "gen_0" / "test_00000.png").stat().st_mtime_ns

    resumed = run(data_dir, *extra)
    assert f"gen 1: resumed from {checkpoint} after epoch" in resumed.stdout
    assert "gen 0: epoch" not in resumed.stdout and "gen 1: trained on gen 0" in resumed.stdout
    assert (data_dir / name / "gen_0" / "test_00000.png").stat().st_mtime_ns == gen_0_time
    for generation in (0, 1):
        ours = load_npz(data_dir / name / f"gen_{generation}.npz", {"x_gen": (3, "u")})
        theirs = load_npz(reference / name / f"gen_{generation}.npz", {"x_gen": (3, "u")})
        np.testing.assert_array_equal(ours["x_gen"], theirs["x_gen"])
    ours, theirs = (json.loads((d / "results" / f"{name}_metrics.json").read_text())
                    for d in (data_dir, reference))
    assert [r["train_sources"] for r in ours["generations"]] == [
        r["train_sources"] for r in theirs["generations"]]


def test_a_longer_loop_continues_from_the_finished_generations(straight, tmp_path, capsys):
    data_dir = tmp_path / "longer"
    shutil.copytree(straight[0], data_dir)
    code, out, err = run_in_process(data_dir, "--generations", "2", capsys=capsys)
    assert code == 0, err
    assert "gen 0: trained" not in out and "gen 1: trained" not in out
    assert "gen 2: trained on gen 1" in out
    records = json.loads((data_dir / "results" / f"{RUN}_metrics.json").read_text())
    assert records["generations"][2]["train_sources"] == {"gen_1": 640}
    records = json.loads((data_dir / "results" / f"{RUN}_metrics.json").read_text())
    assert [r["generation"] for r in records["generations"]] == [0, 1, 2]
    assert len(list((data_dir / RUN / "gen_2").iterdir())) == N_IMAGES
    figure = data_dir / "visualizations" / f"{RUN}_samples.png"
    height = Image.open(figure).size[1]
    # Run again with fewer generations: nothing trains, and the figure and the table still show
    # every finished generation, as the metrics file does.
    code, out, err = run_in_process(data_dir, "--generations", "1", capsys=capsys)
    assert code == 0, err
    assert not any(f"gen {g}: trained" in out for g in range(3)) and "| 2 | gen 1 |" in out
    assert Image.open(figure).size[1] == height


def test_other_settings_and_impossible_sizes_are_refused(straight, capsys):
    data_dir = straight[0]
    code, _, err = run_in_process(data_dir, "--width", "12", capsys=capsys)
    assert code == 1 and "width: now 12, there 16" in err
    code, _, err = run_in_process(data_dir, "--n-images", "451", capsys=capsys)
    assert code == 1 and "--n-images 451: digits has only 450 test images" in err
    code, _, err = run_in_process(data_dir, "--fresh-fraction", "1.5", capsys=capsys)
    assert code == 2 and "--fresh-fraction 1.5: must be <= 1" in err


def test_fresh_data_loop_from_scratch_runs_in_its_own_folder(straight, tmp_path, capsys):
    data_dir = with_evaluator(straight[0], tmp_path / "fresh")
    code, out, err = run_in_process(data_dir, "--fresh-fraction", "0.5", "--no-warm-start",
                                    "--epochs", "1", capsys=capsys)
    assert code == 0, err
    run_dir = data_dir / "digits_loop_fresh50_scratch"
    assert sorted(p.name for p in run_dir.iterdir()) == ["captions.json", "gen_0", "gen_0.npz",
                                                        "gen_1", "gen_1.npz"]
    addition = load_npz(data_dir / "checkpoints" / "loop" / run_dir.name / "addition_1.npz",
                        loop.ADDITION_KEYS)
    assert int((addition["origin"] == REAL).sum()) == 320
    # Fresh: real images outside generation 0's 640 and the held-out last 296 (0.22 of 1347).
    fresh = np.array(addition["meta"]["fresh_indices"])
    data = load_dataset("digits", str(data_dir))
    assert len(fresh) == 320 and fresh.min() >= 640 and fresh.max() < 1347 - 296
    np.testing.assert_array_equal(addition["x"][addition["origin"] == REAL], data.x_train[fresh])
    assert addition["meta"]["fresh_repeats"] is False
    records = json.loads((data_dir / "results" / f"{run_dir.name}_metrics.json").read_text())
    assert records["generations"][1]["fresh_repeats"] is False
    assert records["generations"][1]["trained_on"] == "gen 0 + 320 real"
    assert records["generations"][1]["train_sources"] == {"real": 320, "gen_0": 320}
    assert records["loop_settings"]["warm_start"] is False


def test_seeds_run_one_loop_each_and_share_a_start_per_seed(straight, tmp_path, capsys):
    """--seeds 0,1 beside a finished seed 0: seed 0 trains nothing, seed 1 is a loop of its
    own; a loop of another regime reuses seed 1's converged start instead of training it."""
    data_dir = tmp_path / "seeds"
    shutil.copytree(straight[0], data_dir)
    code, out, err = run_in_process(data_dir, "--seeds", "0,1", capsys=capsys)
    assert code == 0, err
    assert out.count("gen 0: epoch") >= 1 and "digits_loop_seed1" in out
    starts = sorted((data_dir / "checkpoints" / "loop" / "start").iterdir())
    assert [p.name.split("_")[1] for p in starts] == ["seed0", "seed1"]
    code, out, err = run_in_process(data_dir, "--seeds", "1", "--regime", "accumulate",
                                    capsys=capsys)
    assert code == 0, err
    assert "gen 0: epoch" not in out and "gen 1: trained on gen 0 + 640 real" in out
    figure = data_dir / "visualizations" / "digits_loop_accumulate_metrics.png"
    assert figure.stat().st_size > 0
    # One floor for every loop, whichever seed a run lists first (seed 1 alone drew another).
    floors = {json.loads((data_dir / "results" / f"{name}_metrics.json").read_text())[
        "generations"][0]["fid_floor"] for name in ("digits_loop", "digits_loop_seed1",
                                                    "digits_loop_accumulate_seed1")}
    assert len(floors) == 1, floors


def test_a_generation_folder_holds_only_its_pngs_and_a_foreign_folder_is_not_replaced(tmp_path):
    images = np.zeros((3, 8, 8), dtype=np.uint8)
    folder = tmp_path / "gen_0"
    loop.write_image_folder(folder, images)
    assert sorted(p.name for p in folder.iterdir()) == [f"test_{i:05d}.png" for i in range(3)]
    loop.write_image_folder(folder, images[:2] + 7)  # a stage's folder is replaced
    assert sorted(p.name for p in folder.iterdir()) == [f"test_{i:05d}.png" for i in range(2)]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(loop.StageError, match="did not write"):
        loop.write_image_folder(folder, images)
    assert (folder / "notes.txt").read_text() == "mine" and len(list(folder.iterdir())) == 3


# ---------------------------------------------------------------- refused before any work
@pytest.mark.parametrize(("flags", "code", "words"), [
    (("--fresh-fraction", "0.0005"), 2, "--fresh-fraction 0.0005 of --train-images 640 rounds "
                                        "to 0 fresh images per generation"),
    (("--bootstrap", "1"), 2, "--bootstrap 1: an interval needs at least 2 resamples"),
    (("--bootstrap", "1000000000"), 2, "--bootstrap 1000000000: must be <= 10000"),
    (("--seeds", "4294967296"), 2, "--seeds 4294967296: must be <= 4294967295"),
    (("--fresh-fraction", "0.9"), 1, "576 fresh images per generation, more than the 411 "
                                     "training images outside generation 0's set"),
])
def test_settings_the_loop_cannot_run_are_refused_before_it_writes(tmp_path, capsys, flags,
                                                                    code, words):
    """Each stops with one line and nothing written: no folder, no captions, no checkpoint."""
    got, _, err = run_in_process(tmp_path, *flags, capsys=capsys)
    assert got == code and words in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_users_folder_where_a_later_generation_goes_is_refused_before_training(
        straight, tmp_path, capsys):
    """<run>/gen_2 holding a user's files: refused before generation 0 trains, not after
    generation 2 (the folders of every generation are checked first)."""
    data_dir = with_evaluator(straight[0], tmp_path / "data")
    (data_dir / RUN / "gen_2").mkdir(parents=True)
    (data_dir / RUN / "gen_2" / "my_image.png").write_bytes(b"mine")
    code, out, err = run_in_process(data_dir, "--generations", "2", capsys=capsys)
    assert code == 1 and "gen_2: an existing folder this project's stages did not write" in err
    assert "epoch" not in out and not (data_dir / "checkpoints" / "loop").exists()
    assert (data_dir / RUN / "gen_2" / "my_image.png").read_bytes() == b"mine"


def test_the_docstrings_example_runs_with_the_default_held_out_share(straight, tmp_path,
                                                                     capsys):
    """The example of the stage's docstring on digits (1,347 training images), with the default
    --held-out-fraction, trains its generations (smaller networks and fewer epochs here)."""
    data_dir = with_evaluator(straight[0], tmp_path / "data")
    example = ["--dataset", "digits", "--generations", "1", "--n-images", "50",
               "--train-images", "500"]
    small = ["--epochs-first", "1", "--epochs", "1", "--width", "8", "--feature-dim", "16",
             "--noise-dim", "8", "--kid-subsets", "5", "--bootstrap", "0", "--cas-epochs", "1",
             "--device", "cpu", "--data-dir", str(data_dir)]
    code = 0
    try:
        run_stage(lambda: loop.main([*example, *small]))
    except SystemExit as stopped:
        code = int(stopped.code)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "gen 1: trained on gen 0" in captured.out
    start = next((data_dir / "checkpoints" / "loop" / "start").iterdir())
    assert load_checkpoint(start)["settings"]["held_out_fraction"] == 0.05  # 67 of 1,347


def test_a_tagged_loop_is_named_after_its_tag_before_the_seed():
    values = configure(vars(loop), ["--tag", "wide", "--regime", "accumulate"])
    regime = loop.Regime("accumulate", values["train_images"], 0.0)
    assert loop.run_name(loop.pick(loop.LoopRun, values, seed=2), regime) == \
        "fashion-mnist_loop_accumulate@wide_seed2"
    assert loop.run_name(loop.pick(loop.LoopRun, values, seed=0), regime) == \
        "fashion-mnist_loop_accumulate@wide"


def test_the_loop_logs_each_generations_training_and_metrics_for_tensorboard(straight):
    """TensorBoard's reader finds generation 0's epochs (held-out FID) and the loop's metrics
    by generation, equal to the results file's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data_dir, _ = straight
    runs = data_dir / "runs" / "loop" / RUN
    first = EventAccumulator(str(runs / "gen_0"), size_guidance={"scalars": 0}).Reload()
    assert "epochs/score" in first.Tags()["scalars"] and "steps/g/loss" in first.Tags()["scalars"]
    metrics = EventAccumulator(str(runs / "generations"), size_guidance={"scalars": 0}).Reload()
    fids = {e.step: e.value for e in metrics.Scalars("generations/fid")}
    records = json.loads((data_dir / "results" / f"{RUN}_metrics.json").read_text())
    assert fids == pytest.approx({r["generation"]: r["fid"] for r in records["generations"]},
                                 rel=1e-6)
