"""Explicit name maps between torchpalm state dicts and other formats (HF, PaddlePALM/ERNIE Paddle files)."""

from .hf import hf_to_torchpalm, torchpalm_to_hf
from .paddle import (
    PaddleFormatError,
    convert_paddle_to_torchpalm,
    convert_torchpalm_to_paddle,
    load_paddle_model,
    paddle_to_torchpalm,
    read_params,
    read_tensor,
    torchpalm_to_paddle,
    write_params,
    write_tensor,
)

__all__ = ["PaddleFormatError", "convert_paddle_to_torchpalm", "convert_torchpalm_to_paddle", "hf_to_torchpalm",
           "load_paddle_model", "paddle_to_torchpalm", "read_params", "read_tensor", "torchpalm_to_hf",
           "torchpalm_to_paddle", "write_params", "write_tensor"]
