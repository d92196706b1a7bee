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
from runtime import StageError, limit_cpu_threads, run_stage  # noqa: E402
from settings import configure  # noqa: E402

# Internal table: the encoders whose embeddings count as autoencoder embeddings for the targets.
AUTOENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")

DATASET = "fashion-mnist"  # dataset of the embeddings [in data_sources.DATASETS]
DATA_DIR = "data/bench_flows"  # stage-1 embeddings here (made if missing), and every output
ENCODERS = flows.STAGE1_ENCODERS  # stage-1 embeddings to fit flows to, by encoder
FLOWS = ("realnvp", "maf", "nsf")  # flows to fit [in flows.FLOW_NAMES]
EPOCHS = 30  # most epochs per flow, passed to flows.py [>= 1]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for a missing stage-1 file [>= 1]
THREADS = 2  # CPU threads of flows.py (0: library default) [>= 0]
TIMING_THREADS = (1, 2)  # thread counts to time a training epoch with (target: 2 cores) [>= 1]
SEED = 0  # seed of flows.py, the baselines' samples and the floor's subset [>= 0]
FLOW_ARGS = ""  # more flows.py flags: --flow-args="--learning-rate 2e-3"
FIT = True  # run flows.py and score its files (false: only time the training epochs)
TIMING_EPOCHS = 1  # timed training epochs over 60,000 vectors per flow (0: no timing) [>= 0]


def run_script(script: str, *args: str) -> None:
    """Run a stage script of the repository; its failure (already reported) stops the bench."""
    code = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT).returncode
    if code:
        raise StageError(f"{script} stopped with exit code {code} (its message is above)")


def sample_metrics(fake: np.ndarray, z_test: np.ndarray) -> dict[str, float]:
    values = {"fd": frechet_distance(fake, z_test)}
    values.update(precision_recall_density_coverage(z_test, fake))
    return values


def time_epochs(z_train: np.ndarray, z_test: np.ndarray
                ) -> list[tuple[str, int, float, float, float]]:
    """(flow, threads, wall seconds, CPU seconds of this process, load average before) of each
    training epoch over the vectors, at the stage's default architecture and batch size, from a
    fresh flow, for each thread count in TIMING_THREADS."""
    pre = flows.fit_preprocessing(z_train, z_test)
    x = torch.from_numpy(pre.to_model(z_train).astype(np.float32))
    rows = []
    for threads in TIMING_THREADS:
        limit_cpu_threads(threads)
        for name in FLOWS:
            torch.manual_seed(SEED)
            flow = flows.build_flow(name, x.shape[1], SEED)
            flow.initialize(x[:flows.ACTNORM_INIT_SIZE])
            optimizer = torch.optim.Adam(flow.parameters(), lr=flows.LEARNING_RATE)
            for epoch in range(1, TIMING_EPOCHS + 1):
                load = os.getloadavg()[0]
                wall, cpu = time.time(), time.process_time()
                flows.train_epoch(flow, optimizer, x, epoch, f"timing {name}")
                rows.append((name, threads, time.time() - wall, time.process_time() - cpu, load))
                print(f"timing {name}, {threads} thread(s): one epoch over {len(x)} vectors "
                      f"{rows[-1][2]:.1f} s wall, {rows[-1][3]:.1f} s CPU (load average "
                      f"{load:.1f})", flush=True)
    limit_cpu_threads(1)
    return rows


def fit_and_score(emb: Path) -> tuple[list[str], list[str]]:
    """Run flows.py, then score every embedding's flows and baselines: the tables' lines and the
    targets' verdicts."""
    started = time.time()
    run_script("flows.py", "--dataset", DATASET, "--data-dir", DATA_DIR, "--encoders",
               ",".join(ENCODERS), "--flows", ",".join(FLOWS), "--epochs", str(EPOCHS),
               "--threads", str(THREADS), "--seed", str(SEED), *shlex.split(FLOW_ARGS))
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
        for label, fake in flows.baseline_samples(z_train, z_test, n, SEED).items():
            sample_rows.append((encoder, label, sample_metrics(fake, z_test)))
        chosen = np.sort(np.random.default_rng(SEED).choice(len(z_train), n, replace=False))
        sample_rows.append((encoder, f"floor: {n} train embeddings",
                            sample_metrics(z_train[chosen], z_test)))
        density_rows += [(encoder, name, r) for name, r in results.items()]
        best = min(FLOWS, key=lambda f: results[f]["test_nll"])
        gains = {f: results[f]["gaussian_nll"] - results[f]["test_nll"] for f in FLOWS}
        margin = results[best]["mixture_nll"] - results[best]["test_nll"]
        if encoder in AUTOENCODERS:
            worst = min(gains, key=gains.get)
            verdicts.append(f"- {encoder}: every flow beats the Gaussian by >= 0.5 nats/dim: "
                            f"{'met' if gains[worst] >= 0.5 else 'NOT met'} (smallest gain "
                            f"{gains[worst]:.3f}, {worst})")
        verdicts.append(f"- {encoder}: the best flow ({best}) beats the mixture: "
                        f"{'met' if margin > 0 else 'NOT met'} (by {margin:+.3f} nats/dim)")
        print(f"{encoder}: scored", flush=True)
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
    return lines, verdicts


def main() -> None:
    configure(globals())
    limit_cpu_threads(1)
    emb = ROOT / DATA_DIR / "embeddings"
    needed = ENCODERS if FIT else ENCODERS[:1]
    missing = [e for e in needed if not (emb / f"{DATASET}_{e}.npz").is_file()]
    if missing:
        print(f"training the missing encoder(s) {', '.join(missing)} for {ENCODER_EPOCHS} "
              f"epoch(s)", flush=True)
        run_script("encoder_models.py", "--dataset", DATASET, "--models", ",".join(missing),
                   "--epochs", str(ENCODER_EPOCHS), "--data-dir", DATA_DIR, "--seed", str(SEED))
    lines, verdicts = fit_and_score(emb) if FIT else ([], [])
    if TIMING_EPOCHS:
        data = load_embeddings(emb / f"{DATASET}_{ENCODERS[0]}.npz")
        timings = time_epochs(data["z_train"], data["z_test"])
        lines += ["", f"One training epoch over {len(data['z_train'])} vectors of {ENCODERS[0]} "
                  "(CPU: all threads of this process; a load average above the core count "
                  "means the cores were shared):", "",
                  "| flow | threads | wall s | CPU s | load average | under 15 s |",
                  "| --- " * 6 + "|"]
        lines += [f"| {name} | {threads} | {wall:.1f} | {cpu:.1f} | {load:.1f} | "
                  f"{'yes' if wall < 15 else 'no'} |" for name, threads, wall, cpu, load in timings]
    if verdicts:
        lines += ["", "Targets:", *verdicts]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    name = f"bench_flows_{DATASET}.md" if FIT else f"bench_flows_{DATASET}_timing.md"
    print(f"wrote {write_text(ROOT / DATA_DIR / 'results' / name, report)}")


if __name__ == "__main__":
    run_stage(main)
