"""Run-time helpers every stage shares: errors, device choice, seeding, the top-level wrapper."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable

import numpy as np
import torch


class StageError(Exception):
    """A problem with the input or settings of a stage; the top level prints it as one line."""


def run_stage(main: Callable[[], None]) -> None:
    """Call a stage's main(); a StageError or Ctrl-C becomes one readable line and an exit code."""
    try:
        main()
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished checkpoint is kept; run again to resume",
              file=sys.stderr)
        sys.exit(130)


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; any other name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise StageError(f"--device {name!r} is not a device name (auto, cuda, cuda:N, mps, cpu)") \
            from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageError("--device cuda was asked for, but torch sees no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StageError("--device mps was asked for, but torch sees no MPS device")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def limit_cpu_threads(threads: int) -> None:
    """Cap torch's, BLAS's and OpenMP's thread pools for the rest of the process (0: no cap).

    On a 2-core machine shared with other jobs, spinning OpenMP/BLAS threads made t-SNE, the
    logistic-regression probe and the evaluator CNN 3 to 40 times slower than one thread did.
    """
    if threads > 0:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(limits=threads)
