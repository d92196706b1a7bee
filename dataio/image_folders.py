"""A researcher's own images: a folder of class subfolders (``--dataset folder:PATH``), and
CIFAR-10's binary version (``--dataset cifar10``).

Both give uint8 arrays, (N, H, W) for grey images and (N, H, W, 3) for colour, with int64 labels,
like the IDX data sets, so every image stage takes them as it takes Fashion-MNIST.

Folder convention (torchvision's ``ImageFolder``, one level of splits above it):
``PATH/train/<class>/...`` and ``PATH/test/<class>/...``; without ``train/`` and ``test/``,
``PATH/<class>/...`` split per class with a fixed seed (10% test, at least one image each).
Every file PIL can open counts, in the class folder or below it (nested folders belong to
their top class folder); other files are skipped with a note, an image PIL cannot read stops the
load naming it. Images are grey when every image is single-channel, else RGB; they keep their
size when all share it, else each is resized to ``image_size``.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.stage import StageError

FOLDER_PREFIX = "folder:"
SPLIT_SEED = 0  # the seeded split of a folder without train/ and test/
FOLDER_TEST_FRACTION = 0.1
MAX_FOLDER_IMAGES = 2_000_000  # far beyond what a folder data set of this project holds

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes
CIFAR10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch.bin"]
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"


@dataclass
class LoadedImages:
    """What a loader read: splits, class names, where from, and notes to show the user."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str
    notes: list[str]
    split: str  # "given" (train/ and test/), or how the seeded split was made


def folder_name(spec: str) -> str:
    """The name a folder data set's outputs carry (``<name>_<enc>.npz``): the folder's name in
    lower case, every run of characters other than letters, digits and '-' made one '-' (an '_'
    would split ``<ds>_<model>``)."""
    path = Path(spec.removeprefix(FOLDER_PREFIX)).expanduser()
    name = re.sub(r"[^a-z0-9-]+", "-", path.resolve().name.lower()).strip("-")
    if not name:
        raise StageError(f"--dataset {spec}: the folder's name gives no data set name")
    return name


def folder_classes(path: str | Path) -> list[str]:
    """A folder data set's class names (its class subfolders, sorted), without reading images."""
    root = Path(path)
    base = root / "train" if (root / "train").is_dir() and (root / "test").is_dir() else root
    if not base.is_dir():
        raise StageError(f"{root}: not a folder")
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.OPEN}


def _class_files(folder: Path, extensions: set[str], notes: list[str]
                 ) -> dict[str, list[Path]]:
    """Each class subfolder's image files (recursively, sorted); other files noted."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found, skipped = {}, []
    for path in classes:
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        found[path.name] = [p for p in files if p.suffix.lower() in extensions]
        skipped += [p for p in files if p.suffix.lower() not in extensions]
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        notes.append(f"skipped {len(skipped)} file(s) in {folder} that are not images: {shown}")
    return found


def _read_images(files: list[Path], image_size: int, source: str) -> list[np.ndarray]:
    """Each file as a uint8 array (H, W) for grey or (H, W, 3), in RGB when any is colour."""
    from PIL import Image, UnidentifiedImageError

    pictures = []
    for path in files:
        try:
            with Image.open(path) as picture:
                picture.load()
                pictures.append(picture.copy())
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise StageError(f"{path}: not a readable image ({str(err).splitlines()[0]}); "
                             f"remove it or replace it") from err
    grey = all(p.mode in ("L", "1", "I;16", "I", "F") for p in pictures)
    sizes = {p.size for p in pictures}
    if image_size == 0 and len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4]) + (
            " ..." if len(sizes) > 4 else "")
        raise StageError(f"{source}: images of {len(sizes)} sizes ({shown}): give --image-size "
                         f"N to resize every image to NxN")
    arrays = []
    for picture in pictures:
        picture = picture.convert("L" if grey else "RGB")
        if image_size and picture.size != (image_size, image_size):
            picture = picture.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(picture, dtype=np.uint8))
    return arrays


def load_image_folder(spec: str, image_size: int = 0) -> LoadedImages:
    """A folder data set (the module's convention); ``image_size`` > 0 resizes every image to
    that square size."""
    root = Path(spec.removeprefix(FOLDER_PREFIX)).expanduser()
    if not root.is_dir():
        raise StageError(f"--dataset {spec}: {root} is not a folder")
    extensions, notes = _image_extensions(), []
    splits = {name: root / name for name in ("train", "test")}
    given = splits["train"].is_dir() and splits["test"].is_dir()
    if given:
        files = {name: _class_files(folder, extensions, notes) for name, folder in splits.items()}
        only = {name: sorted(set(files[name]) - set(files[other]))
                for name, other in (("train", "test"), ("test", "train"))}
        for name, other in (("train", "test"), ("test", "train")):
            if only[name]:
                raise StageError(f"{root}: class(es) {', '.join(only[name])} in {name}/ but not "
                                 f"in {other}/: every class needs images in both")
        class_names = sorted(files["train"])
        per_split = {name: [(files[name][c], i) for i, c in enumerate(class_names)]
                     for name in splits}
        split = "given (train/ and test/)"
    else:
        by_class = _class_files(root, extensions, notes)
        class_names = sorted(by_class)
        rng = np.random.default_rng(SPLIT_SEED)
        per_split = {"train": [], "test": []}
        for index, name in enumerate(class_names):
            paths = by_class[name]
            if len(paths) < 2:
                raise StageError(f"{root / name}: {len(paths)} image(s); a class needs 2 or more "
                                 f"(one to train on, one to test)")
            order = rng.permutation(len(paths))
            n_test = max(1, int(round(FOLDER_TEST_FRACTION * len(paths))))
            per_split["test"].append(([paths[i] for i in sorted(order[:n_test])], index))
            per_split["train"].append(([paths[i] for i in sorted(order[n_test:])], index))
        split = (f"seeded per class (seed {SPLIT_SEED}): {FOLDER_TEST_FRACTION:.0%} of each "
                 f"class's images (at least one) to test")
    if len(class_names) < 2:
        raise StageError(f"{root}: {len(class_names)} class folder(s); a data set needs 2 or "
                         f"more (PATH/<class>/ or PATH/train/<class>/ and PATH/test/<class>/)")
    empty = [f"{name}/{class_names[i]}" for name, parts in per_split.items()
             for paths, i in parts if not paths]
    if empty:
        raise StageError(f"{root}: no image in {', '.join(empty)}")
    counted = sum(len(paths) for parts in per_split.values() for paths, _ in parts)
    if counted > MAX_FOLDER_IMAGES:
        raise StageError(f"{root}: {counted} images, more than the {MAX_FOLDER_IMAGES} a folder "
                         f"data set may hold")
    files_in = {name: [p for paths, _ in parts for p in paths] for name, parts in per_split.items()}
    labels = {name: np.concatenate([np.full(len(paths), i, dtype=np.int64)
                                    for paths, i in parts]) for name, parts in per_split.items()}
    arrays = _read_images(files_in["train"] + files_in["test"], image_size, str(root))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:  # grey and colour cannot mix after conversion; sizes were checked
        raise StageError(f"{root}: images of shapes {sorted(shapes)} after conversion")
    stacked = np.stack(arrays)
    n_train = len(files_in["train"])
    return LoadedImages(stacked[:n_train], labels["train"], stacked[n_train:], labels["test"],
                        class_names, str(root.resolve()), notes, split)


# ---------------------------------------------------------------- CIFAR-10, binary version
def parse_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file: records of a label byte and 3,072 pixel bytes (the red, green and
    blue planes of a 32x32 image, row-major) -> images (N, 32, 32, 3) uint8, labels (N,)."""
    data = path.read_bytes()
    if not data or len(data) % CIFAR10_RECORD:
        raise StageError(f"{path}: {len(data)} bytes, not a whole number of {CIFAR10_RECORD}-byte "
                         f"CIFAR-10 records (truncated or another file); download it again")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CIFAR10_CLASSES):
        raise StageError(f"{path}: label {labels.max()} out of range: not a CIFAR-10 batch")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _extract_cifar10(archive: Path, folder: Path) -> None:
    """The batch files of the archive into ``folder`` (members named as expected only)."""
    wanted = {f"{CIFAR10_FOLDER}/{name}" for name in CIFAR10_TRAIN + CIFAR10_TEST}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
            if len(members) != len(wanted):
                raise StageError(f"{archive}: holds {len(members)} of the {len(wanted)} batch "
                                 f"files of {CIFAR10_FOLDER}/; not CIFAR-10's binary archive")
            folder.mkdir(parents=True, exist_ok=True)
            for member in members:
                source = tar.extractfile(member)
                target = folder / Path(member.name).name
                tmp = target.with_name(target.name + ".part")
                tmp.write_bytes(source.read())
                tmp.replace(target)
    except (OSError, tarfile.TarError, EOFError) as err:
        raise StageError(f"{archive}: cannot be read as a .tar.gz ({err})") from err


def _download_cifar10(target: Path, timeout: float = 60.0) -> None:
    import hashlib
    import urllib.error
    import urllib.request

    tmp = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(CIFAR10_URL, timeout=timeout) as response, \
                tmp.open("wb") as handle:
            while chunk := response.read(1 << 20):
                handle.write(chunk)
    except (urllib.error.URLError, OSError) as err:
        tmp.unlink(missing_ok=True)
        raise StageError(f"cifar10: not in {target.parent} and could not be downloaded from "
                         f"{CIFAR10_URL} ({err}); put {CIFAR10_ARCHIVE} (or its extracted "
                         f"{CIFAR10_FOLDER}/) there") from err
    digest = hashlib.md5(tmp.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != CIFAR10_MD5:
        tmp.unlink()
        raise StageError(f"cifar10: the download from {CIFAR10_URL} has MD5 {digest}, not "
                         f"{CIFAR10_MD5}; try again")
    tmp.replace(target)


def load_cifar10(data_dir: Path, download: bool = True) -> LoadedImages:
    """CIFAR-10 from ``<data_dir>/datasets/cifar10/``: the extracted ``cifar-10-batches-bin/``,
    else the ``.tar.gz`` there (extracted beside it), else downloaded (MD5 checked)."""
    home = data_dir / "datasets" / "cifar10"
    folder = home / CIFAR10_FOLDER
    archive = home / CIFAR10_ARCHIVE
    names = CIFAR10_TRAIN + CIFAR10_TEST
    if not all((folder / name).is_file() for name in names):
        if not archive.is_file():
            if not download:
                raise StageError(f"cifar10: neither {folder}/ nor {archive} is there")
            _download_cifar10(archive)
        _extract_cifar10(archive, folder)
    parts = {name: parse_cifar10_batch(folder / name) for name in names}
    x_train = np.concatenate([parts[n][0] for n in CIFAR10_TRAIN])
    y_train = np.concatenate([parts[n][1] for n in CIFAR10_TRAIN])
    x_test, y_test = parts[CIFAR10_TEST[0]]
    return LoadedImages(x_train, y_train, x_test, y_test, list(CIFAR10_CLASSES), str(folder),
                        [], "given (CIFAR-10's own)")
