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
