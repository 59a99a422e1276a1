"""Training a classifier and a tagger on DeBERTa-v3 equals transformers' DebertaV2ForSequenceClassification /
DebertaV2ForTokenClassification step by step (24 steps, losses and final weights within 1e-4, fp32, dropout off).

The recipe is test_training_parity.py's (same optimizer groups, schedule and batches from torchpalm's reader);
the HF model is saved with `save_pretrained` and read back by `trainer.load_pretrain`, the head copied across.
HF's sequence classifier puts a ContextPooler (dense + gelu on the first token) under its classifier: the
backbone yields that as `sentence_embedding`, so `palm.head.Classify` on it is the same model.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import shared
from test_deberta_parity import BASE, V3
from test_training_parity import (
    BATCH,
    EPOCHS,
    _build,
    _conll_file,
    _copy_head,
    _hf_optimizer,
    _token_labels,
    _train_side_by_side,
)

import torchpalm as palm
from torchpalm.convert.deberta import deberta_torchpalm_to_hf

transformers = pytest.importorskip("transformers")
TOL = 1e-4
CONFIG = {**V3, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "pooler_dropout": 0.0}
assert BASE["vocab_size"] == 30522  # the WordPiece vocabulary's ids


def _start(tmp_path, hf_class, num_labels, seed, vocab):
    torch.manual_seed(seed)
    hf = hf_class(transformers.DebertaV2Config(**CONFIG, num_labels=num_labels))
    with torch.no_grad():  # random LayerNorms and biases: a misplaced one shows
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path / "hf_model"
    hf.save_pretrained(out, safe_serialization=True)
    shutil.copy(vocab, out / "vocab.txt")
    return hf, str(out)


def _assert_same_training(ours, theirs, trainer, hf, head_pairs):
    assert len(ours) == len(theirs) >= 20
    diffs = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    assert max(diffs) <= TOL, f"per-step loss differences: {diffs}"
    hf_state = dict(hf.named_parameters())
    expected = deberta_torchpalm_to_hf(dict(trainer.model.backbone.named_parameters()), "deberta.")
    expected = {n: p for n, p in expected.items() if n in hf_state}  # the token classifier has no pooler
    expected.update({hf_name: trainer.model.heads[trainer.name].get_parameter(ours_name)
                     for ours_name, hf_name in head_pairs})
    assert set(expected) == set(hf_state)  # every weight compared
    worst = max(((expected[n] - hf_state[n]).abs().max().item(), n) for n in expected)
    assert worst[0] <= TOL, worst
    moved = max((hf_state[n] - hf.initial_state[n]).abs().max().item() for n in expected)
    assert moved > 30 * TOL  # the steps really moved the weights


def _inputs(batch):
    return {"input_ids": batch["token_ids"], "attention_mask": batch["input_mask"]}


def test_classify_trains_like_deberta_v2_for_sequence_classification(tmp_path, uncased_vocab):
    hf, hf_dir = _start(tmp_path, transformers.DebertaV2ForSequenceClassification, 2, 0, uncased_vocab)
    data = tmp_path / "sst2.tsv"
    data.write_text("".join(open(shared("sst2", "train.tsv"), encoding="utf-8").readlines()[:97]), encoding="utf-8")
    reader = palm.reader.ClassifyReader(uncased_vocab, 64, do_lower_case=True, seed=3)
    reader.load_data(str(data), BATCH, num_epochs=EPOCHS)
    head = palm.head.Classify(2, CONFIG["hidden_size"])
    pairs = [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    _copy_head(head, hf, pairs)
    trainer, batches = _build("sst2", reader, head, hf_dir, 96 // BATCH * EPOCHS, True,
                              palm.backbone.DeBERTaV2.from_config(f"{hf_dir}/config.json"))
    assert any(not bool(b["input_mask"].all()) for b in batches)  # padded batches (the backbone packs them)
    opt, sched = _hf_optimizer(hf, len(batches), True)
    ours, theirs = _train_side_by_side(trainer, batches, hf,
                                       lambda b: hf(**_inputs(b), labels=b["label_ids"]).loss, opt, sched)
    _assert_same_training(ours, theirs, trainer, hf, pairs)


def test_sequence_label_trains_like_deberta_v2_for_token_classification(tmp_path, uncased_vocab):
    path, label_map = _conll_file(tmp_path, 96)
    hf, hf_dir = _start(tmp_path, transformers.DebertaV2ForTokenClassification, len(label_map), 2, uncased_vocab)
    reader = palm.reader.SequenceLabelReader(uncased_vocab, 24, label_map, do_lower_case=True, seed=5)
    reader.load_data(path, BATCH, num_epochs=EPOCHS)
    head = palm.head.SequenceLabel(len(label_map), CONFIG["hidden_size"], use_crf=False)
    pairs = [("emission.weight", "classifier.weight"), ("emission.bias", "classifier.bias")]
    _copy_head(head, hf, pairs)
    trainer, batches = _build("conll", reader, head, hf_dir, 96 // BATCH * EPOCHS, True,
                              palm.backbone.DeBERTaV2.from_config(f"{hf_dir}/config.json"))
    opt, sched = _hf_optimizer(hf, len(batches), True)
    ours, theirs = _train_side_by_side(trainer, batches, hf,
                                       lambda b: hf(**_inputs(b), labels=_token_labels(b)).loss, opt, sched)
    _assert_same_training(ours, theirs, trainer, hf, pairs)
