"""Which code made a result: the git commit of the checkout and whether its tree had uncommitted
changes, recorded in every NPZ ``meta``, checkpoint and results file beside the settings.

A number in a paper can then be traced to the exact code: a ``dirty`` tree means the commit alone
does not reproduce it. Outside a git checkout (an exported archive, no ``git`` on the machine)
both are ``"unknown"`` and the stage runs as usual.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

# The checkout whose commit is recorded: the folder holding the project's scripts.
CODE_ROOT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 20  # a status on a slow network disk may take seconds; a hang must not stop a run
UNKNOWN = "unknown"


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git args`` in ``root``, or None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False,
                              # a read-only query: never take the index lock a user's git needs
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def code_version(root: Path | None = None) -> dict[str, Any]:
    """``{"commit": <40 hex digits>, "dirty": bool}`` of the checkout at ``root`` (default
    ``CODE_ROOT``); ``dirty`` counts modified, staged and untracked (not ignored) files. Both
    ``"unknown"`` outside a git checkout. Read once per process: a stage's outputs all name the
    code it started with."""
    root = CODE_ROOT if root is None else root
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    status = _git(root, "status", "--porcelain") if commit else None
    if commit is None or status is None:
        return {"commit": UNKNOWN, "dirty": UNKNOWN}
    return {"commit": commit.strip(), "dirty": bool(status.strip())}
