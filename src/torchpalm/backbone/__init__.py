"""Backbones: BERT and ERNIE encoders (`nn.Module`s returning PALM's named outputs)."""

from .base import Backbone
from .bert import BERT
from .ernie import ERNIE

__all__ = ["BERT", "Backbone", "ERNIE"]
