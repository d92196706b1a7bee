"""Files that stages pass to each other: atomic NPZ and checkpoint writes, ``meta``, checked loads.

Every NPZ holds a ``meta`` key: a JSON string recording the script, settings, dataset, seed, time
and library versions that made it (see DESIGN.md). Writes go to a temp file in the same folder and
are renamed into place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime import StageError

# The keys and number of dimensions of each kind of file in DESIGN.md.
EMBEDDING_KEYS = {"z_train": 2, "y_train": 1, "z_test": 2, "y_test": 1}
GENERATED_EMBEDDING_KEYS = {"z_gen": 2}
PLAN1_SAMPLE_KEYS = {"x_gen": 3, "idx_src": 1, "y_src": 1}


def make_meta(script: str, settings: Mapping[str, Any], dataset: str | None, seed: int | None,
              **extra: Any) -> dict[str, Any]:
    """The provenance record stored as ``meta`` in every artifact."""
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "torch": torch.__version__}
    for name in ("sklearn", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    return {"script": Path(script).name, "settings": dict(settings), "dataset": dataset,
            "seed": seed, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": versions, **extra}


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``arrays`` plus ``meta`` (as a JSON string) to ``path`` atomically."""
    path = Path(path)
    if "meta" in arrays:
        raise ValueError("'meta' is written from the meta argument, not from arrays")
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays, meta=np.array(json.dumps(meta, default=str)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """``torch.save`` to a temp file and rename: an interrupted save never replaces a good file."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        torch.save(dict(payload), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain types only)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise StageError(f"{path}: checkpoint not found") from err
    except Exception as err:  # a truncated or foreign file
        raise StageError(f"{path}: not a readable checkpoint ({err})") from err


def check_settings_match(path: str | Path, saved: Mapping[str, Any],
                         current: Mapping[str, Any]) -> None:
    """Refuse to resume from a checkpoint made with other settings, naming those that differ."""
    differing = {k: (v, saved.get(k)) for k, v in current.items() if saved.get(k) != v}
    if differing:
        listed = ", ".join(f"{k}: now {a!r}, checkpoint {b!r}" for k, (a, b) in differing.items())
        raise StageError(f"{path} was trained with other settings ({listed}); delete it to start "
                         "again, or run with the checkpoint's settings")


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file (JSON, CSV, Markdown) atomically."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure(figure: Any, path: str | Path, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_npz(path: str | Path, keys: Mapping[str, int | None],
             aligned: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
    """Load an NPZ and check it: each key present with the given number of dimensions (None: any),
    float arrays finite, each group in ``aligned`` of equal length. ``meta`` comes back as a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {k: data[k] for k in data.files}
    except Exception as err:
        raise StageError(f"{path}: not a readable NPZ file ({err})") from err
    missing = [k for k in keys if k not in contents]
    if missing:
        raise StageError(f"{path}: missing key(s) {', '.join(missing)}; "
                         f"found {', '.join(sorted(contents)) or 'none'}")
    for key, ndim in keys.items():
        array = contents[key]
        if ndim is not None and array.ndim != ndim:
            raise StageError(f"{path}: key {key!r} has shape {array.shape}, expected {ndim} dims")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise StageError(f"{path}: key {key!r} holds {bad} NaN or infinite value(s)")
    for group in aligned:
        lengths = {k: len(contents[k]) for k in group if k in contents}
        if len(set(lengths.values())) > 1:
            raise StageError(f"{path}: lengths do not match: "
                             + ", ".join(f"{k}={n}" for k, n in lengths.items()))
    contents["meta"] = read_meta(path, contents.get("meta"))
    return contents


def read_meta(path: str | Path, raw: np.ndarray | None) -> dict[str, Any]:
    """Decode the ``meta`` JSON string of an artifact (an empty dict when it has none)."""
    if raw is None:
        return {}
    try:
        return json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise StageError(f"{path}: key 'meta' is not valid JSON ({err})") from err


def load_embeddings(path: str | Path) -> dict[str, Any]:
    """Load and check a ``<ds>_<enc>.npz`` file: train/test embeddings with labels."""
    data = load_npz(path, EMBEDDING_KEYS, aligned=(("z_train", "y_train"), ("z_test", "y_test")))
    if data["z_train"].shape[1] != data["z_test"].shape[1]:
        raise StageError(f"{path}: z_train has {data['z_train'].shape[1]} dims, "
                         f"z_test {data['z_test'].shape[1]}")
    return data
