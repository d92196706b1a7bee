"""Run a root script as ``python SCRIPT ARGS`` runs it (its ``__main__`` block: ``main`` under
``run_stage``, with its exit code, standard output and standard error), in this process.

A fresh interpreter costs 2.5 to 5 s of imports per run; the tests run scripts hundreds of
times. What a separate process adds (a real Ctrl-C, a file-size limit, the script found from
another directory) is tested with real subprocesses where it matters."""

from __future__ import annotations

import contextlib
import importlib
import io
import subprocess
import sys
from pathlib import Path

from runtime.stage import run_stage

ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``script`` (a root script's file name, or a bench script as ``bench/NAME.py``) run with
    ``args``: its exit code and what it printed, as ``subprocess.run(..., text=True)`` gives."""
    folder = str((ROOT / script).parent)
    if folder not in sys.path:  # bench scripts import their folder's bench_common
        sys.path.insert(0, folder)
    module = importlib.import_module(Path(script).stem)
    resumable = "run_stage(main, resumable=False)" not in Path(module.__file__).read_text()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_stage(lambda: module.main(list(args)), resumable)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
