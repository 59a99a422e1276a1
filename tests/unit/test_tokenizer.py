"""Tokenizer: ids equal transformers' BertTokenizer on every line of SST-2 train and ChnSentiCorp train, and an
independent pure-Python port of PALM's FullTokenizer; PALM's pair layout and truncation rule."""

from __future__ import annotations

import itertools

import pytest
from conftest import shared
from reference_tokenizer import full_tokenize

from torchpalm.tokenizer import WordPieceTokenizer, build_inputs, load_vocab, truncate_pair


def _column(path, name: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        i = header.index(name)
        return [line.rstrip("\n").split("\t")[i] for line in f if line.strip()]


@pytest.mark.parametrize(
    "data, column, vocab",
    [(("sst2", "train.tsv"), "sentence", "bert-base-uncased-vocab.txt"),
     (("chnsenticorp", "train.tsv"), "text_a", "bert-base-chinese-vocab.txt")],
)
def test_ids_equal_transformers_bert_tokenizer_on_every_line(data, column, vocab):
    from transformers import BertTokenizer

    texts = _column(shared(*data), column)
    vocab_path = str(shared("vocab", vocab))
    ours = WordPieceTokenizer(vocab_path, do_lower_case=True).encode_batch(texts)
    hf = BertTokenizer(vocab_path, do_lower_case=True)(texts, add_special_tokens=False)["input_ids"]
    mismatches = [i for i, (a, b) in enumerate(zip(ours, hf)) if a != b]
    assert len(ours) == len(texts) > 9000
    assert not mismatches, f"{len(mismatches)} lines differ, first: {texts[mismatches[0]]!r}"


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_ids_equal_independent_palm_reference(do_lower_case):
    vocab_en = str(shared("vocab", "bert-base-uncased-vocab.txt"))
    vocab_zh = str(shared("vocab", "bert-base-chinese-vocab.txt"))
    cases = [
        (vocab_en, _column(shared("sst2", "train.tsv"), "sentence")[:3000]),
        (vocab_zh, _column(shared("chnsenticorp", "train.tsv"), "text_a")[:1500]),
        (vocab_en, ["Hello, [SEP] World! Ünïcode 中文 x-y", "naïve café\u00a0résumé\t(tab)", "a\u200bb\x00c\ufffdd",
                    "x" * 150, "don't stop-believing... 3.14!"]),
    ]
    for vocab_path, texts in cases:
        vocab = load_vocab(vocab_path)
        tok = WordPieceTokenizer(vocab_path, do_lower_case=do_lower_case)
        for text, ids in zip(texts, tok.encode_batch(texts)):
            assert ids == full_tokenize(text, vocab, do_lower_case), text


def test_spec_example_and_special_tokens(uncased_vocab):
    tok = WordPieceTokenizer(uncased_vocab, do_lower_case=True)
    assert tok.tokenize("Hello, [SEP] World! Ünïcode 中文 x-y") == [
        "hello", ",", "[SEP]", "world", "!", "unicode", "中", "文", "x", "-", "y"]


def test_vocab_with_explicit_ids(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\t0\n[CLS]\t5\n[SEP]\t6\n[MASK]\t7\n[UNK]\t1\nhello\t2\n##s\t3\n", encoding="utf-8")
    tok = WordPieceTokenizer(path)
    assert tok.encode("hellos") == [2, 3]
    assert (tok.cls_id, tok.sep_id, tok.pad_id) == (5, 6, 0)


def test_vocab_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_vocab(tmp_path / "nope.txt")
    (tmp_path / "v.txt").write_text("[PAD]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the special tokens.*\[CLS\]"):
        load_vocab(tmp_path / "v.txt")


def _truncate_by_loop(la: int, lb: int, budget: int) -> tuple[int, int]:
    while la + lb > budget:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def test_truncate_pair_matches_palm_loop():
    for la, lb, budget in itertools.product(range(12), range(12), range(15)):
        assert truncate_pair(la, lb, budget) == _truncate_by_loop(la, lb, budget), (la, lb, budget)


def test_build_inputs_layout():
    ids, segs = build_inputs([10, 11, 12], [20, 21], max_len=16, cls_id=1, sep_id=2)
    assert ids.tolist() == [1, 10, 11, 12, 2, 20, 21, 2]
    assert segs.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    ids, segs = build_inputs(list(range(100, 110)), list(range(200, 204)), max_len=10, cls_id=1, sep_id=2)
    # budget 7: a is cut to b's length first, then b loses one (b goes first when equal)
    assert ids.tolist() == [1, 100, 101, 102, 103, 2, 200, 201, 202, 2]
    assert segs.tolist() == [0] * 6 + [1] * 4
    ids, _ = build_inputs(list(range(100, 120)), None, max_len=8, cls_id=1, sep_id=2)
    assert ids.tolist() == [1, 100, 101, 102, 103, 104, 105, 2]
