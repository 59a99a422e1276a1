"""Readers: parse a data file once, then yield padded batches (dicts of tensors)."""

import importlib

from .base import DataError, Reader
from .classify import ClassifyReader

# Task readers in their own modules, imported on first use.
_LAZY = {
    "MatchReader": ".match",
    "SequenceLabelReader": ".sequence_label",
    "MRCReader": ".mrc",
    "MaskLMReader": ".mask_lm",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClassifyReader", "DataError", "Reader", *_LAZY]
