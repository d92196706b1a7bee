"""The data regimes of a self-consuming loop: what generation k trains on.

Every generation k >= 1 adds an *addition* A_k of ``train_images`` images to a pool: the images
generation k-1 generated (``1 - fresh_fraction`` of them) and fresh real training images (the
rest): real images outside A_0, none fresh twice while there are unused ones
(``fresh_indices``); A_0 is the first ``train_images`` real training images. Then generation k
trains on (the literature's regimes):

- ``replace``: A_k alone, the fully synthetic loop (Shumailov et al. 2024; Alemohammad et al.
  2024, with fresh data its "fresh data loop");
- ``accumulate``: the whole pool A_0 ... A_k, real and every generation's images (Gerstgrasser et
  al. 2024: accumulating avoids collapse);
- ``accumulate-subsample``: ``train_images`` drawn without replacement from that pool, a fixed
  budget (Schaeffer et al.'s accumulate-subsample).

Each image carries its origin: -1 for a real image, j for an image generation j made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGIMES = ("replace", "accumulate", "accumulate-subsample")
# What a regime adds to a loop's run name (<ds>_loop<tag>...).
REGIME_TAGS = {"replace": "", "accumulate": "_accumulate", "accumulate-subsample": "_accsub"}
REAL = -1
FRESH_STREAM = 7  # the seed stream of the fresh images' order (apart from the classes' draws)


@dataclass(frozen=True)
class Regime:
    """How a loop feeds its generations."""

    name: str = "replace"  # one of REGIMES
    train_images: int = 10000  # images of A_0 and of every addition
    fresh_fraction: float = 0.0  # share of each addition that is fresh real images

    @property
    def fresh(self) -> int:
        """Fresh real images in each addition after the first."""
        return int(round(self.fresh_fraction * self.train_images))


@dataclass
class ImageSet:
    """Images, their classes and their origins (-1 real, j made by generation j)."""

    x: np.ndarray
    y: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.x[index], self.y[index], self.origin[index])

    @staticmethod
    def join(parts: list[ImageSet]) -> ImageSet:
        return ImageSet(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                        np.concatenate([p.origin for p in parts]))


def sources(images: ImageSet) -> dict[str, int]:
    """The number of images by origin: {"real": n, "gen_0": n, ...}, generations in order."""
    names, counts = np.unique(images.origin, return_counts=True)
    return {("real" if o == REAL else f"gen_{int(o)}"): int(c)
            for o, c in sorted(zip(names, counts, strict=True), key=lambda p: p[0])}


def first_addition(x: np.ndarray, y: np.ndarray, regime: Regime) -> ImageSet:
    """A_0: the first ``train_images`` real training images."""
    n = regime.train_images
    return ImageSet(x[:n], y[:n].astype(np.int64), np.full(n, REAL, np.int64))


def addition_labels(y_first: np.ndarray, generation: int, regime: Regime,
                    seed: int) -> np.ndarray:
    """The classes asked of generation k-1 for A_k: a seeded draw, without replacement, of the
    classes of A_0 (its class histogram)."""
    rng = np.random.default_rng([seed, generation])
    n = regime.train_images
    return y_first[rng.permutation(n)[:n - regime.fresh]]


def fresh_indices(pool: np.ndarray, generation: int, regime: Regime,
                  seed: int) -> tuple[np.ndarray, bool]:
    """The fresh real images of A_k (k >= 1): the k-th block of ``regime.fresh`` indices in a
    seeded permutation of ``pool`` (real training images outside A_0 and the held-out ones), so
    that no image is fresh twice while the pool lasts. Past its end the permutation starts
    again; the flag says whether any index of this block is such a repeat."""
    order = np.random.default_rng([seed, FRESH_STREAM]).permutation(pool)
    start = (generation - 1) * regime.fresh
    block = np.arange(start, start + regime.fresh)
    repeats = bool(len(block)) and bool(block[-1] >= len(order))
    return np.sort(order[block % len(order)]), repeats


def addition(generated: np.ndarray, labels: np.ndarray, made_by: int, x_real: np.ndarray,
             y_real: np.ndarray, fresh: np.ndarray) -> ImageSet:
    """A_k: generation ``made_by``'s images with their classes and the real training images
    ``fresh`` (indices, ``fresh_indices``)."""
    return ImageSet(np.concatenate([generated, x_real[fresh]]),
                    np.concatenate([labels, y_real[fresh]]).astype(np.int64),
                    np.concatenate([np.full(len(generated), made_by, np.int64),
                                    np.full(len(fresh), REAL, np.int64)]))


def training_set(additions: list[ImageSet], regime: Regime, seed: int) -> ImageSet:
    """What generation k = len(additions) - 1 trains on, from A_0 ... A_k."""
    if regime.name == "replace":
        return additions[-1]
    pool = ImageSet.join(additions)
    if regime.name == "accumulate":
        return pool
    if regime.name == "accumulate-subsample":
        rng = np.random.default_rng([seed, len(additions) - 1, 1])
        return pool.take(np.sort(rng.choice(len(pool), regime.train_images, replace=False)))
    raise ValueError(f"unknown regime {regime.name!r}; one of {', '.join(REGIMES)}")
