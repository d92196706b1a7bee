"""Run-time helpers every stage shares: errors, device choice, seeding, the top-level wrapper."""

from __future__ import annotations

import errno
import os
import random
import sys
from collections.abc import Callable

import numpy as np
import torch

from runtime.settings import SettingsError


class StageError(Exception):
    """A problem with the input or settings of a stage; the top level prints it as one line."""


def describe_os_error(err: OSError) -> str:
    """One line naming the path (when known) and the cause of an OS error."""
    cause = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.ENOSPC:
        cause = "no space left on device"
    elif err.errno == errno.EFBIG:
        cause = "file too large (a file-size limit is set)"
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {cause}" if paths else cause


def run_stage(main: Callable[[], None], resumable: bool = True) -> None:
    """Call a stage's main(); errors and Ctrl-C become one readable line and an exit code.

    A setting wrong on its face (SettingsError, found after ``configure``) exits with 2, as
    ``configure`` does; StageError and OS errors (read-only folder, full disk, ...) with 1,
    Ctrl-C with 130.
    ``resumable`` says whether the stage keeps checkpoints to resume from after Ctrl-C.
    """
    try:
        main()
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        message = ("the last finished checkpoint is kept; run the same command again to resume"
                   if resumable else "files written before the interruption are kept; "
                   "run again to redo the rest")
        print(f"\ninterrupted: {message}", file=sys.stderr)
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
        raise SettingsError(f"--device {name!r} is not a device name (auto, cuda, cuda:N, mps, "
                            f"cpu)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageError("--device cuda was asked for, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise StageError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StageError("--device mps was asked for, but torch sees no MPS device")
    return device


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python's ``random``, NumPy's global generator and torch (every device); return a
    torch generator seeded the same way.

    With ``deterministic`` (the default), CUDA runs are made repeatable: cuDNN picks deterministic
    kernels without autotuning, and PyTorch uses deterministic algorithms where it has them
    (warning where it has none), so that a seeded run, and a resumed one, give the same weights.
    Not covered: Python's hash randomisation (PYTHONHASHSEED is read when the interpreter starts,
    so setting it here would change nothing; no result of this project depends on the order of
    a set of strings), and generators created without a seed elsewhere.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # a seed the stages derive (seed * k + i) may exceed its range
    torch.manual_seed(seed)
    set_deterministic(deterministic)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def set_deterministic(enabled: bool) -> None:
    """Deterministic CUDA kernels on or off (no effect on CPU results, which are deterministic)."""
    if enabled:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def limit_cpu_threads(threads: int) -> None:
    """Cap torch's, BLAS's and OpenMP's thread pools for the rest of the process (0: no cap).

    On a 2-core machine shared with other jobs, spinning OpenMP/BLAS threads made t-SNE, the
    logistic-regression probe and the evaluator CNN 3 to 40 times slower than one thread did.
    """
    if threads > 0:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(limits=threads)


def require_finite(value: torch.Tensor | np.ndarray | float, what: str) -> None:
    """Raise StageError when ``value`` holds a NaN or an infinity (``what`` names it)."""
    if isinstance(value, torch.Tensor):
        bad = int((~torch.isfinite(value.detach())).sum()) if value.is_floating_point() else 0
    else:
        array = np.asarray(value)
        bad = int((~np.isfinite(array)).sum()) if array.dtype.kind in "fc" else 0
    if bad:
        raise StageError(f"{what}: {bad} NaN or infinite value(s)")
