"""Held-out parts of a training split: the data a stage chooses its epoch, members or settings on,
never trained on and never the test split.

The split is seeded by its own seed, not the run's, so that runs of several seeds (and the members
of an ensemble) train on the same images and choose on the same held-out ones: they differ only in
weights, batch order and noise."""

from __future__ import annotations

from typing import Any

import numpy as np

SPLIT_SEED = 0  # the stream of every held-out split (one split for every run seed)


def held_out_count(n: int, fraction: float) -> int:
    """How many of ``n`` items a share ``fraction`` holds out (rounded half to even)."""
    return int(round(fraction * n))


def held_out_split(n: int, count: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out): sorted int64 indices of range(n), disjoint, together all of it;
    ``count`` indices drawn without replacement by a generator seeded with ``seed``."""
    if not 0 <= count <= n:
        raise ValueError(f"cannot hold out {count} of {n} items")
    held_out = np.sort(np.random.default_rng([seed, n]).choice(n, count, replace=False))
    kept = np.setdiff1d(np.arange(n), held_out)
    return kept.astype(np.int64), held_out.astype(np.int64)


def split_record(n: int, held_out: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, Any]:
    """What ``meta`` records of a split: the items it split, its seed and the held-out indices
    (``held_out_split(n, len(indices), seed)`` draws them again)."""
    return {"of": int(n), "seed": int(seed), "held_out": [int(i) for i in held_out]}
