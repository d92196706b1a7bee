"""Test order for make test's two workers (--dist loadfile hands out whole files in order): the
files that take longest run first, so that the workers end together instead of one running the
last long file alone. Each worker computes on one thread (the stages the tests run in-process
included): two workers on two cores, and tiny batches gain nothing from more threads."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

LONGEST_FIRST = ("test_plan2_gan_training.py", "test_self_consuming_loop.py", "test_small_sd.py",
                 "test_plan1_gan_training.py", "test_flows.py", "test_encoder_models.py",
                 "test_diffusion_loop.py", "test_evaluate.py", "test_damaged_checkpoints.py",
                 "test_colour_folder.py", "test_generation_bad_inputs.py", "test_hardening.py",
                 "test_small_clip.py", "test_demo_report.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Sort the longest files (measured, in LONGEST_FIRST's order) to the front; the rest keep
    their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
