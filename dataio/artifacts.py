"""Files that stages pass to each other: atomic NPZ and checkpoint writes, ``meta``, checked loads.

Every NPZ holds a ``meta`` key: a JSON string recording the script, settings, dataset, seed, time,
library versions and git commit that made it (see DESIGN.md). Writes go to a temp file in the
same folder and are renamed into place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import glob
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from dataio.data_sources import class_names_of
from runtime.provenance import code_version
from runtime.stage import StageError, describe_os_error

# The keys of each kind of file in DESIGN.md: (number of dimensions, allowed dtype kinds).
# Kinds are NumPy's: "f" float, "i" signed and "u" unsigned integer.
EMBEDDING_KEYS = {"z_train": (2, "f"), "y_train": (1, "iu"), "z_test": (2, "f"),
                  "y_test": (1, "iu")}
GENERATED_EMBEDDING_KEYS = {"z_gen": (2, "f")}
# Images: (N, H, W) grey or (N, H, W, 3) colour.
PLAN1_SAMPLE_KEYS = {"x_gen": ((3, 4), "iu"), "idx_src": (1, "iu"), "y_src": (1, "iu")}
# Larger magnitudes overflow squared distances in float64: refused on load.
MAX_ABS_VALUE = 1e30
KIND_NAMES = {"f": "floats", "i": "integers", "u": "integers", "c": "complex numbers",
              "b": "booleans", "U": "strings", "S": "bytes", "O": "objects"}


def tagged(stem: str, tag: str) -> str:
    """A file or folder name stem with the run's tag: ``<stem>@<tag>``, or ``stem`` untagged.

    One rule for every stage, so that variants of a run (``--tag``) sit beside the untagged one
    and beside each other, and every table shows the tag as part of the model's name."""
    return f"{stem}@{tag}" if tag else stem


def make_meta(script: str, settings: Mapping[str, Any], dataset: str | None, seed: int | None,
              **extra: Any) -> dict[str, Any]:
    """The provenance record stored as ``meta`` in every artifact: the script, its settings, the
    code's git commit and dirty flag (``runtime.provenance``), library versions, time and, for a
    folder or CIFAR-10, how its images were split into train and test."""
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "torch": torch.__version__}
    for name in ("sklearn", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    from dataio.data_sources import recorded_split  # a sibling that imports nothing of ours

    split = recorded_split(dataset)
    return {"script": Path(script).name, "settings": dict(settings), "dataset": dataset,
            "seed": seed, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": versions, "code": code_version(),
            **({"data_split": split} if split else {}), **extra}


def _current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_ended(pid: str) -> bool:
    """Whether the process ``pid`` (digits from a file name) no longer runs."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but another user's process
        return False
    return False


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temp files of ``path`` left by writers that no longer run (killed mid-write)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _process_ended(tmp.name[len(path.name) + 2:].split(".", 1)[0]):
            tmp.unlink(missing_ok=True)


def staging_dir(target: Path) -> Path:
    """An empty folder beside ``target`` (``.<name>.partial-<pid>``) to write a folder in before
    ``replace_directory`` moves it into place; staging folders of processes that no longer run
    (killed mid-write) are removed first."""
    prefix = f".{target.name}.partial-"
    for stale in target.parent.glob(f"{glob.escape(prefix)}*"):
        if stale.is_dir() and not stale.is_symlink() \
                and _process_ended(stale.name[len(prefix):]):
            shutil.rmtree(stale, ignore_errors=True)
    staging = target.with_name(f"{prefix}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def ensure_output_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it, before long work."""
    path = Path(path)
    for folder in (path, *path.parents):  # the nearest existing one must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise StageError(f"{folder}: exists and is not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        cause = describe_os_error(OSError(err.errno, err.strerror))
        raise StageError(f"{path}: cannot write there ({cause})") from err
    return path


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success flush, fsync and rename it into place.

    The file gets the permissions any new file gets under the umask (not mkstemp's 0600). On any
    error, or Ctrl-C, the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise StageError(f"{path.parent}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                               suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a failed write on an open file names no file: name it
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass  # some file systems cannot fsync a folder; the data itself is synced


def check_finite_arrays(path: Path, arrays: Mapping[str, Any]) -> None:
    """Refuse to write NaN or infinite floats: they would reach the next stage as results."""
    for key, value in arrays.items():
        if isinstance(value, torch.Tensor):
            bad = int((~torch.isfinite(value)).sum()) if value.is_floating_point() \
                or value.is_complex() else 0
        else:
            array = np.asarray(value)
            bad = int((~np.isfinite(array)).sum()) if array.dtype.kind in "fc" else 0
        if bad:
            raise StageError(f"{path}: not written: {key!r} holds {bad} NaN or infinite "
                             f"value(s)")


def _tensors(value: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts, lists and tuples, with a dotted name."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}[{index}]")


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``arrays`` plus ``meta`` (as a JSON string) to ``path`` atomically; floats must be
    finite."""
    path = Path(path)
    if "meta" in arrays:
        raise ValueError("'meta' is written from the meta argument, not from arrays")
    check_finite_arrays(path, arrays)
    with atomic_write(path) as handle:
        np.savez(handle, **arrays, meta=np.array(json.dumps(meta, default=str)))
    return path


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """``torch.save`` atomically: an interrupted or failed save never replaces a good file, and a
    checkpoint holding a NaN or infinite tensor is refused. The code's commit is recorded under
    ``code`` unless the payload has its own."""
    path = Path(path)
    payload = {"code": code_version(), **payload}
    check_finite_arrays(path, dict(_tensors(payload, "")))
    buffer = io.BytesIO()  # serialise first, so a full disk is an OSError, not a torch error
    torch.save(payload, buffer)
    with atomic_write(path) as handle:
        handle.write(buffer.getbuffer())
    return path


def short_cause(err: BaseException, limit: int = 80) -> str:
    """The first sentence of an exception's message, at most ``limit`` characters: the cause in
    a few words (PyTorch's zip errors run to several sentences)."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[:limit - 3].rstrip() + "..."


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = (),
                    advice: str = "delete it to start again") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain types only): a dict
    holding at least the ``required`` keys. A broken one is refused in one line ending with
    ``advice``: what to do, "delete it to start again" for a stage's own resume checkpoint, the
    command that remakes it for a file another stage wrote."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise StageError(f"{path}: checkpoint is empty (0 bytes); {advice}")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise StageError(f"{path}: checkpoint not found") from err
    except (StageError, OSError):
        raise
    except Exception as err:  # a truncated or foreign file
        raise StageError(f"{path}: not a readable checkpoint ({short_cause(err)}); "
                         f"{advice}") from err
    if not isinstance(state, dict):
        raise StageError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict; "
                         f"{advice}")
    missing = [key for key in required if key not in state]
    if missing:
        raise StageError(f"{path}: checkpoint lacks {', '.join(missing)}; {advice}")
    if "settings" in state and not isinstance(state["settings"], Mapping):
        raise StageError(f"{path}: its settings are a {type(state['settings']).__name__}, not "
                         f"a dict; {advice}")
    return state


@contextmanager
def restoring(path: str | Path, advice: str = "delete it to start again") -> Iterator[None]:
    """Turn an error while loading a checkpoint's states into modules and optimisers (a tensor
    missing or of another shape, a value of the wrong type) into one line naming the file."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        cause = " ".join(str(err).split())  # torch puts the missing keys on the next lines
        cause = cause if len(cause) <= 120 else cause[:117].rstrip() + "..."
        raise StageError(f"{path} holds weights of another architecture or is damaged; "
                         f"{advice} ({cause or type(err).__name__})") from err


def read_architecture(path: Path, state: Mapping[str, Any] | None, family: str,
                      names: Iterable[str], family_title: str,
                      remake: str) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """A checkpoint (loaded unless ``state`` is given) and the record of the model it holds
    (``"architecture"``: family, name, sizes, config), checked to be one of ``names`` of
    ``family``. A checkpoint without the record is refused, naming ``remake``: the command that
    writes one."""
    state = load_checkpoint(path, map_location="cpu") if state is None else state
    record = state.get("architecture")
    if record is None:
        raise StageError(f"{path}: holds no record of its model (architecture), so nothing can "
                         f"rebuild it; remake it with: {remake}")
    names = tuple(names)
    if not isinstance(record, Mapping) or record.get("family") != family \
            or record.get("name") not in names:
        found = record if not isinstance(record, Mapping) else \
            f"a {record.get('family')} {record.get('name')!r} model"
        raise StageError(f"{path}: holds {found}, not one of the {family_title} "
                         f"({', '.join(names)})")
    return state, dict(record)


@contextmanager
def remake_hint(command: str) -> Iterator[None]:
    """Add "; remake it with: COMMAND" to a StageError about a file another stage wrote, so that
    the one line says the fix (deleting it would not help)."""
    try:
        yield
    except StageError as err:
        raise StageError(f"{err}; remake it with: {command}") from err


def check_settings_match(path: str | Path, saved: Mapping[str, Any],
                         current: Mapping[str, Any]) -> None:
    """Refuse to resume from a checkpoint made with other settings, naming those that differ
    (a setting the checkpoint does not record differs from any value)."""
    differing = {k: (v, saved.get(k)) for k, v in current.items() if saved.get(k) != v}
    if differing:
        listed = ", ".join(f"{k}: now {a!r}, checkpoint {b!r}" for k, (a, b) in differing.items())
        raise StageError(f"{path} was trained with other settings ({listed}); delete it to start "
                         "again, or run with the checkpoint's settings")


def fingerprint(*arrays: np.ndarray) -> str:
    """A short hash of arrays' bytes: a checkpoint is only resumed on the same data."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights (every state-dict entry's name, dtype, shape and bytes,
    in order): two files embedded with different weights, whatever their names, say so."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def give_umask_permissions(folder: Path) -> None:
    """Give the files in ``folder`` and its subfolders the permissions new files get under the
    umask (safetensors writes 0600)."""
    umask = _current_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


# The locks this process holds, by path, from hold_output_lock until the stage's main returns
# (holds_output_locks) or the process ends.
_HELD_LOCKS: dict[Path, IO[str]] = {}


def holds_output_locks(main: Callable[..., None]) -> Callable[..., None]:
    """Decorate a stage's main: the output locks it takes are let go when it returns or fails
    (a stage called in a process that goes on, as the tests do, leaves no lock behind)."""
    @functools.wraps(main)
    def locked_main(*args: Any, **kwargs: Any) -> None:
        before = set(_HELD_LOCKS)
        try:
            main(*args, **kwargs)
        finally:
            for path in set(_HELD_LOCKS) - before:
                _HELD_LOCKS.pop(path).close()  # closing the file lets go of its flock

    return locked_main


def hold_output_lock(path: Path, what: str) -> None:
    """Take the lock file ``path`` (flock) for this process, or stop: a second run writing the
    same outputs at once (two loops of one name, one stage twice on one --data-dir) would
    interleave them. Held until the decorated main returns (``holds_output_locks``) or the
    process ends, however it ends. The lock file itself is never followed through a link (the
    folder it is in may be one): a link there is refused, and nothing it points to is touched."""
    path = Path(path)
    path = path.parent.resolve() / path.name
    if path in _HELD_LOCKS:
        return
    ensure_output_dir(path.parent)  # one line if the folder is a file or cannot be written
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~_current_umask())
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StageError(f"{path}: the lock file is a link; a stage never writes through "
                             f"it: remove the link") from err
        raise
    handle = os.fdopen(fd, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StageError(f"{path.parent}: {holder} is writing here now ({what}); wait for it to "
                         f"end, or give this run another --data-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{what} (pid {os.getpid()})\n")
    handle.flush()
    _HELD_LOCKS[path] = handle


# A folder a stage wrote holds this file: only such a folder is ever replaced.
OUTPUT_MARKER = ".written-by-stage"


def check_replaceable(target: Path, unmarked: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before any work, to replace a path a stage of this project did not write: an
    existing folder must hold OUTPUT_MARKER (or pass ``unmarked``, the test for a stage's folders
    that carry no marker because their contents say what they are); a file, or any other folder,
    is left alone."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink():
        raise StageError(f"{target}: a link; a stage never replaces or deletes what it reaches "
                         f"through a link it did not make: choose another path, or remove the "
                         f"link yourself")
    if target.is_dir() and (
            (target / OUTPUT_MARKER).is_file() or (unmarked is not None and unmarked(target))):
        return
    kind = "folder" if target.is_dir() else "file"
    raise StageError(f"{target}: an existing {kind} this project's stages did not write (no "
                     f"{OUTPUT_MARKER}); it is not replaced: choose another path, or move it "
                     f"away yourself")


def replace_directory(staging: Path, target: Path,
                      unmarked: Callable[[Path], bool] | None = None, mark: bool = True) -> None:
    """Move a fully written folder into place, marked as a stage's (OUTPUT_MARKER) unless
    ``mark`` is False (a folder whose contents alone say a stage wrote it, as ``unmarked``
    tests); the previous ``target`` is removed only after, and only if a stage wrote it
    (``check_replaceable``)."""
    check_replaceable(target, unmarked)
    if mark:
        (staging / OUTPUT_MARKER).write_text("written by a stage of this project; a later run "
                                             "may replace this folder\n", encoding="utf-8")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file (JSON, CSV, Markdown) atomically."""
    path = Path(path)
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return path


def save_figure(figure: Any, path: str | Path, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    path = Path(path)
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _read_npz(path: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an NPZ file (only ``names`` when given; the others are not read), loaded
    without pickle; a missing, foreign or broken file is one StageError line."""
    if not path.is_file():
        raise StageError(f"{path}: file not found")
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            raise StageError(f"{path}: not an NPZ file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files if names is None or k in names}
    except ValueError as err:
        if "pickle" in str(err) or "Object arrays" in str(err):
            raise StageError(f"{path}: holds object arrays (pickled data), which are not "
                             f"loaded for safety") from err
        raise StageError(f"{path}: not a readable NPZ file ({err})") from err
    except Exception as err:
        raise StageError(f"{path}: not a readable NPZ file ({err})") from err


def load_meta(path: str | Path) -> dict[str, Any]:
    """Only the ``meta`` of an NPZ (its arrays are not read): for tables rebuilt from the meta
    of every file in a folder."""
    path = Path(path)
    return read_meta(path, _read_npz(path, ("meta",)).get("meta"))


def load_npz(path: str | Path, keys: Mapping[str, int | None | tuple[int | None, str]],
             aligned: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
    """Load an NPZ and check it: each key present with the given number of dimensions (None: any)
    and, when given as ``(ndim, kinds)``, a dtype of those NumPy kinds; numbers finite and below
    MAX_ABS_VALUE; each group in ``aligned`` of equal length. ``meta`` comes back as a dict.
    """
    path = Path(path)
    contents = _read_npz(path)
    missing = [k for k in keys if k not in contents]
    if missing:
        raise StageError(f"{path}: missing key(s) {', '.join(missing)}; "
                         f"found {', '.join(sorted(contents)) or 'none'}")
    for key, spec in keys.items():
        ndim, kinds = spec if isinstance(spec, tuple) else (spec, None)
        check_array(path, key, contents[key], ndim, kinds)
    for group in aligned:
        lengths = {k: len(contents[k]) for k in group if k in contents}
        if len(set(lengths.values())) > 1:
            raise StageError(f"{path}: lengths do not match: "
                             + ", ".join(f"{k}={n}" for k, n in lengths.items()))
    contents["meta"] = read_meta(path, contents.get("meta"))
    return contents


def check_array(path: str | Path, key: str, array: np.ndarray,
                ndim: int | tuple[int, ...] | None = None, kinds: str | None = None) -> None:
    """Raise StageError unless ``array`` has ``ndim`` dimensions (one of them, for a tuple), a
    dtype of ``kinds``, and only finite numbers of sane magnitude."""
    allowed = ndim if isinstance(ndim, tuple) else (ndim,)
    if ndim is not None and array.ndim not in allowed:
        raise StageError(f"{path}: key {key!r} has shape {array.shape}, expected "
                         f"{' or '.join(map(str, allowed))} dims")
    if kinds is not None and array.dtype.kind not in kinds:
        wanted = " or ".join(sorted({KIND_NAMES[k] for k in kinds}))
        got = KIND_NAMES.get(array.dtype.kind, str(array.dtype))
        raise StageError(f"{path}: key {key!r} holds {got} ({array.dtype}), expected {wanted}")
    if array.dtype.kind in "fc":
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise StageError(f"{path}: key {key!r} holds {bad} NaN or infinite value(s)")
        if array.size and float(np.abs(array).max()) > MAX_ABS_VALUE:
            raise StageError(f"{path}: key {key!r} holds values up to "
                             f"{float(np.abs(array).max()):.3g}, too large for distance "
                             f"computations (limit {MAX_ABS_VALUE:.0e})")


def read_meta(path: str | Path, raw: np.ndarray | None) -> dict[str, Any]:
    """Decode the ``meta`` JSON string of an artifact (an empty dict when it has none)."""
    if raw is None:
        return {}
    try:
        meta = json.loads(str(raw))
    except (json.JSONDecodeError, RecursionError) as err:
        raise StageError(f"{path}: key 'meta' is not valid JSON ({short_cause(err)})") from err
    if not isinstance(meta, dict):
        raise StageError(f"{path}: key 'meta' is a JSON {type(meta).__name__}, expected an "
                         f"object")
    return meta


def load_embeddings(path: str | Path, dataset: str | None = None) -> dict[str, Any]:
    """Load and check a ``<ds>_<enc>.npz`` file: train/test embeddings with labels, neither split
    empty; of ``dataset`` when given (a file whose meta names another dataset is refused, and
    every label must be a class index of it)."""
    data = load_npz(path, EMBEDDING_KEYS, aligned=(("z_train", "y_train"), ("z_test", "y_test")))
    recorded = data["meta"].get("dataset")
    if dataset is not None and recorded is not None and recorded != dataset:
        raise StageError(f"{path}: its meta says dataset {recorded!r}, not {dataset!r}")
    if data["z_train"].shape[1] != data["z_test"].shape[1]:
        raise StageError(f"{path}: z_train has {data['z_train'].shape[1]} dims, "
                         f"z_test {data['z_test'].shape[1]}")
    for split in ("train", "test"):
        if not len(data[f"z_{split}"]):
            raise StageError(f"{path}: holds no {split} embeddings (0 rows)")
    if dataset is not None:
        check_labels(path, {"y_train": data["y_train"], "y_test": data["y_test"]}, dataset)
    return data


def check_labels(path: Path, labels: Mapping[str, np.ndarray], dataset: str) -> None:
    """Labels must be class indices of ``dataset`` (0 to its class count - 1)."""
    classes = len(class_names_of(dataset))
    for key, values in labels.items():
        if len(values) and (values.min() < 0 or values.max() >= classes):
            raise StageError(f"{path}: {key} spans [{values.min()}, {values.max()}], "
                             f"not class indices of {dataset} (0..{classes - 1})")
