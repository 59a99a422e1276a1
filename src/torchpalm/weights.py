"""Reading weight files without running code: safetensors, `torch.load(weights_only=True)`, HF shard indexes.

The one place that opens a weights file, for checkpoints (`checkpoint.py`) and conversions (`convert/`) alike. A
file that is truncated, corrupt or holds pickled objects other than tensors is a ValueError naming it.
"""

from __future__ import annotations

import json
import os
import pickle

import torch
from safetensors.torch import load_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin", "model.pt")
# HF's sharded weights (save_pretrained(max_shard_size=...)): an index naming the shard of every tensor
SHARD_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def find_weights_file(path: str | os.PathLike) -> str:
    """The weights file of a model directory (or `path` itself if it is a file)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such model file or directory: {path}")
    for name in WEIGHT_FILES + SHARD_INDEX_FILES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    bins = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin")))
    if len(bins) == 1:
        return os.path.join(path, bins[0])
    raise FileNotFoundError(f"{path}: no weights file found (looked for {', '.join(WEIGHT_FILES)}, and for "
                            f"Paddle parameter files such as word_embedding here or in params/)")


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file` on CPU; a truncated or corrupt file is a ValueError naming it."""
    try:
        return load_file(path, device="cpu")
    except (OSError, MemoryError):
        raise
    except Exception as e:  # SafetensorError and the like: the bytes are not a whole safetensors file
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from None


def torch_load_safely(path: str):
    """`torch.load(weights_only=True)`: a file holding other pickled objects is refused (never run), and a
    truncated or corrupt one is a ValueError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message suggests weights_only=False, which would run the file's code: never do that
        first = next((line for line in str(e).splitlines() if "Unsupported" in line or "global" in line), "")
        raise ValueError(f"{path}: refused to load: the file holds pickled objects other than tensors, which "
                         f"could run code{f' ({first.strip()})' if first else ''}. Convert a model from elsewhere to "
                         f"safetensors; torchpalm's own files hold only tensors and numbers, so this one was "
                         f"altered") from None
    except (RuntimeError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0].split(". ")[0]  # torch's first sentence; the rest is generic advice
        raise ValueError(f"{path}: not a readable torch file, truncated or corrupt ({reason})") from None


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    """Loads a tensor dict from safetensors, or from a torch file without executing any pickled code, or from
    the shards an HF index file (`*.index.json`) names."""
    if path.endswith(".index.json"):
        return load_sharded(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    state = torch_load_safely(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_sharded(index_path: str) -> dict[str, torch.Tensor]:
    """Every tensor of an HF sharded checkpoint: the index's `weight_map` {tensor: shard file} names shards in
    the index's directory; each is read as a single weights file. A shard that is missing, names another
    directory, or lacks a tensor the index puts in it is an error naming the file."""
    with open(index_path, encoding="utf-8") as f:
        try:
            weight_map = json.load(f).get("weight_map")
        except (json.JSONDecodeError, AttributeError):
            weight_map = None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: not an HF shard index (expected a JSON object with a 'weight_map' of "
                         f"tensor -> shard file)")
    directory = os.path.dirname(index_path)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise ValueError(f"{index_path}: shard {shard!r} is not a file name in {directory or '.'}")
        shard_path = os.path.join(directory, shard)
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"{index_path}: shard {shard} is missing ({shard_path})")
        state.update(load_state_file(shard_path))
    missing = [name for name in weight_map if name not in state]
    if missing:
        raise ValueError(f"{index_path}: tensor {missing[0]!r} is not in its shard {weight_map[missing[0]]}"
                         f"{f'; {len(missing) - 1} more missing' if len(missing) > 1 else ''}")
    return state
