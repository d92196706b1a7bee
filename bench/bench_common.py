"""What the benchmark scripts share: the repository root on the import path, running a stage as a
user runs it, the load of the machine, and the targets that several benchmarks check."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.settings import SettingsError  # noqa: E402
from runtime.stage import StageError  # noqa: E402


def flag_words(flag: str, text: str) -> list[str]:
    """The command-line words of a setting holding more flags for a stage (split as a shell
    would); a text a shell could not split (an unclosed quote) is refused in one line naming
    the setting. A benchmark calls it on each such setting first, before anything trains."""
    try:
        return shlex.split(text)
    except ValueError as err:
        raise SettingsError(f"{flag} {text!r}: {err} (quote it as a shell would)") from err


def run_script(script: str, *args: str) -> float:
    """Run a stage script of the repository as a user would (its output shown); returns its wall
    time. Its failure, already reported in its own output, stops the benchmark with one line."""
    started = time.time()
    code = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT).returncode
    if code:
        raise StageError(f"{script} stopped with exit code {code} (its message is above)")
    return time.time() - started


def load_text() -> str:
    """The 1-, 5- and 15-minute load averages: other jobs on the machine inflate timings."""
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def within_target(row: dict[str, Any]) -> bool:
    """Plan 2's bounds on one generator's row: recall >= 0.8, Fréchet distance <= 2x the floor
    (``ratio``)."""
    return row["recall"] >= 0.8 and row["ratio"] <= 2.0


def meets_target(row: dict[str, Any], mixture: dict[str, Any]) -> bool:
    """Plan 2's target on one row: within its bounds, and above the 20-component mixture's
    precision and density."""
    return within_target(row) and row["precision"] > mixture["precision"] \
        and row["density"] > mixture["density"]


def seed_folder(root: str | Path, seed: int) -> Path:
    """The data folder of one seed's training runs under a benchmark's folder, so that no seed
    overwrites or resumes another's checkpoints and samples."""
    return Path(root) / f"seed{seed}"


def dataset_files(root: Path, dataset: str) -> list[Path]:
    """The dataset files downloaded into root (none when the data lives elsewhere): a stage reads
    the images from its own data folder first."""
    folder = root / "datasets" / dataset
    return sorted(p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")
                  and not p.name.endswith(".part")) if folder.is_dir() else []


def share_inputs(root: Path, folder: Path, paths: list[Path]) -> None:
    """Copy inputs made once under root (stage-1 embeddings, the evaluator, dataset files) to the
    same place under a seed's folder, unless the same bytes are there already."""
    import filecmp

    from dataio.artifacts import atomic_write

    for source in paths:
        target = folder / source.relative_to(root)
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            continue
        with atomic_write(target) as handle:
            handle.write(source.read_bytes())


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of one metric over seeds."""
    import numpy

    spread = float(numpy.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(numpy.mean(values)), spread


def over_seeds(values: list[float], digits: int = 3) -> str:
    """One table cell of a metric measured with several seeds: "mean ± sd" (one seed: the value)."""
    mean, spread = mean_sd(values)
    return f"{mean:.{digits}f}" + (f" ± {spread:.{digits}f}" if len(values) > 1 else "")


# ---------------------------------------------------------------- CLIP extraction timing
# What bench_clip_extraction.py and gpu_check_extraction.py share: the pictures they embed and the
# model-only reference. PIL, scikit-learn's sample photographs and the extraction stage are
# imported where they are used, so that the other benchmarks do not load them.
import typing  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

if typing.TYPE_CHECKING:
    from transformers import CLIPModel


def write_pictures(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """Random crops of the sample photographs, rescaled to size x size, saved as JPEG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(photo) for photo in load_sample_images().images]
    files = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(200, min(photo.size)))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        picture = photo.crop((left, top, left + side, top + side)).resize(
            (size, size), Image.Resampling.BICUBIC)
        path = folder / f"COCO_train2014_{index + 1:012d}.jpg"
        picture.save(path, quality=90)
        files.append(path)
    return files


def synchronise(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only_seconds(model: CLIPModel, batches: list[torch.Tensor],
                       device: torch.device) -> float:
    """Seconds for the image tower (plus normalisation) on preprocessed in-memory batches."""
    from clip_tools.clip_embedding import autocast_for, projected

    synchronise(device)
    started = time.perf_counter()
    for pixels in batches:
        with torch.inference_mode(), autocast_for(device):
            features = projected(model.get_image_features(pixel_values=pixels.to(device)))
        torch.nn.functional.normalize(features.float(), dim=-1).cpu()
    synchronise(device)
    return time.perf_counter() - started
