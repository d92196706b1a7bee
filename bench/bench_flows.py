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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flows  # noqa: E402
from artifacts import load_embeddings, load_npz, write_text  # noqa: E402
from bench_common import ROOT, run_script  # noqa: E402
from encoders import ENCODER_NAMES  # noqa: E402
from flow_models import FlowConfig, baseline_samples, build_flow, fit_preprocessing  # noqa: E402
from metrics import frechet_distance, precision_recall_density_coverage  # noqa: E402
from runtime import limit_cpu_threads, run_stage  # noqa: E402
from settings import configure, pick  # noqa: E402

# Internal table: the encoders whose embeddings count as autoencoder embeddings for the targets.
AUTOENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")

DATASET = "fashion-mnist"  # dataset of the embeddings [in data_sources.DATASETS]
DATA_DIR = "data/bench_flows"  # stage-1 embeddings here (made if missing), and every output
ENCODERS = ENCODER_NAMES  # stage-1 embeddings to fit flows to, by encoder
FLOWS = ("realnvp", "maf", "nsf")  # flows to fit [in flow_models.FLOW_NAMES]
EPOCHS = 30  # most epochs per flow, passed to flows.py [>= 1]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for a missing stage-1 file [>= 1]
THREADS = 2  # CPU threads of flows.py (0: library default) [>= 0]
TIMING_THREADS = (1, 2)  # thread counts to time a training epoch with (target: 2 cores) [>= 1]
SEED = 0  # seed of flows.py, the baselines' samples and the floor's subset [>= 0]
FLOW_ARGS = ""  # more flows.py flags: --flow-args="--learning-rate 2e-3"
FIT = True  # run flows.py and score its files (false: only time the training epochs)
TIMING_EPOCHS = 1  # timed training epochs over 60,000 vectors per flow (0: no timing) [>= 0]


@dataclass(frozen=True)
class FlowBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    encoders: tuple[str, ...]
    flows: tuple[str, ...]
    epochs: int
    encoder_epochs: int
    threads: int
    timing_threads: tuple[int, ...]
    seed: int
    flow_args: str
    fit: bool
    timing_epochs: int


def sample_metrics(fake: np.ndarray, z_test: np.ndarray) -> dict[str, float]:
    values = {"fd": frechet_distance(fake, z_test)}
    values.update(precision_recall_density_coverage(z_test, fake))
    return values


def time_epochs(z_train: np.ndarray, z_test: np.ndarray, b: FlowBench,
                train: flows.FlowTraining, config: FlowConfig
                ) -> list[tuple[str, int, float, float, float]]:
    """(flow, threads, wall seconds, CPU seconds of this process, load average before) of each
    training epoch over the vectors, from a fresh flow, for each thread count in
    b.timing_threads; ``train`` and ``config`` are the stage's defaults (its architecture, batch
    size, learning-rate schedule and gradient clipping)."""
    pre = fit_preprocessing(z_train, z_test)
    x = torch.from_numpy(pre.to_model(z_train).astype(np.float32))
    rows = []
    for threads in b.timing_threads:
        limit_cpu_threads(threads)
        for name in b.flows:
            torch.manual_seed(b.seed)
            flow = build_flow(name, x.shape[1], config, b.seed)
            flow.initialize(x[:flows.ACTNORM_INIT_SIZE])
            optimizer = torch.optim.Adam(flow.parameters(), lr=train.learning_rate)
            for epoch in range(1, b.timing_epochs + 1):
                load = os.getloadavg()[0]
                wall, cpu = time.time(), time.process_time()
                flows.train_epoch(flow, optimizer, x, epoch, f"timing {name}", train)
                rows.append((name, threads, time.time() - wall, time.process_time() - cpu, load))
                print(f"timing {name}, {threads} thread(s): one epoch over {len(x)} vectors "
                      f"{rows[-1][2]:.1f} s wall, {rows[-1][3]:.1f} s CPU (load average "
                      f"{load:.1f})", flush=True)
    limit_cpu_threads(1)
    return rows


def fit_and_score(emb: Path, b: FlowBench) -> tuple[list[str], list[str]]:
    """Run flows.py, then score every embedding's flows and baselines: the tables' lines and the
    targets' verdicts."""
    wall = run_script("flows.py", "--dataset", b.dataset, "--data-dir", b.data_dir,
                      "--encoders", ",".join(b.encoders), "--flows", ",".join(b.flows),
                      "--epochs", str(b.epochs), "--threads", str(b.threads), "--seed",
                      str(b.seed), *shlex.split(b.flow_args))
    print(f"flows.py: {wall:.0f} s", flush=True)
    density_rows, sample_rows, verdicts = [], [], []
    for encoder in b.encoders:
        real = load_embeddings(emb / f"{b.dataset}_{encoder}.npz")
        z_train, z_test = real["z_train"].astype(np.float64), real["z_test"].astype(np.float64)
        results, generated = {}, {}
        for name in b.flows:
            results[name] = load_npz(emb / f"{b.dataset}_{encoder}+{name}.npz", {})["meta"][
                "results"]
            generated[name] = load_npz(emb / f"{b.dataset}_{encoder}+{name}.gen.npz",
                                       {"z_gen": 2})["z_gen"].astype(np.float64)
        # one sample count for every row: the samples written, at most the train embeddings
        n = min(min(len(z) for z in generated.values()), len(z_train))
        for name, z_gen in generated.items():
            sample_rows.append((encoder, name, sample_metrics(z_gen[:n], z_test)))
        for label, fake in baseline_samples(z_train, z_test, n, b.seed).items():
            sample_rows.append((encoder, label, sample_metrics(fake, z_test)))
        chosen = np.sort(np.random.default_rng(b.seed).choice(len(z_train), n, replace=False))
        sample_rows.append((encoder, f"floor: {n} train embeddings",
                            sample_metrics(z_train[chosen], z_test)))
        density_rows += [(encoder, name, r) for name, r in results.items()]
        best = min(b.flows, key=lambda f: results[f]["test_nll"])
        gains = {f: results[f]["gaussian_nll"] - results[f]["test_nll"] for f in b.flows}
        margin = results[best]["mixture_nll"] - results[best]["test_nll"]
        if encoder in AUTOENCODERS:
            worst = min(gains, key=gains.get)
            verdicts.append(f"- {encoder}: every flow beats the Gaussian by >= 0.5 nats/dim: "
                            f"{'met' if gains[worst] >= 0.5 else 'NOT met'} (smallest gain "
                            f"{gains[worst]:.3f}, {worst})")
        verdicts.append(f"- {encoder}: the best flow ({best}) beats the mixture: "
                        f"{'met' if margin > 0 else 'NOT met'} (by {margin:+.3f} nats/dim)")
        print(f"{encoder}: scored", flush=True)
    lines = [f"{b.dataset}, {len(z_train)} train / {len(z_test)} test embeddings per encoder, "
             f"flows.py --epochs {b.epochs} --threads {b.threads} --seed {b.seed}"
             + (f" {b.flow_args}" if b.flow_args else ""), "",
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


def main(argv: list[str] | None = None) -> None:
    b = pick(FlowBench, configure(globals(), argv))
    limit_cpu_threads(1)
    emb = ROOT / b.data_dir / "embeddings"
    needed = b.encoders if b.fit else b.encoders[:1]
    missing = [e for e in needed if not (emb / f"{b.dataset}_{e}.npz").is_file()]
    if missing:
        print(f"training the missing encoder(s) {', '.join(missing)} for {b.encoder_epochs} "
              f"epoch(s)", flush=True)
        run_script("encoder_models.py", "--dataset", b.dataset, "--models", ",".join(missing),
                   "--epochs", str(b.encoder_epochs), "--data-dir", b.data_dir, "--seed",
                   str(b.seed))
    lines, verdicts = fit_and_score(emb, b) if b.fit else ([], [])
    if b.timing_epochs:
        # the stage's own defaults, read as flows.py reads its command line (no flags given)
        flows_values = configure(vars(flows), [])
        train, config = pick(flows.FlowTraining, flows_values), pick(FlowConfig, flows_values)
        data = load_embeddings(emb / f"{b.dataset}_{b.encoders[0]}.npz")
        timings = time_epochs(data["z_train"], data["z_test"], b, train, config)
        lines += ["", f"One training epoch over {len(data['z_train'])} vectors of "
                  f"{b.encoders[0]} (CPU: all threads of this process; a load average above "
                  "the core count means the cores were shared):", "",
                  "| flow | threads | wall s | CPU s | load average | under 15 s |",
                  "| --- " * 6 + "|"]
        lines += [f"| {name} | {threads} | {wall:.1f} | {cpu:.1f} | {load:.1f} | "
                  f"{'yes' if wall < 15 else 'no'} |" for name, threads, wall, cpu, load in timings]
    if verdicts:
        lines += ["", "Targets:", *verdicts]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    name = f"bench_flows_{b.dataset}.md" if b.fit else f"bench_flows_{b.dataset}_timing.md"
    print(f"wrote {write_text(ROOT / b.data_dir / 'results' / name, report)}")


if __name__ == "__main__":
    run_stage(main)
