"""Label maps ({name: id}) read and validated, and the short lists error messages show."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence


def load_label_map(
    label_map: str | os.PathLike | Mapping[str, int] | Sequence[str], what: str = "label"
) -> tuple[dict[str, int], str]:
    """Reads and validates a `{name: id}` label map; returns (map, where it came from, for error messages).

    Args:
        label_map: a list of names (the index is the id), a dict name -> id, or the path to a JSON file holding
            either.
        what: what the names are called in messages ('label', 'tag').
    """
    if isinstance(label_map, str | os.PathLike):
        source = os.fspath(label_map)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"label map file not found: {source}")
        try:
            with open(source, encoding="utf-8") as f:
                loaded = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{e.lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise ValueError(f"{source}: JSON nested too deeply to parse; a label map is a flat list or "
                             f"object") from None
        if not isinstance(loaded, dict | list):
            raise ValueError(f"{source}: expected a JSON object {{{what}: id}} or a list of {what}s, got "
                             f"{type(loaded).__name__}")
    else:
        source, loaded = f"the {type(label_map).__name__} label map", label_map
    if isinstance(loaded, Mapping):
        mapping = dict(loaded)
    else:
        names = list(loaded)
        dup = sorted({n for n in names if names.count(n) > 1}, key=str)
        if dup:
            raise ValueError(f"{source}: {what}s {dup} appear more than once in the list")
        mapping = {n: i for i, n in enumerate(names)}
    if not mapping:
        raise ValueError(f"{source}: the label map is empty")
    for name, i in mapping.items():
        if not isinstance(name, str) or isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{source}: label map entries must be {what} -> non-negative integer id, got "
                             f"{name!r}: {i!r}")
    ids = list(mapping.values())
    if len(set(ids)) != len(ids):
        dup = sorted(i for i in set(ids) if ids.count(i) > 1)
        raise ValueError(f"{source}: ids {dup} are used by more than one {what}")
    return mapping, source


def preview(items: Sequence[str], n: int = 20) -> str:
    """At most `n` items for an error message, with the total count."""
    shown = ", ".join(repr(x) for x in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"
