"""Command-line overrides for the settings at the top of a stage script, validated up front.

A script's settings are the module-level UPPER_CASE constants of its settings block, the lines
between two marker comments::

    # ---------------------------------------------------------------- settings
    BATCH_SIZE = 128  # images per step [>= 2]
    # ---------------------------------------------------------------- end of settings

Each becomes a flag (``--batch-size 128``) and its same-line comment is its help text, so every
constant of the block must have one (a missing comment is an error, never a silently dropped
flag). Tables the script needs that are not settings live outside the block. A stage's
``main(argv)`` calls ``values = configure(globals(), argv)`` first and packs the values into
frozen dataclasses with ``pick``; nothing below ``main`` reads a module's settings, and the
constants are never rewritten.

A comment may end with a rule in square brackets, checked for the default and for any override
before the stage reads anything:
- comparisons ``>= 1``, ``> 0``, ``<= 1``, ``< 5``, combined with commas: ``[> 0, <= 1]``;
- ``[seed]``: a seed, 0 to 2**32 - 1;
- ``[tag]``: a run's tag, appended to its output names as ``@TAG``: letters, digits, ``.``,
  ``_`` and ``-``, at most 64, not starting with ``.`` or ``-`` (no path separator); the
  default ``""`` means untagged, and an empty ``--tag ""`` given on the command line is refused;
- choices ``[constant | one-cycle]``, or ``[in GAN_NAMES]`` for the items of a module-level
  sequence ``GAN_NAMES`` of the script, or ``[in dataio.data_sources.DATASETS]`` for one of a
  module; ``or folder:PATH`` after them also accepts any value ``folder:<something>``.
For a tuple setting the rule applies to every item; a tuple must not repeat an item unless its
rule says ``repeats`` (sizes per level: ``[>= 8, repeats]``), and must be non-empty unless it
says ``or empty`` (``[in FLOW_NAMES, or empty]``; ``--flows ""``).
Floats must be finite. A broken value stops the script with one line and exit code 2. A boolean
setting is a switch: ``--merge`` turns it on, ``--no-merge`` off (``--merge true|false`` also).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import io
import math
import operator
import re
import sys
import tokenize
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
RULE_AT_END = re.compile(r"\s*\[([^\[\]]*)\]\s*$")
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
COMPARISON = re.compile(r"^(>=|<=|>|<)\s*(\S+)$")
MAX_SEED = 2**32 - 1  # NumPy's global and legacy generators take no larger seed
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")  # a file-name part on every system


class SettingsError(Exception):
    """A setting whose value breaks its declared rule, or a rule that cannot be read."""


@dataclass
class Rule:
    """What a setting's values must satisfy: bounds and/or a list of choices."""

    text: str = ""
    bounds: list[tuple[str, float]] = field(default_factory=list)
    choices: tuple[str, ...] | None = None
    may_be_empty: bool = False
    may_repeat: bool = False
    is_tag: bool = False
    prefixes: tuple[str, ...] = ()  # ``or folder:PATH``: values starting so pass the choices

    def check(self, flag: str, value: Any) -> None:
        """Raise SettingsError unless ``value`` (one item) satisfies the rule."""
        if self.is_tag and value != "" and not TAG.fullmatch(str(value)):
            raise SettingsError(f"{flag} {value!r}: a tag is 1 to 64 letters, digits, '.', '_' "
                                f"or '-', not starting with '.' or '-' (it becomes part of file "
                                f"names)")
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{flag} {value}: must be a finite number")
        for symbol, bound in self.bounds:
            if not COMPARISONS[symbol](value, bound):
                raise SettingsError(f"{flag} {value}: must be {symbol} {_plain(bound)}")
        prefixed = any(str(value).startswith(p) and len(str(value)) > len(p)
                       for p in self.prefixes)
        if self.choices is not None and str(value) not in self.choices and not prefixed:
            extra = "".join(f", or {p}PATH" for p in self.prefixes)
            raise SettingsError(f"{flag} {value!s}: must be one of {', '.join(self.choices)}"
                                f"{extra}")

    def describe(self) -> str:
        parts = [f"{s} {_plain(b)}" for s, b in self.bounds]
        if self.choices is not None:
            parts.append("one of " + ", ".join(self.choices)
                         + "".join(f", or {p}PATH" for p in self.prefixes))
        if self.may_be_empty:
            parts.append("or empty")
        if self.is_tag:
            parts.append("letters, digits, . _ -")
        return "; ".join(parts)


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def parse_rule(text: str, name: str, namespace: dict[str, Any]) -> Rule:
    """Read a bracketed rule (without the brackets), resolving ``in NAME`` in ``namespace``."""
    rule = Rule(text=text)
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        comparison = COMPARISON.match(item)
        if comparison:
            try:
                rule.bounds.append((comparison.group(1), float(comparison.group(2))))
            except ValueError as err:
                raise SettingsError(f"{name}: cannot read the rule [{text}]") from err
        elif item == "or empty":
            rule.may_be_empty = True
        elif re.fullmatch(r"or [a-z]+:PATH", item):  # a value naming a path after a prefix
            rule.prefixes += (item[3:-4],)
        elif item == "repeats":  # a list of sizes (channels per level), not of names
            rule.may_repeat = True
        elif item == "tag":  # a part of file names: see TAG
            rule.is_tag = True
        elif item == "seed":  # what every random-number generator the stages use accepts
            rule.bounds += [(">=", 0.0), ("<=", float(MAX_SEED))]
        elif item.startswith("in "):
            table = _lookup(item[3:].strip(), namespace)
            if not isinstance(table, Sequence) or isinstance(table, str) or not table:
                raise SettingsError(f"{name}: rule [{text}] names no non-empty sequence")
            rule.choices = tuple(str(v) for v in table)
        elif "|" in item or re.fullmatch(r"[\w.+-]+", item):
            rule.choices = tuple(word.strip() for word in item.split("|"))
        else:
            raise SettingsError(f"{name}: cannot read the rule [{text}]")
    return rule


def _lookup(name: str, namespace: dict[str, Any]) -> Any:
    """``NAME`` in the script's namespace, or ``module.NAME`` in an importable module."""
    module, _, attribute = name.rpartition(".")
    if not module:
        return namespace.get(name)
    try:
        return getattr(importlib.import_module(module), attribute, None)
    except ImportError:
        return None


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
        if not text.strip():
            return ()
        parts = [p.strip() for p in text.split(",")]
        if "" in parts:
            raise argparse.ArgumentTypeError(f"an empty item in {text!r} (two commas, or one at "
                                             f"an end)")
        try:
            return tuple(item_type(p) for p in parts)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {item_type.__name__}, got {text!r}") from err

    return parse


SETTINGS_START = "settings"
SETTINGS_END = "end of settings"


def _marker(comment: str) -> str:
    """A comment's text without its ``#`` and the dashes of a section line."""
    return comment.lstrip("#").strip().strip("-").strip()


def declared_settings(source: str) -> list[tuple[str, str]]:
    """Names and comments of the UPPER_CASE constants in a script's settings block, in order.

    Raises SettingsError when the block's two marker lines are missing or out of order, or when
    a constant of the block has no same-line comment."""
    comments: dict[int, str] = {}
    markers: dict[str, list[int]] = {SETTINGS_START: [], SETTINGS_END: []}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if tok.start[1] == 0 and _marker(tok.string) in markers:
                markers[_marker(tok.string)].append(tok.start[0])
    starts, ends = markers[SETTINGS_START], markers[SETTINGS_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise SettingsError(f"the script needs one '# --- {SETTINGS_START}' line and one later "
                            f"'# --- {SETTINGS_END}' line around its settings (found "
                            f"{len(starts)} and {len(ends)})")
    found = []
    for node in ast.parse(source).body:
        if not starts[0] < node.lineno < ends[0]:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        line = node.end_lineno or node.lineno
        for target in targets:
            if isinstance(target, ast.Name) and target.id.isupper():
                if line not in comments:
                    raise SettingsError(f"{target.id} (line {node.lineno}) is in the settings "
                                        f"block without a comment: write its help text there, "
                                        f"or move it out of the block")
                found.append((target.id, comments[line]))
    return found


def check_value(flag: str, value: Any, rule: Rule) -> None:
    """Check one setting's value (a scalar, or every item of a tuple) against its rule."""
    if isinstance(value, tuple | list):
        if not value and not rule.may_be_empty:
            raise SettingsError(f"{flag}: the list is empty")
        repeated = sorted({str(v) for v in value if list(value).count(v) > 1})
        if repeated and not rule.may_repeat:
            raise SettingsError(f"{flag}: {', '.join(repeated)} listed more than once")
        for item in value:
            rule.check(flag, item)
    else:
        rule.check(flag, value)


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def configure(namespace: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    """Read a script's settings from argv (default sys.argv) and check them against their rules.

    Returns every setting's value keyed by its lower-case name (list settings as tuples); the
    script's constants are left as they are, so that ``main`` can be called again with other
    arguments. ``main`` packs the values into frozen dataclasses (``pick``) and passes them down.
    A value that breaks its rule ends the process with one ``error:`` line and exit code 2.
    """
    source = Path(namespace["__file__"]).read_text(encoding="utf-8")
    doc = (namespace.get("__doc__") or "").strip()
    parser = _OneLineParser(
        prog=Path(namespace["__file__"]).name, description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    rules: dict[str, tuple[str, Rule]] = {}
    try:
        for name, comment in declared_settings(source):
            default = namespace[name]
            flag = "--" + name.lower().replace("_", "-")
            if isinstance(default, bool):
                kind = _parse_bool
            elif isinstance(default, list | tuple):
                kind = _list_parser(default)
            elif isinstance(default, int | float | str | Path):
                kind = type(default)
            else:
                raise SettingsError(f"{name}: a setting is a bool, number, string, path or "
                                    f"list of them, not {type(default).__name__}")
            found = RULE_AT_END.search(comment)
            rule = parse_rule(found.group(1), name, namespace) if found else Rule()
            text = RULE_AT_END.sub("", comment)
            shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
            allowed = f"; {rule.describe()}" if rule.describe() else ""
            if kind is _parse_bool:  # a switch: --merge, --no-merge (or --merge true|false)
                negative = "--no-" + flag[2:]
                group = parser.add_mutually_exclusive_group()
                group.add_argument(flag, dest=name, type=kind, nargs="?", const=True,
                                   default=default, metavar="true|false",
                                   help=f"{text} (default: {'on' if default else 'off'})"
                                   .replace("%", "%%"))
                group.add_argument(negative, dest=name, action="store_false",
                                   help=f"turn {flag} off")
                rules[name] = (flag, rule)
                continue
            parser.add_argument(flag, dest=name, type=kind,
                                default=tuple(default) if isinstance(default, list) else default,
                                help=f"{text} (default: {shown}{allowed})".replace("%", "%%"),
                                metavar=type(default).__name__.upper() if not isinstance(
                                    default, list | tuple) else "A,B")
            rules[name] = (flag, rule)
        args = parser.parse_args(argv)
        given = sys.argv[1:] if argv is None else argv
        for name, (flag, rule) in rules.items():
            check_value(flag, getattr(args, name), rule)
            if rule.is_tag and getattr(args, name) == "" and (
                    flag in given or f"{flag}=" in given):
                raise SettingsError(f"{flag}: an empty tag; leave {flag} out for the untagged "
                                    f"run")
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return {name.lower(): getattr(args, name) for name in rules}


def check_input_tag(tag: str, input_tag: str) -> None:
    """A run reading tagged inputs (``--input-tag``) must tag its own outputs: untagged, they
    would take the place of the untagged chain's outputs."""
    if input_tag and not tag:
        raise SettingsError(f"--input-tag {input_tag} reads tagged inputs: name this run's "
                            f"outputs with a --tag too (e.g. --tag {input_tag})")


def pick(cls: type[T], values: Mapping[str, Any], **extra: Any) -> T:
    """An instance of the dataclass ``cls`` whose fields take the settings of the same name in
    ``values`` (what ``configure`` returned), and ``extra`` for fields that are not settings."""
    names = {f.name for f in dataclasses.fields(cls)}
    chosen = {k: v for k, v in values.items() if k in names}
    return cls(**{**chosen, **extra})


def as_record(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as JSON-friendly values (lists, strings) for ``meta``."""
    return {name: _to_json(value) for name, value in values.items()}
