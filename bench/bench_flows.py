"""How good are the flows? For each seed k of SEEDS, in a folder of its own (DATA_DIR/seed<k>):
train the missing full-dataset stage-1 embeddings of every encoder (encoder_models.py --seed k)
and fit every flow to them (flows.py --seed k, resumed when its checkpoints exist). Then print per
embedding and flow, as mean ± sd over the seeds: test NLL per dimension beside the Gaussian and
mixture baselines, the validation NLL, seconds per epoch (the mean), and for 10,000 samples the
Fréchet distance to the real test embeddings (train-vs-test floor beside it) and precision/recall
(k=3) beside those of the mixture's and the Gaussian's samples (each seeded by k). An embedding's
best flow, for the targets, is the one of lowest mean validation NLL (the held-out part of the
train split on which flows.py picks its best epoch), never chosen on the test split. Then time
one training epoch over 60,000 vectors per flow (the first seed's embeddings). Not a test: an hour
or more per seed on 2 CPU cores.

    python bench/bench_flows.py --encoders ae_basic,triplet --epochs 20 --seeds 0,1,2
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flows  # noqa: E402
from bench_common import ROOT, flag_words, mean_sd, over_seeds, run_script, seed_folder  # noqa: E402
from dataio.artifacts import load_embeddings, load_npz, write_text  # noqa: E402
from evaluation.metrics import frechet_distance, precision_recall_density_coverage  # noqa: E402
from models.encoders import ENCODER_NAMES  # noqa: E402
from models.flow_models import FlowConfig, baseline_samples, build_flow, fit_preprocessing  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import limit_cpu_threads, run_stage  # noqa: E402

# Internal table: the encoders whose embeddings count as autoencoder embeddings for the targets.
AUTOENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset of the embeddings [in dataio.data_sources.DATASETS]
DATA_DIR = "data/bench_flows"  # the report; seed<k>/: seed k's stage-1 embeddings and flows
ENCODERS = ENCODER_NAMES  # stage-1 embeddings to fit flows to, by encoder
FLOWS = ("realnvp", "maf", "nsf")  # flows to fit [in models.flow_models.FLOW_NAMES]
EPOCHS = 30  # most epochs per flow, passed to flows.py [>= 1]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for a missing stage-1 file [>= 1]
THREADS = 2  # CPU threads of flows.py (0: library default) [>= 0]
TIMING_THREADS = (1, 2)  # thread counts to time a training epoch with (target: 2 cores) [>= 1]
SEEDS = (0, 1, 2)  # seeds of every measured configuration [seed]
FLOW_ARGS = ""  # more flows.py flags: --flow-args="--learning-rate 2e-3"
FIT = True  # run flows.py and score its files (false: only time the training epochs)
TIMING_EPOCHS = 1  # timed training epochs over 60,000 vectors per flow (0: no timing) [>= 0]
# ---------------------------------------------------------------- end of settings


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
    seeds: tuple[int, ...]
    flow_args: str
    fit: bool
    timing_epochs: int


def sample_metrics(fake: np.ndarray, z_test: np.ndarray) -> dict[str, float]:
    values = {"fd": frechet_distance(fake, z_test)}
    values.update(precision_recall_density_coverage(z_test, fake))
    return values


def train_missing_encoders(encoders: tuple[str, ...], seed: int, b: FlowBench) -> None:
    """Train the stage-1 encoders whose embeddings are missing from the seed's folder."""
    folder = str(seed_folder(b.data_dir, seed))
    missing = [e for e in encoders
               if not (ROOT / folder / "embeddings" / f"{b.dataset}_{e}.npz").is_file()]
    if missing:
        print(f"seed {seed}: training the missing encoder(s) {', '.join(missing)} for "
              f"{b.encoder_epochs} epoch(s)", flush=True)
        run_script("encoder_models.py", "--dataset", b.dataset, "--models", ",".join(missing),
                   "--epochs", str(b.encoder_epochs), "--data-dir", folder, "--seed", str(seed))


def time_epochs(z_train: np.ndarray, z_test: np.ndarray, seed: int, b: FlowBench,
                train: flows.FlowTraining, config: FlowConfig
                ) -> list[tuple[str, int, float, float, float]]:
    """(flow, threads, wall seconds, CPU seconds of this process, load average before) of each
    training epoch over the vectors, from a fresh flow seeded by ``seed``, for each thread count
    in b.timing_threads; ``train`` and ``config`` are the stage's defaults (its architecture,
    batch size, learning-rate schedule and gradient clipping)."""
    pre = fit_preprocessing(z_train, z_test)
    x = torch.from_numpy(pre.to_model(z_train).astype(np.float32))
    rows = []
    for threads in b.timing_threads:
        limit_cpu_threads(threads)
        for name in b.flows:
            torch.manual_seed(seed)
            flow = build_flow(name, x.shape[1], config, seed)
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


def fit_and_score(seed: int, b: FlowBench) -> dict[str, dict[str, Any]]:
    """Run flows.py with one seed in that seed's folder, then score its files: per encoder, each
    flow's results (as flows.py wrote them), the metrics of the samples of every flow, of the
    baselines and of the floor, and the sizes (train, test, samples)."""
    folder = str(seed_folder(b.data_dir, seed))
    emb = ROOT / folder / "embeddings"
    wall = run_script("flows.py", "--dataset", b.dataset, "--data-dir", folder,
                      "--encoders", ",".join(b.encoders), "--flows", ",".join(b.flows),
                      "--epochs", str(b.epochs), "--threads", str(b.threads), "--seed",
                      str(seed), *flag_words("--flow-args", b.flow_args))
    print(f"flows.py, seed {seed}: {wall:.0f} s", flush=True)
    run: dict[str, dict[str, Any]] = {"results": {}, "samples": {}, "sizes": {}}
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
        samples = {name: sample_metrics(z_gen[:n], z_test) for name, z_gen in generated.items()}
        for label, fake in baseline_samples(z_train, z_test, n, seed).items():
            samples[label] = sample_metrics(fake, z_test)
        chosen = np.sort(np.random.default_rng(seed).choice(len(z_train), n, replace=False))
        samples["floor"] = sample_metrics(z_train[chosen], z_test)
        run["results"][encoder], run["samples"][encoder] = results, samples
        run["sizes"][encoder] = (len(z_train), len(z_test), n)
        print(f"{encoder}, seed {seed}: scored", flush=True)
    return run


def report(runs: list[dict[str, dict[str, Any]]], b: FlowBench) -> tuple[list[str], list[str]]:
    """The tables' lines (mean ± sd over the seeds' runs, in the order of b.seeds) and the
    targets' verdicts; an embedding's best flow is the one of lowest mean validation NLL."""
    count = len(runs)
    n_train, n_test, _ = runs[0]["sizes"][b.encoders[0]]
    lines = [f"{b.dataset}, {n_train} train / {n_test} test embeddings per encoder, "
             f"flows.py --epochs {b.epochs} --threads {b.threads}"
             + (f" {b.flow_args}" if b.flow_args else "")
             + f"; seeds {', '.join(map(str, b.seeds))}: seed k's stage-1 encoders (when "
             f"missing: encoder_models.py --epochs {b.encoder_epochs} --seed k) and flows "
             f"(flows.py --seed k) in {b.data_dir}/seed<k>, and k seeds the baselines' samples "
             "and the floor's subset", "",
             "Each cell: mean ± sample sd (ddof 1) over the seeds; s per epoch: the mean.", "",
             "Test NLL, nats per dimension in the standardised model space (lower is better); "
             "validation NLL: the best epoch's, on the held-out part of the train split that "
             "picks the epoch (and the best flow of the targets):", "",
             "| embedding | flow | test NLL | Gaussian | mixture | gain over Gaussian | gain over "
             "mixture | validation NLL | best epoch / run | s per epoch | k-NN original | "
             "k-NN refined |", "| --- " * 12 + "|"]
    for encoder in b.encoders:
        for name in b.flows:
            rs = [run["results"][encoder][name] for run in runs]

            def cell(key: str, digits: int = 3, rs: list[dict[str, Any]] = rs) -> str:
                return over_seeds([r[key] for r in rs], digits)

            gain_gaussian = [r["gaussian_nll"] - r["test_nll"] for r in rs]
            gain_mixture = [r["mixture_nll"] - r["test_nll"] for r in rs]
            seconds = mean_sd([r["seconds_per_epoch"] for r in rs])[0]
            lines.append(f"| {encoder} | {name} | {cell('test_nll')} | {cell('gaussian_nll')} | "
                         f"{cell('mixture_nll')} | {over_seeds(gain_gaussian)} | "
                         f"{over_seeds(gain_mixture)} | {cell('best_val_nll')} | "
                         f"{cell('best_epoch', 1)} / {cell('epochs_run', 1)} | {seconds:.1f} | "
                         f"{cell('knn_original', 4)} | {cell('knn_refined', 4)} |")
    lines += ["", "Samples against the real test embeddings (precision/recall k=3, density/"
              "coverage k=5; the floor is a seeded subset of as many train embeddings):", "",
              "| embedding | samples | Fréchet distance | precision | recall | density | "
              "coverage |", "| --- " * 7 + "|"]
    for encoder in b.encoders:
        sizes = sorted({run["sizes"][encoder][2] for run in runs})
        for label in runs[0]["samples"][encoder]:
            values = [run["samples"][encoder][label] for run in runs]
            shown = label if label != "floor" else \
                f"floor: {'/'.join(map(str, sizes))} train embeddings"
            lines.append(f"| {encoder} | {shown} | "
                         + " | ".join(over_seeds([v[key] for v in values], 4 if key == "fd" else 3)
                                      for key in ("fd", "precision", "recall", "density",
                                                  "coverage")) + " |")
    verdicts = []
    for encoder in b.encoders:
        results = {name: [run["results"][encoder][name] for run in runs] for name in b.flows}
        validation = {name: mean_sd([r["best_val_nll"] for r in rs])[0]
                      for name, rs in results.items()}
        best = min(b.flows, key=validation.get)
        if encoder in AUTOENCODERS:
            gains = {name: [r["gaussian_nll"] - r["test_nll"] for r in rs]
                     for name, rs in results.items()}
            worst = min(b.flows, key=lambda name: mean_sd(gains[name])[0])
            met = sum(all(gains[name][i] >= 0.5 for name in b.flows) for i in range(count))
            verdicts.append(f"- {encoder}: every flow beats the Gaussian by >= 0.5 nats/dim (on "
                            f"the mean): {'met' if mean_sd(gains[worst])[0] >= 0.5 else 'NOT met'}"
                            f" (smallest gain {over_seeds(gains[worst])}, {worst}; met with "
                            f"{met} of {count} seeds)")
        margins = [r["mixture_nll"] - r["test_nll"] for r in results[best]]
        verdicts.append(f"- {encoder}: the best flow on validation ({best}) beats the mixture on "
                        f"the test split: {'met' if mean_sd(margins)[0] > 0 else 'NOT met'} "
                        f"(by {over_seeds(margins)} nats/dim; met with "
                        f"{sum(m > 0 for m in margins)} of {count} seeds)")
    return lines, verdicts


def main(argv: list[str] | None = None) -> None:
    b = pick(FlowBench, configure(globals(), argv))
    flag_words("--flow-args", b.flow_args)  # checked before anything trains
    limit_cpu_threads(1)
    runs = []
    if b.fit:
        for seed in b.seeds:
            train_missing_encoders(b.encoders, seed, b)
            runs.append(fit_and_score(seed, b))
    lines, verdicts = report(runs, b) if b.fit else ([], [])
    if b.timing_epochs:
        seed = b.seeds[0]
        train_missing_encoders(b.encoders[:1], seed, b)
        # the stage's own defaults, read as flows.py reads its command line (no flags given)
        flows_values = configure(vars(flows), [])
        train, config = pick(flows.FlowTraining, flows_values), pick(FlowConfig, flows_values)
        data = load_embeddings(ROOT / str(seed_folder(b.data_dir, seed)) / "embeddings"
                               / f"{b.dataset}_{b.encoders[0]}.npz")
        timings = time_epochs(data["z_train"], data["z_test"], seed, b, train, config)
        lines += ["", f"One training epoch over {len(data['z_train'])} vectors of "
                  f"{b.encoders[0]} (seed {seed}, one run; CPU: all threads of this process; a "
                  "load average above the core count means the cores were shared):", "",
                  "| flow | threads | wall s | CPU s | load average | under 15 s |",
                  "| --- " * 6 + "|"]
        lines += [f"| {name} | {threads} | {wall:.1f} | {cpu:.1f} | {load:.1f} | "
                  f"{'yes' if wall < 15 else 'no'} |" for name, threads, wall, cpu, load in timings]
    if verdicts:
        lines += ["", "Targets:", *verdicts]
    report_text = "\n".join(lines) + "\n"
    print("\n" + report_text)
    name = f"bench_flows_{b.dataset}.md" if b.fit else f"bench_flows_{b.dataset}_timing.md"
    print(f"wrote {write_text(ROOT / b.data_dir / 'results' / name, report_text)}")


if __name__ == "__main__":
    run_stage(main)
