"""`make demo` as make runs it: every command the demo would run (`make -n`) names a stage script
whose settings accept all its flags, with the comma lists whole (make splits $(call) arguments at
commas), and the two chains reach every stage."""

from __future__ import annotations

import importlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from runtime.settings import configure

ROOT = Path(__file__).resolve().parent.parent


def demo_commands(data_dir: Path) -> list[list[str]]:
    """The `python SCRIPT.py ...` commands of `make demo-stages demo-report`, not run (the
    Makefile runs nothing else: no inline `python -c`)."""
    listing = subprocess.run(["make", "-n", "--no-print-directory", "demo-stages", "demo-report",
                              f"DATA_DIR={data_dir}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, check=True).stdout
    commands = []
    for line in listing.splitlines():
        if "( " not in line:
            continue
        inner = line[line.index("( ") + 2:line.index(" ) >")]
        for part in inner.split(" && "):
            words = shlex.split(part)
            if words and words[0].endswith("python"):
                assert words[1].endswith(".py"), part  # a script a user can run, not -c
                commands.append(words[1:])
    return commands


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_every_demo_command_is_accepted_by_its_script(tmp_path):
    commands = demo_commands(tmp_path)
    scripts = [c[0] for c in commands]
    assert set(scripts) >= {"train_evaluator.py", "encoder_models.py", "plan1_gan_training.py",
                            "plan2_gan_training.py", "flows.py", "self_consuming_loop.py",
                            "train_small_clip.py", "extract_generation_embeddings.py",
                            "plot_generation_clusters.py", "evaluate.py"}, scripts
    for script, *args in commands:
        module = importlib.import_module(Path(script).stem)
        configure(vars(module), args)  # exits 2 on a flag or value it does not take
        assert str(tmp_path) in " ".join(args), (script, args)  # it works in DATA_DIR
    def listed(script: str, flag: str) -> list[str]:
        return [c[c.index(flag) + 1] for c in commands if c[0] == script]

    assert sorted(listed("encoder_models.py", "--models")) == ["ae_basic", "vae"]
    assert listed("plan2_gan_training.py", "--models") == ["wgan_gp,flow_matching"]  # whole
    assert listed("extract_generation_embeddings.py", "--generations") == ["0,2,5"]
