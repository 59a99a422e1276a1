"""Tiny RoBERTa-style models built by the tests: a byte-level BPE trained on a few sentences and a random
`transformers.RobertaModel` saved with `save_pretrained` (nothing downloaded)."""

from __future__ import annotations

import os
import random

WORDS = ("the movie was good bad great terrible fine plot acting music story boring lovely it is not very "
         "really quite an a with and but of to film scenes actors director's ending don't won't").split()
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, RoBERTa's order


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def write_bpe_files(model_dir: str | os.PathLike, vocab_size: int = 400) -> str:
    """Trains a byte-level BPE (all 256 bytes + merges) and writes vocab.json and merges.txt into `model_dir`."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(sentences(300) + ["Hello, World! Ünïcödé ok?  Two  spaces."], vocab_size=vocab_size,
                            min_frequency=1, special_tokens=SPECIALS, show_progress=False)
    os.makedirs(model_dir, exist_ok=True)
    tok.save_model(str(model_dir))
    return str(model_dir)


def roberta_config(vocab_size: int, **overrides):
    from transformers import RobertaConfig

    settings = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=48, max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5,
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    settings.update(overrides)
    return RobertaConfig(**settings)


def make_hf_roberta(model_dir: str | os.PathLike, seed: int = 0, **overrides) -> str:
    """A random HF RobertaModel with its BPE tokenizer files, as `save_pretrained` writes it."""
    import json

    import torch
    from transformers import RobertaModel

    write_bpe_files(model_dir)
    with open(os.path.join(model_dir, "vocab.json"), encoding="utf-8") as f:
        vocab_size = len(json.load(f))
    torch.manual_seed(seed)
    model = RobertaModel(roberta_config(vocab_size, **overrides))
    with torch.no_grad():  # random (not zero) biases and LayerNorms, so a mis-mapped one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.normal_(0, 0.1).add_(1.0 if name.endswith("LayerNorm.weight") else 0.0)
    model.save_pretrained(model_dir)
    return str(model_dir)
