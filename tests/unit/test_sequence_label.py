"""SequenceLabelReader (PALM TSV, CoNLL columns, MSRA chars; word alignment checked against transformers'
word_ids; truncation; every error) and the SequenceLabel head (gather, CRF/softmax losses, decoding,
learning-rate scales, prediction files)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared

from torchpalm.head import SequenceLabel
from torchpalm.head.crf import LinearChainCRF
from torchpalm.reader import DataError, SequenceLabelReader
from torchpalm.reader.sequence_label import read_tagged_file
from torchpalm.tokenizer import WordPieceTokenizer

BACKBONE = type("BB", (), {"inputs_attr": {"token_ids": 0, "position_ids": 0, "segment_ids": 0, "input_mask": 0}})()
CONLL_MAP = {"B-LOC": 0, "B-MISC": 1, "B-ORG": 2, "B-PER": 3, "I-LOC": 4, "I-MISC": 5, "I-ORG": 6, "I-PER": 7,
             "O": 8}


def write(tmp_path, text: str, name: str = "data.txt") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def reader_for(vocab, path, label_map=None, max_len=64, phase="train", batch=100, **kw):
    r = SequenceLabelReader(vocab, max_len, label_map, seed=1, do_lower_case=True, phase=phase, **kw)
    r.load_data(path, batch, num_epochs=1, shuffle_train=False)
    r.register_with(BACKBONE)
    return r


def hf_alignment(vocab: str, sentences: list[list[str]]) -> tuple[list, list]:
    """Independent reference: transformers' BertTokenizer on pre-split words -> (token ids, first-piece positions)."""
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab, do_lower_case=True)
    enc = tok(sentences, is_split_into_words=True)
    ids, starts = [], []
    for i in range(len(sentences)):
        word_ids = enc.word_ids(i)
        first = [p for p, w in enumerate(word_ids) if w is not None and (p == 0 or word_ids[p - 1] != w)]
        assert [word_ids[p] for p in first] == list(range(len(sentences[i])))  # no word vanished
        ids.append(enc["input_ids"][i])
        starts.append(first)
    return ids, starts


def unpadded(batch: dict, i: int) -> tuple[list, list, list]:
    n_tok = int(batch["input_mask"][i].sum())
    n_words = int(batch["seq_lens"][i])
    labels = batch["label_ids"][i, :n_words].tolist() if "label_ids" in batch else None
    assert "label_ids" not in batch or (batch["label_ids"][i, n_words:] == -100).all()
    assert (batch["word_starts"][i, n_words:] == 0).all()
    return batch["token_ids"][i, :n_tok].tolist(), batch["word_starts"][i, :n_words].tolist(), labels


# ------------------------------------------------------------------------------------------ reader: formats


def test_palm_tsv_atis_sample_matches_transformers_alignment(uncased_vocab):
    path = shared("palm_demo_samples", "atis_slot", "train.tsv")
    label_map_path = shared("palm_demo_samples", "atis_slot", "label_map.json")
    label_map = json.loads(label_map_path.read_text())
    # ATIS's map has 'PAD' at 0 and 'O' at 1 (not len-1, which PALM hard-coded, spec §17.28)
    assert label_map["O"] == 1 and max(label_map.values()) == len(label_map) - 1 == 129
    r = reader_for(uncased_vocab, path, str(label_map_path), max_len=128, no_entity_label="O")
    assert r.file_format == "tsv" and r.num_examples == 728 and r.no_entity_id == 1
    batch = next(iter(r))
    assert set(batch) == {"token_ids", "position_ids", "segment_ids", "input_mask", "word_starts", "seq_lens",
                          "label_ids"}
    assert all(v.dtype == torch.int64 for v in batch.values())
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")][1:101]
    words = [[w for w in a.split("\x02") if w] for a, _ in rows]
    tags = [[t for t in b.split("\x02") if t] for _, b in rows]
    ref_ids, ref_starts = hf_alignment(uncased_vocab, words)
    for i in range(100):
        ids, starts, labels = unpadded(batch, i)
        assert ids == ref_ids[i] and starts == ref_starts[i]
        assert labels == [label_map[t] for t in tags[i]]
    assert words[0][:6] == ["i", "want", "to", "fly", "from", "boston"]
    assert tags[0][5] == "B-fromloc.city_name"


def test_real_conll2003_alignment_against_transformers_word_ids(uncased_vocab):
    path = shared("conll2003", "train.txt")
    r = reader_for(uncased_vocab, path, CONLL_MAP, max_len=512, phase="predict", batch=2000)
    assert r.num_examples == 14041 and r.file_format == "conll"
    # the reference reads the raw lines itself: first column = word, last = tag, -DOCSTART- and blanks split
    raw, cur = [], []
    for line in [*open(path, encoding="utf-8"), "\n"]:
        if not line.strip() or line.startswith("-DOCSTART-"):
            if cur:
                raw.append(cur)
            cur = []
            continue
        cur.append(line.split())
    words = [[f[0] for f in s] for s in raw]
    _, sentences = read_tagged_file(path)
    assert [s.words for s in sentences] == words
    assert [s.tags for s in sentences] == [[f[-1] for f in s] for s in raw]
    ref_ids, ref_starts = hf_alignment(uncased_vocab, words)
    ours = [unpadded(batch, i)[:2] for batch in r for i in range(len(batch["seq_lens"]))]
    assert len(ours) == len(ref_ids) == 14041
    bad = [i for i, (ids, starts) in enumerate(ours) if ids != ref_ids[i] or starts != ref_starts[i]]
    assert not bad, f"{len(bad)} sentences differ, first: {words[bad[0]]}"
    split_words = sum(len(ids) - 2 - len(starts) for ids, starts in ours)
    assert split_words > 10000  # many words really split into several pieces (e.g. "1996-08-22")
    assert words[0] == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]


def test_conll_columns_docstart_blank_lines_and_built_label_map(tmp_path, uncased_vocab):
    text = ("-DOCSTART- -X- -X- O\n\n"
            "John NNP B-NP B-PER\nSmith NNP I-NP I-PER\nvisited VBD B-VP O\nNew NNP B-NP B-LOC\n"
            "York NNP I-NP I-LOC\n\n\n"
            "Hello UH O O\n"
            "-DOCSTART- -X- -X- O\n"
            "Paris NNP B-NP B-LOC\n")
    r = reader_for(uncased_vocab, write(tmp_path, text))
    assert r.label_map == {"B-LOC": 0, "B-PER": 1, "I-LOC": 2, "I-PER": 3, "O": 4}  # sorted, deterministic
    assert r.id2label[4] == "O" and r.no_entity_id == 4
    batch = next(iter(r))
    assert batch["seq_lens"].tolist() == [5, 1, 1]
    assert batch["label_ids"].tolist() == [[1, 3, 4, 0, 2], [4] + [-100] * 4, [0] + [-100] * 4]
    tok = WordPieceTokenizer(uncased_vocab)
    assert batch["token_ids"][0, :7].tolist() == [tok.cls_id, *tok.encode("john smith visited new york"),
                                                  tok.sep_id]
    assert batch["word_starts"][0].tolist() == [1, 2, 3, 4, 5]
    assert r.get_epoch_outputs() == {"word_counts": [5, 1, 1], "kept_word_counts": [5, 1, 1],
                                     "words": [["John", "Smith", "visited", "New", "York"], ["Hello"], ["Paris"]],
                                     "id2label": {0: "B-LOC", 1: "B-PER", 2: "I-LOC", 3: "I-PER", 4: "O"}}


def test_msra_char_format_from_the_real_zip(tmp_path, chinese_vocab):
    with zipfile.ZipFile(shared("msra_ner", "full_bio", "MSRA.zip")) as z:
        head = z.read("msra_test_bio").decode("utf-8").split("\n\n")[:30]
    path = write(tmp_path, "\n\n".join(head) + "\n")
    r = reader_for(chinese_vocab, path, max_len=512, lang="cn")
    assert r.num_examples == 30 and r.file_format == "conll"
    assert set(r.label_map) <= {"B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"}
    batch = next(iter(r))
    chars = [[line.split("\t")[0] for line in s.split("\n") if line] for s in head]
    tags = [[line.split("\t")[1] for line in s.split("\n") if line] for s in head]
    assert any(t != "O" for ts in tags for t in ts)
    ref_ids, ref_starts = hf_alignment(chinese_vocab, chars)
    for i in range(30):
        ids, starts, labels = unpadded(batch, i)
        assert len(starts) == len(chars[i])
        assert ids == ref_ids[i] and starts == ref_starts[i]
        assert labels == [r.label_map[t] for t in tags[i]]


def test_tab_separated_conll_keeps_space_characters(tmp_path, chinese_vocab):
    # a space "character" is a word of its own in MSRA-style files; it has no pieces and becomes [UNK]
    r = reader_for(chinese_vocab, write(tmp_path, "中\tB-LOC\n \tO\n国\tI-LOC\n"), lang="cn")
    tok = WordPieceTokenizer(chinese_vocab)
    batch = next(iter(r))
    assert batch["seq_lens"].tolist() == [3]
    assert batch["token_ids"][0].tolist() == [tok.cls_id, tok.encode("中")[0], tok.unk_id, tok.encode("国")[0],
                                              tok.sep_id]


def test_tsv_trailing_separator_empty_words_space_format_and_unk(tmp_path, uncased_vocab):
    label_map = {"O": 0, "B-X": 1}
    # trailing \x02 in both columns; an empty word in the middle dropped with its tag; a control char -> [UNK]
    text = "text_a\tlabel\na\x02\x02b\x02\x07\x02\tO\x02B-X\x02O\x02O\x02\n"
    r = reader_for(uncased_vocab, write(tmp_path, text, "d.tsv"), label_map)
    batch = next(iter(r))
    tok = WordPieceTokenizer(uncased_vocab)
    ids, starts, labels = unpadded(batch, 0)
    assert ids == [tok.cls_id, *tok.encode("a"), *tok.encode("b"), tok.unk_id, tok.sep_id]
    assert starts == [1, 2, 3] and labels == [0, 0, 0]
    assert r.get_epoch_outputs()["word_counts"] == [3]
    # files without \x02 are split on spaces (the UER copy of PALM's MSRA split)
    r2 = reader_for(uncased_vocab, write(tmp_path, "text_a\tlabel\nx y z\tO B-X O\n", "s.tsv"), label_map)
    assert unpadded(next(iter(r2)), 0)[2] == [0, 1, 0]


def test_real_msra_ernie_split_space_separated_tsv(chinese_vocab):
    path = shared("msra_ner", "ernie_split", "test.tsv")
    label_map = shared("msra_ner", "ernie_split", "label2id.json")
    r = reader_for(chinese_vocab, path, str(label_map), max_len=256, phase="predict", batch=64, lang="cn")
    assert r.num_examples == 4636 and r.no_entity_id == 0
    first = open(path, encoding="utf-8").read().split("\n")[1].split("\t")
    counts = r.get_epoch_outputs()
    assert counts["word_counts"][0] == len(first[0].split(" ")) == len(first[1].split(" "))
    assert sum(counts["word_counts"]) > sum(counts["kept_word_counts"])  # a few sentences exceed 254 chars


def test_predict_files_without_labels(tmp_path, uncased_vocab):
    for text, name in (("text_a\nhello world\nbye\n", "p.tsv"), ("hello\nworld\n\nbye\n", "p.txt")):
        r = reader_for(uncased_vocab, write(tmp_path, text, name), {"O": 0}, phase="predict", batch=8)
        batch = next(iter(r))
        assert set(batch) == {"token_ids", "position_ids", "segment_ids", "input_mask", "word_starts", "seq_lens"}
        assert batch["seq_lens"].tolist() == [2, 1]
    # a predict file that has tags keeps them for scoring, but label_ids is not registered in predict
    r = reader_for(uncased_vocab, write(tmp_path, "a O\n", "q.txt"), {"O": 0}, phase="predict")
    assert "label_ids" not in next(iter(r))


def test_truncation_keeps_whole_words_and_counts_the_cut(tmp_path, uncased_vocab):
    tok = WordPieceTokenizer(uncased_vocab)
    words = ["hello", "tokenization", "world", "gastroenterology", "x"]
    pieces = [len(tok.encode(w)) for w in words]
    assert pieces[1] > 1 and pieces[3] > 1
    budget = pieces[0] + pieces[1] + pieces[2] + 1  # the 4th word does not fit whole
    text = "".join(f"{w} O\n" for w in words) + "\nsupercalifragilisticexpialidocious O\nok O\n"
    r = reader_for(uncased_vocab, write(tmp_path, text), {"O": 0}, max_len=budget + 2)
    batch = next(iter(r))
    ids, starts, labels = unpadded(batch, 0)
    assert len(starts) == 3 and labels == [0, 0, 0]
    assert ids == [tok.cls_id, *tok.encode("hello tokenization world"), tok.sep_id]
    # a first word longer than the whole budget keeps its first pieces (never zero words)
    ids2, starts2, _ = unpadded(batch, 1)
    assert starts2 == [1] and len(ids2) == budget + 2
    assert ids2[1:-1] == tok.encode("supercalifragilisticexpialidocious")[:budget]
    out = r.get_epoch_outputs()
    assert (out["word_counts"], out["kept_word_counts"]) == ([5, 2], [3, 1])


def test_format_choice_and_override(tmp_path, uncased_vocab):
    conll = write(tmp_path, "a O\n")
    tsv = write(tmp_path, "text_a\tlabel\na\tO\n", "d.tsv")
    r = SequenceLabelReader(uncased_vocab, 16, {"O": 0}, file_format="conll")
    r.load_data(conll, 1)
    assert r.file_format == "conll"
    r.load_data(tsv, 1, file_format="tsv")  # load_data's argument overrides the constructor's
    assert r.file_format == "tsv"
    with pytest.raises(DataError, match=r"d\.tsv:1: file_format='conll'"):
        r.load_data(tsv, 1)
    with pytest.raises(DataError, match=r"data\.txt:1: file_format='tsv' needs a header"):
        r.load_data(conll, 1, file_format="tsv")
    with pytest.raises(ValueError, match="file_format"):
        r.load_data(conll, 1, file_format="csv")


CONLL_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def test_json_sentences_as_huggingface_datasets_export_them(tmp_path, uncased_vocab):
    # conll2003's `to_json()`: one object per line, integer tag ids, other tag columns beside them
    hf = write(tmp_path, '{"id": "0", "tokens": ["EU", "rejects", "German"], "pos_tags": [22, 42, 16], '
                         '"chunk_tags": [11, 21, 11], "ner_tags": [3, 0, 7]}\n\n'
                         '{"id": "1", "tokens": ["Peter", "Blackburn"], "pos_tags": [22, 22], "chunk_tags": [11, 12], '
                         '"ner_tags": [1, 2]}\n', "train.jsonl")
    r = reader_for(uncased_vocab, hf, label_map=CONLL_NAMES)
    assert r.file_format == "jsonl"
    assert r.gold_tags() == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    batch = next(iter(r))
    assert batch["label_ids"].tolist() == [[3, 0, 7], [1, 2, -100]]
    # the same sentences as CoNLL give the same batch
    conll = reader_for(uncased_vocab, write(tmp_path, "EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\n"
                                                      "Blackburn I-PER\n", "same.txt"),
                       label_map=CONLL_NAMES)
    expected = next(iter(conll))
    assert all(torch.equal(batch[k], expected[k]) for k in expected)
    # a pretty-printed JSON array with tag names (and strings for words and tags), no label map given
    array = write(tmp_path, '[\n {"words": ["hi", "there"], "labels": ["O", "B-X"]},\n'
                            ' {"words": "a b", "labels": "O O"}\n]\n', "dev.json")
    r = reader_for(uncased_vocab, array)
    assert r.gold_tags() == [["O", "B-X"], ["O", "O"]] and r.label_map == {"B-X": 0, "O": 1}
    # a first line that is a JSON object is JSON lines whatever the extension; a predict file needs no tags
    pred = write(tmp_path, '{"tokens": ["EU", "rejects"]}\n', "pred.txt")
    p = reader_for(uncased_vocab, pred, label_map=CONLL_NAMES, phase="predict")
    assert p.file_format == "jsonl" and p.get_epoch_outputs()["words"] == [["EU", "rejects"]]
    with pytest.raises(ValueError, match="no tag column"):
        p.gold_tags()


@pytest.mark.parametrize("text, pattern", [
    ('{"tokens": ["a", "b"], "ner_tags": [0]}\n', r"d\.jsonl:1: 2 words under 'tokens' but 1 tags under 'ner_tags'"),
    ('{"tokens": ["a"], "ner_tags": [0]}\n{"tokens": ["b"], "ner_tags": [9]}\n',
     r"d\.jsonl:2: tag id 9 is not in the label map"),
    ('{"sentence": ["a"], "ner_tags": [0]}\n', r"d\.jsonl:1: the object has no key for its words"),
    ('{"tokens": ["a"]}\n', r"d\.jsonl:1: the object has no key for its tags"),
    ('{"tokens": [1], "tags": ["O"]}\n', r"d\.jsonl:1: key 'tokens' must be a list of words"),
    ('{"tokens": ["a"], "tags": [["O"]]}\n', r"d\.jsonl:1: key 'tags' must be a list of tags"),
    ('["a", "O"]\n', r"d\.jsonl:1: expected a JSON object"),
    ('{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["b"], "tags": ["B-ZZZ"]}\n',
     r"d\.jsonl:2: tag 'B-ZZZ' \(word 'b'\) is not in the label map"),
])
def test_json_sentence_errors_name_file_and_line(tmp_path, uncased_vocab, text, pattern):
    r = SequenceLabelReader(uncased_vocab, 16, ["O", "B-X"])
    with pytest.raises(DataError, match=pattern):
        r.load_data(write(tmp_path, text, "d.jsonl"), 1)


def test_json_integer_tags_need_the_label_names(tmp_path, uncased_vocab):
    path = write(tmp_path, '{"tokens": ["a"], "ner_tags": [0]}\n', "d.jsonl")
    with pytest.raises(DataError, match=r"d\.jsonl:1: the tags are integer ids; give the reader their names"):
        SequenceLabelReader(uncased_vocab, 16, None).load_data(path, 1)


# ------------------------------------------------------------------------------------------ reader: errors


@pytest.mark.parametrize("text, name, pattern", [
    ("text_a\tlabel\na\x02b\tO\x02B-ZZZ\n", "d.tsv", r"d\.tsv:2: tag 'B-ZZZ' \(word 'b'\) is not in the label map"),
    ("a O\n\nb O\nc B-ZZZ\n", "d.txt", r"d\.txt:4: tag 'B-ZZZ' \(word 'c'\) is not in the label map"),
    ("text_a\tlabel\na\x02b\tO\n", "d.tsv", r"d\.tsv:2: 2 words but 1 tags"),
    ("text_a\tlabel\na b c\tO O\n", "d.tsv", r"d\.tsv:2: 3 words but 2 tags"),
    ("text_a\tlabel\na\tO\tx\n", "d.tsv", r"d\.tsv:2: expected 2 tab-separated fields"),
    ("a X O\nb O\n", "d.txt", r"d\.txt:2: 2 columns but line 1 has 3"),
    ("a\nb\n", "d.txt", r"d\.txt:1: expected a word and a tag \(at least 2 columns\)"),
    ("a\tO\n\t\n", "d.txt", None),  # a line of only a tab is a blank line
    ("a\tO\nb\t \n", "d.txt", r"d\.txt:2: empty word or tag column"),
    ("text_a\tlabel\n\x02\tO\x02\n", "d.tsv", r"d\.tsv:2: the sentence has no words"),
    ("text_a\nhello\n", "d.tsv", r"d\.tsv:1: header .* lacks the required column\(s\) \['label'\]"),
    ("-DOCSTART- -X- O\n\n", "d.txt", r"d\.txt: no sentences"),
    (b"a O\n\xff O\n", "d.txt", r"d\.txt:2: invalid UTF-8"),
])
def test_data_errors_name_file_and_line(tmp_path, uncased_vocab, text, name, pattern):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    r = SequenceLabelReader(uncased_vocab, 16, {"O": 0, "B-X": 1})
    if pattern is None:
        r.load_data(str(path), 1)
        return
    with pytest.raises(DataError, match=pattern):
        r.load_data(str(path), 1)


def test_label_map_and_configuration_errors(tmp_path, uncased_vocab):
    with pytest.raises(ValueError, match="no_entity_label 'O' is not in the label map"):
        SequenceLabelReader(uncased_vocab, 16, {"B-X": 0, "I-X": 1})
    with pytest.raises(ValueError, match="no_entity_label 'NONE'"):
        SequenceLabelReader(uncased_vocab, 16, {"O": 0}, no_entity_label="NONE")
    built = SequenceLabelReader(uncased_vocab, 16, None, no_entity_label="NONE")
    with pytest.raises(ValueError, match="no_entity_label 'NONE' is not in the label map"):
        built.load_data(write(tmp_path, "a O\n"), 1)
    with pytest.raises(ValueError, match="label_map_config is required in predict"):
        SequenceLabelReader(uncased_vocab, 16, None, phase="predict")
    with pytest.raises(ValueError, match="used by more than one tag"):
        SequenceLabelReader(uncased_vocab, 16, {"O": 0, "B": 0})
    with pytest.raises(ValueError, match="non-negative integer id"):
        SequenceLabelReader(uncased_vocab, 16, {"O": "0"})
    with pytest.raises(ValueError, match=r"bad\.json:1: not valid JSON"):
        SequenceLabelReader(uncased_vocab, 16, write(tmp_path, "{'O': 0}", "bad.json"))
    with pytest.raises(FileNotFoundError, match="label map file not found"):
        SequenceLabelReader(uncased_vocab, 16, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="file_format"):
        SequenceLabelReader(uncased_vocab, 16, {"O": 0}, file_format="json")
    r = reader_for(uncased_vocab, write(tmp_path, "a O\n"), {"O": 3})
    r.check_num_classes(4)
    with pytest.raises(ValueError, match="tag id 3 but the head has 3 classes"):
        SequenceLabel(3, 8).check_reader(r)


def test_shuffle_is_seeded_and_resumable(tmp_path, uncased_vocab):
    text = "".join(f"{i} O\n" + "x O\n" * (i % 4) + "\n" for i in range(20))
    path = write(tmp_path, text)

    def run(seed, state=None, n=None):
        r = SequenceLabelReader(uncased_vocab, 32, {"O": 0}, seed=seed)
        r.load_data(path, 4, num_epochs=2)
        if state:
            r.load_state_dict(state)
        it = iter(r)
        out = [next(it)["token_ids"][:, 1].tolist() for _ in range(n or 10)]
        return out, r.state_dict()

    full, _ = run(5)
    assert full != run(6)[0]
    head, state = run(5, n=3)
    assert head + run(5, state, n=7)[0] == full


# ------------------------------------------------------------------------------------------ head


def head_batch(seed=0, B=3, L=9, H=8, C=5, lengths=(4, 2, 1)):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(B, L, H, generator=g)
    W = max(lengths)
    starts = torch.zeros(B, W, dtype=torch.long)
    labels = torch.full((B, W), -100)
    for b, n in enumerate(lengths):
        starts[b, :n] = torch.sort(torch.randperm(L - 2, generator=g)[:n] + 1).values
        labels[b, :n] = torch.randint(0, C, (n,), generator=g)
    return {"encoder_outputs": enc}, {"word_starts": starts, "seq_lens": torch.tensor(lengths), "label_ids": labels}


def test_head_gathers_first_pieces_and_computes_crf_nll():
    torch.manual_seed(0)
    head = SequenceLabel(5, 8, dropout_prob=0.0)
    feats, batch = head_batch()
    out = head(feats, batch)
    enc, starts, lengths = feats["encoder_outputs"], batch["word_starts"], batch["seq_lens"]
    for b in range(3):
        for w in range(int(lengths[b])):
            expected = head.emission(enc[b, starts[b, w]])
            torch.testing.assert_close(out["logits"][b, w], expected)
    mask = torch.arange(4)[None] < lengths[:, None]
    ref = LinearChainCRF(5)
    ref.load_state_dict(head.crf.state_dict())
    nll = ref(out["logits"].detach(), batch["label_ids"], mask, reduction="none")
    torch.testing.assert_close(out["loss"], nll.mean())
    assert "predictions" not in out  # no decoding inside a training step
    head.eval()
    preds = head(feats, batch)["predictions"]
    viterbi = ref.decode(out["logits"].detach(), mask)
    assert [row[:n].tolist() for row, n in zip(preds, lengths.tolist())] == viterbi
    assert preds[1, 2:].tolist() == [-1, -1] and preds.dtype == torch.int64


def test_softmax_head_loss_and_argmax():
    torch.manual_seed(0)
    head = SequenceLabel(5, 8, use_crf=False)
    feats, batch = head_batch(seed=1)
    out = head(feats, batch)
    real = batch["label_ids"] != -100
    torch.testing.assert_close(out["loss"], F.cross_entropy(out["logits"][real], batch["label_ids"][real]))
    assert head.crf is None and head.param_lr_scales() == {} and head.no_weight_decay() == set()
    head.eval()
    del batch["label_ids"]
    out = head(feats, batch)
    expected = out["logits"].argmax(-1).masked_fill(~real, -1)
    assert torch.equal(out["predictions"], expected)


def test_head_dropout_is_applied_in_training_only():
    head = SequenceLabel(5, 8, dropout_prob=0.5)
    feats, batch = head_batch()
    torch.manual_seed(0)
    a = head(feats, batch)["logits"]
    b = head(feats, batch)["logits"]
    assert not torch.allclose(a, b)
    pred = SequenceLabel(5, 8, dropout_prob=0.5, phase="predict")
    pred.load_state_dict(head.state_dict())
    del batch["label_ids"]
    torch.testing.assert_close(pred(feats, batch)["logits"], pred(feats, batch)["logits"])


def test_crf_lr_scale_no_decay_and_config():
    head = SequenceLabel(7, 16, 0.1, learning_rate=1e-3, crf_lr_multiplier=10.0)
    names = dict(head.named_parameters())
    assert set(head.param_lr_scales()) == set(head.no_weight_decay()) <= set(names)
    assert set(head.param_lr_scales().values()) == {10.0}
    assert SequenceLabel(7, 16).param_lr_scales()["crf.transitions"] == 1.0  # default 1.0, not PALM's 1e-3
    assert head.config()["learning_rate"] == 1e-3 and head.config()["crf_lr_multiplier"] == 10.0
    rebuilt = SequenceLabel(**head.config())
    assert rebuilt.config() == head.config()
    # through the optimizer's grouping: transitions undecayed, at 10x
    from torch import nn

    from torchpalm.optimizer import param_groups

    model = nn.ModuleDict({"head": head})
    groups = param_groups(model, 0.01, {f"head.{n}" for n in head.no_weight_decay()},
                          {f"head.{n}": s for n, s in head.param_lr_scales().items()})
    crf_group = [g for g in groups if any(p is head.crf.transitions for p in g["params"])]
    assert len(crf_group) == 1 and crf_group[0]["lr_scale"] == 10.0 and crf_group[0]["weight_decay"] == 0.0
    emission_group = [g for g in groups if any(p is head.emission.weight for p in g["params"])][0]
    assert emission_group["lr_scale"] == 1.0 and emission_group["weight_decay"] == 0.01


def test_empty_sentence_in_predict_gets_no_tags():
    head = SequenceLabel(3, 4, phase="predict")
    feats = {"encoder_outputs": torch.randn(2, 5, 4)}
    batch = {"word_starts": torch.tensor([[1, 2], [0, 0]]), "seq_lens": torch.tensor([2, 0])}
    out = head(feats, batch)
    assert out["predictions"][1].tolist() == [-1, -1] and (out["predictions"][0] >= 0).all()
    head.batch_postprocess({k: v.detach().numpy() for k, v in out.items()})
    assert [len(r) for r in head._results] == [2, 0]


def test_postprocess_pads_cut_words_with_no_entity_id(tmp_path):
    head = SequenceLabel(4, 8, phase="predict")
    head.no_entity_id = 3
    head.batch_postprocess({"predictions": np.array([[0, 1, -1], [2, 2, 2]]), "seq_lens": np.array([2, 3])})
    res = head.epoch_postprocess({"reader": {"word_counts": [4, 3]}}, str(tmp_path))
    assert res == [[0, 1, 3, 3], [2, 2, 2]]
    assert [json.loads(line) for line in open(tmp_path / "predictions.json")] == res
    head.batch_postprocess({"predictions": np.array([[0]]), "seq_lens": np.array([1])})
    with pytest.raises(ValueError, match="the reader has 0 sentences but 1 were predicted"):
        head.epoch_postprocess({"reader": {"word_counts": []}})
    head.no_entity_id = None
    head.batch_postprocess({"predictions": np.array([[0]]), "seq_lens": np.array([1])})
    with pytest.raises(ValueError, match="no-entity id is unknown"):
        head.epoch_postprocess({"reader": {"word_counts": [2]}})
    assert head.epoch_inputs_attrs == {"reader": {"word_counts": None}}


# ------------------------------------------------------------------------------------------ data as users have it


def test_one_sentence_per_line_chars_tags(tmp_path, chinese_vocab):
    # "chars<TAB>tags" without a header: was read as CoNLL (word '海 钓', tag 'O O') and failed on no_entity_label
    text = "海 钓 在 厦 门\tO O O B-LOC I-LOC\n张 三\tB-PER I-PER\n好\tO\n"
    r = reader_for(chinese_vocab, write(tmp_path, text), lang="cn")
    assert r.file_format == "lines" and r.num_examples == 3
    assert r.label_map == {"B-LOC": 0, "B-PER": 1, "I-LOC": 2, "I-PER": 3, "O": 4}
    batch = next(iter(r))
    assert batch["seq_lens"].tolist() == [5, 2, 1]
    assert batch["label_ids"][0].tolist() == [4, 4, 4, 0, 2] and batch["label_ids"][1, :2].tolist() == [1, 3]
    assert r.get_epoch_outputs()["words"][1] == ["张", "三"]
    # \x02-separated (PALM's separator) reads the same
    r2 = reader_for(chinese_vocab, write(tmp_path, text.replace(" ", "\x02"), "x02.txt"), lang="cn")
    assert r2.file_format == "lines" and next(iter(r2))["label_ids"].tolist() == batch["label_ids"].tolist()
    # a first sentence of one token looks like CoNLL: the first multi-tag line says so and how to read it
    one_first = write(tmp_path, "好\tO\n张 三\tB-PER I-PER\n", "one.txt")
    with pytest.raises(DataError, match=r"one\.txt:2: the tag column 'B-PER I-PER' holds several tags: this looks "
                                        r"like one sentence per line .* pass file_format='lines'"):
        reader_for(chinese_vocab, one_first)
    assert reader_for(chinese_vocab, one_first, file_format="lines").num_examples == 2
    with pytest.raises(DataError, match=r"one\.txt:1: 1 words but 2 tags"):  # counts still checked
        reader_for(chinese_vocab, write(tmp_path, "好\tB-PER I-PER\n", "one.txt"))


def test_headerless_tsv_with_named_columns(tmp_path, uncased_vocab):
    path = write(tmp_path, "B-X O\tx y\nO\tz\n")  # tags first: not the default column order
    r = SequenceLabelReader(uncased_vocab, 16, {"O": 0, "B-X": 1})
    r.load_data(path, 2, num_epochs=1, shuffle_train=False, columns=["label", "text_a"])
    assert r.file_format == "lines" and r.gold_tags() == [["B-X", "O"], ["O"]]
    with pytest.raises(ValueError, match="columns= names the columns of a TSV without a header"):
        r.load_data(path, 2, file_format="conll", columns=["label", "text_a"])


@pytest.mark.parametrize("text", [
    "John\tNNP\tB-NP\tB-PER\nSmith\tNNP\tI-NP\tI-PER\n\nParis\tNNP\tB-NP\tB-LOC\n",  # 4 tab columns
    "John B-PER\nSmith I-PER\n\nParis B-LOC\n",  # 2 space columns
    "John x B-PER\nSmith y I-PER\n\nParis z B-LOC\n",  # 3 space columns
    "".join(f"{w}\t{i}" + "\t_" * 7 + f"\t{t}\n" if w else "\n"  # 10 tab columns
            for i, w, t in [(1, "x", "B-PER"), (2, "y", "I-PER"), (0, "", ""), (1, "z", "B-LOC")]),
])
def test_conll_any_column_count_word_first_tag_last(tmp_path, uncased_vocab, text):
    r = reader_for(uncased_vocab, write(tmp_path, text), CONLL_MAP)
    assert r.file_format == "conll"
    assert r.gold_tags() == [["B-PER", "I-PER"], ["B-LOC"]]
    assert [len(w) for w in r.get_epoch_outputs()["words"]] == [2, 1]
    assert r.get_epoch_outputs()["words"][0][0] in ("John", "x")  # the word is the first column


def test_unrecognised_format_names_file_line_and_the_formats(tmp_path, uncased_vocab):
    path = write(tmp_path, "\n\na b\tc d\tO O\n")
    with pytest.raises(DataError, match=r"data\.txt:3: cannot tell the format of 'a b\\tc d\\tO O': expected 'tsv': "
                                        r".*'lines': one sentence per line.*'conll': one word per line"):
        reader_for(uncased_vocab, path)
    with pytest.raises(DataError, match=r"data\.txt:3: file_format='tsv' needs a header line"):
        reader_for(uncased_vocab, path, file_format="tsv")


def test_predict_gold_tag_missing_from_the_label_map_is_not_an_error(tmp_path, uncased_vocab):
    from torchpalm.evaluation import entity_f1_metric

    label_map = {"O": 0, "B-LOC": 1, "M-LOC": 2, "E-LOC": 3, "S-PER": 4}  # BMES
    text = "x B-LOC\ny M-LOC\nz E-LOC\n\nw S-ORG\n"  # S-ORG was never seen in training
    with pytest.raises(DataError, match=r"data\.txt:5: tag 'S-ORG' \(word 'w'\) is not in the label map"):
        reader_for(uncased_vocab, write(tmp_path, text), label_map)
    r = reader_for(uncased_vocab, write(tmp_path, text), label_map, phase="predict")
    assert r.gold_tags() == [["B-LOC", "M-LOC", "E-LOC"], ["S-ORG"]]
    # the dev metric reads BMES off the tags (an M- tag crashed it) and scores the unseen entity as a miss
    scores = entity_f1_metric([[1, 2, 3], [4]], r)
    assert (scores["precision"], scores["recall"]) == (0.5, 0.5)


def test_parquet_sentences_as_the_hub_ships_them(tmp_path, uncased_vocab):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["0", "1"], "tokens": [["EU", "rejects", "German"], ["Peter", "Blackburn"]],
                             "ner_tags": [[3, 0, 7], [1, 2]]}), tmp_path / "train.parquet")
    r = reader_for(uncased_vocab, str(tmp_path / "train.parquet"), label_map=CONLL_NAMES)
    assert r.file_format == "jsonl" and r.gold_tags() == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert next(iter(r))["label_ids"].tolist() == [[3, 0, 7], [1, 2, -100]]


def test_parquet_tag_names_come_from_the_datasets_metadata(tmp_path, uncased_vocab):
    """HF `datasets` writes each column's features into the Parquet schema (key `huggingface`): conll2003's
    integer `ner_tags` are named there, so no label map is needed (and `pos_tags`, also named, is not taken)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {"tokens": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
                "pos_tags": {"feature": {"names": ["NN", "VB", "JJ", "DT"], "_type": "ClassLabel"}, "_type": "List"},
                "ner_tags": {"feature": {"names": CONLL_NAMES, "_type": "ClassLabel"}, "_type": "Sequence"}}
    table = pa.table({"tokens": [["EU", "rejects", "German"], ["Peter", "Blackburn"]],
                      "pos_tags": [[0, 1, 2], [0, 0]], "ner_tags": [[3, 0, 7], [1, 2]]})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, tmp_path / "train.parquet")
    r = reader_for(uncased_vocab, str(tmp_path / "train.parquet"))
    assert r.label_map == {name: i for i, name in enumerate(CONLL_NAMES)}
    assert r.gold_tags() == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert next(iter(r))["label_ids"].tolist() == [[3, 0, 7], [1, 2, -100]]
    # without the metadata the ids have no names: the error says where to find them
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "bare.parquet")
    with pytest.raises(DataError, match=r"bare\.parquet:1: the tags are integer ids"):
        reader_for(uncased_vocab, str(tmp_path / "bare.parquet"))


@pytest.mark.parametrize("use_crf", [False, True])
def test_emission_starts_as_hf_token_classifier_plain_normal_and_zero_bias(use_crf):
    """Issue 30: the emission weight starts from HF's N(0, std) (not PALM's normal truncated at +-2 std, whose std
    is 0.88x and which never exceeds 2 std), and the bias at zero. 72 x 384 draws: the std is within 3%."""
    torch.manual_seed(0)
    head = SequenceLabel(72, 384, param_initializer_range=0.02, use_crf=use_crf)
    w = head.emission.weight.detach()
    assert abs(w.std().item() / 0.02 - 1) < 0.03
    assert w.abs().max().item() > 2.5 * 0.02  # a truncated start has no draw past 2 std
    assert abs(w.mean().item()) < 1e-3
    assert torch.equal(head.emission.bias, torch.zeros(72))
    head = SequenceLabel(72, 384, param_initializer_range=0.05, use_crf=use_crf)
    assert abs(head.emission.weight.std().item() / 0.05 - 1) < 0.03
