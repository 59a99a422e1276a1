"""The fast tokenizer path equals PALM's FullTokenizer (the independent port in tests/reference_tokenizer.py) on
every line of real English and Chinese data, lower-cased and not, on hand-written edge cases and on random
strings of awkward characters."""

from __future__ import annotations

import random
import zipfile

import pytest
from conftest import shared
from reference_tokenizer import full_tokenize

from torchpalm.tokenizer import WordPieceTokenizer, load_vocab


def _tsv_columns(path, *names: str) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().rstrip("\n").split("\t")
        idx = [header.index(n) for n in names]
        return [row[i] for line in f if line.strip() for row in [line.rstrip("\n").split("\t")] for i in idx]


def _conll_sentences(path) -> list[str]:
    sentences, words = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append(" ".join(words))
                words = []
            else:
                words.append(line.split()[0])
    return sentences


def _assert_same_as_reference(texts: list[str], vocab_path: str, do_lower_case: bool) -> None:
    vocab = load_vocab(vocab_path)
    fast = WordPieceTokenizer(vocab_path, do_lower_case=do_lower_case).encode_batch(texts)
    assert len(fast) == len(texts)
    bad = [i for i, (text, ids) in enumerate(zip(texts, fast)) if ids != full_tokenize(text, vocab, do_lower_case)]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, first: {texts[bad[0]]!r}"


DATASETS = {
    "sst2": lambda: _tsv_columns(shared("sst2", "train.tsv"), "sentence"),
    "mrpc": lambda: _tsv_columns(shared("mrpc", "train.tsv"), "#1 String", "#2 String"),
    "conll": lambda: _conll_sentences(shared("conll2003", "train.txt")),
    "chnsenticorp": lambda: _tsv_columns(shared("chnsenticorp", "train.tsv"), "text_a"),
    # MSRA's ERNIE split joins the characters with \x02, a control character PALM deletes
    "msra": lambda: _tsv_columns(shared("msra_ner", "ernie_split", "dev.tsv"), "text_a"),
}
VOCABS = {"sst2": "bert-base-uncased-vocab.txt", "mrpc": "bert-base-uncased-vocab.txt",
          "conll": "bert-base-uncased-vocab.txt", "chnsenticorp": "bert-base-chinese-vocab.txt",
          "msra": "bert-base-chinese-vocab.txt"}


@pytest.mark.parametrize("do_lower_case", [True, False], ids=["lower", "cased"])
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_line_of_real_data_equals_reference(dataset, do_lower_case):
    texts = DATASETS[dataset]()
    assert len(texts) > 2000
    _assert_same_as_reference(texts, str(shared("vocab", VOCABS[dataset])), do_lower_case)


def test_msra_full_bio_characters_equal_reference(chinese_vocab):
    """Every distinct character of the full MSRA training corpus, each encoded as one word (the tagging
    reader's use)."""
    with zipfile.ZipFile(shared("msra_ner", "full_bio", "MSRA.zip")) as z:
        name = next(n for n in z.namelist() if "train" in n)
        chars = sorted({line.split()[0] for line in z.read(name).decode("utf-8").splitlines() if line.split()})
    assert len(chars) > 3000
    _assert_same_as_reference(chars, chinese_vocab, True)


EDGE_CASES = [
    "", " ", "\t\n\r ", "\x00", "\ufffd", "a\x00b\ufffdc\x01d\x7fe",  # empty, blank, deleted characters
    "Hello, [SEP] World! Ünïcode 中文 x-y",  # the spec's example
    "[SEP]", "[sep]", "x[SEP]y", "[SEP],", "中[SEP]文", "[CLS] [MASK] [PAD] [UNK]", "[MASK]\x01", "\x01[MASK]",
    "naïve café\u00a0résumé", "ÀÉÎÕÜ àéîõü ñ ç ø å æ œ ß", "İstanbul ıi", "ﬁnance ﬀ", "Å Å",  # accents, ligatures
    "ΟΔΟΣ ΟΔΟΣ, ΑΣ'Α Σ", "ὈΔΥΣΣΕΎΣ", "\u1fefa\u1fefb",  # final sigma; a symbol that decomposes to '`'
    "e\u0301 e\u0301\u0327 \u0301x", "a\u0903b",  # combining marks, a spacing mark
    "a\u200bb\u200dc\ufeffd", "a\u2028b\u2029c\u0085d\u000be\u000cf\u001cg", "a\u3000b\u2003c",  # odd spaces
    "😀 👍🏽 a😀b 🇫🇷", "★☆ ©®™ ° ± § ¶ • … — – “quoted” «guillemets»",  # emoji, symbols, Unicode punctuation
    "中文字符测试，标点！？（全角）【】", "日本語のテキスト、カタカナ", "한국어 텍스트", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３",
    "\U00020000\U0002a700\uf900\u2f800", "ex\u00adample",  # CJK extensions and compatibility; soft hyphen
    "x" * 100, "x" * 101, "é" * 101, "a" * 150 + " ok", "中" * 300,  # the 100-character word limit
    "don't stop-believing... 3.14! e-mail@example.com http://x.y/z?q=1&r=2", "##s ## #", "a\tb\nc\rd",
]


@pytest.mark.parametrize("do_lower_case", [True, False], ids=["lower", "cased"])
def test_edge_cases_equal_reference(uncased_vocab, chinese_vocab, do_lower_case):
    for vocab_path in (uncased_vocab, chinese_vocab):
        _assert_same_as_reference(EDGE_CASES, vocab_path, do_lower_case)
        # one text at a time, too (a fresh memo and character table each time)
        vocab = load_vocab(vocab_path)
        for text in EDGE_CASES:
            tok = WordPieceTokenizer(vocab_path, do_lower_case=do_lower_case)
            assert tok.encode(text) == full_tokenize(text, vocab, do_lower_case), text
            assert tok.convert_tokens_to_ids(tok.tokenize(text)) == tok.encode(text), text


def test_random_strings_of_awkward_characters_equal_reference(uncased_vocab):
    """Strings drawn from a pool of characters where a shortcut would go wrong (the pool is the edge cases'
    characters plus ASCII), in random order; the memo and character table carry over between batches."""
    pool = sorted(set("".join(EDGE_CASES)) | set(map(chr, range(0, 128))))
    rng = random.Random(0)
    vocab = load_vocab(uncased_vocab)
    for do_lower_case in (True, False):
        tok = WordPieceTokenizer(uncased_vocab, do_lower_case=do_lower_case)
        for _ in range(4):
            texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(500)]
            for text, ids in zip(texts, tok.encode_batch(texts)):
                assert ids == full_tokenize(text, vocab, do_lower_case), repr(text)


def test_memo_limit_keeps_results(uncased_vocab, monkeypatch):
    tok = WordPieceTokenizer(uncased_vocab, do_lower_case=True)
    monkeypatch.setattr(WordPieceTokenizer, "MAX_MEMO", 3)
    texts = ["alpha beta gamma delta", "epsilon zeta", "alpha beta gamma delta"]
    assert tok.encode_batch(texts) == [full_tokenize(t, tok.vocab, True) for t in texts]
    tok.encode_batch(["x"])
    assert len(tok._memo) <= 4


def test_vocab_file_line_endings_and_repeats(tmp_path):
    """One token per line: the id is the line number whatever the line ending; a repeated token keeps its last
    line (as PALM's dict assignment did); a tab-separated file still takes its explicit ids."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for name, text in {"crlf": "\r\n".join(specials + ["a", "b"]) + "\r\n",
                       "no_final_newline": "\n".join(specials + ["a", "b"]),
                       "repeat": "\n".join(specials + ["a", "b", "a"]) + "\n"}.items():
        path = tmp_path / f"{name}.txt"
        path.write_bytes(text.encode("utf-8"))
        vocab = load_vocab(path)
        assert vocab["[MASK]"] == 4 and vocab["b"] == 6, name
        assert vocab["a"] == (7 if name == "repeat" else 5) and len(vocab) == 7, name
    path = tmp_path / "ids.txt"
    path.write_text("[PAD]\t0\n[UNK]\t1\n[CLS]\t2\n[SEP]\t3\n[MASK]\t4\nx\t9\ny\t1\t2\nz\t5\n", encoding="utf-8")
    assert load_vocab(path)["x"] == 9 and "z" not in load_vocab(path)  # reading stops at the 3-field line
