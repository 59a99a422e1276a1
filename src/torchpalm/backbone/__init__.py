"""Backbones: BERT, ERNIE, RoBERTa and DeBERTa-v2/v3 encoders (`nn.Module`s returning PALM's named outputs)."""

from .base import Backbone
from .bert import BERT
from .deberta import DeBERTaV2
from .ernie import ERNIE
from .roberta import RoBERTa

__all__ = ["BERT", "Backbone", "DeBERTaV2", "ERNIE", "RoBERTa"]
