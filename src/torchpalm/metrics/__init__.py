"""Metrics: classification, entity chunk F1, SQuAD and CMRC2018 EM/F1."""

from torchpalm.metrics.chunk import chunk_f1, get_entities, infer_scheme, palm_token_f1
from torchpalm.metrics.classification import accuracy, palm_classification_metrics, precision_recall_f1
from torchpalm.metrics.cmrc import (
    cmrc_em_f1,
    cmrc_exact_match,
    cmrc_f1,
    mixed_segmentation,
    remove_punctuation,
)
from torchpalm.metrics.squad import (
    load_squad_articles,
    normalize_answer,
    squad_em_f1,
    squad_exact_match,
    squad_f1,
)

__all__ = [
    "accuracy",
    "chunk_f1",
    "cmrc_em_f1",
    "cmrc_exact_match",
    "cmrc_f1",
    "get_entities",
    "infer_scheme",
    "load_squad_articles",
    "mixed_segmentation",
    "normalize_answer",
    "palm_classification_metrics",
    "palm_token_f1",
    "precision_recall_f1",
    "remove_punctuation",
    "squad_em_f1",
    "squad_exact_match",
    "squad_f1",
]
