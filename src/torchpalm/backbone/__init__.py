"""Backbones: BERT, ERNIE, RoBERTa, DeBERTa-v2/v3 and ModernBERT encoders (`nn.Module`s returning PALM's named
outputs)."""

from .base import Backbone
from .bert import BERT
from .deberta import DeBERTaV2
from .ernie import ERNIE
from .modernbert import ModernBERT
from .roberta import RoBERTa

__all__ = ["BERT", "Backbone", "DeBERTaV2", "ERNIE", "ModernBERT", "RoBERTa"]
