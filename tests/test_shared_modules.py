"""Settings overrides, artifact I/O and data sources."""

import dataclasses
import gzip
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dataio.artifacts import (
    load_checkpoint,
    load_embeddings,
    load_npz,
    make_meta,
    save_checkpoint,
    save_npz,
)
from dataio.data_sources import IDX_FILES, load_dataset, read_idx
from runtime.settings import SettingsError, as_record, configure, pick
from runtime.stage import StageError, pick_device, run_stage

SCRIPT = textwrap.dedent('''\
    """A stage."""
    # ---------------------------------------------------------------- settings
    EPOCHS = 3  # passes over the data
    LEARNING_RATE = 1e-3  # step size
    NAME = "ae"  # which model
    MODELS = ("a", "b")  # variants to train
    SIZES = (1, 2)  # layer sizes
    FLAG = False  # a switch
    lower = 5
    # ---------------------------------------------------------------- end of settings
''')


def namespace(tmp_path: Path) -> dict:
    path = tmp_path / "stage.py"
    path.write_text(SCRIPT)
    ns = {"__file__": str(path), "__doc__": "A stage."}
    exec(compile(SCRIPT, str(path), "exec"), ns)
    return ns


def test_configure_overrides_by_name_and_type(tmp_path):
    ns = namespace(tmp_path)
    got = configure(ns, ["--epochs", "7", "--learning-rate", "0.5", "--models", "x,y,z",
                         "--sizes", "4,5", "--flag", "true"])
    assert got == {"epochs": 7, "learning_rate": 0.5, "name": "ae", "models": ("x", "y", "z"),
                   "sizes": (4, 5), "flag": True}
    assert ns["EPOCHS"] == 3 and ns["MODELS"] == ("a", "b")  # the constants are left alone
    assert as_record(got) == {**got, "models": ["x", "y", "z"], "sizes": [4, 5]}
    json.dumps(as_record(got))


def test_pick_fills_a_dataclass_by_field_name():
    @dataclasses.dataclass(frozen=True)
    class Training:
        epochs: int
        learning_rate: float
        seed: int = 0

    values = {"epochs": 7, "learning_rate": 0.5, "name": "ae"}
    assert pick(Training, values) == Training(7, 0.5)
    assert pick(Training, values, seed=3) == Training(7, 0.5, 3)
    with pytest.raises(TypeError):
        pick(Training, {"epochs": 7})


def test_configure_help_lists_comments_and_defaults(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        configure(namespace(tmp_path), ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--epochs" in text and "passes over the data (default: 3)" in text
    assert "--models" in text and "(default: a,b)" in text and "--lower" not in text


def test_configure_rejects_unknown_and_badly_typed(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        configure(namespace(tmp_path), ["--epoch", "2"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        configure(namespace(tmp_path), ["--epochs", "two"])
    with pytest.raises(SystemExit):
        configure(namespace(tmp_path), ["--flag", "maybe"])


def test_npz_round_trip_with_meta_and_checks(tmp_path):
    path = tmp_path / "e" / "x.npz"
    arrays = {"z_train": np.ones((4, 3), np.float32), "y_train": np.arange(4),
              "z_test": np.zeros((2, 3), np.float32), "y_test": np.arange(2)}
    save_npz(path, arrays, make_meta("stage.py", {"epochs": 1}, "digits", 0))
    data = load_embeddings(path)
    assert data["meta"]["dataset"] == "digits" and data["meta"]["settings"] == {"epochs": 1}
    assert data["meta"]["seed"] == 0 and "torch" in data["meta"]["versions"]
    np.testing.assert_array_equal(data["z_train"], arrays["z_train"])
    assert [p.name for p in path.parent.iterdir()] == ["x.npz"]  # no temp file left

    bad = dict(arrays, y_test=np.arange(3))
    save_npz(tmp_path / "bad.npz", bad, {})
    with pytest.raises(StageError, match=r"bad\.npz: lengths do not match: z_test=2, y_test=3"):
        load_embeddings(tmp_path / "bad.npz")
    nan = dict(arrays, z_test=np.full((2, 3), np.nan, np.float32))
    with pytest.raises(StageError, match=r"nan\.npz: not written: 'z_test' holds 6 NaN"):
        save_npz(tmp_path / "nan.npz", nan, {})
    assert not (tmp_path / "nan.npz").exists()
    np.savez(tmp_path / "nan.npz", **nan)  # written by someone else's code
    with pytest.raises(StageError, match=r"nan\.npz: key 'z_test' holds 6 NaN"):
        load_embeddings(tmp_path / "nan.npz")
    save_npz(tmp_path / "few.npz", {"z_train": arrays["z_train"]}, {})
    with pytest.raises(StageError, match=r"few\.npz: missing key\(s\) y_train"):
        load_embeddings(tmp_path / "few.npz")
    with pytest.raises(StageError, match="expected 1 dims"):
        load_npz(tmp_path / "few.npz", {"z_train": 1})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StageError, match=r"junk\.npz: not an NPZ file"):
        load_embeddings(tmp_path / "junk.npz")


def test_checkpoint_round_trip_and_refuses_junk(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "epoch": 2, "settings": {"a": 1}})
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.arange(3.0))
    path.write_bytes(b"truncated")
    with pytest.raises(StageError, match=r"c\.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(StageError, match="no CUDA device"):
            pick_device("cuda")
    with pytest.raises(SettingsError, match="'gpu' is not a device name"):
        pick_device("gpu")
    with pytest.raises(SystemExit) as exited:  # wrong on its face: the exit code of a setting
        run_stage(lambda: pick_device("gpu"))
    assert exited.value.code == 2


def write_idx(path: Path, array: np.ndarray, compress: bool = True, magic: bytes | None = None):
    header = magic or bytes([0, 0, 8, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_read_idx_parses_and_validates(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "ok.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz", 3), images)
    write_idx(tmp_path / "raw", images, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw", 3), images)
    write_idx(tmp_path / "magic", images, compress=False, magic=bytes([0, 0, 9, 3]))
    with pytest.raises(StageError, match="magic"):
        read_idx(tmp_path / "magic", 3)
    with pytest.raises(StageError, match="3 dimension"):
        read_idx(tmp_path / "raw", 1)
    (tmp_path / "short").write_bytes((tmp_path / "raw").read_bytes()[:-10])
    with pytest.raises(StageError, match=r"short: header says shape \(5, 28, 28\)"):
        read_idx(tmp_path / "short", 3)
    (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(StageError, match="broken.gz: cannot be read"):
        read_idx(tmp_path / "broken.gz", 3)


def test_a_gzip_bomb_in_place_of_an_idx_file_is_refused_without_inflating_it(tmp_path):
    """A header announcing 5 images followed by 200 MB of zeros (200 kB compressed): refused
    after reading the announced bytes and one more, never the whole stream; a header announcing
    more than an image set may hold is refused from the header alone."""
    import tracemalloc

    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (5, 28, 28))
    compressor = gzip.GzipFile(tmp_path / "bomb.gz", "wb")
    compressor.write(header)
    block = bytes(2**20)
    for _ in range(200):
        compressor.write(block)
    compressor.close()
    assert (tmp_path / "bomb.gz").stat().st_size < 2**20
    tracemalloc.start()
    with pytest.raises(StageError, match=r"bomb.gz: header says shape \(5, 28, 28\) \(3920 bytes "
                                         r"of data\), file holds more"):
        read_idx(tmp_path / "bomb.gz", 3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20  # far below the 200 MB the stream inflates to
    huge = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (60000, 2000, 2000))
    (tmp_path / "huge").write_bytes(huge)
    with pytest.raises(StageError, match="more than the 1073741824 an image data set may hold"):
        read_idx(tmp_path / "huge", 3)


def fake_idx_folder(folder: Path, n_train: int, n_train_labels: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    write_idx(folder / (IDX_FILES["train_images"] + ".gz"), rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / (IDX_FILES["train_labels"] + ".gz"), rng.integers(0, 10, n_train_labels))
    write_idx(folder / (IDX_FILES["test_images"] + ".gz"), rng.integers(0, 256, (4, 28, 28)))
    write_idx(folder / (IDX_FILES["test_labels"] + ".gz"), rng.integers(0, 10, 4))


def test_local_idx_dataset_and_label_count_check(tmp_path):
    fake_idx_folder(tmp_path / "datasets" / "mnist", 6, 6)
    data = load_dataset("mnist", tmp_path, limit=5, download=False)
    assert data.x_train.shape == (5, 28, 28) and data.x_test.shape == (4, 28, 28)
    assert data.y_train.dtype == np.int64 and data.num_classes == 10
    other = tmp_path / "other"
    fake_idx_folder(other / "datasets" / "mnist", 6, 5)
    with pytest.raises(StageError, match="5 labels for 6 images"):
        load_dataset("mnist", other, download=False)


def test_missing_dataset_offline_names_the_folder(tmp_path):
    with pytest.raises(StageError, match=str(tmp_path / "datasets" / "mnist")):
        load_dataset("mnist", tmp_path, download=False)
    with pytest.raises(StageError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", tmp_path)


def test_digits_split_is_fixed_and_scaled():
    a, b = load_dataset("digits"), load_dataset("digits", limit=100)
    assert a.x_train.shape == (1347, 28, 28) and a.x_test.shape == (450, 28, 28)
    assert a.x_train.dtype == np.uint8 and a.x_train.max() == 255
    np.testing.assert_array_equal(a.x_train[:100], b.x_train)
    assert set(np.unique(a.y_test)) == set(range(10))
    assert (a.x_train[:, :2].max(), a.x_train[:, :, -2:].max()) == (0, 0)  # padding


def test_datasets_in_the_repository_folder_are_found_from_another_data_dir(tmp_path,
                                                                             monkeypatch):
    from dataio import data_sources

    fake_idx_folder(tmp_path / "repo" / "mnist", 6, 6)
    monkeypatch.setattr(data_sources, "REPOSITORY_DATASETS", tmp_path / "repo")
    data = load_dataset("mnist", tmp_path / "outputs" / "bench", download=False)
    assert data.source == str(tmp_path / "repo" / "mnist") and len(data.x_train) == 6
