"""What the benchmark scripts share: the repository root on the import path, running a stage as a
user runs it, the load of the machine, and the targets that several benchmarks check."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime import StageError  # noqa: E402


def run_script(script: str, *args: str) -> float:
    """Run a stage script of the repository as a user would (its output shown); returns its wall
    time. Its failure, already reported in its own output, stops the benchmark with one line."""
    started = time.time()
    code = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT).returncode
    if code:
        raise StageError(f"{script} stopped with exit code {code} (its message is above)")
    return time.time() - started


def load_text() -> str:
    """The 1-, 5- and 15-minute load averages: other jobs on the machine inflate timings."""
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def within_target(row: dict[str, Any]) -> bool:
    """Plan 2's bounds on one generator's row: recall >= 0.8, Fréchet distance <= 2x the floor
    (``ratio``)."""
    return row["recall"] >= 0.8 and row["ratio"] <= 2.0


def meets_target(row: dict[str, Any], mixture: dict[str, Any]) -> bool:
    """Plan 2's target on one row: within its bounds, and above the 20-component mixture's
    precision and density."""
    return within_target(row) and row["precision"] > mixture["precision"] \
        and row["density"] > mixture["density"]
