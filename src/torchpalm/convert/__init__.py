"""Explicit name maps between torchpalm state dicts and other formats."""

from .hf import hf_to_torchpalm, torchpalm_to_hf

__all__ = ["hf_to_torchpalm", "torchpalm_to_hf"]
