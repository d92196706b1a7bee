"""How good are the learned embeddings? Train every encoder on a dataset's full training set once
per seed (each seed's runs in DATA_DIR/seed<k>, resumed when run again) and print test k-NN
accuracy (k=5, fitted on train embeddings) and k-means ARI as mean ± sd over the seeds, beside the
raw-pixel and PCA baselines, measured in the same run (PCA and k-means take each seed too). Nothing
is chosen, so nothing is held out of the training set. Not a test: tens of minutes per seed on 2
CPU cores.

    python bench/bench_encoders.py --epochs 10 --models ae_basic,triplet --seeds 0,1,2
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import ROOT, flag_words, mean_sd, over_seeds, run_script, seed_folder  # noqa: E402
from dataio.artifacts import load_embeddings  # noqa: E402
from dataio.data_sources import load_dataset  # noqa: E402
from evaluation.metrics import kmeans_agreement, knn_accuracy  # noqa: E402
from models.encoders import ENCODER_NAMES  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import run_stage  # noqa: E402

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset to train and measure on [in dataio.data_sources.DATASETS]
MODELS = ENCODER_NAMES  # encoders [in ENCODER_NAMES]
EPOCHS = 10  # epochs per encoder [>= 1]
EMBEDDING_DIM = 32  # embedding size (and the PCA baseline's components) [>= 1]
DATA_DIR = "data/bench"  # where the checkpoints and embeddings go, in seed<k>/ for seed k
DEVICE = "auto"  # passed to encoder_models.py
SEEDS = (0, 1, 2)  # seeds of every measured configuration [seed]
BASELINES = True  # also measure raw pixels and PCA
ENCODER_ARGS = ""  # more encoder_models.py flags: --encoder-args="--lr-schedule one-cycle"
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class EncoderBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    models: tuple[str, ...]
    epochs: int
    embedding_dim: int
    data_dir: str
    device: str
    seeds: tuple[int, ...]
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
    flag_words("--encoder-args", b.encoder_args)  # checked before anything trains
    data = load_dataset(b.dataset, "data")
    rows = []  # (label, k-NN per seed, ARI per seed, wall seconds per seed, note)
    if b.baselines:
        x_train = data.x_train.reshape(len(data.x_train), -1) / 255.0
        x_test = data.x_test.reshape(len(data.x_test), -1) / 255.0
        started = time.time()
        raw = knn_accuracy(x_train, data.y_train, x_test, data.y_test, k=5)
        rows.append(("raw pixels (784-d)", [raw], [], [time.time() - started],
                     "no seed: one run"))
        knns, aris, walls = [], [], []
        for seed in b.seeds:
            started = time.time()
            pca = PCA(b.embedding_dim, random_state=seed).fit(x_train)
            knn, ari = scores(pca.transform(x_train), data.y_train, pca.transform(x_test),
                              data.y_test, seed)
            knns.append(knn)
            aris.append(ari)
            walls.append(time.time() - started)
        rows.append((f"PCA-{b.embedding_dim}", knns, aris, walls, ""))
        print(f"baselines done: raw {raw:.3f}, PCA k-NN {over_seeds(knns)} ARI "
              f"{over_seeds(aris)}", flush=True)
    for name in b.models:
        knns, aris, walls, epochs = [], [], [], []
        for seed in b.seeds:
            folder = str(seed_folder(b.data_dir, seed))
            wall = run_script("encoder_models.py", "--dataset", b.dataset, "--models", name,
                              "--epochs", str(b.epochs), "--embedding-dim",
                              str(b.embedding_dim), "--data-dir", folder, "--device",
                              b.device, "--seed", str(seed),
                              *flag_words("--encoder-args", b.encoder_args))
            emb = load_embeddings(ROOT / folder / "embeddings" / f"{b.dataset}_{name}.npz")
            knn, ari = scores(emb["z_train"], emb["y_train"], emb["z_test"], emb["y_test"], seed)
            knns.append(knn)
            aris.append(ari)
            walls.append(wall)
            epochs.append(emb["meta"]["epochs_trained"])
            print(f"{name}, seed {seed}: k-NN {knn:.4f} ARI {ari:.4f} ({wall:.0f} s)",
                  flush=True)
        note = f"{epochs[0]} epochs" if len(set(epochs)) == 1 else \
            f"epochs {', '.join(map(str, epochs))} (per seed)"
        rows.append((name, knns, aris, walls, note))
    print(f"\n{b.dataset}, {len(data.x_train)} train / {len(data.x_test)} test, "
          f"embedding size {b.embedding_dim}, seeds {', '.join(map(str, b.seeds))} (each "
          f"encoder trained once per seed, in {b.data_dir}/seed<k>)"
          + (f", encoder flags: {b.encoder_args}" if b.encoder_args else ""))
    print("Each cell: mean ± sample sd (ddof 1) over the seeds; wall time: the mean.\n")
    print("| embedding | k-NN (k=5) test acc. | k-means ARI (test) | wall time | notes |")
    print("| --- | --- | --- | --- | --- |")
    for label, knns, aris, walls, note in rows:
        ari_text = over_seeds(aris) if aris else "—"
        print(f"| {label} | {over_seeds(knns)} | {ari_text} | {mean_sd(walls)[0]:.0f} s | "
              f"{note} |")


if __name__ == "__main__":
    run_stage(main)
