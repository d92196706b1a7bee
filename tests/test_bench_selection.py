"""bench_plan2_target chooses on held-out training embeddings and reports the test split once:
the held-out part is disjoint from the training part, every choice follows the validation
scores even where the test scores would choose otherwise, and the test table shows the test
scores of what was chosen."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_plan2_target as bench  # noqa: E402


def settings(**changes) -> bench.TargetBench:
    values = {"dataset": "digits", "data_dir": "unused", "encoders": ("ae_basic",),
              "models": ("wgan_gp", "contrastive_gan", "flow_matching"),
              "candidates": ("defaults", "--mode-seeking 2"), "seeds": (0, 1),
              "train_sizes": (0,), "validation": 100, "encoder_epochs": 1, "epochs": 0,
              "samples": 10, "stage_args": "", "device": "cpu", "parallel": 1,
              "mixture_components": 20}
    return bench.TargetBench(**{**values, **changes})


def scores(precision: float, recall: float = 0.85, ratio: float = 1.5,
           density: float = 0.7) -> dict[str, float]:
    return {"precision": precision, "recall": recall, "ratio": ratio, "density": density,
            "coverage": 0.8}


def test_the_held_out_part_is_disjoint_seeded_and_complete():
    keep, out = bench.held_out(30, 100, seed=0)
    assert len(out) == 30 and len(keep) == 70
    assert not set(keep) & set(out) and set(keep) | set(out) == set(range(100))
    again = bench.held_out(30, 100, seed=0)
    assert np.array_equal(keep, again[0]) and np.array_equal(out, again[1])
    assert not np.array_equal(out, bench.held_out(30, 100, seed=1)[1])


def test_every_choice_follows_validation_and_the_test_split_is_only_reported():
    """Validation prefers the second recipe of wgan_gp and wgan_gp over contrastive_gan; the
    test split says the opposite. The choices follow validation; the test table reports the
    chosen recipe's test numbers."""
    b = settings()
    split = bench.Split("ae_basic", 400, "ae_basic-val400", Path("unused.npz"),
                        {"z_test": np.zeros((100, 2))}, {"z_test": np.zeros((450, 2))})
    validation = {("wgan_gp", 0): 0.70, ("wgan_gp", 1): 0.80, ("contrastive_gan", 0): 0.75,
                  ("contrastive_gan", 1): 0.60, ("flow_matching", 0): 0.72,
                  ("flow_matching", 1): 0.71}
    test = {("wgan_gp", 0): 0.90, ("wgan_gp", 1): 0.61, ("contrastive_gan", 0): 0.95,
            ("contrastive_gan", 1): 0.97, ("flow_matching", 0): 0.50, ("flow_matching", 1): 0.99}
    runs = {(model, index, seed): {"validation": scores(validation[(model, index)]),
                                   "test": scores(test[(model, index)]), "train_seconds": 10.0}
            for (model, index) in validation for seed in b.seeds}
    mixture = [{"validation": scores(0.5, density=0.4), "test": scores(0.5, density=0.4)}
               for _ in b.seeds]
    lines = bench.report(split, runs, mixture, b)
    chosen = next(line for line in lines if line.startswith("chosen on validation"))
    assert "wgan_gp: --mode-seeking 2" in chosen and "contrastive_gan: defaults" in chosen
    assert "flow_matching: defaults" in chosen and "best GAN: wgan_gp" in chosen
    assert "best generator of embeddings (within the bounds first, then precision): " \
           "wgan_gp --mode-seeking 2" in chosen
    test_part = lines[lines.index(chosen):]
    wgan = next(line for line in test_part if line.startswith("| wgan_gp"))
    assert wgan.startswith("| wgan_gp --mode-seeking 2 (best GAN) | ")
    assert "| 0.610 ± 0.000 |" in wgan  # the chosen recipe's test precision, not the better one
    assert "met (2 of 2 seeds)" in wgan
    contrastive = next(line for line in test_part if line.startswith("| contrastive_gan"))
    assert contrastive.startswith("| contrastive_gan defaults | 1.500 ± 0.000 | 0.950 ± 0.000")


def test_a_run_outside_the_bounds_ranks_below_one_within_them():
    assert bench.rank([scores(0.9, recall=0.7)]) < bench.rank([scores(0.6)])
    assert bench.rank([scores(0.9, ratio=2.5)]) < bench.rank([scores(0.6)])
    assert bench.rank([scores(0.6)]) < bench.rank([scores(0.7)])
