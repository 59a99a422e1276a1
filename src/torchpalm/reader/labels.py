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
        label_map: a list of names (the index is the id), a dict name -> id, or the path of a label file: a JSON
            list or object, or one name per line (as datasets ship `labels.txt`; the id is the line number,
            from 0).
        what: what the names are called in messages ('label', 'tag').
    """
    if isinstance(label_map, str | os.PathLike):
        source = os.fspath(label_map)
        loaded = read_label_file(source, what)
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


def read_label_file(source: str, what: str = "label") -> list | dict:
    """A label file's content: a JSON list or object, or (a file that is not JSON, or whose name does not end in
    .json) the names one per line, blank lines at the end ignored."""
    formats = f"a label file holds a JSON list of {what}s or object {{{what}: id}}, or one {what} per line"
    if not os.path.isfile(source):
        raise FileNotFoundError(f"label map file not found: {source}")
    try:
        with open(source, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: not UTF-8 text (byte {e.start}); {formats}") from None
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as e:
        loaded, error = None, f"{source}:{e.lineno}: not valid JSON ({e.msg})"
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply to parse; a label map is a flat list or "
                         f"object") from None
    else:
        error = f"{source}: expected a JSON object {{{what}: id}} or a list of {what}s, got {type(loaded).__name__}"
    if isinstance(loaded, dict | list):
        return loaded
    if source.lower().endswith(".json") or text.lstrip()[:1] in ("[", "{"):  # meant as JSON
        raise ValueError(f"{error}; {formats}")
    names = text.splitlines()
    while names and not names[-1].strip():
        names.pop()
    for n, name in enumerate(names, 1):
        if not name.strip() or "\t" in name:
            raise ValueError(f"{source}:{n}: {'an empty line' if not name.strip() else 'a tab'} in a list of one "
                             f"{what} per line; {formats}")
    if not names:
        raise ValueError(f"{source}: the label file is empty; {formats}")
    return [name.strip() for name in names]


def preview(items: Sequence[str], n: int = 20) -> str:
    """At most `n` items for an error message, with the total count."""
    shown = ", ".join(repr(x) for x in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"
