"""Every output names the code that made it: the git commit and whether the tree had uncommitted
changes, in NPZ meta, checkpoints and results; "unknown" outside a git checkout, where stages
still run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from script_runner import run_script

from dataio.artifacts import load_meta
from runtime import provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(folder: Path, *args: str) -> str:
    """stdout of a git command, with an identity so that commits work on any machine."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=folder, check=True, capture_output=True, text=True).stdout.strip()


@needs_git
def test_the_commit_is_heads_and_dirty_follows_an_uncommitted_change(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "stage.py").write_text("A = 1\n")
    git(tmp_path, "add", "stage.py")
    git(tmp_path, "commit", "-qm", "first")
    provenance.code_version.cache_clear()
    clean = provenance.code_version(tmp_path)
    assert clean == {"commit": git(tmp_path, "rev-parse", "HEAD"), "dirty": False}
    assert len(clean["commit"]) == 40

    (tmp_path / "stage.py").write_text("A = 2\n")
    provenance.code_version.cache_clear()
    assert provenance.code_version(tmp_path) == {"commit": clean["commit"], "dirty": True}
    git(tmp_path, "commit", "-qam", "second")
    provenance.code_version.cache_clear()
    second = provenance.code_version(tmp_path)
    assert second["commit"] != clean["commit"] and second["dirty"] is False
    provenance.code_version.cache_clear()


def test_outside_a_checkout_both_are_unknown(tmp_path):
    provenance.code_version.cache_clear()
    assert provenance.code_version(tmp_path) == {"commit": "unknown", "dirty": "unknown"}
    provenance.code_version.cache_clear()


def run_encoders(data_dir: Path) -> subprocess.CompletedProcess:
    return run_script("encoder_models.py", "--dataset", "digits", "--data-dir", str(data_dir),
                      "--device", "cpu", "--models", "ae_basic", "--epochs", "1", "--limit",
                      "128", "--embedding-dim", "4")


@needs_git
def test_a_stage_records_this_checkouts_commit_in_its_npz_and_checkpoint(tmp_path):
    expected = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.CODE_ROOT,
                              capture_output=True, text=True, check=False)
    if expected.returncode != 0:
        pytest.skip("the project is not a git checkout here")
    provenance.code_version.cache_clear()
    result = run_encoders(tmp_path)
    assert result.returncode == 0, result.stderr
    status = subprocess.run(["git", "status", "--porcelain"], cwd=provenance.CODE_ROOT,
                            capture_output=True, text=True, check=True).stdout
    code = {"commit": expected.stdout.strip(), "dirty": bool(status.strip())}
    assert load_meta(tmp_path / "embeddings" / "digits_ae_basic.npz")["code"] == code
    checkpoint = torch.load(tmp_path / "checkpoints" / "encoders" / "digits_ae_basic.pt",
                            weights_only=True)
    assert checkpoint["code"] == code


def test_outside_a_checkout_the_stage_runs_and_says_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "CODE_ROOT", tmp_path / "not_a_checkout")
    (tmp_path / "not_a_checkout").mkdir()
    provenance.code_version.cache_clear()
    try:
        result = run_encoders(tmp_path / "data")
    finally:
        provenance.code_version.cache_clear()
    assert result.returncode == 0, result.stderr
    meta = load_meta(tmp_path / "data" / "embeddings" / "digits_ae_basic.npz")
    assert meta["code"] == {"commit": "unknown", "dirty": "unknown"}
