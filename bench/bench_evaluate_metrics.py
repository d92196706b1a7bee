"""What do the metrics of a paper cost? evaluate.py with KID, Vendi, intra-class FID, the
classifier accuracy score and the bootstrap intervals, beside evaluate.py as it was before them
(a git worktree of BASELINE_REVISION), on two copies of one data folder (the `make demo` outputs),
run in turn A B A B ... so that the machine's drift hits both; prints each run's seconds and the
ratio. Target: at most 1.5x (TARGET_RATIO). The evaluator CNN must be cached in the folder (both
versions read the same checkpoint), so that training it is in neither time.

    python bench/bench_evaluate_metrics.py --data-dir data --runs 1
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import ROOT, load_text  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import StageError, run_stage  # noqa: E402

# ---------------------------------------------------------------- settings
DATA_DIR = "data"  # a folder the stages wrote (make demo's), with its evaluator CNN cached
BASELINE_REVISION = "69890c5"  # commit whose evaluate.py lacks the paper metrics (the baseline)
RUNS = 1  # pairs of runs (A then B) [>= 1]
BOOTSTRAP = 10  # --bootstrap of the current evaluate.py [>= 0]
TARGET_RATIO = 1.5  # bound on current / baseline seconds [> 0]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class MetricsBench:
    """This benchmark's settings, as main passes them down."""

    data_dir: str
    baseline_revision: str
    runs: int
    bootstrap: int
    target_ratio: float


def timed(command: list[str], cwd: Path) -> float:
    """Wall seconds of one run of evaluate.py; its failure stops the benchmark."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise StageError(f"{' '.join(command)} failed: {result.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    b = pick(MetricsBench, configure(globals(), argv))
    source = Path(b.data_dir).resolve()
    if not list((source / "checkpoints" / "evaluator").glob("*.pt")):
        raise StageError(f"{source}: no cached evaluator CNN; run evaluate.py on it once first")
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        scratch = Path(scratch)
        baseline = scratch / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline),
                        b.baseline_revision], cwd=ROOT, check=True, capture_output=True)
        try:
            copies = {name: scratch / name for name in ("new", "old")}
            for copy in copies.values():
                shutil.copytree(source, copy, ignore=shutil.ignore_patterns("results"))
            commands = {
                "new": ([sys.executable, str(ROOT / "evaluate.py"), "--data-dir",
                         str(copies["new"]), "--bootstrap", str(b.bootstrap)], ROOT),
                "old": ([sys.executable, str(baseline / "evaluate.py"), "--data-dir",
                         str(copies["old"])], baseline)}
            times: dict[str, list[float]] = {"new": [], "old": []}
            print(f"evaluate.py on {source} (copies), {b.runs} pair(s); {load_text()}",
                  flush=True)
            for run in range(b.runs):
                for name, (command, cwd) in commands.items():
                    times[name].append(timed(command, cwd))
                    print(f"run {run + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT,
                           capture_output=True)
    ratios = [new / old for new, old in zip(times["new"], times["old"], strict=True)]
    ratio = sorted(ratios)[len(ratios) // 2]
    print(f"\n| evaluate.py | seconds per run | \n| --- | --- |\n"
          f"| with KID, Vendi, intra-class FID, CAS, {b.bootstrap} bootstrap resamples | "
          f"{', '.join(f'{t:.1f}' for t in times['new'])} |\n"
          f"| before them ({b.baseline_revision}) | "
          f"{', '.join(f'{t:.1f}' for t in times['old'])} |\n\n"
          f"ratio new / old (median of pairs): {ratio:.2f} "
          f"({'within' if ratio <= b.target_ratio else 'OVER'} the {b.target_ratio}x target); "
          f"{load_text()}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
