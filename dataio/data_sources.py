"""Image data sources: MNIST and Fashion-MNIST (IDX files), scikit-learn's digits, CIFAR-10 and
a folder of the user's own images (``folder:PATH``, ``dataio.image_folders``).

Images come back as uint8 arrays, (N, H, W) for grey and (N, H, W, 3) for colour, with int64
labels, in the official train/test split (a folder's own or seeded one). IDX files are looked
up in ``<data_dir>/datasets/<name>/``, then in this repository's own ``data/datasets/<name>/``
(so that a run writing elsewhere still finds them), then (Fashion-MNIST) in Debian's
``/usr/share/datasets/fashion-mnist``, then downloaded from the official mirrors into
``<data_dir>/datasets/<name>/`` and checked against their published MD5 sums.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataio.image_folders import (
    CIFAR10_CLASSES,
    FOLDER_PREFIX,
    folder_classes,
    folder_name,
    load_cifar10,
    load_image_folder,
)
from runtime.settings import SettingsError
from runtime.stage import StageError

# The most data bytes an IDX file may announce: well above MNIST's 47 MB of training images.
MAX_IDX_BYTES = 2**30
IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}

# Published MD5 sums of the official .gz files (the same ones torchvision checks).
MD5 = {
    "mnist": {"train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
              "test_images": "9fb629c4189551a2d022fa330f9573f3",
              "test_labels": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion-mnist": {"train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
                      "test_images": "bef4ecab320f06d8554ea6380940ec79",
                      "test_labels": "bb300cfdad3c16e7a12a480ee83cd310"},
}
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion-mnist": ["https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
                      "data/fashion/"],
}
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
REPOSITORY_DATASETS = Path(__file__).resolve().parent.parent / "data" / "datasets"
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "digits": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": list(CIFAR10_CLASSES),
}
DATASETS = tuple(CLASS_NAMES)
DIGITS_TEST_FRACTION = 0.25  # digits has no official split: a fixed stratified one (seed 0)


# Folder data sets named by this process (name -> (spec, image size)): a stage names its
# outputs after the folder and loads it by that name; later stages register it from a file's meta.
_FOLDERS: dict[str, tuple[str, int]] = {}
# How each folder loaded in this process was split (what every ``meta`` of it records).
_SPLITS: dict[str, str] = {}


@dataclass
class ImageDataset:
    """Images, uint8 (N, H, W) grey or (N, H, W, 3) colour, and labels (N,) int64 for the train
    and test splits; ``spec`` is what --dataset named (a folder's ``folder:PATH``)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str
    spec: str = ""
    split: str = "given"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image: what each image network is built for."""
        height, width = self.x_train.shape[1:3]
        return (self.x_train.shape[3] if self.x_train.ndim == 4 else 1), height, width


def read_idx(path: str | Path, expected_dims: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes, checking magic and sizes.

    The file is read as a stream: the header first, then exactly the bytes it announces (at
    most MAX_IDX_BYTES), then one more to check there is none; a file that decompresses to far
    more than its header says (a gzip bomb) is refused without inflating it in memory."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as handle:
            magic = handle.read(4)
            if len(magic) < 4:
                raise StageError(f"{path}: {len(magic)} bytes, too short for an IDX header")
            zero, dtype_code, ndim = int.from_bytes(magic[:2], "big"), magic[2], magic[3]
            if zero != 0 or dtype_code != 0x08:
                raise StageError(f"{path}: bad IDX magic number {magic.hex()} "
                                 f"(expected 0000 08 0{expected_dims}: unsigned bytes)")
            if ndim != expected_dims:
                raise StageError(f"{path}: IDX file has {ndim} dimension(s), expected "
                                 f"{expected_dims}")
            sizes = handle.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise StageError(f"{path}: truncated IDX header")
            shape = tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))
            expected = int(np.prod(shape, dtype=np.int64))
            if expected > MAX_IDX_BYTES:
                raise StageError(f"{path}: header says shape {shape} ({expected} bytes of data), "
                                 f"more than the {MAX_IDX_BYTES} an image data set may hold")
            data = handle.read(expected)
            extra = handle.read(1)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise StageError(f"{path}: cannot be read or decompressed ({err})") from err
    if len(data) != expected or extra:
        held = f"{len(data)}" if len(data) != expected else "more"
        raise StageError(f"{path}: header says shape {shape} ({expected} bytes of data), "
                         f"file holds {held}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def download_idx(name: str, folder: Path, timeout: float = 30.0) -> None:
    """Fetch the four official .gz files into ``folder``, verifying each MD5 sum."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, stem in IDX_FILES.items():
        target = folder / (stem + ".gz")
        if target.is_file() and _md5(target) == MD5[name][part]:
            continue
        errors = []
        for mirror in MIRRORS[name]:
            tmp = target.with_suffix(".gz.part")
            try:
                with urllib.request.urlopen(mirror + stem + ".gz", timeout=timeout) as response:
                    tmp.write_bytes(response.read())
            except (urllib.error.URLError, OSError) as err:
                errors.append(f"{mirror}: {err}")
                continue
            if _md5(tmp) != MD5[name][part]:
                tmp.unlink()
                errors.append(f"{mirror}: MD5 mismatch")
                continue
            tmp.replace(target)
            break
        else:
            raise StageError(
                f"{name} is not in {folder} and could not be downloaded "
                f"({'; '.join(errors)}). Put the four IDX files "
                f"({', '.join(s + '.gz' for s in IDX_FILES.values())}) in {folder}")


def _load_idx_dataset(name: str, data_dir: Path, download: bool) -> ImageDataset:
    local = data_dir / "datasets" / name
    folders = [local, REPOSITORY_DATASETS / name, *SYSTEM_DIRS.get(name, [])]
    for folder in dict.fromkeys(folders):  # in order, each folder once
        paths = {part: _find_idx(folder, stem) for part, stem in IDX_FILES.items()}
        if all(paths.values()):
            break
    else:
        if not download:
            raise StageError(f"{name} IDX files not found in {local}; put "
                             f"{', '.join(s + '.gz' for s in IDX_FILES.values())} there")
        download_idx(name, local)
        folder = local
        paths = {part: _find_idx(folder, stem) for part, stem in IDX_FILES.items()}
    arrays = {part: read_idx(path, 3 if part.endswith("images") else 1)
              for part, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise StageError(f"{paths[split + '_labels']}: {len(labels)} labels for "
                             f"{len(images)} images in {paths[split + '_images']}")
        if images.shape[1:] != (28, 28):
            raise StageError(f"{paths[split + '_images']}: images are {images.shape[1:]}, "
                             "expected 28x28")
        if labels.max(initial=0) >= len(CLASS_NAMES[name]):
            raise StageError(f"{paths[split + '_labels']}: label {labels.max()} out of range")
    return ImageDataset(name, arrays["train_images"], arrays["train_labels"].astype(np.int64),
                        arrays["test_images"], arrays["test_labels"].astype(np.int64),
                        CLASS_NAMES[name], str(folder))


def _load_digits() -> ImageDataset:
    """scikit-learn's 8x8 digits (values 0..16), resized to 24x24 bilinearly, padded to 28x28."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(small, size=(24, 24), mode="bilinear", align_corners=False)
    big = F.pad(big, (2, 2, 2, 2))[:, 0].clamp(0, 1)
    images = np.rint(big.numpy() * 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, random_state=0,
                                           stratify=labels)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return ImageDataset("digits", images[train_idx], labels[train_idx], images[test_idx],
                        labels[test_idx], CLASS_NAMES["digits"], "sklearn.datasets.load_digits")


def dataset_name(spec: str, image_size: int = 0) -> str:
    """The name outputs carry for the data set ``spec`` (--dataset): a built-in's own, or a
    folder's (``folder:PATH`` -> its folder's name, registered so that ``load_dataset`` loads it
    by that name, resized to ``image_size`` when > 0)."""
    if not spec.startswith(FOLDER_PREFIX):
        if spec not in DATASETS:
            raise StageError(f"unknown dataset {spec!r}; choose one of {', '.join(DATASETS)}, "
                             f"or {FOLDER_PREFIX}PATH")
        return spec
    name = folder_name(spec)
    if name in DATASETS:
        raise StageError(f"--dataset {spec}: the folder is named like the built-in data set "
                         f"{name!r}; rename the folder")
    known = _FOLDERS.get(name)
    path = str(Path(spec.removeprefix(FOLDER_PREFIX)).expanduser().resolve())
    if known and (known[0] != path or known[1] != image_size):
        raise StageError(f"--dataset {spec}: the name {name!r} already stands for {known[0]} "
                         f"(image size {known[1]}) in this run")
    _FOLDERS[name] = (path, image_size)
    return name


def resolve_dataset(values: dict, resize_setting: str | None = "image_size") -> dict:
    """A stage's settings with ``dataset`` the data set's name (what outputs carry) and, for a
    folder, ``dataset_spec`` its ``folder:PATH`` with the path made absolute and
    ``dataset_image_size`` the size its images are read at (both recorded in every ``meta``, so
    that later stages find the folder from a file alone, from any directory). The setting named
    ``resize_setting`` resizes a folder's images (None: a stage whose IMAGE_SIZE means something
    else reads the folder at its own size)."""
    spec = values["dataset"]
    if not spec.startswith(FOLDER_PREFIX):
        return {**values, "dataset": dataset_name(spec)}
    size = values.get(resize_setting, 0) if resize_setting else 0
    size = size if isinstance(size, int) else 0
    name = dataset_name(spec, size)
    path = Path(spec.removeprefix(FOLDER_PREFIX)).expanduser().resolve()
    return {**values, "dataset": name, "dataset_spec": f"{FOLDER_PREFIX}{path}",
            "dataset_image_size": size}


def resolve_embedded_dataset(values: dict, encoders: Sequence[str]) -> dict:
    """``resolve_dataset`` for a stage that reads embeddings: --dataset may also be the short name
    of a folder data set (``my-shapes``), found from the ``meta`` of the embedding files this run
    reads (``<data_dir>/embeddings/<name>_<encoder>[@<input_tag>].npz``), so that the folder's
    path and read size are given once, to the stage that read the images."""
    spec = values["dataset"]
    if spec in DATASETS or spec.startswith(FOLDER_PREFIX):
        return resolve_dataset(values)
    from dataio.artifacts import load_meta, tagged  # a sibling; it imports this one lazily

    expected = [Path(values["data_dir"]) / "embeddings"
                / f"{tagged(f'{spec}_{encoder}', values.get('input_tag', ''))}.npz"
                for encoder in encoders]
    files = [path for path in expected if path.is_file()]
    for path in files:
        meta = load_meta(path)
        settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
        folder, size = settings.get("dataset_spec"), settings.get("dataset_image_size", 0)
        if meta.get("dataset") == spec and isinstance(folder, str) and isinstance(size, int):
            return {**values, "dataset": dataset_name(folder, size), "dataset_spec": folder,
                    "dataset_image_size": size}
    where = ", ".join(str(p) for p in expected) or "no embedding file"
    raise SettingsError(f"--dataset {spec}: must be one of {', '.join(DATASETS)}, or "
                        f"{FOLDER_PREFIX}PATH, or the name of a folder data set whose embeddings "
                        f"record it ({where}: " + ("none records a folder)" if files else
                                                   "not found)"))


def recorded_split(name: str | None) -> str | None:
    """How the folder or CIFAR-10 set ``name`` loaded in this process was split, if it was."""
    return _SPLITS.get(name) if name else None


def dataset_from_meta(meta: dict) -> str | None:
    """The data set a file's ``meta`` was made from, registered when it is a folder (so that
    later stages load it by name without the path again); None when the meta does not say."""
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    spec = settings.get("dataset_spec", settings.get("dataset"))
    if not isinstance(spec, str):
        return meta.get("dataset") if isinstance(meta.get("dataset"), str) else None
    size = settings.get("dataset_image_size", settings.get("image_size", 0))
    return dataset_name(spec, size if isinstance(size, int) and spec.startswith(
        FOLDER_PREFIX) else 0)


def class_names_of(name: str) -> list[str]:
    """The class names of a built-in data set, or of a folder registered by ``dataset_name``."""
    if name in CLASS_NAMES:
        return list(CLASS_NAMES[name])
    if name in _FOLDERS:
        return folder_classes(_FOLDERS[name][0])
    raise StageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or "
                     f"{FOLDER_PREFIX}PATH (a folder named in this run or in a file's meta)")


def load_dataset(name: str, data_dir: str | Path = "data", limit: int = 0,
                 download: bool = True) -> ImageDataset:
    """Load a dataset by name (a built-in, or a folder named by ``dataset_name``); ``limit`` > 0
    keeps the first ``limit`` training examples."""
    if name.startswith(FOLDER_PREFIX):
        name = dataset_name(name)
    if name not in DATASETS and name not in _FOLDERS:
        raise StageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or "
                         f"{FOLDER_PREFIX}PATH")
    if limit < 0:
        raise StageError(f"--limit must be >= 0, got {limit}")
    if name in _FOLDERS or name == "cifar10":
        if name == "cifar10":
            loaded, spec = load_cifar10(Path(data_dir), download), "cifar10"
        else:
            path, size = _FOLDERS[name]
            loaded, spec = load_image_folder(path, size), FOLDER_PREFIX + path
        for note in loaded.notes:
            print(f"note: {note}")
        data = ImageDataset(name, loaded.x_train, loaded.y_train, loaded.x_test, loaded.y_test,
                            loaded.class_names, loaded.source, spec, loaded.split)
        _SPLITS[name] = loaded.split
    else:
        data = _load_digits() if name == "digits" else _load_idx_dataset(name, Path(data_dir),
                                                                          download)
        data.spec = name
    if limit:
        data.x_train, data.y_train = data.x_train[:limit], data.y_train[:limit]
    return data
