"""train_evaluator.py as a user runs it: it trains the evaluator CNN once, caches it where the
stages look for it, and a second run loads it without training."""

from __future__ import annotations

import torch

import train_evaluator
from evaluation.evaluator_cnn import checkpoint_path


def test_the_evaluator_is_trained_once_and_then_loaded(tmp_path, capsys):
    args = ["--dataset", "digits", "--data-dir", str(tmp_path)]
    train_evaluator.main(args)
    first = capsys.readouterr().out
    checkpoint = checkpoint_path(tmp_path, "digits")
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 4 and state["dataset"] == "digits"
    assert "epoch 4/4" in first and f"test accuracy {state['test_accuracy']:.4f}" in first
    stamp = checkpoint.stat().st_mtime_ns
    train_evaluator.main(args)
    second = capsys.readouterr().out
    assert "epoch 1/4" not in second and checkpoint.stat().st_mtime_ns == stamp
    assert f"test accuracy {state['test_accuracy']:.4f}" in second
