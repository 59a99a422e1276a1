"""Tiny random ModernBERT models built by the tests with transformers' own classes and `save_pretrained`
(nothing downloaded). The vocabulary is BERT's WordPiece ids (`[PAD]` = 0), which the readers on hand yield."""

from __future__ import annotations

import os
import shutil

VOCAB_SIZE = 30522  # bert-base-uncased's vocab.txt


def modernbert_config(**overrides):
    """A 4-layer ModernBERT, global / local layers alternating, with an 8-token window (|i - j| <= 4), so the
    test sentences (up to ~40 tokens) are far longer than the window."""
    from transformers import ModernBertConfig

    settings = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                    num_attention_heads=2, local_attention=8, global_attn_every_n_layers=2, pad_token_id=0,
                    bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
                    max_position_embeddings=128, global_rope_theta=1000.0, local_rope_theta=50.0,
                    embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0)
    settings.update(overrides)
    return ModernBertConfig(**settings)


def make_hf_modernbert(model_dir: str | os.PathLike, model_class: str = "ModernBertForMaskedLM", seed: int = 0,
                       vocab: str | None = None, **overrides):
    """A random HF ModernBERT model (`model_class`) saved as a pretrained directory (with `vocab` copied in);
    returns the model. Biases and LayerNorms are random too, so a mis-mapped one shows, and the projections are
    drawn 10x wider than ModernBERT's initialisation: attention is then sharp and carries much of each output, so
    a wrong position, window or theta moves the outputs by far more than the tolerance (with the 0.02 init the
    attention is near uniform and a wrong rotary theta changed the outputs by less than 1e-4)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(modernbert_config(**overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0, 0.1).add_(1.0 if "norm.weight" in name else 0.0)
            elif p.dim() == 2 and "embeddings" not in name:
                p.normal_(0, 0.2)
    model.save_pretrained(model_dir)
    if vocab is not None:
        shutil.copy(vocab, os.path.join(model_dir, "vocab.txt"))
    return model.eval()
