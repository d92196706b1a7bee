"""Where training reads its examples: a set of at most ``max_device_images`` examples is moved to
the device once and indexed there (the fast path for the data sets of this project); a larger one
stays on the CPU (pinned on CUDA) and each batch is gathered by a ``DataLoader`` with workers and
moved to the device, so that a set larger than the device's memory still trains. Both paths give
the same batches for the same index order, so a run's results do not depend on which is taken."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class _Rows(Dataset):
    """Rows of aligned tensors, gathered a whole batch at a time (``__getitems__``)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[rows] for k, v in self.tensors.items()}


def _whole_batch(batch: Any) -> Any:
    """The DataLoader's collate: ``__getitems__`` already made the batch."""
    return batch


class TrainingTensors:
    """Aligned training tensors (CPU tensors in, e.g. uint8 images, labels, conditions) and their
    batches on ``device`` for index batches (``batches``)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], device: torch.device,
                 max_device_images: int, workers: int = 2) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors of different lengths: {lengths}")
        self.n = next(iter(lengths.values()))
        self.device, self.workers = torch.device(device), workers
        self.max_device_images = max_device_images
        self.streamed = self.n > max_device_images
        if self.streamed:
            cuda = self.device.type == "cuda"
            self.tensors = {k: v.cpu().pin_memory() if cuda else v.cpu()
                            for k, v in tensors.items()}
        else:
            self.tensors = {k: v.to(self.device) for k, v in tensors.items()}

    def __len__(self) -> int:
        return self.n

    def describe(self) -> str:
        """Which path the set takes, for the stage's log."""
        if not self.streamed:
            return f"{self.n} training examples on {self.device}"
        return (f"{self.n} training examples stay on the CPU (more than --max-device-images): "
                f"batches gathered by a DataLoader with {self.workers} workers")

    def batches(self, order: Iterable[torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        """The batch of each index tensor of ``order``, on the device."""
        if not self.streamed:
            for idx in order:
                idx = idx.to(self.device)
                yield {k: v[idx] for k, v in self.tensors.items()}
            return
        # A generator of its own: the loader draws its workers' base seed from it, which would
        # otherwise advance the global generator and change the training's noise from the
        # in-memory path's.
        loader = DataLoader(_Rows(self.tensors), batch_sampler=[idx.tolist() for idx in order],
                            num_workers=self.workers, collate_fn=_whole_batch,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
