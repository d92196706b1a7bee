"""Figures the stages draw: grids of images, the GAN loop's loss curves, real against generated
vectors. Each function returns a matplotlib figure (or writes one, ``save_and_close``) and changes
nothing else. May import ``dataio``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataio.artifacts import save_figure


def save_and_close(figure: Any, path: Path) -> Path:
    """Save a figure atomically as PNG and free its memory (a stage draws many)."""
    import matplotlib.pyplot as plt

    save_figure(figure, path)
    plt.close(figure)
    return path


def image_grid_figure(rows: Sequence[np.ndarray], row_labels: Sequence[str], title: str) -> Any:
    """A grid of grey images, one labelled row per array (n, H, W) of uint8 pixels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(r) for r in rows)
    figure, axes = plt.subplots(len(rows), columns, squeeze=False,
                                figsize=(columns * 0.8 + 1.6, len(rows) * 0.8 + 0.5))
    for r, (images, label) in enumerate(zip(rows, row_labels, strict=True)):
        for c in range(columns):
            axis = axes[r, c]
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
            if c < len(images):
                # grey (H, W) with a grey colour map; colour (H, W, 3) as it is
                axis.imshow(images[c], cmap="gray" if images[c].ndim == 2 else None, vmin=0,
                            vmax=255)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(wspace=0.05, hspace=0.05)
    return figure


def loss_curves_figure(history: Mapping[str, Any], title: str) -> Any:
    """Discriminator and generator loss terms per log interval against the generator step, and
    the validation score per epoch when there is one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    intervals, epochs = history.get("intervals", []), history.get("epochs", [])
    scored = [e for e in epochs if e.get("score") is not None]
    panels = 3 if scored else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    steps = [r["d_steps"] for r in intervals]
    for axis, prefix, name in ((axes[0], "d/", "discriminator"), (axes[1], "g/", "generator")):
        keys = sorted({k for r in intervals for k in r if k.startswith(prefix)})
        if len(keys) == 2:  # the total is its one term: draw it once
            keys = [k for k in keys if k != f"{prefix}loss"]
        for key in keys:
            axis.plot(steps, [r.get(key, float("nan")) for r in intervals],
                      label=key.removeprefix(prefix))
        axis.set_title(f"{name} loss terms" if keys else f"no {name}")
        axis.set_xlabel("discriminator step")
        if keys:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    if scored:
        axes[2].plot([e["epoch"] for e in scored], [e["score"] for e in scored], marker="o")
        axes[2].set_title(history.get("score_name") or "validation score (lower is better)")
        axes[2].set_xlabel("epoch")
        axes[2].grid(alpha=0.3)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def real_vs_generated_figure(real: np.ndarray, generated: np.ndarray, title: str,
                             real_label: str, generated_label: str, points: int,
                             seed: int) -> Any:
    """PCA (axes of the real points) and a joint t-SNE of seeded subsets of both sets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    real = real[np.sort(rng.choice(len(real), min(points, len(real)), replace=False))]
    generated = generated[np.sort(rng.choice(len(generated), min(points, len(generated)),
                                             replace=False))]
    both = np.concatenate([real, generated]).astype(np.float64)
    pca = PCA(n_components=2, random_state=seed).fit(real.astype(np.float64))
    tsne = TSNE(n_components=2, init="pca", learning_rate="auto", random_state=seed,
                perplexity=min(30.0, (len(both) - 1) / 3)).fit_transform(both)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for axis, coordinates, name in ((axes[0], pca.transform(both),
                                     "PCA (axes of the real points)"),
                                    (axes[1], tsne, "t-SNE of both sets")):
        for part, label, colour in ((coordinates[:len(real)], f"{real_label} ({len(real)})",
                                     "tab:blue"),
                                    (coordinates[len(real):],
                                     f"{generated_label} ({len(generated)})", "tab:orange")):
            axis.scatter(part[:, 0], part[:, 1], s=5, alpha=0.5, color=colour, linewidths=0,
                         label=label)
        axis.set_title(name, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(markerscale=3, loc="best", fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.text(0.01, 0.01, "t-SNE sizes and gaps carry no meaning; distances are measured in "
                "the embedding space", fontsize=8, color="0.35")
    return figure
