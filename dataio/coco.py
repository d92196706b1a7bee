"""COCO captions and work shards: the first caption of each image id in a COCO captions file,
the first N ids of a caption set (ascending), and a ``--shard i/n`` setting read. The extraction
stage and the diffusion loop choose their captions with these, so the same --num-captions gives
both stages the same prompts. May import ``runtime``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.settings import SettingsError
from runtime.stage import StageError


@dataclass
class CaptionSet:
    """The first caption of each selected image id, in ascending id order."""

    image_ids: np.ndarray
    captions: list[str]


def parse_shard(text: str) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n; '' -> None."""
    if not text.strip():
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise SettingsError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4 ... 3/4")
    return int(match.group(1)), int(match.group(2))


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_first_captions(path: Path) -> dict[int, str]:
    """The first caption (lowest annotation id, then file order) of each image id in a file."""
    if not path.is_file():
        raise StageError(f"{path}: COCO caption annotation file not found (--annotation-file)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StageError(f"{path}: not a readable JSON file ({err})") from err
    except RecursionError as err:
        raise StageError(f"{path}: JSON nested too deeply to be a COCO captions file") from err
    annotations = document.get("annotations") if isinstance(document, dict) else None
    if not isinstance(annotations, list):
        found = ("missing" if not isinstance(document, dict) or "annotations" not in document
                 else "null" if annotations is None else f"a JSON {type(annotations).__name__}")
        raise StageError(f"{path}: 'annotations' is {found}, expected a list of caption "
                         f"annotations; is this a COCO captions file?")
    first: dict[int, tuple[int | float, int, str]] = {}
    for position, entry in enumerate(annotations):
        entry = entry if isinstance(entry, dict) else {}
        image_id, caption, ann_id = entry.get("image_id"), entry.get("caption"), entry.get("id")
        problem = ("an 'image_id' that is not an integer" if not _is_integer(image_id) else
                   "a 'caption' that is not a non-empty string"
                   if not isinstance(caption, str) or not caption.strip() else
                   "an 'id' that is not an integer" if ann_id is not None and
                   not _is_integer(ann_id) else "")
        if problem:
            raise StageError(f"{path}: annotation {position} has {problem} ({entry or None!r:.120}"
                             f"); fix or remove it")
        order = (ann_id if ann_id is not None else float("inf"), position, caption.strip())
        if image_id not in first or order < first[image_id]:
            first[image_id] = order
    if not first:
        raise StageError(f"{path}: holds no captions")
    return {image_id: order[2] for image_id, order in first.items()}


def select_captions(first_captions: dict[int, str], wanted_ids: set[int] | None,
                    count: int) -> CaptionSet:
    """The first ``count`` image ids in ascending order (among ``wanted_ids`` when given)."""
    candidates = sorted(first_captions if wanted_ids is None else
                        set(first_captions) & wanted_ids)
    chosen = candidates[:count]
    return CaptionSet(np.array(chosen, dtype=np.int64), [first_captions[i] for i in chosen])
