"""The encoded-data cache: a reload gives exactly the freshly encoded examples and batches; every input of the
encoding invalidates it; it is stored without pickle, written atomically, and can be moved or switched off."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
from conftest import shared

from torchpalm.reader import ClassifyReader, MaskLMReader, MatchReader, SequenceLabelReader
from torchpalm.reader import cache as cache_mod
from torchpalm.tokenizer import WordPieceTokenizer


def _head(src, dst, n: int) -> str:
    with open(src, encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    dst.write_text("".join(lines), encoding="utf-8")
    return str(dst)


@pytest.fixture
def sst2(tmp_path):
    return _head(shared("sst2", "train.tsv"), tmp_path / "sst2.tsv", 400)


@pytest.fixture
def mrpc(tmp_path):
    return _head(shared("mrpc", "train.tsv"), tmp_path / "mrpc.tsv", 200)


def _assert_same_examples(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], np.ndarray):
                assert isinstance(y[k], np.ndarray) and x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k
            else:
                assert type(x[k]) is type(y[k]) and x[k] == y[k], k


def _load(make, path, cache_dir, **load_kwargs):
    reader = make().set_cache_dir(cache_dir)
    reader.load_data(path, 8, num_epochs=1, **load_kwargs)
    return reader


READERS = {
    "classify": (lambda v: ClassifyReader(v, 32, seed=1, do_lower_case=True), "sst2", {}),
    "classify_label_names": (lambda v: ClassifyReader(v, 32, seed=1, label_map={"0": 1, "1": 0}), "sst2", {}),
    "classify_predict": (lambda v: ClassifyReader(v, 32, phase="predict"), "sst2", {}),
    "match": (lambda v: MatchReader(v, 48, seed=1, do_lower_case=True), "mrpc", {}),
    "match_pairwise": (lambda v: MatchReader(v, 48, seed=1, learning_strategy="pairwise"), "mrpc",
                       {"columns": ["label", "id1", "id2", "text_a", "text_b"]}),
    "mask_lm": (lambda v: MaskLMReader(v, 32, seed=1, do_lower_case=True), "sst2", {"file_format": "txt"}),
}


@pytest.mark.parametrize("name", list(READERS))
def test_reload_equals_fresh_encoding_and_batches(name, tmp_path, uncased_vocab, sst2, mrpc):
    make, data, load_kwargs = READERS[name]
    path = {"sst2": sst2, "mrpc": mrpc}[data]
    if name == "match_pairwise":  # pairwise needs a third text: reuse the second text of the next row
        lines = open(path, encoding="utf-8-sig").read().splitlines()[1:]
        rows = [line.split("\t") for line in lines]
        text = "".join(f"{r[3]}\t{r[4]}\t{rows[(i + 1) % len(rows)][4]}\n" for i, r in enumerate(rows))
        path = str(tmp_path / "pairwise.tsv")
        open(path, "w", encoding="utf-8").write("text_a\ttext_b\ttext_b_neg\n" + text)
        load_kwargs = {}
    cache_dir = tmp_path / "cache"
    fresh = _load(lambda: make(uncased_vocab), path, False, **load_kwargs)
    first = _load(lambda: make(uncased_vocab), path, cache_dir, **load_kwargs)
    second = _load(lambda: make(uncased_vocab), path, cache_dir, **load_kwargs)
    assert (fresh.cache_hit, first.cache_hit, second.cache_hit) == (None, False, True)
    assert len(list(cache_dir.glob("*.npz"))) == 1 and not list(cache_dir.glob(".tmp-*"))
    _assert_same_examples(fresh._examples, second._examples)
    for a, b in zip(fresh, second):
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_every_encoding_option_invalidates(tmp_path, uncased_vocab, chinese_vocab):
    """Each variant differs from the base in one input of the encoding: a miss, then the right examples."""
    vocab_copy = shutil.copy(uncased_vocab, tmp_path / "vocab.txt")
    path = tmp_path / "data.tsv"
    path.write_text("label\ttext_a\ttext_b\n" + "".join(f"{i % 2}\tWord{i} x\tother {i}\n" for i in range(40)))
    headerless = tmp_path / "headerless.tsv"
    headerless.write_text("".join(f"{i % 2}\tWord{i} x\tother {i}\n" for i in range(40)))
    cache_dir = tmp_path / "cache"
    base = lambda: ClassifyReader(vocab_copy, 32, seed=1)  # noqa: E731

    class Subclass(ClassifyReader):  # another class under the same name: the key, not the file name, tells
        pass

    Subclass.__name__ = "ClassifyReader"
    variants = {
        "same_name_other_class": (lambda: Subclass(vocab_copy, 32, seed=1), path, {}),
        "vocab_file": (lambda: ClassifyReader(chinese_vocab, 32, seed=1), path, {}),
        "max_len": (lambda: ClassifyReader(vocab_copy, 16, seed=1), path, {}),
        "do_lower_case": (lambda: ClassifyReader(vocab_copy, 32, seed=1, do_lower_case=True), path, {}),
        "lang": (lambda: ClassifyReader(vocab_copy, 32, seed=1, lang="cn"), path, {}),
        "phase": (lambda: ClassifyReader(vocab_copy, 32, seed=1, phase="predict"), path, {}),
        "label_map": (lambda: ClassifyReader(vocab_copy, 32, seed=1, label_map=["1", "0"]), path, {}),
        "reader_class": (lambda: MatchReader(vocab_copy, 32, seed=1), path, {}),
        "file_format": (base, path, {"file_format": "tsv"}),  # the option is in the key even when it is moot
        "columns": (base, headerless, {"columns": ["label", "text_b", "text_a"]}),
    }
    assert _load(base, str(path), cache_dir).cache_hit is False
    assert _load(base, str(path), cache_dir).cache_hit is True
    columns = {"columns": ["label", "text_a", "text_b"]}
    assert _load(base, str(headerless), cache_dir, **columns).cache_hit is False
    assert _load(base, str(headerless), cache_dir, **columns).cache_hit is True
    for name, (make, data, kwargs) in variants.items():
        reader = _load(make, str(data), cache_dir, **kwargs)
        assert reader.cache_hit is False, f"{name} did not invalidate the cache"
        _assert_same_examples(_load(make, str(data), False, **kwargs)._examples, reader._examples)
        assert _load(make, str(data), cache_dir, **kwargs).cache_hit is True, name
    # the base entries are still there and still right
    assert _load(base, str(path), cache_dir).cache_hit is True
    assert _load(base, str(headerless), cache_dir, **columns).cache_hit is True


def test_changed_file_content_and_vocab_content_invalidate(tmp_path, uncased_vocab):
    vocab_copy = tmp_path / "vocab.txt"
    shutil.copy(uncased_vocab, vocab_copy)
    path = tmp_path / "data.tsv"
    path.write_text("label\ttext_a\n1\thello world\n0\tgood bye\n")
    make = lambda: ClassifyReader(str(vocab_copy), 32, seed=1)  # noqa: E731
    cache_dir = tmp_path / "cache"
    _load(make, str(path), cache_dir)
    path.write_text("label\ttext_a\n1\thello world\n0\tgood night\n")  # same name, same size class, new text
    reader = _load(make, str(path), cache_dir)
    assert reader.cache_hit is False
    assert reader._examples[1]["token_ids"].tolist() == [101, 2204, 2305, 102]
    # the vocabulary file edited in place: "night" moves to another id
    lines = vocab_copy.read_text(encoding="utf-8").splitlines()
    i, j = lines.index("night"), lines.index("bye")
    lines[i], lines[j] = lines[j], lines[i]
    vocab_copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reader = _load(make, str(path), cache_dir)
    assert reader.cache_hit is False and reader._examples[1]["token_ids"].tolist() == [101, 2204, j, 102]


def test_reader_version_and_match_strategy_invalidate(tmp_path, uncased_vocab, monkeypatch):
    path = tmp_path / "data.tsv"
    path.write_text("text_a\ttext_b\tlabel\ttext_b_neg\n" + "".join(f"a {i}\tb {i}\t{i % 2}\tc {i}\n"
                                                                        for i in range(20)))
    cache_dir = tmp_path / "cache"
    point = lambda: MatchReader(uncased_vocab, 32, seed=1)  # noqa: E731
    assert _load(point, str(path), cache_dir).cache_hit is False
    pair = _load(lambda: MatchReader(uncased_vocab, 32, seed=1, learning_strategy="pairwise"), str(path), cache_dir)
    assert pair.cache_hit is False and "token_ids_neg" in pair._examples[0]
    monkeypatch.setattr(MatchReader, "_cache_version", 2)
    assert _load(point, str(path), cache_dir).cache_hit is False


def test_environment_default_and_switching_off(tmp_path, uncased_vocab, sst2, monkeypatch):
    make = lambda: ClassifyReader(uncased_vocab, 32, seed=1)  # noqa: E731
    monkeypatch.delenv("TORCHPALM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _load(make, sst2, None).cache_hit is False  # on by default
    assert len(list((tmp_path / "xdg" / "torchpalm" / "encoded").glob("*.npz"))) == 1
    monkeypatch.setenv("TORCHPALM_CACHE", str(tmp_path / "env"))
    assert make().cache_dir == str(tmp_path / "env")
    assert _load(make, sst2, None).cache_hit is False and len(list((tmp_path / "env").glob("*.npz"))) == 1
    assert _load(make, sst2, tmp_path / "mine").cache_hit is False  # set_cache_dir beats the environment
    for off in ("off", "0", "false", ""):
        monkeypatch.setenv("TORCHPALM_CACHE", off)
        assert make().cache_dir is None and _load(make, sst2, None).cache_hit is None
    monkeypatch.setenv("TORCHPALM_CACHE", str(tmp_path / "env"))
    assert _load(make, sst2, False).cache_hit is None
    with pytest.raises(TypeError, match="cache_dir must be"):
        make().set_cache_dir(3)


def test_readers_with_other_examples_or_tokenizers_are_not_cached(tmp_path, uncased_vocab):
    path = tmp_path / "tags.tsv"
    path.write_text("text_a\tlabel\nhello world\tO O\n")
    reader = SequenceLabelReader(uncased_vocab, 16, None, seed=1).set_cache_dir(tmp_path / "cache")
    reader.load_data(str(path), 1)
    assert reader.cache_dir is None and reader.cache_hit is None and not (tmp_path / "cache").exists()

    class OtherTokenizer(WordPieceTokenizer):  # its definition may not be the vocab file alone
        pass

    reader = ClassifyReader(uncased_vocab, 16, seed=1).set_cache_dir(tmp_path / "cache")
    reader._tokenizer = OtherTokenizer(uncased_vocab)
    assert reader.cache_dir is None


def test_damaged_or_foreign_entries_are_encoded_again(tmp_path, uncased_vocab, sst2, caplog):
    cache_dir = tmp_path / "cache"
    make = lambda: ClassifyReader(uncased_vocab, 32, seed=1)  # noqa: E731
    fresh = _load(make, sst2, cache_dir)
    (entry,) = cache_dir.glob("*.npz")
    good = entry.read_bytes()
    arrays = dict(np.load(entry, allow_pickle=False))

    def truncated(f):
        f.write(good[: len(good) // 2])

    def pickled(f):  # an object array needs pickle to load: it must be refused, never unpickled
        np.savez(f, **{**arrays, "token_ids.int": np.array([object()] * fresh.num_examples, dtype=object)})

    def other_key(f):
        np.savez(f, **{**arrays, "__header__": np.frombuffer(b'{"format": 1, "key": "x", "examples": 399}',
                                                             dtype=np.uint8)})

    def inconsistent(f):
        np.savez(f, **{**arrays, "label.int": arrays["label.int"][:-1]})

    for damage in (truncated, pickled, other_key, inconsistent):
        with open(entry, "wb") as f:
            damage(f)
        with caplog.at_level(logging.WARNING, logger="torchpalm"):
            reader = _load(make, sst2, cache_dir)
        assert reader.cache_hit is False and "encoding again" in caplog.text, damage.__name__
        caplog.clear()
        _assert_same_examples(fresh._examples, reader._examples)
        assert _load(make, sst2, cache_dir).cache_hit is True  # the entry was written again


def test_failed_write_leaves_nothing_and_the_run_goes_on(tmp_path, uncased_vocab, sst2, monkeypatch, caplog):
    cache_dir = tmp_path / "cache"

    def failing_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.np, "savez", failing_savez)
    with caplog.at_level(logging.WARNING, logger="torchpalm"):
        reader = _load(lambda: ClassifyReader(uncased_vocab, 32, seed=1), sst2, cache_dir)
    assert reader.num_examples == 399 and "disk full" in caplog.text
    assert os.listdir(cache_dir) == []


def test_columns_round_trip_with_missing_fields_and_empty_arrays():
    examples = [{"a": np.array([1, 2], dtype=np.int64), "n": 3, "label": 1},
                {"a": np.zeros(0, dtype=np.int64), "n": -4},
                {"a": np.array([7], dtype=np.int64), "n": 0, "label": 0}]
    arrays = cache_mod.to_columns(examples)
    reloaded = cache_mod.from_columns(arrays, 3)
    _assert_same_examples(examples, reloaded)
    _assert_same_examples(examples[::-1], [reloaded[-1], reloaded[-2], reloaded[-3]])
    _assert_same_examples(examples[1:], reloaded[1:])
    with pytest.raises(IndexError):
        reloaded[3]
    for name, bad in [("a.offsets", np.array([0, 2, 1, 3])), ("n.int", np.array([1, 2])),
                      ("label.present", np.array([1, 0, 1]))]:
        with pytest.raises(ValueError, match="column"):
            cache_mod.from_columns({**arrays, name: bad}, 3)
    assert cache_mod.to_columns([{"words": ["a"]}]) is None
    assert cache_mod.to_columns([{"a": np.zeros((2, 2))}]) is None
