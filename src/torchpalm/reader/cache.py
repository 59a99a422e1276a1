"""The encoded-data cache: a reader's encoded examples saved once, reloaded instead of tokenizing again.

An entry is keyed by the SHA-256 of the data file's bytes and of everything else that decides the encoding (the
vocabulary file's bytes, `max_len`, `do_lower_case`, `lang`, the phase, the label map, the file format and
columns, the reader class and its encoding version): change any of them and the key, hence the file name,
changes, so a stale entry is never read. Entries are plain numpy arrays in one `.npz` file, read with
`allow_pickle=False` (loading a cache file never runs code), and written to a temporary file that is then
renamed over the final name, so a killed run or a concurrent one never leaves a half-written entry.

Where: `$TORCHPALM_CACHE` if set (a directory, or `off` / `0` / `false` / `no` to switch caching off), else
`$XDG_CACHE_HOME/torchpalm/encoded` (by default `~/.cache/torchpalm/encoded`); a reader's `set_cache_dir()`
overrides both. Old entries are never deleted automatically: removing the directory is always safe.

The stored examples are a list of dicts whose values are integers or 1-D numpy arrays, kept as columns (one
array per field, values and offsets for the arrays); an example list with anything else (strings, nested
objects) is simply not cached. A reload returns an `EncodedExamples` sequence over those columns, which builds
each example dict when it is asked for, so reloading costs no per-example work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from ..permissions import follow_umask

logger = logging.getLogger("torchpalm")

# Bump when the file layout below changes; a reader bumps its own `_cache_version` when its encoding changes.
CACHE_FORMAT = 1
OFF_VALUES = ("off", "0", "false", "no", "none")


def default_cache_dir() -> str | None:
    """The cache directory from the environment (see the module docstring); None when caching is off."""
    env = os.environ.get("TORCHPALM_CACHE")
    if env is not None:
        return None if env.strip().lower() in OFF_VALUES or not env.strip() else os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "torchpalm", "encoded")


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(data_digest: str, options: Mapping) -> str:
    """The key of an entry: a hash of the data file's digest and the encoding options (JSON-serialisable)."""
    blob = json.dumps({"format": CACHE_FORMAT, "data": data_digest, "options": options}, sort_keys=True,
                      ensure_ascii=True, default=_not_serialisable)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def _not_serialisable(value):
    raise TypeError(f"encoding option {value!r} ({type(value).__name__}) cannot be part of a cache key")


def entry_path(cache_dir: str, reader_name: str, data_path: str, key: str) -> str:
    """`<cache_dir>/<Reader>-<data file name>-<key>.npz` (the names only help a person browsing the cache)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(data_path))[:60]
    return os.path.join(cache_dir, f"{reader_name}-{stem}-{key[:40]}.npz")


def to_columns(examples: list[dict]) -> dict[str, np.ndarray] | None:
    """Example dicts -> flat arrays: an int64 column per integer field, values + offsets per array field, and a
    presence mask for a field some examples lack. None if a value is neither an integer nor a 1-D array."""
    names = list(dict.fromkeys(k for ex in examples for k in ex))
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        values = [ex.get(name) for ex in examples]
        present = np.array([v is not None for v in values])
        kept = [v for v in values if v is not None]
        if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in kept):
            arrays[f"{name}.int"] = np.array(kept, dtype=np.int64)
        elif all(isinstance(v, np.ndarray) and v.ndim == 1 for v in kept) and len({v.dtype for v in kept}) == 1:
            lengths = np.array([len(v) for v in kept], dtype=np.int64)
            arrays[f"{name}.offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            arrays[f"{name}.values"] = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        else:
            return None
        if not present.all():
            arrays[f"{name}.present"] = present
    return arrays


class EncodedExamples(Sequence):
    """Examples kept as the cache's columns; `examples[i]` builds example i's dict (integers as Python ints,
    arrays as views of one buffer), so a reload does no per-example work. The columns are checked when the
    entry is opened, so a damaged entry fails there, not in the middle of training."""

    def __init__(self, arrays: Mapping[str, np.ndarray], n: int):
        self._n = n
        self._columns: list[tuple] = []  # (name, ints or None, values, offsets, rank of each row or None)
        for name in dict.fromkeys(k.rsplit(".", 1)[0] for k in arrays):
            present = arrays.get(f"{name}.present")
            if present is not None and (present.dtype != bool or present.shape != (n,)):
                raise ValueError(f"column {name!r}: presence mask of shape {present.shape}, expected ({n},)")
            count = int(present.sum()) if present is not None else n
            rank = (np.cumsum(present) - 1).tolist() if present is not None else None
            if f"{name}.int" in arrays:
                ints = arrays[f"{name}.int"]
                if ints.shape != (count,):
                    raise ValueError(f"column {name!r} has {len(ints)} values for {count} examples")
                self._columns.append((name, ints.tolist(), None, None, rank))
            else:
                values, offsets = arrays[f"{name}.values"], arrays[f"{name}.offsets"]
                if (values.ndim != 1 or offsets.shape != (count + 1,) or offsets[0] != 0
                        or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0)):
                    raise ValueError(f"column {name!r}: offsets do not cut {len(values)} values into {count} rows")
                self._columns.append((name, None, values, offsets.tolist(), rank))
        self._present = {name: arrays[f"{name}.present"].tolist() for name, *_, rank in self._columns
                         if rank is not None}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"example {i} out of range ({self._n} examples)")
        example = {}
        for name, ints, values, offsets, rank in self._columns:
            if rank is not None:
                if not self._present[name][i]:
                    continue
                k = rank[i]
            else:
                k = i
            example[name] = ints[k] if ints is not None else values[offsets[k]:offsets[k + 1]]
        return example

    def __iter__(self):
        return (self[i] for i in range(self._n))


def from_columns(arrays: Mapping[str, np.ndarray], n: int) -> EncodedExamples:
    """The inverse of `to_columns`, as a sequence of example dicts (see `EncodedExamples`)."""
    return EncodedExamples(arrays, n)


def save_entry(path: str, key: str, examples: list[dict]) -> bool:
    """Writes `examples` under `key` atomically; False (nothing written) when they cannot be stored."""
    arrays = to_columns(examples)
    if arrays is None:
        return False
    header = json.dumps({"format": CACHE_FORMAT, "key": key, "examples": len(examples)}).encode("ascii")
    arrays["__header__"] = np.frombuffer(header, dtype=np.uint8)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(tmp)  # mkstemp makes it 0600; a shared cache folder serves other users too
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def load_entry(path: str, key: str) -> EncodedExamples | None:
    """The examples stored under `key` at `path`; None when there is no such entry or it is unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        header = json.loads(arrays.pop("__header__").tobytes().decode("ascii"))
        if header.get("format") != CACHE_FORMAT or header.get("key") != key:
            logger.warning("encoded-data cache %s belongs to another key or format; encoding again", path)
            return None
        return from_columns(arrays, int(header["examples"]))
    except Exception as e:  # a damaged entry costs one re-encode, never a failed run
        logger.warning("encoded-data cache %s is unreadable (%s: %s); encoding again", path, type(e).__name__, e)
        return None
