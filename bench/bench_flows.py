"""How good are the flows? Fit every flow to the full-dataset stage-1 embeddings of every encoder
(flows.py, resumed when its checkpoints exist) and print per embedding and flow: test NLL per
dimension beside the Gaussian and mixture baselines, seconds per epoch, and for 10,000 samples the
Fréchet distance to the real test embeddings (train-vs-test floor beside it) and precision/recall
(k=3) beside those of the mixture's and the Gaussian's samples. Then time one training epoch over
60,000 vectors per flow. Stage-1 files that are missing are trained first (encoder_models.py).
Not a test: an hour or more on 2 CPU cores.

    python bench/bench_flows.py --encoders ae_basic,triplet --epochs 20
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flows  # noqa: E402
from artifacts import load_embeddings, load_npz, write_text  # noqa: E402
from metrics import frechet_distance, precision_recall_density_coverage  # noqa: E402
from runtime import limit_cpu_threads, run_stage  # noqa: E402
from settings import configure  # noqa: E402

# Internal table: the encoders whose embeddings count as autoencoder embeddings for the targets.
AUTOENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")

DATASET = "fashion-mnist"  # dataset of the embeddings [in data_sources.DATASETS]
DATA_DIR = "data/bench_flows"  # stage-1 embeddings here (made if missing), and every output
ENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae", "ntxent", "triplet")  # inputs
FLOWS = ("realnvp", "maf", "nsf")  # flows to fit [in flows.FLOW_NAMES]
EPOCHS = 30  # most epochs per flow, passed to flows.py [>= 1]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for a missing stage-1 file [>= 1]
THREADS = 2  # CPU threads of flows.py (0: library default) [>= 0]
TIMING_THREADS = 2  # CPU threads of the timed epochs (the target is for 2 cores) [>= 1]
SEED = 0  # seed of flows.py, the baselines' samples and the floor's subset [>= 0]
FLOW_ARGS = ""  # more flows.py flags: --flow-args="--learning-rate 2e-3"
TIMING_EPOCHS = 1  # timed training epochs over 60,000 vectors per flow (0: no timing) [>= 0]


def baseline_samples(z_train: np.ndarray, z_test: np.ndarray, n: int, seed: int
                     ) -> dict[str, np.ndarray]:
    """n samples of the Gaussian and of the mixture, fitted as flows.py fits them (in the
    standardised model space of the train split), mapped back to the embedding space."""
    pre = flows.fit_preprocessing(z_train, z_test)
    m_train = pre.to_model(z_train)
    _, mixture = flows.mixture_nll(m_train, m_train[:10], flows.GMM_COMPONENTS, seed)
    mixture_draws, _ = mixture.sample(n)
    rng = np.random.default_rng(seed)
    gaussian_draws = rng.multivariate_normal(m_train.mean(0), np.cov(m_train, rowvar=False,
                                                                     bias=True), n)
    # GaussianMixture.sample returns its draws grouped by component: shuffle for the metrics.
    return {"mixture": pre.from_model(rng.permutation(mixture_draws)),
            "Gaussian": pre.from_model(gaussian_draws)}


def sample_metrics(fake: np.ndarray, z_test: np.ndarray) -> dict[str, float]:
    values = {"fd": frechet_distance(fake, z_test)}
    values.update(precision_recall_density_coverage(z_test, fake))
    return values


def time_epochs(z_train: np.ndarray, z_test: np.ndarray) -> list[tuple[str, float, float]]:
    """(flow, wall seconds, CPU seconds of this process) of each training epoch over the vectors,
    at the stage's default architecture and batch size, from a fresh flow."""
    pre = flows.fit_preprocessing(z_train, z_test)
    x = torch.from_numpy(pre.to_model(z_train).astype(np.float32))
    rows = []
    for name in FLOWS:
        torch.manual_seed(SEED)
        flow = flows.build_flow(name, x.shape[1], SEED)
        flow.initialize(x[:flows.ACTNORM_INIT_SIZE])
        optimizer = torch.optim.Adam(flow.parameters(), lr=flows.LEARNING_RATE)
        for epoch in range(1, TIMING_EPOCHS + 1):
            wall, cpu = time.time(), time.process_time()
            flows.train_epoch(flow, optimizer, x, epoch, f"timing {name}")
            rows.append((name, time.time() - wall, time.process_time() - cpu))
            print(f"timing {name}: one epoch over {len(x)} vectors {rows[-1][1]:.1f} s wall, "
                  f"{rows[-1][2]:.1f} s CPU (load average {os.getloadavg()[0]:.1f})", flush=True)
    return rows


def main() -> None:
    configure(globals())
    limit_cpu_threads(TIMING_THREADS)
    emb = ROOT / DATA_DIR / "embeddings"
    missing = [e for e in ENCODERS if not (emb / f"{DATASET}_{e}.npz").is_file()]
    if missing:
        print(f"training the missing encoder(s) {', '.join(missing)} for {ENCODER_EPOCHS} "
              f"epoch(s)", flush=True)
        subprocess.run([sys.executable, str(ROOT / "encoder_models.py"), "--dataset", DATASET,
                        "--models", ",".join(missing), "--epochs", str(ENCODER_EPOCHS),
                        "--data-dir", DATA_DIR, "--seed", str(SEED)], cwd=ROOT, check=True)
    started = time.time()
    subprocess.run([sys.executable, str(ROOT / "flows.py"), "--dataset", DATASET, "--data-dir",
                    DATA_DIR, "--encoders", ",".join(ENCODERS), "--flows", ",".join(FLOWS),
                    "--epochs", str(EPOCHS), "--threads", str(THREADS), "--seed", str(SEED),
                    *shlex.split(FLOW_ARGS)], cwd=ROOT, check=True)
    print(f"flows.py: {time.time() - started:.0f} s", flush=True)

    density_rows, sample_rows, verdicts = [], [], []
    for encoder in ENCODERS:
        real = load_embeddings(emb / f"{DATASET}_{encoder}.npz")
        z_train, z_test = real["z_train"].astype(np.float64), real["z_test"].astype(np.float64)
        results, generated = {}, {}
        for name in FLOWS:
            results[name] = load_npz(emb / f"{DATASET}_{encoder}+{name}.npz", {})["meta"][
                "results"]
            generated[name] = load_npz(emb / f"{DATASET}_{encoder}+{name}.gen.npz",
                                       {"z_gen": 2})["z_gen"].astype(np.float64)
        # one sample count for every row: the samples written, at most the train embeddings
        n = min(min(len(z) for z in generated.values()), len(z_train))
        for name, z_gen in generated.items():
            sample_rows.append((encoder, name, sample_metrics(z_gen[:n], z_test)))
        chosen = np.sort(np.random.default_rng(SEED).choice(len(z_train), n, replace=False))
        floor = sample_metrics(z_train[chosen], z_test)
        for label, fake in baseline_samples(z_train, z_test, n, SEED).items():
            sample_rows.append((encoder, label, sample_metrics(fake, z_test)))
        sample_rows.append((encoder, f"floor: {n} train embeddings", floor))
        first = results[FLOWS[0]]
        for name, r in results.items():
            density_rows.append((encoder, name, r))
        best = min(FLOWS, key=lambda f: results[f]["test_nll"])
        gains = {f: first["gaussian_nll"] - results[f]["test_nll"] for f in FLOWS}
        verdicts.append((encoder, best, results[best]["mixture_nll"] - results[best]["test_nll"],
                         gains))
        print(f"{encoder}: done", flush=True)

    timings = []
    if TIMING_EPOCHS:
        data = load_embeddings(emb / f"{DATASET}_{ENCODERS[0]}.npz")
        timings = time_epochs(data["z_train"], data["z_test"])
        timed = len(data["z_train"])

    lines = [f"{DATASET}, {len(z_train)} train / {len(z_test)} test embeddings per encoder, "
             f"flows.py --epochs {EPOCHS} --threads {THREADS} --seed {SEED}"
             + (f" {FLOW_ARGS}" if FLOW_ARGS else ""), "",
             "Test NLL, nats per dimension in the standardised model space (lower is better):", "",
             "| embedding | flow | test NLL | Gaussian | mixture | gain over Gaussian | gain over "
             "mixture | best epoch / run | s per epoch | k-NN original | k-NN refined |",
             "| --- " * 11 + "|"]
    for encoder, name, r in density_rows:
        lines.append(f"| {encoder} | {name} | {r['test_nll']:.3f} | {r['gaussian_nll']:.3f} | "
                     f"{r['mixture_nll']:.3f} | {r['gaussian_nll'] - r['test_nll']:+.3f} | "
                     f"{r['mixture_nll'] - r['test_nll']:+.3f} | {r['best_epoch']} / "
                     f"{r['epochs_run']} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['knn_original']:.4f} | {r['knn_refined']:.4f} |")
    lines += ["", "Samples against the real test embeddings (precision/recall k=3, density/"
              "coverage k=5; the floor is a seeded subset of as many train embeddings):", "",
              "| embedding | samples | Fréchet distance | precision | recall | density | "
              "coverage |", "| --- " * 7 + "|"]
    for encoder, label, v in sample_rows:
        lines.append(f"| {encoder} | {label} | {v['fd']:.4g} | {v['precision']:.3f} | "
                     f"{v['recall']:.3f} | {v['density']:.3f} | {v['coverage']:.3f} |")
    if timings:
        lines += ["", f"One training epoch over {timed} vectors ({TIMING_THREADS} thread(s), load "
                  f"average {os.getloadavg()[0]:.1f} at the end):", "",
                  "| flow | wall s | CPU s (this process) | target |", "| --- " * 4 + "|"]
        lines += [f"| {name} | {wall:.1f} | {cpu:.1f} | < 15 s: {'met' if wall < 15 else 'NOT met'}"
                  " |" for name, wall, cpu in timings]
    lines += ["", "Targets:"]
    for encoder, best, margin, gains in verdicts:
        if encoder in AUTOENCODERS:
            worst = min(gains, key=gains.get)
            lines.append(f"- {encoder}: every flow beats the Gaussian by >= 0.5 nats/dim: "
                         f"{'met' if gains[worst] >= 0.5 else 'NOT met'} (smallest gain "
                         f"{gains[worst]:.3f}, {worst})")
        lines.append(f"- {encoder}: the best flow ({best}) beats the mixture: "
                     f"{'met' if margin > 0 else 'NOT met'} (by {margin:+.3f} nats/dim)")
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    out = write_text(ROOT / DATA_DIR / "results" / f"bench_flows_{DATASET}.md", report)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_stage(main)
