"""Task heads: plain `nn.Module`s from backbone outputs to predictions and a loss."""

import importlib

from .base import Head
from .classify import Classify

# Task heads in their own modules, imported on first use.
_LAZY = {
    "Match": ".match",
    "SequenceLabel": ".sequence_label",
    "MRC": ".mrc",
    "MaskLM": ".mask_lm",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Classify", "Head", *_LAZY]
