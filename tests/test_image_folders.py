"""Your own images: a folder of class subfolders (--dataset folder:PATH) and CIFAR-10's binary
version, checked against files the tests write (byte by byte for CIFAR-10), and a folder data set
through a stage as a user runs it."""

from __future__ import annotations

import io
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_runner import ROOT, run_script

from dataio import data_sources, image_folders
from dataio.artifacts import load_meta
from runtime.stage import StageError


def write_image(path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, size, colour).save(path)


def test_a_folder_with_train_and_test_reads_classes_nested_files_and_skips_other_files(
        tmp_path, capsys):
    for split, count in (("train", 3), ("test", 1)):
        for label, name in enumerate(("cat", "dog")):
            for i in range(count):
                write_image(tmp_path / split / name / f"{i}.png", 40 * label + i)
    write_image(tmp_path / "train" / "dog" / "puppies" / "deep.png", 99)  # nested: still a dog
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    loaded = image_folders.load_image_folder(f"folder:{tmp_path}")
    assert loaded.class_names == ["cat", "dog"]
    assert loaded.x_train.shape == (7, 10, 12) and loaded.x_train.dtype == np.uint8
    assert loaded.y_train.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert loaded.x_train[-1, 0, 0] == 99  # the nested file, sorted after the dog's own
    assert loaded.x_test.shape == (2, 10, 12) and loaded.y_test.tolist() == [0, 1]
    assert loaded.split.startswith("given")
    assert any("skipped 1 file(s)" in note and "notes.txt" in note for note in loaded.notes)


def test_colour_images_come_back_rgb_and_mixed_sizes_need_an_image_size(tmp_path):
    write_image(tmp_path / "a" / "0.png", 10, (8, 8), "RGB")
    write_image(tmp_path / "a" / "1.png", 20, (16, 16), "RGB")
    write_image(tmp_path / "b" / "0.png", 30, (8, 8), "L")  # grey among colour: made RGB
    write_image(tmp_path / "b" / "1.png", 40, (8, 8), "RGB")
    with pytest.raises(StageError, match=r"images of 2 sizes \(8x8, 16x16\): give --image-size"):
        image_folders.load_image_folder(f"folder:{tmp_path}")
    loaded = image_folders.load_image_folder(f"folder:{tmp_path}", image_size=12)
    assert loaded.x_train.shape[1:] == (12, 12, 3) and loaded.x_test.shape[1:] == (12, 12, 3)
    grey = [x for x, y in zip(np.concatenate([loaded.x_train, loaded.x_test]),
                              np.concatenate([loaded.y_train, loaded.y_test]), strict=True)
            if y == 1 and x[0, 0, 0] == x[0, 0, 1]]
    assert grey and (grey[0][..., 0] == grey[0][..., 2]).all()


def test_without_train_and_test_each_class_is_split_with_a_fixed_seed(tmp_path):
    for label in range(2):
        for i in range(20):
            write_image(tmp_path / f"class{label}" / f"{i:02d}.png", 5 * i + label)
    first = image_folders.load_image_folder(f"folder:{tmp_path}")
    again = image_folders.load_image_folder(f"folder:{tmp_path}")
    assert np.bincount(first.y_test).tolist() == [2, 2]  # 10% of each class
    assert np.bincount(first.y_train).tolist() == [18, 18]
    np.testing.assert_array_equal(first.x_test, again.x_test)
    assert "seeded per class (seed 0)" in first.split
    values = set(first.x_train[:, 0, 0].tolist()) | set(first.x_test[:, 0, 0].tolist())
    assert len(values) == 40  # every image once, in one split


@pytest.mark.parametrize(("layout", "words"), [
    ("unreadable", "broken.png: not a readable image"),
    ("train_only_class", "class(es) bird in train/ but not in test/"),
    ("one_class", "1 class folder(s); a data set needs 2 or more"),
    ("lonely", "1 image(s); a class needs 2 or more"),
])
def test_a_folder_that_cannot_be_a_data_set_is_named_in_one_line(tmp_path, layout, words):
    if layout == "unreadable":
        for name in ("a", "b"):
            write_image(tmp_path / name / "0.png", 1)
            write_image(tmp_path / name / "1.png", 2)
        (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif layout == "train_only_class":
        for split in ("train", "test"):
            for name in ("a", "b"):
                write_image(tmp_path / split / name / "0.png", 1)
        write_image(tmp_path / "train" / "bird" / "0.png", 1)
    elif layout == "one_class":
        write_image(tmp_path / "a" / "0.png", 1)
        write_image(tmp_path / "a" / "1.png", 1)
    else:
        write_image(tmp_path / "a" / "0.png", 1)
        write_image(tmp_path / "a" / "1.png", 1)
        write_image(tmp_path / "b" / "0.png", 1)
    with pytest.raises(StageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        image_folders.load_image_folder(f"folder:{tmp_path}")


# ---------------------------------------------------------------- CIFAR-10, binary version
def cifar_records(rng: np.random.Generator, count: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """``count`` records written byte by byte as the CIFAR-10 page describes them: the label,
    then the red plane, the green plane and the blue plane, each row by row."""
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count)
    out = bytearray()
    for image, label in zip(images, labels, strict=True):
        out.append(int(label))
        for channel in range(3):
            for row in range(32):
                for column in range(32):
                    out.append(int(image[row, column, channel]))
    return bytes(out), images, labels


def test_cifar10_records_parse_to_images_and_labels(tmp_path):
    data, images, labels = cifar_records(np.random.default_rng(0), 3)
    (tmp_path / "batch.bin").write_bytes(data)
    parsed, parsed_labels = image_folders.parse_cifar10_batch(tmp_path / "batch.bin")
    np.testing.assert_array_equal(parsed, images)
    assert parsed_labels.tolist() == labels.tolist()
    (tmp_path / "short.bin").write_bytes(data[:-5])
    with pytest.raises(StageError, match="not a whole number of 3073-byte CIFAR-10 records"):
        image_folders.parse_cifar10_batch(tmp_path / "short.bin")


def test_cifar10_loads_from_its_archive_and_says_so_when_it_has_neither(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    archive = tmp_path / "datasets" / "cifar10" / image_folders.CIFAR10_ARCHIVE
    archive.parent.mkdir(parents=True)
    expected = {}
    with tarfile.open(archive, "w:gz") as tar:
        for name in image_folders.CIFAR10_TRAIN + image_folders.CIFAR10_TEST:
            data, images, labels = cifar_records(rng, 2)
            expected[name] = images
            info = tarfile.TarInfo(f"{image_folders.CIFAR10_FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = data_sources.load_dataset("cifar10", tmp_path)
    assert data.shape == (3, 32, 32) and len(data.x_train) == 10 and len(data.x_test) == 2
    np.testing.assert_array_equal(data.x_test, expected["test_batch.bin"])
    assert data.class_names[0] == "airplane"

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(StageError, match="cifar10: not in .* and could not be downloaded"):
        data_sources.load_dataset("cifar10", tmp_path / "empty")


def test_a_grey_folder_runs_through_a_stage_named_after_the_folder_and_later_found_by_meta(
        tmp_path, monkeypatch):
    """Digits written as PNG files in class folders: the encoder stage names its output after
    the folder, records the folder in its meta, and evaluate.py finds the data from it."""
    digits = data_sources.load_dataset("digits")
    root = tmp_path / "My_Digits"
    for split, x, y in (("train", digits.x_train[:300], digits.y_train[:300]),
                        ("test", digits.x_test[:100], digits.y_test[:100])):
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            path = root / split / f"d{label}" / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    data_dir = tmp_path / "data"
    monkeypatch.chdir(tmp_path)  # the folder given relative to here; meta holds it absolute
    result = run_script("encoder_models.py", "--dataset", "folder:My_Digits", "--models",
                        "ae_basic",
                        "--epochs", "1", "--embedding-dim", "4", "--device", "cpu",
                        "--data-dir", str(data_dir), "--no-tensorboard")
    assert result.returncode == 0, result.stderr
    meta = load_meta(data_dir / "embeddings" / "my-digits_ae_basic.npz")
    assert meta["dataset"] == "my-digits" and meta["image_shape"] == [1, 28, 28]
    assert meta["settings"]["dataset_spec"] == f"folder:{root.resolve()}"
    assert meta["data_split"] == "given (train/ and test/)"
    assert meta["class_names"] == [f"d{c}" for c in range(10)]
    data_sources._FOLDERS.clear()  # a later stage knows the folder only from the file
    monkeypatch.chdir(ROOT)  # ... and runs from another directory
    evaluated = run_script("evaluate.py", "--data-dir", str(data_dir), "--stages", "embeddings",
                           "--device", "cpu", "--no-plots", "--kmeans-init", "1",
                           "--silhouette-samples", "100", "--baseline-components", "8")
    assert evaluated.returncode == 0, evaluated.stderr
    summary = (data_dir / "results" / "summary.md").read_text()
    assert "| my-digits | ae_basic |" in summary
    assert "| my-digits | pixels_pca8 (baseline) |" in summary


def test_the_dataset_setting_takes_a_folder_and_names_the_choices_otherwise(tmp_path):
    result = run_script("encoder_models.py", "--dataset", "nope", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "must be one of mnist, digits, fashion-mnist, cifar10, or folder:PATH" in result.stderr
    missing = run_script("encoder_models.py", "--dataset", f"folder:{tmp_path / 'none'}",
                         "--data-dir", str(tmp_path))
    assert missing.returncode == 1 and "is not a folder" in missing.stderr
