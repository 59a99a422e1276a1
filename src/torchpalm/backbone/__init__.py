"""Backbones: BERT, ERNIE and RoBERTa encoders (`nn.Module`s returning PALM's named outputs)."""

from .base import Backbone
from .bert import BERT
from .ernie import ERNIE
from .roberta import RoBERTa

__all__ = ["BERT", "Backbone", "ERNIE", "RoBERTa"]
