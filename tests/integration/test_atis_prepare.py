"""examples/multi_task/prepare_atis.py on the real ATIS folder: counts, a known row, label maps that cover every
tag and intent id, and torchpalm's readers loading the produced files; plus file:line errors on bad input."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT, shared

import torchpalm as palm
from torchpalm.reader.base import read_tsv
from torchpalm.reader.sequence_label import read_tagged_file

spec = importlib.util.spec_from_file_location("prepare_atis_under_test",
                                              ROOT / "examples" / "multi_task" / "prepare_atis.py")
prepare_atis = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_atis)

FIRST_WORDS = "i want to fly from baltimore to dallas round trip".split()
FIRST_TAGS = ["O", "O", "O", "O", "O", "B-fromloc.city_name", "O", "B-toloc.city_name", "B-round_trip",
              "I-round_trip"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    for split in ("train", "dev", "test"):
        for name in ("seq.in", "seq.out", "label"):
            shared("atis", split, name)
    atis = shared("atis", "intent_label.txt").parent
    return prepare_atis.prepare(str(atis), str(tmp_path_factory.mktemp("atis")))


def test_counts_and_known_row(converted):
    assert converted["counts"] == {"train": 4478, "dev": 500, "test": 893}
    for split, n in converted["counts"].items():
        assert len(read_tsv(converted["intent"][split], required=("label", "text_a"))) == n
        assert len(read_tagged_file(converted["slot"][split], "tsv")[1]) == n
    # the first training utterance, in both formats
    with open(converted["slot"]["train"], encoding="utf-8") as f:
        assert f.readline() == "text_a\tlabel\n"
        assert f.readline() == "\x02".join(FIRST_WORDS) + "\t" + "\x02".join(FIRST_TAGS) + "\n"
    first = read_tagged_file(converted["slot"]["train"], "tsv")[1][0]
    assert (first.words, first.tags) == (FIRST_WORDS, FIRST_TAGS)
    intent_map = json.load(open(converted["intent"]["label_map"]))
    _, row = read_tsv(converted["intent"]["train"], required=("label", "text_a"))[0]
    assert row["text_a"] == " ".join(FIRST_WORDS)
    assert int(row["label"]) == intent_map["atis_flight"]


def test_label_maps_cover_everything(converted):
    slot_map = json.load(open(converted["slot"]["label_map"]))
    intent_map = json.load(open(converted["intent"]["label_map"]))
    assert slot_map == converted["slot_label_map"] and intent_map == converted["intent_label_map"]
    assert sorted(slot_map.values()) == list(range(len(slot_map))) and "O" in slot_map
    assert sorted(intent_map.values()) == list(range(len(intent_map))) == list(range(22))
    assert intent_map["UNK"] == 0
    for split in ("train", "dev", "test"):
        for s in read_tagged_file(converted["slot"][split], "tsv")[1]:
            assert all(t in slot_map for t in s.tags), (split, s.line)
        ids = [int(r["label"]) for _, r in read_tsv(converted["intent"][split], required=("label",))]
        assert set(ids) <= set(intent_map.values())
    # JointBERT's handling: intents missing from intent_label.txt (atis_day_name, some multi-intents) -> UNK
    assert converted["unk_intents"] == {"train": 0, "dev": 1, "test": 5}
    test_ids = [int(r["label"]) for _, r in read_tsv(converted["intent"]["test"], required=("label",))]
    assert test_ids.count(intent_map["UNK"]) == 5
    # tags seen only outside train are still in the map (the reader rejects unknown tags)
    assert "B-booking_class" in converted["eval_only_tags"]
    assert all(slot_map[t] >= len(slot_map) - len(converted["eval_only_tags"]) for t in converted["eval_only_tags"])


def test_readers_load_the_converted_files(converted, uncased_vocab):
    slot_map = json.load(open(converted["slot"]["label_map"]))
    for split in ("train", "test"):
        slot_reader = palm.reader.SequenceLabelReader(uncased_vocab, 64, converted["slot"]["label_map"], seed=0,
                                                      do_lower_case=True)
        slot_reader.load_data(converted["slot"][split], 32, num_epochs=1)
        assert slot_reader.num_examples == converted["counts"][split]
        assert slot_reader.label_map == slot_map
        intent_reader = palm.reader.ClassifyReader(uncased_vocab, 64, seed=0, do_lower_case=True)
        intent_reader.load_data(converted["intent"][split], 32, num_epochs=1)
        assert intent_reader.num_examples == converted["counts"][split]
    batch = next(iter(slot_reader))
    assert batch["label_ids"].shape == batch["word_starts"].shape
    assert int(batch["label_ids"].max()) < len(slot_map)
    batch = next(iter(intent_reader))
    assert int(batch["label_ids"].max()) < 22


def write_atis(root, rows: dict[str, list[tuple[str, str, str]]]):
    for split, items in rows.items():
        (root / split).mkdir(parents=True)
        for k, name in enumerate(("seq.in", "seq.out", "label")):
            (root / split / name).write_text("".join(item[k] + "\n" for item in items))
    (root / "intent_label.txt").write_text("UNK\natis_flight\n")


GOOD = ("fly to boston", "O O B-toloc.city_name", "atis_flight")


def test_tag_count_mismatch_names_file_and_line(tmp_path):
    bad = ("fly from denver", "O B-fromloc.city_name", "atis_flight")  # 3 words, 2 tags
    write_atis(tmp_path / "atis", {"train": [GOOD, GOOD], "dev": [GOOD], "test": [GOOD, GOOD, bad]})
    with pytest.raises(prepare_atis.AtisFormatError) as e:
        prepare_atis.prepare(str(tmp_path / "atis"), str(tmp_path / "out"))
    assert f"{tmp_path / 'atis' / 'test' / 'seq.out'}:3:" in str(e.value)
    assert "2 tags for the 3 words" in str(e.value)


def test_line_count_mismatch_and_unseen_intent(tmp_path):
    write_atis(tmp_path / "atis", {"train": [GOOD], "dev": [GOOD], "test": [GOOD]})
    with open(tmp_path / "atis" / "dev" / "label", "a") as f:
        f.write("atis_flight\n")
    with pytest.raises(prepare_atis.AtisFormatError, match="different line counts"):
        prepare_atis.prepare(str(tmp_path / "atis"), str(tmp_path / "out"))
    write_atis(tmp_path / "ok", {"train": [GOOD], "dev": [GOOD],
                                 "test": [("what day", "O O", "atis_day_name")]})
    out = prepare_atis.prepare(str(tmp_path / "ok"), str(tmp_path / "out"))
    assert out["unk_intents"]["test"] == 1
    assert open(out["intent"]["test"]).read() == "label\ttext_a\n0\twhat day\n"
