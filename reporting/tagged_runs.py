"""Tagged runs in tables: a variant (``--tag``, outputs named ``<stem>@<tag>``) is its own row,
beside a note of the settings in which it differs from the untagged run of the same stem, so a
sweep reads as "what changed, what it did"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VARIANT_COLUMN = "settings unlike the untagged run"
# Settings that name or place a run rather than change what it computes.
NOT_COMPARED = frozenset({"tag", "data_dir", "device", "threads", "output_dir"})


def _shown(value: Any) -> str:
    if value == "":
        return '""'
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def settings_difference(settings: Mapping[str, Any], untagged: Mapping[str, Any] | None) -> str:
    """``"learning_rate 0.001 -> 0.003; epochs 10 -> 20"``: the settings of a tagged run that
    differ from the untagged run's (``untagged``), in the tagged run's order; "no untagged run"
    when there is none, "same settings" when nothing differs."""
    if untagged is None:
        return "no untagged run"
    changed = [f"{name} {_shown(untagged.get(name, '(unset)'))} -> {_shown(value)}"
               for name, value in settings.items()
               if name not in NOT_COMPARED and untagged.get(name) != value]
    changed += [f"{name} {_shown(value)} -> (unset)" for name, value in untagged.items()
                if name not in NOT_COMPARED and name not in settings]
    return "; ".join(changed) if changed else "same settings"


def variant_notes(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """For runs by name (each with its settings, whose ``tag`` says whether it is a variant),
    the note of each tagged run against the untagged run of its name (the name without
    ``@<tag>``, wherever the stage put it); "" for the untagged runs."""
    notes = {}
    for name, settings in runs.items():
        tag = str(settings.get("tag") or "")
        notes[name] = settings_difference(settings, runs.get(name.replace(f"@{tag}", "", 1))
                                          ) if tag else ""
    return notes
