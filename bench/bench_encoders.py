"""How good are the learned embeddings? Train every encoder on a dataset's full training set and
print test k-NN accuracy (k=5, fitted on train embeddings) and k-means ARI beside the raw-pixel and
PCA baselines, measured in the same run. Not a test: it takes tens of minutes on 2 CPU cores.

    python bench/bench_encoders.py --epochs 10 --models ae_basic,triplet
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from artifacts import load_embeddings  # noqa: E402
from bench_common import ROOT, run_script  # noqa: E402
from data_sources import load_dataset  # noqa: E402
from encoders import ENCODER_NAMES  # noqa: E402
from metrics import kmeans_agreement, knn_accuracy  # noqa: E402
from runtime import run_stage  # noqa: E402
from settings import configure, pick  # noqa: E402

DATASET = "fashion-mnist"  # dataset to train and measure on [in data_sources.DATASETS]
MODELS = ENCODER_NAMES  # encoders [in ENCODER_NAMES]
EPOCHS = 10  # epochs per encoder [>= 1]
EMBEDDING_DIM = 32  # embedding size (and the PCA baseline's components) [>= 1]
DATA_DIR = "data/bench"  # where the benchmark's checkpoints and embeddings go
DEVICE = "auto"  # passed to encoder_models.py
SEED = 0  # seed for training, PCA and k-means [>= 0]
BASELINES = True  # also measure raw pixels and PCA
ENCODER_ARGS = ""  # more encoder_models.py flags: --encoder-args="--lr-schedule one-cycle"


@dataclass(frozen=True)
class EncoderBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    models: tuple[str, ...]
    epochs: int
    embedding_dim: int
    data_dir: str
    device: str
    seed: int
    baselines: bool
    encoder_args: str



def scores(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray,
           seed: int) -> tuple[float, float]:
    """k-NN (k=5) test accuracy and k-means (k = classes) ARI on the test set."""
    return (knn_accuracy(train, y_train, test, y_test, k=5),
            kmeans_agreement(test, y_test, seed=seed)["kmeans_ari"])


def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    b = pick(EncoderBench, values)
    data = load_dataset(b.dataset, "data")
    rows = []
    if b.baselines:
        x_train = data.x_train.reshape(len(data.x_train), -1) / 255.0
        x_test = data.x_test.reshape(len(data.x_test), -1) / 255.0
        started = time.time()
        knn = knn_accuracy(x_train, data.y_train, x_test, data.y_test, k=5)
        rows.append(("raw pixels (784-d)", knn, float("nan"), time.time() - started, ""))
        started = time.time()
        pca = PCA(b.embedding_dim, random_state=b.seed).fit(x_train)
        knn, ari = scores(pca.transform(x_train), data.y_train, pca.transform(x_test),
                          data.y_test, b.seed)
        rows.append((f"PCA-{b.embedding_dim}", knn, ari, time.time() - started, ""))
        print(f"baselines done: raw {rows[0][1]:.3f}, PCA k-NN {knn:.3f} ARI {ari:.3f}",
              flush=True)
    for name in b.models:
        wall = run_script("encoder_models.py", "--dataset", b.dataset, "--models", name,
                          "--epochs", str(b.epochs), "--embedding-dim",
                          str(b.embedding_dim), "--data-dir", b.data_dir, "--device",
                          b.device, "--seed", str(b.seed), *shlex.split(b.encoder_args))
        emb = load_embeddings(ROOT / b.data_dir / "embeddings" / f"{b.dataset}_{name}.npz")
        knn, ari = scores(emb["z_train"], emb["y_train"], emb["z_test"], emb["y_test"], b.seed)
        rows.append((name, knn, ari, wall, f"{emb['meta']['epochs_trained']} epochs"))
        print(f"{name}: k-NN {knn:.4f} ARI {ari:.4f} ({wall:.0f} s)", flush=True)
    print(f"\n{b.dataset}, {len(data.x_train)} train / {len(data.x_test)} test, "
          f"embedding size {b.embedding_dim}, seed {b.seed}"
          + (f", encoder flags: {b.encoder_args}" if b.encoder_args else "") + "\n")
    print("| embedding | k-NN (k=5) test acc. | k-means ARI (test) | wall time | notes |")
    print("| --- | --- | --- | --- | --- |")
    for label, knn, ari, wall, note in rows:
        ari_text = "—" if np.isnan(ari) else f"{ari:.3f}"
        print(f"| {label} | {knn:.3f} | {ari_text} | {wall:.0f} s | {note} |")


if __name__ == "__main__":
    run_stage(main)
