"""Does accumulating data avoid the collapse of a self-consuming loop? The three data regimes of
the literature (replace, accumulate, accumulate-subsample), each with and without fresh real data,
GENERATIONS generations, one loop per seed, run as self_consuming_loop.py runs (resumable), two
at a time on 2 CPU cores; plus the replace loop trained from scratch instead of warm-started.
Prints, per configuration, the metrics at a few generations as mean ± sd over the seeds, the
growth of FID from generation 0, and what the study shows; draws every configuration side by side
(compare_loops.py's figure, bands of ± one sd over seeds).

The scale is the study's own (smaller than the stage's defaults, to fit the 60-minute budget on 2
CPU cores): TRAIN_IMAGES images per generation, N_IMAGES prompts, a WIDTH-channel network,
generation 0 trained until its validation FID has not improved for PATIENCE epochs (at most
EPOCHS_FIRST), every later generation EPOCHS epochs (of TRAIN_IMAGES images), KID on 20 subset pairs
and no bootstrap intervals (the band is the spread over seeds). Two loops side by side each run
about 1.5 times slower than one alone, about 1.3 times the throughput of one. Each seed's converged
start is trained first (its first configuration's loop up to generation 1); every other loop of that
seed starts as soon as it is there, so both cores stay busy (results and timing: docs/drift.md).

    python bench/bench_loop_study.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import self_consuming_loop as loop  # noqa: E402
from bench_common import ROOT, flag_words, load_text  # noqa: E402
from dataio.artifacts import ensure_output_dir, save_figure  # noqa: E402
from dataio.data_sources import load_dataset  # noqa: E402
from evaluation import scoring  # noqa: E402
from reporting.loop_comparison import loop_results, metrics_figure  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import StageError, pick_device, run_stage  # noqa: E402
from training.loop_regimes import Regime  # noqa: E402

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset of the loops [in dataio.data_sources.DATASETS]
DATA_DIR = "data/bench_loop_study"  # every loop's folders, results and figures
SEEDS = (0, 1, 2)  # one loop per seed and configuration [seed]
GENERATIONS = 20  # generations after the first [>= 1]
FRESH = 0.2  # the fresh-data configurations' share of fresh real images [> 0, <= 1]
TRAIN_IMAGES = 2000  # images of generation 0's set and of every addition [>= 64]
N_IMAGES = 1000  # prompts scored per generation [>= 10]
WIDTH = 16  # channels of the networks' first conv layer [>= 1]
EPOCHS = 5  # epochs of every later generation (0: generation 0's converged count) [>= 0]
EPOCHS_FIRST = 100  # most epochs of generation 0 [>= 1]
PATIENCE = 10  # generation 0 stops after this many epochs without a better validation FID [>= 1]
SCRATCH = False  # also the replace loop from scratch (no warm start): 1/6 more time
PARALLEL = 2  # loops run at once (one CPU thread each) [>= 1]
STAGE_ARGS = "--kid-subsets 20 --bootstrap 0"  # more self_consuming_loop.py flags for every loop
MARKS = (0, 5, 10, 20)  # generations reported in the table [>= 0]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class StudyBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    seeds: tuple[int, ...]
    generations: int
    fresh: float
    train_images: int
    n_images: int
    width: int
    epochs: int
    epochs_first: int
    patience: int
    scratch: bool
    parallel: int
    stage_args: str
    marks: tuple[int, ...]


def configurations(b: StudyBench) -> list[tuple[str, list[str]]]:
    """(label, stage flags) of every loop of the study."""
    configs = [(f"{regime}{f', {b.fresh:.0%} fresh' if fresh else ''}",
                ["--regime", regime, "--fresh-fraction", str(fresh)])
               for regime in ("replace", "accumulate", "accumulate-subsample")
               for fresh in (0.0, b.fresh)]
    if b.scratch:
        configs.append(("replace, from scratch", ["--regime", "replace", "--no-warm-start"]))
    return configs


def run_loop(flags: list[str], seed: int, generations: int, b: StudyBench, log: Path) -> float:
    """One loop (one configuration, one seed) as a user runs it, up to ``generations`` (resumed
    when it has some); its wall seconds."""
    command = [sys.executable, str(ROOT / "self_consuming_loop.py"), "--dataset", b.dataset,
               "--data-dir", b.data_dir, "--seeds", str(seed),
               "--generations", str(generations), "--train-images", str(b.train_images),
               "--n-images", str(b.n_images), "--width", str(b.width), "--epochs",
               str(b.epochs), "--epochs-first", str(b.epochs_first), "--patience",
               str(b.patience), "--threads", "1", *flags, *flag_words("--stage-args", b.stage_args)]
    started = time.time()
    with log.open("a") as output:
        code = subprocess.run(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT).returncode
    if code:
        raise StageError(f"{' '.join(command[1:])} failed (exit {code}); see {log}")
    return time.time() - started


def results_of(flags: list[str], b: StudyBench) -> list[list[dict[str, Any]]]:
    """Every seed's generation records of one configuration."""
    values = configure(vars(loop), ["--dataset", b.dataset, "--data-dir", b.data_dir,
                                    "--train-images", str(b.train_images), *flags])
    runs = []
    for seed in b.seeds:
        run = pick(loop.LoopRun, values, seed=seed)
        regime = Regime(values["regime"], values["train_images"], values["fresh_fraction"])
        path = Path(b.data_dir) / "results" / f"{loop.run_name(run, regime)}_metrics.json"
        runs.append(json.loads(path.read_text())["generations"])
    return runs


def at(runs: list[list[dict[str, Any]]], generation: int, key: str) -> tuple[float, float]:
    """Mean and sample sd over the seeds of one metric at one generation; ``a/b``: the ratio of
    two keys of each record."""
    numerator, _, denominator = key.partition("/")
    values = [next(r[numerator] / (r[denominator] if denominator else 1.0)
                   for r in records if r["generation"] == generation) for records in runs]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> None:
    b = pick(StudyBench, configure(globals(), argv))
    flag_words("--stage-args", b.stage_args)  # checked before anything trains
    logs = ensure_output_dir(Path(b.data_dir) / "logs")
    configs = configurations(b)
    started = time.time()
    print(f"{len(configs)} configurations x {len(b.seeds)} seeds x {b.generations} generations "
          f"on {b.dataset}: {b.train_images} images per generation, {b.n_images} prompts, width "
          f"{b.width}, later epochs {b.epochs or 'as generation 0'}; {load_text()}", flush=True)
    # One loop per (configuration, seed), PARALLEL at a time. The first configuration's loop of
    # a seed, run to generation 1, trains that seed's converged start, which every loop of the
    # seed then reuses: those go first (one per seed: two loops never train the same start), and
    # a seed's loops start as soon as its start is there.
    # The evaluator CNN every loop scores with, trained once here (on both cores) rather than
    # by the first two loops at once.
    scoring.load_evaluator(load_dataset(b.dataset, b.data_dir), pick_device("auto"),
                           scoring.EvaluatorSettings(data_dir=b.data_dir))
    ready = [(0, seed, 1) for seed in b.seeds]  # (configuration, seed, up to generation)
    later = {seed: [(index, seed, b.generations) for index in range(len(configs))]
             for seed in b.seeds}
    with ThreadPoolExecutor(b.parallel) as pool:
        running: dict[Future, tuple[int, int, int]] = {}
        while ready or running:
            while ready and len(running) < b.parallel:
                task = ready.pop(0)
                index, seed, generations = task
                running[pool.submit(run_loop, configs[index][1], seed, generations, b,
                                    logs / f"config{index}_seed{seed}.log")] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                index, seed, generations = running.pop(future)
                print(f"{configs[index][0]}, seed {seed}, to generation {generations}: "
                      f"{future.result():.0f} s", flush=True)
                ready.extend(later.pop(seed, []))  # the seed's start is there: its loops
    total = time.time() - started
    marks = [m for m in b.marks if m <= b.generations]
    keys = (("fid", "FID", 1), ("precision", "precision", 3), ("recall", "recall", 3),
            ("vendi", "Vendi", 2), ("class_consistency", "class consistency", 3),
            ("within_class_variance/within_class_variance_real",
             "within-class variance / real's", 3))
    print(f"\n# Self-consuming loops on {b.dataset}: mean ± sd over seeds "
          f"{', '.join(map(str, b.seeds))} (evaluator-CNN features, {b.n_images} prompts "
          f"against the test images); {total / 60:.0f} min in all\n")
    all_runs = {}
    for key, name, digits in keys:
        print(f"\n{name}\n\n| configuration | " + " | ".join(f"gen {m}" for m in marks)
              + " |\n" + "| --- " * (len(marks) + 1) + "|")
        for label, flags in configs:
            runs = all_runs.setdefault(label, results_of(flags, b))
            print(f"| {label} | " + " | ".join(
                "{:.{d}f} ± {:.{d}f}".format(*at(runs, m, key), d=digits) for m in marks) + " |")
    print("\nFID at the last generation over generation 0's (mean over seeds):")
    growth = {}
    for label, runs in all_runs.items():
        ratio = [next(r["fid"] for r in records if r["generation"] == b.generations)
                 / records[0]["fid"] for records in runs]
        growth[label] = float(np.mean(ratio))
        print(f"- {label}: {growth[label]:.2f}x (seeds: {', '.join(f'{r:.2f}' for r in ratio)})")
    replace, accumulate = growth.get("replace"), growth.get("accumulate")
    if replace is not None and accumulate is not None:
        print(f"\nreplace grows FID {replace:.2f}x over {b.generations} generations, accumulate "
              f"{accumulate:.2f}x: accumulating "
              + ("avoids the collapse replacing shows" if accumulate < 1.2 <= replace
                 else "does not avoid it here" if accumulate >= 1.2 else
                 "shows no collapse to avoid here (replace did not collapse either)"))
    figure = metrics_figure(loop_results(Path(b.data_dir) / "results", b.dataset)[0],
                            f"{b.dataset} self-consuming loops, {b.generations} generations")
    png = save_figure(figure, Path(b.data_dir) / "visualizations" / "loop_study_metrics.png")
    print(f"\nfigure: {png}; per-loop logs in {logs}; {load_text()}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
