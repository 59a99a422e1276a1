"""From text to features on a ModernBERT with its own tokenizer: a byte-level BPE tokenizer.json in HF layout (as
ModernBERT ships, built here with the `tokenizers` library) in the same folder as a tiny random HF ModernBERT.
The readers' ids equal `transformers.AutoTokenizer`'s on SST-2 sentences, sentence pairs and CoNLL words, and
`palm.backbone.ModernBERT` on the readers' batches (packed, sequences far longer than the 8-token window) equals
`ModernBertModel` on AutoTokenizer's ids within 1e-4, as do the features the heads read (ModernBERT's
prediction head at every token, and on the pooled state)."""

from __future__ import annotations

import os

import pytest
import torch
from modernbert_fixtures import make_hf_modernbert
from tokenizer_fixtures import conll_sentences, make_bytelevel, sst2_sentences

import torchpalm as palm
from torchpalm.trainer import load_pretrained_backbone

transformers = pytest.importorskip("transformers")
TOL = 1e-4
MAX_LEN = 128


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """The tokenizer and the model in one folder, as a downloaded ModernBERT: the model's vocabulary is the
    tokenizer's, and its padding id the tokenizer's `<|padding|>` (not 0)."""
    folder = str(tmp_path_factory.mktemp("modernbert"))
    make_bytelevel(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    make_hf_modernbert(folder, vocab_size=len(tok), pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
                       sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                       classifier_pooling="mean", max_position_embeddings=MAX_LEN)
    return folder


@pytest.fixture(scope="module")
def hf(model_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.ModernBertForMaskedLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def ours(model_dir):
    backbone = palm.backbone.ModernBERT.from_config(os.path.join(model_dir, "config.json"), phase="predict")
    load_pretrained_backbone(backbone, model_dir)  # what trainer.load_pretrain(model_dir) does
    return backbone


def write_table(path, header, rows) -> str:
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]) + "\n", encoding="utf-8")
    return str(path)


def assert_features_equal_transformers(hf_model, ours, batch, expected_ids, expected_mask):
    """The reader's batch gave AutoTokenizer's ids, and our backbone on it gives HF's encoder output, the
    prediction head at every real token and the mean-pooled sentence feature."""
    n = expected_ids.shape[1]
    assert torch.equal(batch["token_ids"][:, :n], expected_ids)
    assert torch.equal(batch["input_mask"][:, :n], expected_mask)
    assert not batch["input_mask"][:, n:].any()  # (a reader may pad wider than the longest row)
    assert int(expected_mask.sum(1).max()) > 4 * hf_model.config.local_attention  # windows matter here
    with torch.no_grad():
        last = hf_model.model(input_ids=expected_ids, attention_mask=expected_mask).last_hidden_state
        weights = expected_mask.unsqueeze(-1).float()
        sentence = hf_model.head((last * weights).sum(1) / weights.sum(1))
        got = ours({"token_ids": batch["token_ids"], "input_mask": batch["input_mask"]})
    real = expected_mask.bool()
    assert (got["last_hidden_state"][:, :n][real] - last[real]).abs().max().item() <= TOL
    assert (got["encoder_outputs"][:, :n][real] - hf_model.head(last)[real]).abs().max().item() <= TOL
    assert (got["sentence_embedding"] - sentence).abs().max().item() <= TOL


def test_classify_reader_to_backbone_equals_autotokenizer_and_modernbertmodel(model_dir, hf, ours, tmp_path):
    tokenizer, hf_model = hf
    texts = sst2_sentences(48, start=50000)
    path = write_table(tmp_path / "single.tsv", ["label", "text_a"], [["0", t] for t in texts])
    reader = palm.reader.ClassifyReader(model_dir, MAX_LEN, phase="predict")  # the folder's tokenizer.json
    reader.register_with(ours)  # it yields what the backbone reads (and the backbone checks the vocabulary)
    reader.load_data(path, batch_size=len(texts))
    expected = tokenizer(texts, padding=True, return_tensors="pt")
    assert_features_equal_transformers(hf_model, ours, next(iter(reader)), expected["input_ids"],
                                       expected["attention_mask"])
    pairs = list(zip(texts[::2], texts[1::2]))
    path = write_table(tmp_path / "pairs.tsv", ["label", "text_a", "text_b"], [["1", a, b] for a, b in pairs])
    reader = palm.reader.ClassifyReader(model_dir, MAX_LEN, tokenizer="auto", phase="predict")
    reader.register_with(ours)
    reader.load_data(path, batch_size=len(pairs))
    expected = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    assert_features_equal_transformers(hf_model, ours, next(iter(reader)), expected["input_ids"],
                                       expected["attention_mask"])


def test_sequence_label_reader_to_backbone_equals_autotokenizer_and_modernbertmodel(model_dir, hf, ours,
                                                                                    tmp_path):
    tokenizer, hf_model = hf
    sentences = [s for s in conll_sentences(200, split="valid.txt") if len(s) >= 8][:40]
    tags = [["O" if i % 3 else "B-X" for i in range(len(s))] for s in sentences]
    path = tmp_path / "tags.tsv"
    path.write_text("text_a\tlabel\n" + "".join("\x02".join(w) + "\t" + "\x02".join(t) + "\n"
                                                for w, t in zip(sentences, tags)), encoding="utf-8")
    reader = palm.reader.SequenceLabelReader(model_dir, MAX_LEN, ["B-X", "O"], tokenizer="auto", phase="train",
                                             seed=0)
    reader.register_with(ours)
    reader.load_data(str(path), batch_size=len(sentences), shuffle_train=False)
    # a byte-level BPE without a prefix space: the words are the running text (see test_hf_tokenizer.py)
    expected = tokenizer([" ".join(words) for words in sentences], padding=True, return_tensors="pt")
    assert_features_equal_transformers(hf_model, ours, next(iter(reader)), expected["input_ids"],
                                       expected["attention_mask"])
