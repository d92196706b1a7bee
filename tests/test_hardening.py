"""Bad inputs, broken files and environment failures: every one a clear error, nothing silent.

The shared mechanics (settings rules, atomic writes, checked loads, one-line errors) are tested
directly; then each stage is run as a user runs it with one bad input at a time, asserting a
non-zero exit, one ``error:`` line naming the setting or file, no traceback, and the previous
outputs left byte for byte as they were.
"""

from __future__ import annotations

import errno
import importlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from script_runner import run_script

from dataio.artifacts import (
    atomic_write,
    ensure_output_dir,
    load_checkpoint,
    load_meta,
    load_npz,
    save_checkpoint,
    save_npz,
    write_text,
)
from runtime.settings import configure, declared_settings
from runtime.stage import StageError, describe_os_error, run_stage

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

SCRIPT = textwrap.dedent('''\
    """A stage."""
    NAMES = ("a", "b", "c")  # a table with a comment, outside the block: not a setting
    # ---------------------------------------------------------------- settings
    EPOCHS = 3  # passes over the data [>= 1]
    RATE = 0.5  # a fraction [> 0, <= 1]
    # a comment line inside the block
    MODE = "fast"  # how [fast | slow]
    MODELS = ("a", "b")  # variants [in NAMES]
    DATASET = "digits"  # which data [in dataio.data_sources.DATASETS]
    FREE = 1.0  # no rule
    # ---------------------------------------------------------------- end of settings
    LATER = 2  # after the block: not a setting
''')


def namespace(tmp_path: Path, source: str = SCRIPT) -> dict:
    path = tmp_path / "stage.py"
    path.write_text(source)
    ns = {"__file__": str(path), "__doc__": "A stage."}
    exec(compile(source, str(path), "exec"), ns)
    return ns


def configure_error(tmp_path: Path, argv: list[str], capsys, source: str = SCRIPT) -> str:
    with pytest.raises(SystemExit) as exit_info:
        configure(namespace(tmp_path, source), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


# ---------------------------------------------------------------- settings rules
def test_the_settings_are_the_constants_of_the_marked_block(tmp_path, capsys):
    assert [name for name, _ in declared_settings(SCRIPT)] == [
        "EPOCHS", "RATE", "MODE", "MODELS", "DATASET", "FREE"]
    configure_error(tmp_path, ["--names", "x"], capsys)
    configure_error(tmp_path, ["--later", "3"], capsys)


@pytest.mark.parametrize(("source", "message"), [
    (SCRIPT.replace("FREE = 1.0  # no rule", "FREE = 1.0"),
     "error: FREE (line 10) is in the settings block without a comment"),
    (SCRIPT.replace("# ---------------------------------------------------------------- end of "
                    "settings\n", ""),
     "error: the script needs one '# --- settings' line and one later '# --- end of settings' "
     "line around its settings (found 1 and 0)"),
    (SCRIPT.replace("FREE = 1.0  # no rule", "FREE = {'a': 1}  # a mapping"),
     "error: FREE: a setting is a bool, number, string, path or list of them, not dict"),
])
def test_a_settings_block_a_reader_could_misread_is_refused(tmp_path, capsys, source,
                                                            message):
    """A constant of the block without its help text, a missing marker or a value no flag can
    carry stops the script: deleting a comment never silently deletes a flag."""
    assert configure_error(tmp_path, [], capsys, source).startswith(message)


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "0"], "error: --epochs 0: must be >= 1"),
    (["--epochs", "-1"], "error: --epochs -1: must be >= 1"),
    (["--rate", "0"], "error: --rate 0.0: must be > 0"),
    (["--rate", "1.5"], "error: --rate 1.5: must be <= 1"),
    (["--rate", "nan"], "error: --rate nan: must be a finite number"),
    (["--free", "inf"], "error: --free inf: must be a finite number"),
    (["--mode", "medium"], "error: --mode medium: must be one of fast, slow"),
    (["--models", "a,z"], "error: --models z: must be one of a, b, c"),
    (["--models", ","], "error: argument --models: an empty item in ',' (two commas, or one at "
                        "an end) (see --help)"),
    (["--models", "a,,b"], "error: argument --models: an empty item in 'a,,b' (two commas, or "
                           "one at an end) (see --help)"),
    (["--models", "a,"], "error: argument --models: an empty item in 'a,' (two commas, or one at "
                         "an end) (see --help)"),
    (["--models", "a,a"], "error: --models: a listed more than once"),
    (["--dataset", "cifar"], "error: --dataset cifar: must be one of mnist, digits, "
                             "fashion-mnist, cifar10"),
    (["--epochs", "two"], "error: argument --epochs: invalid int value: 'two' (see --help)"),
    (["--epoch", "2"], "error: unrecognized arguments: --epoch 2 (see --help)"),
])
def test_a_value_breaking_its_rule_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    err = configure_error(tmp_path, argv, capsys)
    assert err.replace("fashion-mnist, digits", "digits, fashion-mnist") == message.replace(
        "fashion-mnist, digits", "digits, fashion-mnist") or err == message


def test_values_within_the_rules_pass_and_help_shows_the_rules(tmp_path, capsys):
    ns = namespace(tmp_path)
    got = configure(ns, ["--epochs", "1", "--rate", "1", "--mode", "slow", "--models", "c,a"])
    assert (got["epochs"], got["rate"], got["mode"], got["models"]) == (1, 1.0, "slow",
                                                                         ("c", "a"))
    with pytest.raises(SystemExit):
        configure(namespace(tmp_path), ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "passes over the data (default: 3; >= 1)" in text
    assert "variants (default: a,b; one of a, b, c)" in text


def test_a_list_whose_rule_says_or_empty_may_be_empty(tmp_path, capsys):
    """``[in NAMES, or empty]``: an empty list passes, its items still obey the rule; a list
    without it stays refused when empty."""
    source = SCRIPT.replace("# variants [in NAMES]", "# variants [in NAMES, or empty]")
    ns = namespace(tmp_path, source)
    assert configure(ns, ["--models", ""])["models"] == ()
    assert configure_error(tmp_path, ["--models", "a,z"], capsys,
                           source) == "error: --models z: must be one of a, b, c"
    with pytest.raises(SystemExit):
        configure(namespace(tmp_path, source), ["--help"])
    assert "one of a, b, c; or empty" in " ".join(capsys.readouterr().out.split())
    assert configure_error(tmp_path, ["--models", ""],
                           capsys) == "error: --models: the list is empty"


def test_a_default_breaking_its_rule_or_an_unreadable_rule_is_refused(tmp_path, capsys):
    broken = SCRIPT.replace("EPOCHS = 3", "EPOCHS = 0")
    assert configure_error(tmp_path, [], capsys, broken) == "error: --epochs 0: must be >= 1"
    unreadable = SCRIPT.replace("[>= 1]", "[at least one]")
    assert "cannot read the rule [at least one]" in configure_error(tmp_path, [], capsys,
                                                                    unreadable)


# ---------------------------------------------------------------- files
def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_npz(tmp_path / "a.npz", {"x": np.zeros(2)}, {})
        write_text(tmp_path / "a.txt", "x")
        save_checkpoint(tmp_path / "a.pt", {"w": torch.zeros(2)})
        os.umask(0o077)
        write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    for name in ("a.npz", "a.txt", "a.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


def test_temp_files_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".r.json.{dead}.abc123.tmp"
    live = tmp_path / f".r.json.{os.getpid()}.def456.tmp"
    other = tmp_path / f".other.json.{dead}.abc123.tmp"
    for path in (stale, live, other):
        path.write_text("partial")
    write_text(tmp_path / "r.json", "{}")
    assert not stale.exists() and live.exists() and other.exists()


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "results.md"
    write_text(target, "good")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("disk full, say")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.md"]


def test_non_finite_values_are_never_written(tmp_path):
    with pytest.raises(StageError, match=r"c\.pt: not written: 'model\.w' holds 1 NaN"):
        save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.tensor([1.0, float("nan")])},
                                            "epoch": 1})
    with pytest.raises(StageError, match=r"'z' holds 2 NaN or infinite"):
        save_npz(tmp_path / "e.npz", {"z": np.array([np.inf, -np.inf])}, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("content", "message"), [
    (b"", "checkpoint is empty (0 bytes)"),
    (b"\x80\x02garbage", "not a readable checkpoint"),
    ("tensor", "holds a Tensor, not a checkpoint dict"),
    ("no-epoch", "checkpoint lacks epoch"),
])
def test_broken_checkpoints_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "c.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "no-epoch":
        torch.save({"model": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(StageError) as info:
        load_checkpoint(path, required=("model", "epoch"))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_truncated_checkpoint_is_a_short_line_with_the_callers_advice(tmp_path):
    """PyTorch's several sentences about a broken zip become a few words; the caller's advice
    ends the line."""
    path = tmp_path / "c.pt"
    torch.save({"model": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(StageError) as info:
        load_checkpoint(path, advice="remake it with: python encoder_models.py")
    message = str(info.value)
    assert message.endswith("; remake it with: python encoder_models.py")
    assert "\n" not in message and "high likelihood" not in message
    assert len(message) - len(str(path)) < 170  # the cause in at most 80 characters
    assert "delete it" not in message


def test_output_folder_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StageError, match=r"file: exists and is not a folder"):
        ensure_output_dir(tmp_path / "file")
    with pytest.raises(StageError, match=r"file: exists and is not a folder"):
        ensure_output_dir(tmp_path / "file" / "sub")
    assert ensure_output_dir(tmp_path / "new" / "sub").is_dir()
    assert list((tmp_path / "new" / "sub").iterdir()) == []


def test_load_npz_refuses_pickled_object_arrays(tmp_path):
    np.savez(tmp_path / "o.npz", z=np.array([{"a": 1}], dtype=object))
    with pytest.raises(StageError, match="holds object arrays"):
        load_npz(tmp_path / "o.npz", {"z": None})


def test_load_meta_reads_the_meta_alone_and_refuses_what_load_npz_refuses(tmp_path, monkeypatch):
    path = save_npz(tmp_path / "a.npz", {"z": np.ones((3, 2), np.float32)},
                    {"script": "flows.py", "results": {"nll": 0.5}})
    read = []
    real_getitem = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__",
                        lambda self, key: read.append(key) or real_getitem(self, key))
    assert load_meta(path) == load_npz(path, {})["meta"]
    assert read[0] == "meta" and read[1:] == ["z", "meta"]  # load_meta read no array
    (tmp_path / "b.npz").write_text("not a zip")
    with pytest.raises(StageError, match="not an NPZ file"):
        load_meta(tmp_path / "b.npz")
    np.savez(tmp_path / "o.npz", meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(StageError, match="holds object arrays"):
        load_meta(tmp_path / "o.npz")


# ---------------------------------------------------------------- run_stage
def test_os_errors_and_interruptions_become_one_line(capsys):
    def full_disk() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/x.pt")

    with pytest.raises(SystemExit) as info:
        run_stage(full_disk)
    assert info.value.code == 1
    assert capsys.readouterr().err.strip() == "error: /data/x.pt: no space left on device"

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_stage(interrupted, resumable=False)
    err = capsys.readouterr().err
    assert info.value.code == 130 and "checkpoint" not in err and "interrupted" in err
    with pytest.raises(SystemExit):
        run_stage(interrupted)
    assert "checkpoint is kept" in capsys.readouterr().err
    assert describe_os_error(PermissionError(13, "Permission denied", "/r")) == \
        "/r: Permission denied"


# ---------------------------------------------------------------- the encoder stage
def encoder(data_dir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """encoder_models.py on digits: in this process, or as a subprocess given ``kwargs`` for
    ``subprocess.run`` (a resource limit set before the script starts)."""
    argv = ["--dataset", "digits", "--data-dir", str(data_dir), *args]
    if not kwargs:
        return run_script("encoder_models.py", *argv)
    return subprocess.run([sys.executable, "encoder_models.py", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=ENV, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but the stages' lock files (which name the last run's pid)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock-")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A data folder holding one finished run of ae_basic and triplet."""
    folder = tmp_path_factory.mktemp("trained")
    result = encoder(folder, "--models", "ae_basic,triplet", "--epochs", "1", "--limit", "256")
    assert result.returncode == 0, result.stderr
    return folder


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


ENCODER_BAD_VALUES = [
    (("--epochs", "0"), "--epochs 0: must be >= 1"),
    (("--epochs", "-1"), "--epochs -1"),
    (("--embedding-dim", "0"), "--embedding-dim 0"),
    (("--embedding-dim", "-2"), "--embedding-dim -2"),
    (("--batch-size", "0"), "--batch-size 0"),
    (("--batch-size", "1"), "--batch-size 1: must be >= 2"),
    (("--embed-batch-size", "0"), "--embed-batch-size 0"),
    (("--learning-rate", "nan"), "--learning-rate nan: must be a finite number"),
    (("--temperature", "0"), "--temperature 0.0: must be > 0"),
    (("--seed", "-1"), "--seed -1"),
    (("--models", ","), "--models: an empty item in ','"),
    (("--dataset", "cifar"), "--dataset cifar"),
    (("--lr-schedules", "constant,bogus"), "unrecognized arguments: --lr-schedules"),
    (("--limit", "1"), "--limit 1 leaves 1 training image(s)"),
]


@pytest.mark.parametrize(("args", "words"), ENCODER_BAD_VALUES,
                         ids=[" ".join(a) for a, _ in ENCODER_BAD_VALUES])
def test_encoder_bad_values(trained, args, words):
    before = snapshot(trained)
    result = encoder(trained, "--models", "ae_basic", "--epochs", "2", *args)
    assert_one_line_error(result, words)
    assert snapshot(trained) == before


@pytest.mark.parametrize("damage", ["bare-tensor", "no-epoch", "empty", "truncated"])
def test_encoder_broken_checkpoint(trained, tmp_path, damage):
    folder = tmp_path / "copy"
    for name, content in snapshot(trained).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    ckpt = folder / "checkpoints" / "encoders" / "digits_ae_basic.pt"
    if damage == "bare-tensor":
        torch.save(torch.zeros(3), ckpt)
    elif damage == "no-epoch":
        state = load_checkpoint(ckpt)
        del state["epoch"]
        torch.save(state, ckpt)
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = snapshot(folder)
    result = encoder(folder, "--models", "ae_basic", "--epochs", "2", "--limit", "256")
    assert_one_line_error(result, str(ckpt))
    assert snapshot(folder) == before


def test_encoder_divergence_writes_no_nan(tmp_path):
    result = encoder(tmp_path, "--models", "triplet", "--epochs", "1", "--limit", "256",
                     "--learning-rate", "1e6")
    assert_one_line_error(result, "triplet", "training diverged")
    assert result.returncode == 1
    assert not list(tmp_path.rglob("*.npz")) and not list(tmp_path.rglob("*.pt"))


def test_encoder_output_folder_problems(trained, tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = encoder(tmp_path / "a-file", "--models", "ae_basic", "--epochs", "1")
    assert_one_line_error(result, "a-file", "not a folder")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "embeddings").write_text("a file where a folder belongs")
    result = encoder(blocked, "--models", "ae_basic", "--epochs", "1", "--limit", "64")
    assert_one_line_error(result, "embeddings", "not a folder")
    assert not (blocked / "checkpoints").exists() or not list(blocked.rglob("*.pt"))


def limit_file_size() -> None:
    """A 20 kB file-size limit; writing past it raises EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_encoder_file_size_limit_is_one_line(tmp_path):
    result = encoder(tmp_path, "--models", "ae_basic", "--epochs", "1", "--limit", "256",
                     preexec_fn=limit_file_size)
    assert_one_line_error(result, "file too large", str(tmp_path))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not list(tmp_path.rglob("*.pt"))


# ---------------------------------------------------------------- evaluate.py
def evaluate(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_script("evaluate.py", "--data-dir", str(data_dir), "--stages", "embeddings",
                      "--baseline-components", "0", "--kmeans-init", "1", "--plot-points", "100",
                      *args)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """A data folder with one good embedding file, a constant one and a broken one, evaluated."""
    folder = tmp_path_factory.mktemp("evaluated")
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    good = {"z_train": (rng.normal(size=(300, 4)) + labels[:, None]).astype(np.float32),
            "y_train": labels, "z_test": (rng.normal(size=(300, 4)) + labels[:, None]).astype(
                np.float32), "y_test": labels}
    save_npz(folder / "embeddings" / "digits_good.npz", good, {"dataset": "digits"})
    constant = {**good, "z_test": np.ones((300, 4), np.float32)}
    save_npz(folder / "embeddings" / "digits_collapsed.npz", constant, {"dataset": "digits"})
    np.savez(folder / "embeddings" / "digits_broken.npz", **{**good, "y_test": labels[:10]})
    result = evaluate(folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_evaluate_reports_undefined_indices_of_a_constant_embedding(evaluated):
    import json

    document = json.loads((evaluated / "results" / "metrics.json").read_text())
    collapsed = document["embeddings"]["digits"]["collapsed"]
    for name in ("silhouette", "calinski_harabasz", "davies_bouldin"):
        assert collapsed[name] is None
        assert collapsed["undefined"][name] == "every point is the same vector"
    assert document["embeddings"]["digits"]["good"]["davies_bouldin"] > 0
    summary = (evaluated / "results" / "summary.md").read_text()
    assert "davies_bouldin is undefined (every point is the same vector)" in summary
    assert "no plots: every test embedding is the same vector" in summary
    assert [item["file"].endswith("digits_broken.npz") for item in document["skipped"]] == [True]


EVALUATE_BAD = [
    (("--files", "typo*"), "no file under"),
    (("--files", "digits_broken*"), "every one of the 1 file(s) was skipped"),
    (("--knn-k", "0"), "--knn-k 0"),
    (("--knn-k", "300"), "every one of the 1 file(s) was skipped"),
    (("--kmeans-init", "0"), "--kmeans-init 0"),
    (("--plot-points", "0"), "--plot-points 0"),
    (("--baseline-components", "5000"), "--baseline-components 5000: more than the 784 pixel "
                                       "values of a digits image"),
    (("--seed", "-1"), "--seed -1"),
    (("--stages", ","), "--stages: an empty item in ','"),
]


@pytest.mark.parametrize(("args", "words"), EVALUATE_BAD,
                         ids=[" ".join(a) for a, _ in EVALUATE_BAD])
def test_evaluate_bad_inputs_leave_the_last_results(evaluated, args, words):
    before = snapshot(evaluated)
    extra = ("--files", "digits_good*") if "--knn-k" in args else ()
    result = evaluate(evaluated, *extra, *args)
    assert_one_line_error(result, words)
    if args == ("--knn-k", "300"):  # the file's own reason is on its "skipped" line
        assert "digits_good.npz: 300 train and 300 test embeddings: too few" in result.stderr
    assert snapshot(evaluated) == before


def test_evaluate_data_dir_problems(trained, tmp_path):
    result = evaluate(tmp_path / "missing")
    assert_one_line_error(result, "--data-dir", "missing", "no such folder")
    (tmp_path / "results").write_text("a file")
    (tmp_path / "embeddings").mkdir()
    result = evaluate(tmp_path)  # inputs first: nothing to evaluate is said before the outputs
    assert_one_line_error(result, "nothing evaluated")
    shutil.copy(trained / "embeddings" / "digits_ae_basic.npz", tmp_path / "embeddings")
    result = evaluate(tmp_path)
    assert_one_line_error(result, "results", "not a folder")


# ---------------------------------------------------------------- files other stages wrote
def test_a_broken_file_of_an_earlier_stage_names_the_command_that_remakes_it(trained, tmp_path):
    """Plan 2 reading stage 1's embeddings or encoder checkpoint, flows.py its embeddings: the
    one line names the encoder_models.py run that remakes the file, not "delete it"."""
    data_dir = tmp_path / "data"
    shutil.copytree(trained, data_dir)
    checkpoint = data_dir / "checkpoints" / "encoders" / "digits_ae_basic.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    result = stage("plan2_gan_training.py", data_dir, "--encoder", "ae_basic", "--models",
                   "wgan_gp", "--epochs", "1", "--batch-size", "51", "--samples", "100")
    remake = "remake it with: python encoder_models.py --dataset digits --models ae_basic"
    assert_one_line_error(result, str(checkpoint), "not a readable checkpoint", remake)
    assert "delete it" not in result.stderr and "high likelihood" not in result.stderr
    embeddings = data_dir / "embeddings" / "digits_triplet.npz"
    embeddings.write_bytes(b"not a zip")
    for script, args in (("plan2_gan_training.py", ("--encoder", "triplet", "--models",
                                                    "wgan_gp")),
                         ("flows.py", ("--encoders", "triplet", "--flows", "realnvp"))):
        result = stage(script, data_dir, *args)
        assert_one_line_error(result, str(embeddings), "not an NPZ file",
                              "remake it with: python encoder_models.py --dataset digits "
                              "--models triplet")


def test_every_boolean_setting_is_a_bare_switch(tmp_path, capsys):
    """--flag on, --no-flag off, --flag true|false still read; --help lists both forms."""
    source = SCRIPT.replace("FREE = 1.0  # no rule\n",
                            "FREE = 1.0  # no rule\nFLAG = False  # a switch\n")
    for argv, expected in ((["--flag"], True), (["--no-flag"], False),
                           (["--flag", "false"], False), (["--flag", "yes"], True), ([], False)):
        assert configure(namespace(tmp_path, source), argv)["flag"] is expected, argv
    assert configure_error(tmp_path, ["--flag", "--no-flag"], capsys, source).startswith(
        "error: argument --no-flag: not allowed with argument --flag")
    capsys.readouterr()
    namespace_of = runpy_namespace("plan2_gan_training.py")
    with pytest.raises(SystemExit):
        configure(namespace_of, ["--help"])
    in_process = capsys.readouterr().out  # what the per-script test below reads, for each script
    assert "--plots [true|false]" in in_process and "--no-plots" in in_process
    assert subprocess.run([sys.executable, "plan2_gan_training.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=ENV).stdout == in_process  # is what a user sees


def runpy_namespace(script: str) -> dict:
    """The script's module namespace, run as when it is run as a script (its folder on the path)."""
    import runpy

    sys.path[:0] = [str(ROOT), str((ROOT / script).parent)]
    return runpy.run_path(str(ROOT / script), run_name="imported_by_test")


# ---------------------------------------------------------------- too few batches for n_critic
def stage(script: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_script(script, "--dataset", "digits", "--data-dir", str(data_dir), *args)


NO_GENERATOR_STEP = [
    ("plan2_gan_training.py", ("--encoder", "ae_basic", "--models", "wgan_gp", "--epochs", "1",
                               "--epoch-vectors", "0", "--held-out-fraction", "0"),
     ("wgan_gp", "256 at --batch-size 256 give 1 batch(es)", "--n-critic 5",
      "--batch-size 51 or smaller")),
    ("plan2_gan_training.py", ("--encoder", "ae_basic", "--models", "wgan_gp", "--epochs", "1",
                               "--epoch-vectors", "512", "--held-out-fraction", "0"),
     ("wgan_gp", "256 at --batch-size 256 in 2 passes give 2 batch(es)", "--n-critic 5",
      "--batch-size 85 or smaller")),
    ("plan2_gan_training.py", ("--encoder", "ae_basic", "--encoder-b", "triplet", "--models",
                               "wgan_gp,cyclegan,dualgan", "--batch-size", "64", "--epochs", "1",
                               "--epoch-vectors", "0", "--held-out-fraction", "0"),
     ("dualgan", "per translation half: 128 at --batch-size 64 give 2", "--batch-size 25")),
    ("plan1_gan_training.py", ("--encoder", "ae_basic", "--limit", "256", "--n-critic", "3",
                               "--epochs", "1"),
     ("training images: 256 at --batch-size 128 give 2 batch(es)", "--batch-size 85")),
    ("self_consuming_loop.py", ("--train-images", "128", "--held-out-fraction", "0.22",
                                "--batch-size", "64", "--n-critic", "3", "--n-images", "50",
                                "--generations", "1"),
     ("--train-images: 128 at --batch-size 64 give 2", "--n-critic 2")),
]


@pytest.mark.parametrize(("script", "args", "words"), NO_GENERATOR_STEP,
                         ids=[f"{s} {' '.join(a)}" for s, a, _ in NO_GENERATOR_STEP])
def test_an_epoch_without_a_generator_step_is_refused_up_front(trained, tmp_path, script, args,
                                                               words):
    """Fewer batches than n_critic would train no generator: refused in one line, before any
    training or evaluator, naming the batch size that would do; nothing written."""
    data_dir = tmp_path / "data"
    (data_dir / "embeddings").mkdir(parents=True)
    for name in ("ae_basic", "triplet"):
        (data_dir / "embeddings" / f"digits_{name}.npz").write_bytes(
            (trained / "embeddings" / f"digits_{name}.npz").read_bytes())
    result = stage(script, data_dir, *args)
    assert_one_line_error(result, "no generator step", *words)
    assert not list((data_dir / "checkpoints").rglob("*.pt"))


def test_the_batch_size_the_refusal_names_trains(trained, tmp_path):
    """The reported case: 256 stage-1 embeddings (made with --limit 256), WGAN-GP at the
    batch size the refusal names trains and writes its samples (one pass per epoch, as the
    refusal above counts it with --epoch-vectors 0)."""
    data_dir = tmp_path / "data"
    (data_dir / "embeddings").mkdir(parents=True)
    (data_dir / "embeddings" / "digits_ae_basic.npz").write_bytes(
        (trained / "embeddings" / "digits_ae_basic.npz").read_bytes())
    result = stage("plan2_gan_training.py", data_dir, "--encoder", "ae_basic", "--models",
                   "wgan_gp", "--epochs", "1", "--batch-size", "51", "--samples", "100",
                   "--epoch-vectors", "0", "--plot-points", "50", "--no-plots",
                   "--held-out-fraction", "0")
    assert result.returncode == 0, result.stderr
    meta = load_npz(data_dir / "embeddings" / "digits_ae_basic_wgan_gp.gen.npz",
                    {"z_gen": (2, "f")})["meta"]
    assert meta["epochs_trained"] == 1


# ---------------------------------------------------------------- every script
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("*.py"), *ROOT.glob("bench/*.py")]
                 if "configure(globals()" in p.read_text())


SEEDED = [script for script in SCRIPTS
          if any(name in ("SEED", "SEEDS") for name, _ in declared_settings(
              (ROOT / script).read_text()))]


@pytest.mark.parametrize("script", SEEDED)
def test_every_seed_setting_takes_what_the_generators_take(script, capsys):
    """A seed past 2**32 - 1 (NumPy's bound) is refused in one line, exit 2, before anything
    is read; the largest one is accepted."""
    namespace = runpy_namespace(script)
    flag = "--seeds" if "SEEDS" in namespace and "SEED" not in namespace else "--seed"
    with pytest.raises(SystemExit) as exited:
        configure(namespace, [flag, "4294967296"])
    assert exited.value.code == 2
    assert f"{flag} 4294967296: must be <= 4294967295" in capsys.readouterr().err
    assert configure(namespace, [flag, "4294967295"])[flag[2:]] in (4294967295, (4294967295,))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_valid_defaults_and_readable_rules(script, capsys):
    """Defaults pass their rules, every setting has a comment, and --help lists each boolean
    setting both ways (--flag [true|false] and --no-flag)."""
    namespace = runpy_namespace(script)
    settings = configure(namespace, [])
    assert settings, script
    assert "error:" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        configure(namespace, ["--help"])
    assert exit_info.value.code == 0, script
    text = capsys.readouterr().out
    for name, comment in declared_settings((ROOT / script).read_text()):
        assert comment, (script, name)
        if isinstance(namespace.get(name), bool):
            flag = "--" + name.lower().replace("_", "-")
            assert f"{flag} [true|false]" in text and f"--no-{flag[2:]}" in text, (script, flag)


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("plan2_gan_training", ["--ensemble", "1000000"], "--ensemble 1000000: must be <= 32"),
    ("plan2_gan_training", ["--hidden", "100000000"], "--hidden 100000000: must be <= 8192"),
    ("plan2_gan_training", ["--samples", "1000000000"], "must be <= 1000000"),
    ("plan1_gan_training", ["--width", "100000"], "--width 100000: must be <= 1024"),
    ("self_consuming_loop", ["--width", "100000"], "--width 100000: must be <= 1024"),
    ("train_small_clip", ["--hidden-size", "1000000"], "must be <= 4096"),
    ("flows", ["--hidden", "100000000"], "must be <= 8192"),
    ("encoder_models", ["--embedding-dim", "100000"], "must be <= 4096"),
])
def test_sizes_that_cannot_fit_in_memory_are_refused_before_anything_runs(capsys, script, argv,
                                                                            message):
    """Upper bounds on network and sample sizes: one line and exit 2, not an allocator
    traceback after minutes or gigabytes of checkpoints."""
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exited:
        configure(vars(module), argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
