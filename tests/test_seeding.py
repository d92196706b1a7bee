"""What seeding covers: seed_everything seeds what it says and nothing it cannot (hash
randomisation is fixed at interpreter start), and the evaluator CNN's resume restores the CUDA
generators too, so that its dropout continues as if never stopped on a GPU."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from dataio.data_sources import load_dataset
from evaluation.evaluator_cnn import train_evaluator
from runtime.stage import seed_everything


def test_seed_everything_seeds_python_numpy_and_torch_and_leaves_the_environment(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    first = (seed_everything(3), random.random(), np.random.rand(), torch.rand(1))
    second = (seed_everything(3), random.random(), np.random.rand(), torch.rand(1))
    assert first[1:3] == second[1:3] and torch.equal(first[3], second[3])
    assert torch.equal(torch.rand(2, generator=first[0]), torch.rand(2, generator=second[0]))
    assert "PYTHONHASHSEED" not in os.environ  # setting it in a running process does nothing


def test_the_evaluators_resume_restores_the_cuda_generators(tmp_path, monkeypatch):
    """With CUDA present (simulated: its generator-state calls recorded), every checkpoint holds
    the CUDA generator states and a resume puts them back."""
    saved_states = [torch.tensor([7, 7, 7], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    data = load_dataset("digits")
    checkpoint = tmp_path / "digits.pt"

    def interrupt(epoch: int, loss: float, accuracy: float) -> None:
        raise KeyboardInterrupt  # Ctrl-C once epoch 1's checkpoint is written

    with pytest.raises(KeyboardInterrupt):
        train_evaluator(data, checkpoint, torch.device("cpu"), 2, 256, 3e-3, 0, interrupt)
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1 and torch.equal(state["cuda_rng"][0], saved_states[0])
    assert not restored
    train_evaluator(data, checkpoint, torch.device("cpu"), 2, 256, 3e-3, 0)
    assert len(restored) == 1 and torch.equal(restored[0][0], saved_states[0])
