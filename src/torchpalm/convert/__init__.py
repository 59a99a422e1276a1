"""Converters between torchpalm and other formats: explicit name maps and whole-directory conversions.

`palm.convert.from_hf(hf_dir, out_dir)` / `palm.convert.to_hf(src, out_dir)` convert HF BERT, RoBERTa and ERNIE
model directories (config.json + model.safetensors + tokenizer files) to torchpalm's and back;
`hf_to_torchpalm` / `torchpalm_to_hf` are the state-dict name maps underneath.
"""

from .hf import ConversionError, from_hf, hf_config, hf_to_torchpalm, model_type_of, to_hf, torchpalm_to_hf

__all__ = ["ConversionError", "from_hf", "hf_config", "hf_to_torchpalm", "model_type_of", "to_hf", "torchpalm_to_hf"]
