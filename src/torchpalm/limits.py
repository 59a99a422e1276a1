"""Bounds on what a configuration file or a value can make torchpalm do: read YAML of bounded size, depth and
alias expansion, and show a value in a message without walking all of it.

YAML aliases let a file of a few hundred bytes stand for 10^9 values (nested `&a [*b, *b, ...]`); the parsed
object shares them, so parsing is cheap, but anything that walks the value (`repr` for an error message,
`json.dumps`, validation) takes hours and gigabytes. So the size a document would have with every alias
expanded is counted from the parser's event stream, which needs no recursion, before any object is built.
"""

from __future__ import annotations

import json
import reprlib
from typing import Any

import yaml

MAX_YAML_BYTES = 1 << 20  # a run config is a few kilobytes
MAX_YAML_DEPTH = 64  # nesting levels; a config is about five deep
MAX_YAML_NODES = 100_000  # scalars and collections once every alias is expanded

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "YAMLBoundError", "safe_yaml", "short_repr",
           "short_json"]


class YAMLBoundError(ValueError):
    """A YAML text beyond the size, depth or alias-expansion bounds; the message says which bound."""


def check_yaml_bounds(text: str) -> None:
    """Raises `YAMLBoundError` when `text` exceeds the bounds above; `yaml.YAMLError` when it is not YAML."""
    if len(text) > MAX_YAML_BYTES:
        raise YAMLBoundError(f"{len(text):,} characters, more than a configuration's limit of {MAX_YAML_BYTES:,}")
    anchored: dict[str, int] = {}  # anchor -> node count of what it names, expanded
    open_: list[list] = []  # [anchor, node count so far] of each collection being read
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_.append([event.anchor, 1])
            if len(open_) > MAX_YAML_DEPTH:
                raise YAMLBoundError(f"nested more than {MAX_YAML_DEPTH} levels deep (line "
                                     f"{event.start_mark.line + 1}); a configuration is a few levels deep")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, count = open_.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, count = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, count = None, anchored.get(event.anchor, 1)
        else:  # stream and document start / end
            continue
        if anchor is not None:
            anchored[anchor] = count
        if open_:
            open_[-1][1] += count
        else:
            total += count
        if (open_[-1][1] if open_ else total) > MAX_YAML_NODES:
            raise YAMLBoundError(f"more than {MAX_YAML_NODES:,} values once its aliases (*name) are expanded "
                                 f"(line {event.start_mark.line + 1}); refusing an alias bomb")


def safe_yaml(text: str) -> Any:
    """`yaml.safe_load(text)` after `check_yaml_bounds(text)`."""
    check_yaml_bounds(text)
    return yaml.safe_load(text)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 80, 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 5


def short_repr(value: Any, limit: int = 120) -> str:
    """`repr(value)` for a message, cut at about `limit` characters; looks at a few items of two levels."""
    shown = _REPR.repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def short_json(value: Any, limit: int = 120) -> str:
    """`json.dumps(value)` for a message, cut at about `limit` characters; encodes no more than it shows."""
    out, size = [], 0
    try:
        for chunk in json.JSONEncoder(default=short_repr).iterencode(value):  # lazy: stops when it is long enough
            out.append(chunk)
            size += len(chunk)
            if size > limit:
                return "".join(out)[:limit] + "..."
    except (RecursionError, ValueError):  # nested too deep, or a cycle
        return short_repr(value)
    return "".join(out)
