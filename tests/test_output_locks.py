"""Two runs writing the same outputs at once are refused (a lock file per stage and data folder,
per loop): the second stops with one line naming the first, before it writes anything; the lock
is let go when the first ends or its main returns."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flows
from dataio import artifacts
from dataio.data_sources import load_dataset
from runtime.stage import StageError, run_stage

ROOT = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time; from pathlib import Path; from dataio import artifacts; "
        "artifacts.hold_output_lock(Path(sys.argv[1]), sys.argv[2]); print('held', flush=True); "
        "time.sleep(120)")
TRY = ("import fcntl, sys; f = open(sys.argv[1], 'a'); "
       "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')")


def holder(lock: Path, what: str) -> subprocess.Popen:
    """Another process holding ``lock``, as a running stage holds it."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), what], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def lock_is_free(lock: Path) -> bool:
    result = subprocess.run([sys.executable, "-c", TRY, str(lock)], capture_output=True,
                            text=True, timeout=60)
    return result.returncode == 0 and result.stdout.strip() == "free"


def pca_embeddings(data_dir: Path) -> Path:
    """A valid digits embedding file (pixel PCA, 8-d) under data_dir/embeddings."""
    from sklearn.decomposition import PCA

    data = load_dataset("digits")
    pixels = {split: getattr(data, f"x_{split}").reshape(-1, 784) / 255.0
              for split in ("train", "test")}
    pca = PCA(8, random_state=0).fit(pixels["train"])
    return artifacts.save_npz(
        data_dir / "embeddings" / "digits_pca.npz",
        {"z_train": pca.transform(pixels["train"]).astype(np.float32), "y_train": data.y_train,
         "z_test": pca.transform(pixels["test"]).astype(np.float32), "y_test": data.y_test},
        artifacts.make_meta("tests", {}, "digits", 0))


def test_a_second_run_on_the_same_outputs_is_refused_naming_the_first(tmp_path):
    pca_embeddings(tmp_path)
    first = holder(tmp_path / ".lock-flows-digits_pca", "flows.py")
    try:
        with pytest.raises(StageError) as refused:
            flows.main(["--dataset", "digits", "--data-dir", str(tmp_path), "--encoders", "pca",
                        "--device", "cpu"])
        message = str(refused.value)
        assert f"flows.py (pid {first.pid}) is writing here now" in message
        assert "another --data-dir" in message and "\n" not in message
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock-flows-digits_pca",
                                                                "embeddings"]
    finally:
        first.kill()
        first.wait()
    assert lock_is_free(tmp_path / ".lock-flows-digits_pca")  # a killed run leaves none


def test_the_lock_is_let_go_when_main_returns_or_fails(tmp_path):
    lock = tmp_path / "out" / ".lock-stage"

    @artifacts.holds_output_locks
    def main(fail: bool) -> None:
        artifacts.hold_output_lock(lock, "stage.py")
        artifacts.hold_output_lock(lock, "stage.py")  # taken again by its holder: no wait
        assert not lock_is_free(lock)
        assert lock.read_text().strip() == f"stage.py (pid {os.getpid()})"
        if fail:
            raise StageError("stopped")

    main(False)
    assert lock_is_free(lock)
    with pytest.raises(StageError):
        main(True)
    assert lock_is_free(lock)


REFUSED = [  # (script, flags): each stops on an input before it writes (nothing trained)
    ("flows.py", ["--encoders", "pca", "--knn-k", "100000"]),
    ("flows.py", ["--encoders", "ae_basic"]),  # no such embedding file
    ("plan2_gan_training.py", ["--encoder", "ae_basic", "--models", "wgan_gp"]),
    ("plan2_gan_training.py", ["--encoder", "pca", "--models", "wgan_gp", "--limit", "100"]),
    ("plan1_gan_training.py", ["--encoder", "ae_basic", "--models", "cgan"]),
    ("encoder_models.py", ["--models", "ae_basic", "--limit", "1"]),
    ("evaluate.py", ["--files", "nothing_matches_this"]),  # takes no --dataset, --device
]


@pytest.mark.parametrize(("script", "flags"), REFUSED, ids=[f"{s} {' '.join(f)}"
                                                             for s, f in REFUSED])
def test_a_refused_run_leaves_the_data_folder_as_it_was(tmp_path, capsys, script, flags):
    """A run stopped by its inputs (a missing or too small file, a setting the data cannot
    meet) exits 1 with one line and creates no output folder and no lock file. The stage's
    main runs in this process under run_stage, as its `if __name__ == "__main__"` runs it (a
    subprocess each cost 4 s of start-up; the bad-input batteries run the scripts as a user)."""
    pca_embeddings(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    common = [] if script == "evaluate.py" else ["--dataset", "digits", "--device", "cpu"]
    stage = importlib.import_module(script.removesuffix(".py"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: stage.main([*common, "--data-dir", str(tmp_path), *flags]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------- links and stale staging folders
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_left_alone(tmp_path):
    """A lock file planted as a link to a user's file: the stage stops in one line, and the
    file the link points to keeps its content (it was opened, truncated and written before)."""
    pca_embeddings(tmp_path)
    notes = tmp_path.parent / f"{tmp_path.name}-notes.txt"
    notes.write_text("my notes\n")
    (tmp_path / ".lock-flows-digits_pca").symlink_to(notes)
    with pytest.raises(StageError, match="the lock file is a link; a stage never writes"):
        flows.main(["--dataset", "digits", "--data-dir", str(tmp_path), "--encoders", "pca",
                    "--device", "cpu"])
    assert notes.read_text() == "my notes\n"


def test_a_data_folder_that_is_a_link_keeps_working(tmp_path):
    """The user's own link to a data folder is followed: the lock is taken in the real folder."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "data").symlink_to(real)

    @artifacts.holds_output_locks
    def main() -> None:
        artifacts.hold_output_lock(tmp_path / "data" / ".lock-stage", "stage.py")
        assert (real / ".lock-stage").is_file() and not (real / ".lock-stage").is_symlink()

    main()


def test_a_folder_reached_through_a_link_is_never_replaced(tmp_path):
    """A stage's output folder that is a link (to a folder a stage once wrote, even) is refused
    before any work: replacing it would delete what the link points to."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / artifacts.OUTPUT_MARKER).write_text("")
    (target / "mine.txt").write_text("keep")
    (tmp_path / "clip_digits").symlink_to(target)
    with pytest.raises(StageError, match="a link; a stage never replaces or deletes"):
        artifacts.check_replaceable(tmp_path / "clip_digits")
    assert (target / "mine.txt").read_text() == "keep"


def test_the_small_clip_never_replaces_a_linked_model_folder(tmp_path, capsys):
    """train_small_clip.py with checkpoints/clip_<ds> a link to a user's folder: refused before
    training, and the folder and its files are left as they were."""
    import train_small_clip

    user = tmp_path / "my_model"
    user.mkdir()
    (user / "weights.bin").write_bytes(b"mine")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "clip_digits").symlink_to(user)
    with pytest.raises(StageError, match="clip_digits: a link"):
        train_small_clip.main(["--dataset", "digits", "--data-dir", str(tmp_path),
                               "--device", "cpu", "--limit", "64"])
    assert sorted(p.name for p in user.iterdir()) == ["weights.bin"]
    assert (user / "weights.bin").read_bytes() == b"mine"


def test_staging_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    """A killed run leaves .<name>.partial-<pid>; the next staging beside it removes it, but
    never the staging folder of a process that still runs."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".gen_0.partial-{dead}"
    live = tmp_path / f".gen_0.partial-{os.getppid()}"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "test_00000.png").write_bytes(b"half written")
    staging = artifacts.staging_dir(tmp_path / "gen_0")
    assert staging.name == f".gen_0.partial-{os.getpid()}" and not list(staging.iterdir())
    assert not stale.exists() and live.is_dir()
