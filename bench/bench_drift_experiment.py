"""Benchmark: the offline drift experiment end to end, in `make demo`'s quick preset.

Runs, as a user runs them, into a fresh folder DATA_DIR/bench_drift: the small CLIP
(train_small_clip.py), the self-consuming loop (self_consuming_loop.py, generations 0-10), the
extraction of generations 0, 4 and 10 with the small CLIP and both drift figures; prints the
wall time and CPU time of each part, their total against the target (15 minutes on 2 CPU cores)
and the load average: other jobs on the machine inflate wall times, CPU times much less. The
evaluator CNN the loop measures with is copied from DATA_DIR/checkpoints/evaluator (evaluate.py
caches it in the demo); when it is not there it is trained first and timed as a part of its own,
outside the total.

    python bench/bench_drift_experiment.py
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import ROOT  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import StageError, run_stage  # noqa: E402

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset of the experiment [in dataio.data_sources.DATASETS]
DATA_DIR = "data"  # the evaluator is taken from here; the run goes to DATA_DIR/bench_drift
GENERATIONS = (0, 4, 10)  # generations embedded and plotted (the loop runs up to the last) [>= 0]
TARGET_MINUTES = 15.0  # bound for the quick preset on 2 CPU cores [> 0]
KEEP = False  # keep DATA_DIR/bench_drift afterwards (it is replaced at the next run anyway)
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class DriftBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    generations: tuple[int, ...]
    target_minutes: float
    keep: bool


def cpu_seconds() -> float:
    """User + system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(label: str, command: list[str], times: dict[str, float],
          cpu: dict[str, float]) -> None:
    """Run one stage as a user would; record its wall and CPU time; stop on failure."""
    print(f"\n== {label}: {' '.join(command)}", flush=True)
    start, start_cpu = time.perf_counter(), cpu_seconds()
    result = subprocess.run([sys.executable, *command], cwd=ROOT)
    times[label] = time.perf_counter() - start
    cpu[label] = cpu_seconds() - start_cpu
    if result.returncode != 0:
        raise StageError(f"{label} failed (exit {result.returncode}) after "
                         f"{times[label]:.0f} s; see its output above")


def main(argv: list[str] | None = None) -> None:
    b = pick(DriftBench, configure(globals(), argv))
    bench = Path(b.data_dir).resolve() / "bench_drift"
    shutil.rmtree(bench, ignore_errors=True)
    (bench / "checkpoints" / "evaluator").mkdir(parents=True)
    cached = Path(b.data_dir).resolve() / "checkpoints" / "evaluator" / f"{b.dataset}.pt"
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    load_before = os.getloadavg()
    if cached.is_file():
        shutil.copy(cached, bench / "checkpoints" / "evaluator")
    else:
        timed("evaluator CNN (once per dataset; outside the total)",
              ["train_evaluator.py", "--dataset", b.dataset, "--data-dir", str(bench)],
              times, cpu)
    loop_dir = bench / f"{b.dataset}_loop"
    last = max(b.generations)
    listed = ",".join(map(str, b.generations))
    common = ["--dataset", b.dataset, "--data-dir", str(bench)]
    timed("small CLIP", ["train_small_clip.py", *common], times, cpu)
    timed("self-consuming loop", ["self_consuming_loop.py", *common, "--generations", str(last)],
          times, cpu)
    timed("extraction", ["extract_generation_embeddings.py", "--annotation-file",
                         str(loop_dir / "captions.json"), "--generation-dir-pattern",
                         str(loop_dir / "gen_{g}"), "--model",
                         str(bench / "checkpoints" / f"clip_{b.dataset}"), "--generations", listed,
                         "--num-captions", "1000", "--output-dir", str(bench / "embeddings")],
          times, cpu)
    timed("drift figures", ["plot_generation_clusters.py", "--generations", listed,
                            "--embedding-dir", str(bench / "embeddings"), "--visualization-dir",
                            str(bench / "visualizations"), "--results-dir",
                            str(bench / "results")], times, cpu)
    load_after = os.getloadavg()
    total = sum(seconds for label, seconds in times.items() if "outside" not in label)
    print(f"\n{b.dataset} drift experiment, quick preset (loop generations 0-{last}, extraction "
          f"and figures of {listed}), {os.cpu_count()} CPU cores visible")
    print("| part | wall time | share of the total | CPU time (user + system) |\n"
          "| --- | --- | --- | --- |")
    for label, seconds in times.items():
        share = "" if "outside" in label else f"{seconds / total:.0%}"
        print(f"| {label} | {seconds:.0f} s | {share} | {cpu[label]:.0f} s |")
    total_cpu = sum(seconds for label, seconds in cpu.items() if "outside" not in label)
    verdict = "under" if total <= b.target_minutes * 60 else "OVER"
    print(f"| total | {total:.0f} s ({total / 60:.1f} min): {verdict} the {b.target_minutes:g} min "
          f"target | | {total_cpu:.0f} s ({total_cpu / 60:.1f} min) |")
    print(f"load average (1, 5, 15 min): before {', '.join(f'{v:.1f}' for v in load_before)}; "
          f"after {', '.join(f'{v:.1f}' for v in load_after)}")
    if not b.keep:
        shutil.rmtree(bench, ignore_errors=True)


if __name__ == "__main__":
    run_stage(main, resumable=False)
