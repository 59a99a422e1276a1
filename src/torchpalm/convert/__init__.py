"""Converters between torchpalm and other formats: explicit name maps and whole-directory conversions.

`palm.convert.from_hf(hf_dir, out_dir)` / `palm.convert.to_hf(src, out_dir)` convert HF BERT, RoBERTa and ERNIE
model directories (config.json + model.safetensors + tokenizer files) to torchpalm's and back;
`hf_to_torchpalm` / `torchpalm_to_hf` are the state-dict name maps underneath. `convert_paddle_to_torchpalm` /
`convert_torchpalm_to_paddle` do the same for PaddlePALM/ERNIE Paddle parameter folders (paddle.py, to_paddle.py).
"""

from .hf import ConversionError, from_hf, hf_config, hf_to_torchpalm, model_type_of, to_hf, torchpalm_to_hf
from .paddle import (
    PaddleFormatError,
    convert_paddle_to_torchpalm,
    load_paddle_model,
    paddle_to_torchpalm,
    read_params,
    read_tensor,
    torchpalm_to_paddle,
    write_params,
    write_tensor,
)
from .to_paddle import convert_torchpalm_to_paddle

__all__ = ["ConversionError", "PaddleFormatError", "convert_paddle_to_torchpalm", "convert_torchpalm_to_paddle",
           "from_hf", "hf_config", "hf_to_torchpalm", "load_paddle_model", "model_type_of", "paddle_to_torchpalm",
           "read_params", "read_tensor", "to_hf", "torchpalm_to_hf", "torchpalm_to_paddle", "write_params",
           "write_tensor"]
