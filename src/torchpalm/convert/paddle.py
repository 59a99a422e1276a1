"""PaddlePALM / ERNIE Paddle 1.x parameter directories <-> torchpalm state dicts.

PaddlePALM's pretrained models (`<model>/params/`) and its checkpoints (`ckpt.step<N>/`) hold one file per
variable, named exactly like the variable (spec §7.5, §10.1, §10.3). Each file is a LoDTensor serialised by
Paddle (spec §10.4; little-endian):

    uint32 version (0) | uint64 lod_level, then per level: uint64 nbytes + that many bytes of offsets |
    uint32 tensor version (0) | int32 desc size + `TensorDesc` protobuf (1: data type, 2: dims) | raw data

The reader parses those bytes itself (no pickle, no Paddle), so reading a file cannot run code. Fully-connected
weights are stored [in, out] and transposed into `torch.nn.Linear`'s [out, in]; query/key/value are fused into
torchpalm's `qkv` (rows q, then k, then v) on the way in and split on the way out.

Public API:
    read_tensor(path) / write_tensor(path, tensor)            one variable file
    read_params(directory, names) / write_params(directory, state)   a directory of them
    paddle_to_torchpalm(paddle_state) / torchpalm_to_paddle(state)  the backbone name maps
    heads_to_torchpalm(paddle_state)                           PALM's head variables -> torchpalm heads
    load_paddle_model(directory, config=None)                  a checked, torchpalm-named state (`backbone.*`,
                                                               `<task>.*`) from a params or checkpoint directory
    convert_paddle_to_torchpalm(src, out_dir)                  a Paddle model folder -> torchpalm folder

(`convert_torchpalm_to_paddle`, a torchpalm or HF backbone -> a PALM model folder, is in to_paddle.py: it reads
its source with `hf.load_backbone_weights`, which reads Paddle folders with this module.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct

import numpy as np
import torch

from ..permissions import follow_umask

logger = logging.getLogger("torchpalm")

# Paddle's VarType.Type enum (framework.proto) for the tensor types a parameter file can hold.
PADDLE_DTYPES: dict[int, torch.dtype] = {
    0: torch.bool, 1: torch.int16, 2: torch.int32, 3: torch.int64, 4: torch.float16, 5: torch.float32,
    6: torch.float64, 20: torch.uint8, 21: torch.int8, 22: torch.bfloat16,
}
_TORCH_TO_PADDLE = {v: k for k, v in PADDLE_DTYPES.items()}
# numpy reads the raw bytes; bf16 has no numpy type, so it travels as uint16 and is reinterpreted by torch
_NUMPY = {torch.bool: "<u1", torch.int16: "<i2", torch.int32: "<i4", torch.int64: "<i8", torch.float16: "<f2",
          torch.float32: "<f4", torch.float64: "<f8", torch.uint8: "<u1", torch.int8: "<i1",
          torch.bfloat16: "<u2"}


class PaddleFormatError(ValueError):
    """A Paddle parameter file or directory that cannot be read as one (names the file and the problem)."""


# ---------------------------------------------------------------------------------------------- one file
def _varint(buf: bytes, pos: int, path: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise PaddleFormatError(f"{path}: corrupt TensorDesc (a number runs past its end)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise PaddleFormatError(f"{path}: corrupt TensorDesc (a number longer than 10 bytes)")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_desc(buf: bytes, path: str) -> tuple[int, list[int]]:
    """`TensorDesc { required Type data_type = 1; repeated int64 dims = 2; }`: dims packed or not."""
    pos, dtype, dims = 0, None, []
    while pos < len(buf):
        key, pos = _varint(buf, pos, path)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            dtype, pos = _varint(buf, pos, path)
        elif field == 2 and wire == 0:
            dim, pos = _varint(buf, pos, path)
            dims.append(_int64(dim))
        elif field == 2 and wire == 2:
            size, pos = _varint(buf, pos, path)
            end = pos + size
            if end > len(buf):
                raise PaddleFormatError(f"{path}: corrupt TensorDesc (packed dims run past its end)")
            while pos < end:
                dim, pos = _varint(buf, pos, path)
                dims.append(_int64(dim))
        else:
            raise PaddleFormatError(f"{path}: corrupt TensorDesc (unexpected field {field}, wire type {wire})")
    if dtype is None:
        raise PaddleFormatError(f"{path}: corrupt TensorDesc (no data type)")
    return dtype, dims


def _read_header(f, path: str, size: int) -> tuple[torch.dtype, list[int]]:
    """Reads up to the raw data of an open variable file: (dtype, dims); the LoD, if any, is skipped."""

    def take(n: int, what: str) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise PaddleFormatError(f"{path}: truncated file: it ends inside the {what} ({size} bytes in all); "
                                    f"not a Paddle parameter file, or cut short")
        return data

    (version,) = struct.unpack("<I", take(4, "header"))
    if version != 0:
        raise PaddleFormatError(f"{path}: not a Paddle parameter file (LoDTensor version {version}, expected 0)")
    (lod_level,) = struct.unpack("<Q", take(8, "header"))
    if lod_level > 64:
        raise PaddleFormatError(f"{path}: corrupt header (lod_level {lod_level})")
    for _ in range(lod_level):
        (nbytes,) = struct.unpack("<Q", take(8, "LoD"))
        if nbytes > size:
            raise PaddleFormatError(f"{path}: corrupt header (a LoD level of {nbytes} bytes in a {size}-byte file)")
        take(nbytes, "LoD")
    (tensor_version,) = struct.unpack("<I", take(4, "header"))
    if tensor_version != 0:
        raise PaddleFormatError(f"{path}: unsupported tensor version {tensor_version} (expected 0)")
    (desc_size,) = struct.unpack("<i", take(4, "header"))
    if not 0 <= desc_size <= size:
        raise PaddleFormatError(f"{path}: corrupt header (TensorDesc size {desc_size})")
    code, dims = _parse_desc(take(desc_size, "TensorDesc"), path)
    if code not in PADDLE_DTYPES:
        raise PaddleFormatError(f"{path}: unsupported Paddle data type {code} (known: {sorted(PADDLE_DTYPES)})")
    if any(d < 0 for d in dims):
        raise PaddleFormatError(f"{path}: corrupt TensorDesc (negative dimension in {dims})")
    return PADDLE_DTYPES[code], dims


def _read_checked_header(f, path: str) -> tuple[torch.dtype, list[int], int]:
    """`_read_header`, then the data size its shape implies checked against what the file holds, so a shape
    is never trusted beyond the file (a header declaring [2**62, 4] over no data): (dtype, dims, count)."""
    size = os.path.getsize(path)
    dtype, dims = _read_header(f, path, size)
    count = math.prod(dims)  # exact: numpy's int64 product wraps around (2**62 * 4 -> 0)
    needed, left = count * np.dtype(_NUMPY[dtype]).itemsize, size - f.tell()
    if left != needed:
        state = "truncated" if left < needed else "has trailing bytes"
        raise PaddleFormatError(f"{path}: {state}: its header declares a {dtype} tensor of shape {dims}, which "
                                f"needs {needed} data bytes, the file has {left}")
    return dtype, dims, count


def read_shape(path: str | os.PathLike) -> list[int]:
    """The shape recorded in a Paddle variable file's header, checked against the file's size (the data is
    not read)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _read_checked_header(f, path)[1]


def read_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Reads one Paddle 1.x variable file (a serialised LoDTensor; the LoD, if any, is skipped)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        dtype, dims, count = _read_checked_header(f, path)
        array = np.fromfile(f, dtype=_NUMPY[dtype], count=count)
    tensor = torch.from_numpy(array.reshape(dims))
    if dtype == torch.bfloat16:
        return tensor.view(torch.bfloat16)
    return tensor.to(torch.bool) if dtype == torch.bool else tensor


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def write_tensor(path: str | os.PathLike, tensor: torch.Tensor) -> None:
    """Writes a tensor as a Paddle 1.x variable file (what `fluid.io.save_persistables` writes per variable)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype not in _TORCH_TO_PADDLE:
        raise TypeError(f"{path}: dtype {tensor.dtype} has no Paddle counterpart")
    # proto2 `repeated int64` is written unpacked: one (field 2, varint) pair per dimension, as Paddle does
    desc = bytes([0x08]) + _encode_varint(_TORCH_TO_PADDLE[tensor.dtype])
    desc += b"".join(bytes([0x10]) + _encode_varint(d) for d in tensor.shape)
    if tensor.dtype == torch.bfloat16:
        data = tensor.view(torch.int16).numpy().astype("<i2").tobytes()
    else:
        data = tensor.numpy().astype(_NUMPY[tensor.dtype]).tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<IQI", 0, 0, 0))  # version, lod_level, tensor version
        f.write(struct.pack("<i", len(desc)) + desc)
        f.write(data)


# ---------------------------------------------------------------------------------------------- a directory
def read_params(directory: str | os.PathLike, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Reads the variable files `names` of a Paddle parameter directory (None: every file in it)."""
    directory = os.fspath(directory)
    if names is None:
        names = sorted(n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n))
                       and not n.startswith("."))
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise PaddleFormatError(f"{directory}: Paddle parameter {missing[0]!r} not found"
                                + (f" (nor {len(missing) - 1} more: {missing[1:4]})" if len(missing) > 1 else "")
                                + "; a parameter directory holds one file per variable, named like it")
    return {n: read_tensor(os.path.join(directory, n)) for n in names}


def write_params(directory: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Writes one Paddle variable file per entry of `state` (Paddle names) into `directory`."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    for name, tensor in state.items():
        if "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a valid Paddle variable file name")
        write_tensor(os.path.join(directory, name), tensor)


# ---------------------------------------------------------------------------------------------- name maps
# Paddle backbone name -> (torchpalm name, transpose): spec §7.5. {i} is the layer index.
_EMBEDDINGS = {
    "word_embedding": "word_embeddings.weight",
    "pos_embedding": "position_embeddings.weight",
    "sent_embedding": "token_type_embeddings.weight",
    "task_embedding": "task_embeddings.weight",  # ERNIE 2.0 with use_task_emb
    "pre_encoder_layer_norm_scale": "embed_norm.weight",
    "pre_encoder_layer_norm_bias": "embed_norm.bias",
}
_LINEARS = {"pooled_fc": "pooler"}
_LAYER_LINEARS = {"multi_head_att_output_fc": "attn_out", "ffn_fc_0": "ffn_in", "ffn_fc_1": "ffn_out"}
_LAYER_NORMS = {"post_att_layer_norm": "attn_norm", "post_ffn_layer_norm": "ffn_norm"}
_QKV = ("query", "key", "value")
OPTIONAL = ("task_embedding",)  # absent from ERNIE 1.0 and BERT files; ERNIE starts it at zero

# Head parameters: "<task>.<suffix>" (spec §8). Suffix -> (torchpalm name inside the head, transpose).
_HEAD = {
    "cls_out_w": ("classifier.weight", True),  # Classify, Match pointwise
    "cls_out_b": ("classifier.bias", False),
    "cls_out_w_pr": ("classifier.weight", True),  # Match pairwise
    "cls_out_b_pr": ("classifier.bias", False),
    "cls_squad_out_w": ("cls_squad_out.weight", True),  # MRC
    "cls_squad_out_b": ("cls_squad_out.bias", False),
    "mask_lm_trans_fc.w_0": ("transform.weight", True),  # MaskLM
    "mask_lm_trans_fc.b_0": ("transform.bias", False),
    "mask_lm_trans_layer_norm_scale": ("layer_norm.weight", False),
    "mask_lm_trans_layer_norm_bias": ("layer_norm.bias", False),
    "mask_lm_out_fc.b_0": ("output_bias", False),
}
_HEAD_NAME = re.compile(r"([^./]+)\.(cls_out_w|cls_out_b|cls_out_w_pr|cls_out_b_pr|cls_squad_out_w|cls_squad_out_b"
                        r"|mask_lm_trans_fc\.w_0|mask_lm_trans_fc\.b_0|mask_lm_trans_layer_norm_scale"
                        r"|mask_lm_trans_layer_norm_bias|mask_lm_out_fc\.b_0|fc_\d+\.w_0|crfw)")
_LAYER_NAME = re.compile(r"encoder_layer_(\d+)_")


def backbone_names(num_layers: int, task_embedding: bool = False) -> list[str]:
    """The Paddle variable names of a BERT/ERNIE backbone with `num_layers` layers (spec §7.5)."""
    names = [n for n in _EMBEDDINGS if n != "task_embedding" or task_embedding]
    names += [f"{p}.{s}" for p in _LINEARS for s in ("w_0", "b_0")]
    for i in range(num_layers):
        for p in (*(f"multi_head_att_{q}_fc" for q in _QKV), *_LAYER_LINEARS):
            names += [f"encoder_layer_{i}_{p}.w_0", f"encoder_layer_{i}_{p}.b_0"]
        names += [f"encoder_layer_{i}_{p}_{s}" for p in _LAYER_NORMS for s in ("scale", "bias")]
    return names


def paddle_to_torchpalm(paddle_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Converts Paddle BERT/ERNIE backbone variables (spec §7.5) to torchpalm backbone names.

    Fully-connected weights are transposed ([in, out] -> [out, in]); a layer's query/key/value become one `qkv`.
    Returns the converted dict and the Paddle names it did not use (heads, optimizer moments, ...).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str, transpose: bool = False) -> torch.Tensor:
        used.add(name)
        value = paddle_state[name]
        return value.t().contiguous() if transpose else value

    for theirs, ours in _EMBEDDINGS.items():
        if theirs in paddle_state:
            out[ours] = take(theirs)
    for theirs, ours in _LINEARS.items():
        if f"{theirs}.w_0" in paddle_state:
            out[f"{ours}.weight"] = take(f"{theirs}.w_0", transpose=True)
        if f"{theirs}.b_0" in paddle_state:
            out[f"{ours}.bias"] = take(f"{theirs}.b_0")
    layers = sorted({int(m.group(1)) for k in paddle_state if (m := _LAYER_NAME.match(k))})
    for i in layers:
        p = f"encoder_layer_{i}_"
        for theirs, ours in _LAYER_LINEARS.items():
            if f"{p}{theirs}.w_0" in paddle_state:
                out[f"layers.{i}.{ours}.weight"] = take(f"{p}{theirs}.w_0", transpose=True)
            if f"{p}{theirs}.b_0" in paddle_state:
                out[f"layers.{i}.{ours}.bias"] = take(f"{p}{theirs}.b_0")
        for theirs, ours in _LAYER_NORMS.items():
            for s, t in (("scale", "weight"), ("bias", "bias")):
                if f"{p}{theirs}_{s}" in paddle_state:
                    out[f"layers.{i}.{ours}.{t}"] = take(f"{p}{theirs}_{s}")
        qkv_w = [f"{p}multi_head_att_{q}_fc.w_0" for q in _QKV]
        qkv_b = [f"{p}multi_head_att_{q}_fc.b_0" for q in _QKV]
        if all(n in paddle_state for n in qkv_w):
            out[f"layers.{i}.qkv.weight"] = torch.cat([take(n, transpose=True) for n in qkv_w], dim=0)
        if all(n in paddle_state for n in qkv_b):
            out[f"layers.{i}.qkv.bias"] = torch.cat([take(n) for n in qkv_b], dim=0)
    return out, [k for k in paddle_state if k not in used]


def heads_to_torchpalm(paddle_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PaddlePALM head variables `<task>.<name>` (spec §8) as torchpalm head parameters `<task>.<name>`.

    Classify/Match `cls_out_w/_b` (and pairwise `_pr`) -> `classifier`; MRC `cls_squad_out_*` -> `cls_squad_out`;
    MaskLM `mask_lm_*` -> `transform`, `layer_norm`, `output_bias`; SequenceLabel (a task with `crfw`): the
    auto-named `fc_<k>.w_0` and `cls_out_b` -> `emission`, and `crfw` [C+2, C] (rows: start, end, then the C x C
    transitions from tag i to tag j) -> `crf.start_transitions`, `crf.end_transitions`, `crf.transitions`.
    """
    out: dict[str, torch.Tensor] = {}
    by_task: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in paddle_state.items():
        m = _HEAD_NAME.fullmatch(name)
        if m:
            by_task.setdefault(m.group(1), {})[m.group(2)] = value
    for task, params in by_task.items():
        tagging = "crfw" in params or any(re.fullmatch(r"fc_\d+\.w_0", k) for k in params)
        for suffix, value in params.items():
            if tagging and suffix == "crfw":
                out[f"{task}.crf.start_transitions"] = value[0]
                out[f"{task}.crf.end_transitions"] = value[1]
                out[f"{task}.crf.transitions"] = value[2:]
            elif tagging and suffix.startswith("fc_"):
                out[f"{task}.emission.weight"] = value.t().contiguous()
            elif tagging and suffix == "cls_out_b":
                out[f"{task}.emission.bias"] = value
            elif suffix in _HEAD:
                ours, transpose = _HEAD[suffix]
                out[f"{task}.{ours}"] = value.t().contiguous() if transpose else value
    return out


def torchpalm_to_paddle(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchpalm BERT/ERNIE backbone names -> Paddle names (spec §7.5): the inverse of `paddle_to_torchpalm`."""
    out: dict[str, torch.Tensor] = {}
    for theirs, ours in _EMBEDDINGS.items():
        if ours in state:
            out[theirs] = state[ours]
    for theirs, ours in _LINEARS.items():
        if f"{ours}.weight" in state:
            out[f"{theirs}.w_0"] = state[f"{ours}.weight"].t().contiguous()
            out[f"{theirs}.b_0"] = state[f"{ours}.bias"]
    for name, value in state.items():
        m = re.fullmatch(r"layers\.(\d+)\.(\w+)\.(weight|bias)", name)
        if not m:
            continue
        p, module, kind = f"encoder_layer_{m.group(1)}_", m.group(2), m.group(3)
        linears = {v: k for k, v in _LAYER_LINEARS.items()}
        norms = {v: k for k, v in _LAYER_NORMS.items()}
        if module == "qkv":
            for q, part in zip(_QKV, value.chunk(3, dim=0)):
                out[f"{p}multi_head_att_{q}_fc.{'w_0' if kind == 'weight' else 'b_0'}"] = (
                    part.t().contiguous() if kind == "weight" else part.contiguous())
        elif module in linears:
            out[f"{p}{linears[module]}.{'w_0' if kind == 'weight' else 'b_0'}"] = (
                value.t().contiguous() if kind == "weight" else value)
        elif module in norms:
            out[f"{p}{norms[module]}_{'scale' if kind == 'weight' else 'bias'}"] = value
    return out


# ---------------------------------------------------------------------------------------------- a model folder
def params_dir(path: str | os.PathLike) -> str | None:
    """The Paddle parameter directory at `path`, or in `path/params` (PALM's model root); None when neither."""
    path = os.fspath(path)
    for candidate in (path, os.path.join(path, "params")):
        if os.path.isfile(os.path.join(candidate, "word_embedding")):
            return candidate
    return None


def _expected_shapes(dims: dict, layers: int, task_embedding: bool) -> dict[str, tuple]:
    """Paddle name -> expected shape (None in a place: any size there)."""
    h, inter = dims["hidden"], dims["intermediate"]
    shapes: dict[str, tuple] = {
        "word_embedding": (dims["vocab"], h), "pos_embedding": (dims["positions"], h),
        "sent_embedding": (dims["types"], h), "pre_encoder_layer_norm_scale": (h,),
        "pre_encoder_layer_norm_bias": (h,), "pooled_fc.w_0": (h, h), "pooled_fc.b_0": (h,),
    }
    if task_embedding:
        shapes["task_embedding"] = (dims.get("tasks"), h)
    for i in range(layers):
        p = f"encoder_layer_{i}_"
        for q in (*_QKV, "output"):
            shapes[f"{p}multi_head_att_{q}_fc.w_0"] = (h, h)
            shapes[f"{p}multi_head_att_{q}_fc.b_0"] = (h,)
        shapes.update({f"{p}ffn_fc_0.w_0": (h, inter), f"{p}ffn_fc_0.b_0": (inter,),
                       f"{p}ffn_fc_1.w_0": (inter, h), f"{p}ffn_fc_1.b_0": (h,)})
        for n in _LAYER_NORMS:
            shapes[f"{p}{n}_scale"] = shapes[f"{p}{n}_bias"] = (h,)
    return shapes


def _dims_from_config(config: dict) -> dict:
    h = config["hidden_size"]
    return {"hidden": h, "intermediate": config.get("intermediate_size") or 4 * h, "vocab": config["vocab_size"],
            "positions": config["max_position_embeddings"],
            "types": config.get("sent_type_vocab_size", config.get("type_vocab_size")),
            "tasks": config.get("task_type_vocab_size")}


def _dims_from_files(directory: str) -> dict:
    """Sizes read off the headers of the files themselves, so the other files can be checked against them."""
    vocab, h = read_shape(os.path.join(directory, "word_embedding"))
    ffn_bias = os.path.join(directory, "encoder_layer_0_ffn_fc_0.b_0")
    inter = read_shape(ffn_bias)[0] if os.path.isfile(ffn_bias) else 4 * h
    return {"hidden": h, "intermediate": inter, "vocab": vocab, "positions": None, "types": None, "tasks": None}


def _matches(shape: tuple, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def load_paddle_model(path: str | os.PathLike, config: dict | None = None) -> dict[str, torch.Tensor]:
    """Reads a PaddlePALM/ERNIE parameter or checkpoint directory into torchpalm names.

    Args:
        path: `<model>/params`, the model root holding `params/`, or a PALM `ckpt.step<N>` directory.
        config: the backbone's config (hidden_size, num_hidden_layers, ...): the files' shapes are checked
            against it. Without it, the layer count and sizes come from the files and are checked for agreement.

    Returns:
        `backbone.<name>` for the backbone and `<task>.<name>` for heads found in a checkpoint. Optimizer
        moments and learning-rate counters of a checkpoint are not read; nor are the pretraining heads
        (`mask_lm_*`, `next_sent_*` without a task prefix) of a pretrained model.

    Raises:
        PaddleFormatError: a backbone variable is missing (its name and the directory), has the wrong shape
            (name, found and expected shape), or a file is not a readable Paddle tensor (the file).
    """
    directory = params_dir(path)
    if directory is None:
        raise PaddleFormatError(f"{os.fspath(path)}: no Paddle parameter files (no 'word_embedding' here or in "
                                f"params/)")
    files = {n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n))}
    found_layers = sorted({int(m.group(1)) for n in files if (m := _LAYER_NAME.match(n))})
    layers = config["num_hidden_layers"] if config else (max(found_layers) + 1 if found_layers else 0)
    # optional: ERNIE 1.0 and BERT have none, and ERNIE then starts its task table at zero (spec §17.7)
    task_embedding = "task_embedding" in files
    dims = _dims_from_config(config) if config else _dims_from_files(directory)
    expected = _expected_shapes(dims, layers, task_embedding)
    names = backbone_names(layers, task_embedding)
    missing = [n for n in names if n not in files]
    if missing:
        raise PaddleFormatError(
            f"{directory}: Paddle parameter {missing[0]!r} not found"
            + (f" (and {len(missing) - 1} more, e.g. {missing[1:4]})" if len(missing) > 1 else "")
            + f"; a {layers}-layer BERT/ERNIE needs these {len(names)} files, one per variable (spec §7.5)")
    extra = [i for i in found_layers if i >= layers]
    if extra:
        logger.info("%s: holds encoder layers up to %d; the config asks for %d, the rest are not loaded",
                    directory, max(extra), layers)
    for name in names:  # headers first: a wrong shape is reported before gigabytes are read
        shape = tuple(read_shape(os.path.join(directory, name)))
        if not _matches(shape, expected[name]):
            want = ["*" if e is None else e for e in expected[name]]
            hint = " (an [out, in] weight? Paddle stores fc weights [in, out])" if (
                len(shape) == 2 and _matches(shape[::-1], expected[name])) else ""
            raise PaddleFormatError(f"{os.path.join(directory, name)}: Paddle parameter {name!r} has shape "
                                    f"{list(shape)}, expected {want}{hint}")
    backbone, _ = paddle_to_torchpalm(read_params(directory, names))
    state = {f"backbone.{k}": v for k, v in backbone.items()}
    head_files = sorted(n for n in files if _HEAD_NAME.fullmatch(n))
    if head_files:
        state.update(heads_to_torchpalm(read_params(directory, head_files)))
    return state


def find_paddle_config(path: str | os.PathLike) -> str | None:
    """PALM's `ernie_config.json` / `bert_config.json` (or a config.json) next to or above a params folder."""
    path = os.path.abspath(os.fspath(path))
    for folder in (path, os.path.dirname(path)):
        for name in ("ernie_config.json", "bert_config.json", "config.json"):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def convert_paddle_to_torchpalm(src: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Converts a PaddlePALM/ERNIE model folder into a torchpalm model folder.

    `src` is `<model>/params`, `<model>` (holding params/, vocab.txt and ernie_config.json or bert_config.json,
    as PALM's downloader left it) or a PALM checkpoint `ckpt.step<N>`. `out_dir` gets model.safetensors
    (`backbone.<name>` and, from a checkpoint, `<task>.<name>` head tensors), config.json (PALM's config, with
    PALM's LayerNorm epsilon 1e-6 written out) and vocab.txt: what `load_pretrain` and `load_ckpt` read.
    Returns `out_dir`.
    """
    from safetensors.torch import save_file

    src, out_dir = os.fspath(src), os.fspath(out_dir)
    config_file = find_paddle_config(src)
    config = None
    if config_file is not None:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        config.setdefault("layer_norm_eps", 1e-6)
    state = load_paddle_model(src, config)
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, "model.safetensors"))
    follow_umask(os.path.join(out_dir, "model.safetensors"))  # save_file makes it 0600
    if config is not None:
        with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
    else:
        logger.warning("%s: no ernie_config.json/bert_config.json next to it; write %s/config.json yourself",
                       src, out_dir)
    root = os.path.dirname(params_dir(src) or src)
    for folder in (src, root):
        vocab = os.path.join(folder, "vocab.txt")
        if os.path.isfile(vocab):
            shutil.copyfile(vocab, os.path.join(out_dir, "vocab.txt"))
            break
    return out_dir
