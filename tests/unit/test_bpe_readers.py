"""RoBERTa's byte-level BPE in the readers: ids equal transformers' RobertaTokenizer, `<s> a </s></s> b </s>`
pairs, word labels on each word's first sub-token, and clear errors."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from conftest import SHARED_DATA
from roberta_fixtures import sentences, write_bpe_files

import torchpalm as palm
from torchpalm.tokenizer import ByteLevelBPETokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

TRICKY = ["Hello, World! Ünïcödé ok?  Two  spaces.", " leading space", "tabs\tand\nnewlines", "don't won't 😀",
          "special <mask> in </s> text", ""]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> str:
    return write_bpe_files(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def hf_tokenizer(bpe_dir):
    return transformers.RobertaTokenizer.from_pretrained(bpe_dir)


def test_ids_match_transformers_from_vocab_merges_and_from_tokenizer_json(bpe_dir, hf_tokenizer, tmp_path):
    texts = sentences(40, seed=1) + TRICKY
    expected = [hf_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ours = load_tokenizer("bpe", bpe_dir)
    assert ours.encode_batch(texts) == expected
    assert [ours.encode(t) for t in texts] == expected
    assert ours.tokenize("it is good") == hf_tokenizer.tokenize("it is good") == ["it", "Ġis", "Ġgood"]
    assert (ours.cls_id, ours.pad_id, ours.sep_id, ours.unk_id, ours.mask_id) == (0, 1, 2, 3, 4)
    # a tokenizer.json (what HF's save_pretrained writes) gives the same ids
    hf_tokenizer.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "tokenizer.json")
    assert load_tokenizer("bpe", tmp_path).encode_batch(texts) == expected
    assert load_tokenizer("bpe", tmp_path / "tokenizer.json").encode_batch(texts) == expected
    # ... and so does the vocab.json path itself
    assert ByteLevelBPETokenizer(os.path.join(bpe_dir, "vocab.json")).encode_batch(texts) == expected


def write_table(path, header, rows) -> str:
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]) + "\n", encoding="utf-8")
    return str(path)


def test_classify_and_match_readers_build_roberta_pairs(bpe_dir, hf_tokenizer, tmp_path):
    texts = sentences(12, seed=2)
    pairs = list(zip(texts[::2], texts[1::2]))
    path = write_table(tmp_path / "pairs.tsv", ["label", "text_a", "text_b"], [["1", a, b] for a, b in pairs])
    backbone = palm.backbone.RoBERTa(32, 1, 2, 400, 66, 1, "gelu", 0.1, 0.1, 0.02)
    for reader in (palm.reader.ClassifyReader(bpe_dir, 64, tokenizer="bpe", phase="predict"),
                   palm.reader.MatchReader(bpe_dir, 64, tokenizer="bpe", phase="predict")):
        reader.load_data(path, batch_size=len(pairs))
        reader.register_with(backbone)
        batch = next(iter(reader))
        expected = hf_tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
        assert torch.equal(batch["token_ids"], expected["input_ids"])  # <s> a </s></s> b </s>, padded with <pad>
        assert torch.equal(batch["input_mask"], expected["attention_mask"])
        assert set(batch) >= {"token_ids", "input_mask"}
    # single texts, and truncation keeps the template inside max_len
    path = write_table(tmp_path / "single.tsv", ["label", "text_a"], [["0", t] for t in texts])
    reader = palm.reader.ClassifyReader(bpe_dir, 64, tokenizer="bpe", phase="predict")
    reader.load_data(path, batch_size=len(texts))
    expected = hf_tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(next(iter(reader))["token_ids"], expected)
    reader = palm.reader.ClassifyReader(bpe_dir, 8, tokenizer="bpe", phase="predict")
    reader.load_data(write_table(tmp_path / "p2.tsv", ["label", "text_a", "text_b"], [["0", texts[0], texts[1]]]), 1)
    ids = next(iter(reader))["token_ids"][0].tolist()
    assert len(ids) == 8 and ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3


def test_roberta_backbone_asks_for_no_segments_or_positions(bpe_dir, tmp_path):
    backbone = palm.backbone.RoBERTa(32, 1, 2, 400, 66, 1, "gelu", 0.1, 0.1, 0.02)
    assert set(backbone.inputs_attr) == {"token_ids", "input_mask"}
    pairwise = palm.backbone.RoBERTa(32, 1, 2, 400, 66, 1, "gelu", 0.1, 0.1, 0.02, is_pairwise=True)
    assert set(pairwise.inputs_attr) == {"token_ids", "input_mask", "token_ids_neg", "input_mask_neg"}
    too_long = {"token_ids": torch.full((1, 65), 5), "input_mask": torch.ones(1, 65, dtype=torch.long)}
    with pytest.raises(ValueError, match="at most 64 tokens"):
        backbone(too_long)


def test_sequence_label_reader_labels_each_words_first_bpe_piece(bpe_dir, hf_tokenizer, tmp_path):
    sents = [["Hello", "world", "don't", "go"], ["it", "is", "Ünïcödé"], ["great"]]
    tags = [["B", "I", "O", "O"], ["O", "O", "B"], ["B"]]
    path = tmp_path / "tags.tsv"
    path.write_text("text_a\tlabel\n" + "".join("\x02".join(w) + "\t" + "\x02".join(t) + "\n"
                                                for w, t in zip(sents, tags)), encoding="utf-8")
    reader = palm.reader.SequenceLabelReader(bpe_dir, 64, ["B", "I", "O"], tokenizer="bpe", seed=0)
    reader.load_data(str(path), batch_size=3, shuffle_train=False)
    batch = next(iter(reader))
    for i, words in enumerate(sents):
        # independent reference: HF on the sentence as running text, words located by character offsets
        text = " ".join(words)
        enc = hf_tokenizer(text, return_offsets_mapping=True)
        n = len(enc["input_ids"])
        assert batch["token_ids"][i, :n].tolist() == enc["input_ids"]
        word_chars = [sum(len(w) + 1 for w in words[:k]) for k in range(len(words))]
        # the first token after <s> that starts at or after the word (a lone "Ġ" piece counts: (c, c))
        starts = [next(p for p, (a, _) in enumerate(enc["offset_mapping"]) if p > 0 and a >= c) for c in word_chars]
        assert batch["word_starts"][i, :len(words)].tolist() == starts
        assert batch["label_ids"][i, :len(words)].tolist() == [["B", "I", "O"].index(t) for t in tags[i]]
        pieces = reader.tokenizer.convert_ids_to_tokens(batch["token_ids"][i, starts].tolist())
        assert not pieces[0].startswith("Ġ") and all(p.startswith("Ġ") for p in pieces[1:]), pieces


def test_bad_tokenizer_files_and_unsupported_readers_are_clear_errors(bpe_dir, tmp_path):
    with pytest.raises(ValueError, match=r"ClassifyReader takes tokenizer= one of \['wordpiece', 'bpe', 'auto'\]"):
        palm.reader.ClassifyReader(bpe_dir, 16, tokenizer="sentencepiece")
    with pytest.raises(ValueError, match="max_len .5. leaves no room .* and 4 special tokens"):
        palm.reader.MRCReader(bpe_dir, 5, 1, 32, tokenizer="bpe")  # <s> q </s></s> _ </s>
    (tmp_path / "only_vocab").mkdir()
    vocab = json.load(open(os.path.join(bpe_dir, "vocab.json"), encoding="utf-8"))
    (tmp_path / "only_vocab" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"only_vocab/merges\.txt"):
        palm.reader.ClassifyReader(str(tmp_path / "only_vocab"), 16, tokenizer="bpe")
    del vocab["<mask>"]
    (tmp_path / "only_vocab" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "only_vocab" / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json: the vocabulary lacks RoBERTa's special tokens \['<mask>'\]"):
        load_tokenizer("bpe", tmp_path / "only_vocab")
    # fastNLP's tiny RoBERTa fixture has a merge whose result is not in its vocabulary (HF refuses it too)
    small = SHARED_DATA / "tiny_random_fixtures" / "small_roberta"
    if small.is_dir():
        with pytest.raises(ValueError, match="merges.txt: not a usable BPE vocabulary and merges pair"):
            load_tokenizer("bpe", small)


def test_mrc_reader_with_bpe_matches_transformers_layout_and_answer_positions(bpe_dir, hf_tokenizer, tmp_path):
    question = "which word is in the middle"
    paragraphs, answers = [], []
    for i, context in enumerate(sentences(8, seed=9) + ["Ünïcödé words,  spaced  out: it is great"]):
        words = list(re.finditer(r"\S+", context))
        middle = words[len(words) // 2]  # in the last context, the word after a double space
        answers.append(middle.group())
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": question, "answers": [
            {"text": middle.group(), "answer_start": middle.start()}]}]})
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8")
    reader = palm.reader.MRCReader(bpe_dir, 128, 32, 32, tokenizer="bpe", seed=0)
    reader.load_data(str(path), batch_size=4)
    assert len(reader.features) == len(paragraphs)  # one window each
    for f, ex, answer in zip(reader.features, reader.examples, answers, strict=True):
        enc = hf_tokenizer(question, ex.context)  # <s> q </s></s> context </s>
        assert f.token_ids.tolist() == enc["input_ids"]
        assert f.start_position == enc.char_to_token(ex.start_char, sequence_index=1)
        assert f.end_position == enc.char_to_token(ex.end_char - 1, sequence_index=1)
        # what the MRC head cuts out for a predicted (start, end): exactly the answer, no leading space
        lo, hi = f.token_offsets[f.start_position - f.doc_offset][0], f.token_offsets[f.end_position - f.doc_offset][1]
        assert ex.context[lo:hi] == answer

    # windows over a long context keep the layout and max_len
    long_context = " ".join(sentences(12, seed=10))
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": long_context, "qas": [
        {"id": "q", "question": question, "answers": [{"text": "x", "answer_start": 0}]}]}]}]}), encoding="utf-8")
    reader = palm.reader.MRCReader(bpe_dir, 48, 32, 8, tokenizer="bpe", phase="predict")
    reader.load_data(str(path), batch_size=4)
    q_ids = hf_tokenizer(question, add_special_tokens=False)["input_ids"]
    doc_ids = hf_tokenizer(long_context, add_special_tokens=False)["input_ids"]
    assert len(reader.features) > 2
    for f in reader.features:
        assert len(f.token_ids) <= 48 and f.doc_offset == len(q_ids) + 3
        window = doc_ids[f.doc_start:f.doc_start + f.num_doc_tokens]
        assert f.token_ids.tolist() == [0, *q_ids, 2, 2, *window, 2]
