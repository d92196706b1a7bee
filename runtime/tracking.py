"""Training curves for TensorBoard (and, when asked, Weights & Biases): every training stage logs
its losses and validation metrics as scalars, its sample grids as images and its settings as
text under ``<data-dir>/runs/<stage>/<run>/``, so that ``tensorboard --logdir data/runs`` shows
the runs of a sweep side by side.

Values are logged where the stages already hold them as Python numbers (a log interval's means,
an epoch's record), so logging adds no host synchronisation on a GPU. Weights & Biases mirrors
the TensorBoard events (``sync_tensorboard``) when ``--wandb PROJECT`` is given; it is never
required, and asked for without the package it stops the stage in one line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.stage import StageError


class RunLog:
    """One run's event files: ``scalars``, ``image_file`` and ``close``; a disabled log (no
    folder) accepts the same calls and writes nothing. The event file (and the settings text) is
    made with the first value, so a rerun that trains nothing leaves no file."""

    def __init__(self, folder: Path | None, settings: Mapping[str, Any],
                 wandb_project: str = "") -> None:
        self.folder, self.settings, self.writer, self.wandb = folder, dict(settings), None, None
        self.wandb_project = wandb_project
        if folder is not None and wandb_project:
            try:
                import wandb  # noqa: F401  (checked before training, used on the first value)
            except ImportError as err:
                raise StageError(f"--wandb {wandb_project}: the wandb package is not installed "
                                 f"(pip install wandb, then wandb login), or leave --wandb "
                                 f"out") from err

    def _open(self) -> Any:
        """The writer, made on first use (Weights & Biases first, so it mirrors the events)."""
        if self.writer is not None or self.folder is None:
            return self.writer
        folder = self.folder
        if self.wandb_project:
            import wandb

            self.wandb = wandb.init(project=self.wandb_project, name=f"{folder.parent.name}/"
                                    f"{folder.name}", config=self.settings,
                                    dir=str(folder.parent), sync_tensorboard=True)
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(folder))
        shown = json.dumps(self.settings, indent=2, default=str)
        self.writer.add_text("settings", f"```\n{shown}\n```", 0)
        return self.writer

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Each finite number of ``values`` as the scalar ``<prefix><name>`` at ``step``."""
        numbers = {name: float(value) for name, value in values.items()
                   if isinstance(value, int | float) and not isinstance(value, bool)
                   and math.isfinite(value)}
        if numbers and self._open() is not None:
            for name, value in numbers.items():
                self.writer.add_scalar(f"{prefix}{name}", value, step)
            self.writer.flush()  # on disk at once: a killed run keeps what it logged

    def image_file(self, tag: str, path: Path, step: int) -> None:
        """A PNG the stage wrote (its grid of the epoch) as the image ``tag`` at ``step``."""
        if self._open() is None:
            return
        from PIL import Image

        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run_log(values: Mapping[str, Any], stage: str, run: str) -> RunLog:
    """The log of ``run`` (its output stem, tag included) of ``stage`` under
    ``<data_dir>/runs/<stage>/<run>/``, from a stage's settings ``tensorboard`` (on or off),
    ``wandb`` (a project or "") and ``data_dir``; disabled with ``--no-tensorboard``."""
    if not values.get("tensorboard", False):
        if values.get("wandb"):
            raise StageError(f"--wandb {values['wandb']} mirrors the TensorBoard log: drop "
                             f"--no-tensorboard, or --wandb")
        return RunLog(None, values)
    folder = Path(values["data_dir"]) / "runs" / stage / run
    return RunLog(folder, values, str(values.get("wandb") or ""))
