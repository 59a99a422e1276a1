"""Backbones (`nn.Module`s returning PALM's named outputs): BERT, ERNIE, RoBERTa, DeBERTa-v2/v3 and ModernBERT
natively, and any other encoder transformers.AutoModel builds through HFEncoder."""

from .base import Backbone
from .bert import BERT
from .deberta import DeBERTaV2
from .ernie import ERNIE
from .hf_encoder import HFEncoder
from .modernbert import ModernBERT
from .roberta import RoBERTa

__all__ = ["BERT", "Backbone", "DeBERTaV2", "ERNIE", "HFEncoder", "ModernBERT", "RoBERTa"]
