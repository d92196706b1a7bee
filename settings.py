"""Command-line overrides for the UPPER_CASE settings at the top of a stage script.

A script lists its settings as module constants with a one-line comment each, then calls
``configure(globals())``. ``BATCH_SIZE = 128  # images per step`` becomes ``--batch-size 128``;
``--help`` lists every setting with its comment and default.
"""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from pathlib import Path
from typing import Any

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _list_parser(example: list | tuple) -> Any:
    item_type = type(example[0]) if example else str

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            return tuple(item_type(p) for p in parts)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {item_type.__name__}, got {text!r}") from err

    return parse


def _declared_settings(source: str) -> list[tuple[str, str]]:
    """Names and comments of the module-level UPPER_CASE assignments, in source order."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    found = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            if isinstance(target, ast.Name) and target.id.isupper():
                found.append((target.id, comments.get(node.end_lineno or node.lineno, "")))
    return found


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def configure(namespace: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    """Override a script's UPPER_CASE settings from argv (default sys.argv) in place.

    Returns the settings as a JSON-friendly dict keyed by the lower-case names, for ``meta``.
    """
    source = Path(namespace["__file__"]).read_text(encoding="utf-8")
    doc = (namespace.get("__doc__") or "").strip()
    parser = argparse.ArgumentParser(
        prog=Path(namespace["__file__"]).name, description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    names = []
    for name, comment in _declared_settings(source):
        if name not in namespace:  # assigned later, e.g. SETTINGS = configure(globals())
            continue
        default = namespace[name]
        flag = "--" + name.lower().replace("_", "-")
        if isinstance(default, bool):
            kind = _parse_bool
        elif isinstance(default, list | tuple):
            kind = _list_parser(default)
        elif isinstance(default, int | float | str | Path):
            kind = type(default)
        else:
            continue
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        text = f"{comment} (default: {shown})".replace("%", "%%")
        parser.add_argument(flag, dest=name, type=kind, default=default, help=text,
                            metavar=type(default).__name__.upper() if not isinstance(
                                default, list | tuple) else "A,B")
        names.append(name)
    args = parser.parse_args(argv)
    for name in names:
        namespace[name] = getattr(args, name)
    return {name.lower(): _to_json(namespace[name]) for name in names}
