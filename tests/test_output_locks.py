"""Two runs writing the same outputs at once are refused (a lock file per stage and data folder,
per loop): the second stops with one line naming the first, before it writes anything; the lock
is let go when the first ends or its main returns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import artifacts
import flows
from runtime import StageError

ROOT = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time; from pathlib import Path; import artifacts; "
        "artifacts.hold_output_lock(Path(sys.argv[1]), sys.argv[2]); print('held', flush=True); "
        "time.sleep(120)")
TRY = ("import fcntl, sys; f = open(sys.argv[1], 'a'); "
       "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')")


def holder(lock: Path, what: str) -> subprocess.Popen:
    """Another process holding ``lock``, as a running stage holds it."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), what], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def lock_is_free(lock: Path) -> bool:
    result = subprocess.run([sys.executable, "-c", TRY, str(lock)], capture_output=True,
                            text=True, timeout=60)
    return result.returncode == 0 and result.stdout.strip() == "free"


def test_a_second_run_on_the_same_outputs_is_refused_naming_the_first(tmp_path):
    first = holder(tmp_path / ".lock-flows-digits_pca", "flows.py")
    try:
        with pytest.raises(StageError) as refused:
            flows.main(["--dataset", "digits", "--data-dir", str(tmp_path), "--encoders", "pca",
                        "--device", "cpu"])
        message = str(refused.value)
        assert f"flows.py (pid {first.pid}) is writing here now" in message
        assert "another --data-dir" in message and "\n" not in message
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock-flows-digits_pca"]
    finally:
        first.kill()
        first.wait()
    assert lock_is_free(tmp_path / ".lock-flows-digits_pca")  # a killed run leaves none


def test_the_lock_is_let_go_when_main_returns_or_fails(tmp_path):
    lock = tmp_path / "out" / ".lock-stage"

    @artifacts.holds_output_locks
    def main(fail: bool) -> None:
        artifacts.hold_output_lock(lock, "stage.py")
        artifacts.hold_output_lock(lock, "stage.py")  # taken again by its holder: no wait
        assert not lock_is_free(lock)
        assert lock.read_text().strip() == f"stage.py (pid {os.getpid()})"
        if fail:
            raise StageError("stopped")

    main(False)
    assert lock_is_free(lock)
    with pytest.raises(StageError):
        main(True)
    assert lock_is_free(lock)
