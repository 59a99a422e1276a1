"""ClassifyReader: PALM's batching (spec §5.1-5.2), exact resume, sharding, and clear errors on bad input."""

from __future__ import annotations

import logging

import pytest
import torch

from torchpalm.reader import ClassifyReader, DataError


def write(tmp_path, text: str, name: str = "data.tsv", mode: str = "w") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def rows(n: int) -> str:
    return "label\ttext_a\n" + "".join(f"{i % 2}\t{'word ' * (i % 7 + 1)}number {i}\n" for i in range(n))


def collect(reader) -> list[dict]:
    return list(reader)


def test_batches_padding_and_layout(tmp_path, uncased_vocab):
    reader = ClassifyReader(uncased_vocab, 16, seed=3, do_lower_case=True)
    reader.load_data(write(tmp_path, "label\ttext_a\ttext_b\n1\thello world\tgood bye\n0\thi\tyo\n"), 2,
                     num_epochs=1)
    reader.register_with(type("BB", (), {"inputs_attr": {"token_ids": 0, "position_ids": 0, "segment_ids": 0,
                                                        "input_mask": 0}})())
    (batch,) = collect(reader)
    assert set(batch) == {"token_ids", "position_ids", "segment_ids", "input_mask", "label_ids"}
    b = {k: v.tolist() for k, v in batch.items()}
    order = [0, 1] if b["label_ids"] == [1, 0] else [1, 0]
    long, short = order
    assert b["token_ids"][long] == [101, 7592, 2088, 102, 2204, 9061, 102]
    assert b["segment_ids"][long] == [0, 0, 0, 0, 1, 1, 1]
    assert b["token_ids"][short][:5] == [101, 7632, 102, 10930, 102] and b["token_ids"][short][5:] == [0, 0]
    assert b["input_mask"][short] == [1, 1, 1, 1, 1, 0, 0]
    assert b["position_ids"][short] == [0, 1, 2, 3, 4, 0, 0]
    assert batch["token_ids"].dtype == torch.int64


def test_drop_last_in_train_keep_in_predict_any_size(tmp_path, uncased_vocab):
    path = write(tmp_path, rows(10))
    train = ClassifyReader(uncased_vocab, 32, seed=1)
    train.load_data(path, 4, num_epochs=2)
    assert [len(b["label_ids"]) for b in collect(train)] == [4, 4, 4, 4]
    assert train.steps_per_epoch == 2
    pred = ClassifyReader(uncased_vocab, 32, phase="predict")
    pred.load_data(path, 4)
    assert [len(b["token_ids"]) for b in collect(pred)] == [4, 4, 2]
    # fewer examples than the batch size (PALM raised) and exactly one batch in predict (PALM NameError)
    small = ClassifyReader(uncased_vocab, 32, seed=1)
    small.load_data(write(tmp_path, rows(3), "small.tsv"), 8, num_epochs=1)
    assert [len(b["label_ids"]) for b in collect(small)] == [3]
    exact = ClassifyReader(uncased_vocab, 32, phase="predict")
    exact.load_data(write(tmp_path, rows(4), "four.tsv"), 4)
    assert [len(b["token_ids"]) for b in collect(exact)] == [4]


def test_shuffle_is_seeded_and_changes_per_epoch(tmp_path, uncased_vocab):
    path = write(tmp_path, rows(40))

    def labels_of(seed):
        r = ClassifyReader(uncased_vocab, 32, seed=seed)
        r.load_data(path, 5, num_epochs=2)
        return [b["token_ids"][:, 1:4].tolist() for b in r]

    a, b, c = labels_of(7), labels_of(7), labels_of(8)
    assert a == b and a != c
    assert a[:8] != a[8:]  # epochs are shuffled differently
    # predict keeps file order: the i-th row of one big batch is the i-th example on its own
    pred = ClassifyReader(uncased_vocab, 32, phase="predict")
    pred.load_data(path, 40)
    big = next(iter(pred))
    single = ClassifyReader(uncased_vocab, 32, phase="predict")
    single.load_data(path, 1)
    for i, one in enumerate(single):
        n = int((one["token_ids"][0] != 0).sum())
        assert big["token_ids"][i, :n].tolist() == one["token_ids"][0, :n].tolist()


def test_resume_from_state_is_exact(tmp_path, uncased_vocab):
    path = write(tmp_path, rows(50))
    full = ClassifyReader(uncased_vocab, 32, seed=11)
    full.load_data(path, 4, num_epochs=3)
    expected = [b["label_ids"].tolist() + b["token_ids"].flatten().tolist() for b in full]
    part = ClassifyReader(uncased_vocab, 32, seed=11)
    part.load_data(path, 4, num_epochs=3)
    it = iter(part)
    head = [next(it) for _ in range(17)]  # into the second epoch
    state = part.state_dict()
    resumed = ClassifyReader(uncased_vocab, 32, seed=999)
    resumed.load_data(path, 4, num_epochs=3)
    resumed.load_state_dict(state)
    got = [b["label_ids"].tolist() + b["token_ids"].flatten().tolist() for b in head] + \
          [b["label_ids"].tolist() + b["token_ids"].flatten().tolist() for b in resumed]
    assert got == expected


def test_sharding_splits_global_batch_without_duplicates(tmp_path, uncased_vocab):
    path = write(tmp_path, "label\ttext_a\n" + "".join(f"{i % 5}\tw{i}\n" for i in range(24)))
    whole = ClassifyReader(uncased_vocab, 16, seed=5)
    whole.load_data(path, 8, num_epochs=1)
    expected = [b["token_ids"][:, 1:3].tolist() for b in whole]
    shards = []
    for rank in range(2):
        r = ClassifyReader(uncased_vocab, 16, seed=5)
        r.load_data(path, 8, num_epochs=1)
        r.shard(rank, 2)
        shards.append([b["token_ids"][:, 1:3].tolist() for b in r])
    for step, batch in enumerate(expected):
        assert shards[0][step] + shards[1][step] == [row for row in batch]
    with pytest.raises(ValueError, match="must be divisible by the number of processes"):
        whole.shard(0, 3)


def test_chinese_lang_removes_spaces_and_glue_header(tmp_path, chinese_vocab):
    r = ClassifyReader(chinese_vocab, 32, lang="cn", phase="predict")
    r.load_data(write(tmp_path, "label\ttext_a\n1\t很 好 的\n"), 1)
    assert next(iter(r))["token_ids"].shape[1] == 5  # [CLS] 很 好 的 [SEP]
    g = ClassifyReader(chinese_vocab, 32, phase="predict")
    g.load_data(write(tmp_path, "sentence\tlabel\n好\t1\n", "glue.tsv"), 1)  # GLUE's column names
    assert g.num_examples == 1


def test_predict_needs_no_label_column(tmp_path, uncased_vocab):
    r = ClassifyReader(uncased_vocab, 32, phase="predict")
    r.load_data(write(tmp_path, "text_a\nhello\nworld\n"), 8)
    assert r.num_examples == 2


@pytest.mark.parametrize(
    "content, message",
    [("label\ttxt\n1\thello\n", r"data.tsv:1: header .* lacks the required column\(s\) \['text_a'\] .*other "
                                 r"names understood: \[.*'review', .*'text'\]\); rename the column"),
     ("label\ttext_a\n1\thello\nx\tworld\n", r"data.tsv:3: column 'label' must be an integer, got 'x'"),
     ("label\ttext_a\n1\thello\n0\tworld\textra\n", r"data.tsv:3: expected 2 tab-separated fields"),
     ("", r"data.tsv: the file is empty"),
     ("label\ttext_a\n", r"data.tsv: no examples after the header line"),
     (b"label\ttext_a\n1\thello\n0\tbad \xff byte\n", r"data.tsv:3: invalid UTF-8 byte b'\\xff' at column 7"),
     ("label\ttext_a\n-1\thello\n", r"data.tsv:2: label must be >= 0")],
)
def test_bad_input_names_file_line_and_problem(tmp_path, uncased_vocab, content, message):
    r = ClassifyReader(uncased_vocab, 32)
    with pytest.raises(DataError, match=message):
        r.load_data(write(tmp_path, content), 2)


def test_label_out_of_range_and_missing_files(tmp_path, uncased_vocab):
    r = ClassifyReader(uncased_vocab, 32)
    r.load_data(write(tmp_path, "label\ttext_a\n1\ta\n0\tb\n3\tc\n"), 2)
    with pytest.raises(DataError, match=r"data.tsv:4: label 3 is out of range for 2 classes"):
        r.check_num_classes(2)
    r.check_num_classes(4)
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        r.load_data(str(tmp_path / "missing.tsv"), 2)
    with pytest.raises(FileNotFoundError, match="no_vocab.txt"):
        ClassifyReader(str(tmp_path / "no_vocab.txt"), 32)
    with pytest.raises(ValueError, match="phase"):
        ClassifyReader(uncased_vocab, 32, phase="eval")


def test_clone_switches_phase_outputs(tmp_path, uncased_vocab, tiny_config):
    import torchpalm as palm

    train = ClassifyReader(uncased_vocab, 32)
    train.register_with(palm.backbone.BERT.from_config(tiny_config))
    pred = train.clone("predict")
    assert "label_ids" in train.outputs_attr and "label_ids" not in pred.outputs_attr
    assert "input_mask" in pred.outputs_attr and pred.phase == "predict" and train.phase == "train"


# ------------------------------------------------------------------------------ data as users have it


def labels_in_order(reader) -> list[int]:
    return [label for b in reader for label in b["label_ids"].tolist()]


@pytest.mark.parametrize("label_map", [["pos", "neg"], {"neg": 1, "pos": 0}, "list.json", "dict.json"])
def test_label_names_through_a_label_map(tmp_path, uncased_vocab, label_map):
    # names out of alphabetical order: a list's index is the id, whatever the names
    (tmp_path / "list.json").write_text('["pos", "neg"]')
    (tmp_path / "dict.json").write_text('{"neg": 1, "pos": 0}')
    if label_map in ("list.json", "dict.json"):
        label_map = str(tmp_path / label_map)
    path = write(tmp_path, "sentence\tlabel\ngood\tpos\nbad\tneg\nfine\tpos \n")  # GLUE header, stray space
    r = ClassifyReader(uncased_vocab, 16, label_map=label_map)
    r.load_data(path, 3, num_epochs=1, shuffle_train=False)
    assert labels_in_order(r) == [0, 1, 0]
    assert r.id2label == {0: "pos", 1: "neg"} and r.get_epoch_outputs() == {"id2label": {0: "pos", 1: "neg"}}
    assert r.gold_labels() == [0, 1, 0]


def test_unknown_label_is_an_error_in_train_only(tmp_path, uncased_vocab):
    path = write(tmp_path, "label\ttext_a\npos\tgood\nneutral\tso so\n")
    with pytest.raises(DataError, match=r"data.tsv:3: label 'neutral' is not in the label map \(the list label "
                                         r"map\); known labels: \['neg', 'pos'\]"):
        ClassifyReader(uncased_vocab, 16, label_map=["neg", "pos"]).load_data(path, 2)
    pred = ClassifyReader(uncased_vocab, 16, phase="predict", label_map=["neg", "pos"])
    pred.load_data(path, 2)
    assert pred.gold_labels() == [1, -1]  # an unknown gold label is a miss when scored, not an error
    no_label = write(tmp_path, "text_a\ngood\n", "nolabel.tsv")
    pred.load_data(no_label, 2)
    assert pred.num_examples == 1
    # without a label map, names build one (test_label_map_from_the_training_labels); a name among integer ids is
    # an error saying how to read names
    mixed = write(tmp_path, "label\ttext_a\n1\tgood\npos\tso so\n", "mixed.tsv")
    with pytest.raises(DataError, match=r"mixed.tsv:3: column 'label' must be an integer, got 'pos': other labels "
                                         r"of the file are integer ids; .* \(or pass label_map="):
        ClassifyReader(uncased_vocab, 16).load_data(mixed, 2)
    with pytest.raises(ValueError, match="has id 2 but the head has 2 classes"):
        ClassifyReader(uncased_vocab, 16, label_map=["a", "b", "c"]).check_num_classes(2)
    with pytest.raises(ValueError, match=r"labels \['a'\] appear more than once"):
        ClassifyReader(uncased_vocab, 16, label_map=["a", "b", "a"])
    with pytest.raises(ValueError, match=r"bad.json: expected a JSON object"):
        ClassifyReader(uncased_vocab, 16, label_map=write(tmp_path, '"pos"', "bad.json"))


def test_label_map_from_the_training_labels(tmp_path, uncased_vocab, caplog):
    """No label map and text labels (RTE's entailment / not_entailment): the map is the file's labels, sorted,
    logged, and kept (`label_map`, `data_options()`, the reader state a checkpoint stores, the bundle options)."""
    path = write(tmp_path, "label\ttext_a\ttext_b\nnot_entailment\ta\tb\nentailment\tc\td\nnot_entailment\te\tf\n")
    r = ClassifyReader(uncased_vocab, 16)
    with caplog.at_level(logging.INFO, logger="torchpalm"):
        r.load_data(path, 3, num_epochs=1, shuffle_train=False)
    assert r.label_map == {"entailment": 0, "not_entailment": 1}
    assert labels_in_order(r) == [1, 0, 1]
    assert "label map built from the labels of" in caplog.text and "(sorted;" in caplog.text
    assert r.data_options() == {"text_pairs": True, "label_map": {"entailment": 0, "not_entailment": 1}}
    assert r.state_dict()["data_options"] == r.data_options()
    assert r.export_options()["label_map"] == r.label_map and r.export_options()["text_pairs"] is True
    # integer labels keep their meaning: ids, no map
    ids = write(tmp_path, "label\ttext_a\n2\ta\n0\tb\n", "ids.tsv")
    r = ClassifyReader(uncased_vocab, 16)
    r.load_data(ids, 2, num_epochs=1, shuffle_train=False)
    assert r.label_map is None and labels_in_order(r) == [2, 0] and r.data_options() == {"text_pairs": False}
    # through the encoded-data cache too (the built map is part of the key; a cache hit still learns it)
    for hit in (False, True):
        r = ClassifyReader(uncased_vocab, 16).set_cache_dir(tmp_path / "cache")
        r.load_data(path, 3, num_epochs=1, shuffle_train=False)
        assert r.cache_hit is hit and r.label_map == {"entailment": 0, "not_entailment": 1}
        assert labels_in_order(r) == [1, 0, 1]


def test_label_files_one_label_per_line(tmp_path, uncased_vocab):
    """`labels.txt` as datasets ship it (one label per line, the id is the line number) as well as JSON, for
    Classify, Match and SequenceLabel; a file that is neither names the formats accepted."""
    from torchpalm.reader import MatchReader, SequenceLabelReader

    labels = write(tmp_path, "neg\npos\n\n", "labels.txt")  # (a blank line at the end is no label)
    path = write(tmp_path, "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    r = ClassifyReader(uncased_vocab, 16, label_map=labels)
    r.load_data(path, 2, num_epochs=1, shuffle_train=False)
    assert r.label_map == {"neg": 0, "pos": 1} and labels_in_order(r) == [1, 0]
    assert MatchReader(uncased_vocab, 16, label_map=labels).label_map == {"neg": 0, "pos": 1}
    tags = write(tmp_path, "B-PER\nI-PER\nO", "tags.txt")
    assert SequenceLabelReader(uncased_vocab, 16, tags).label_map == {"B-PER": 0, "I-PER": 1, "O": 2}
    assert ClassifyReader(uncased_vocab, 16, label_map=write(tmp_path, '["neg", "pos"]', "l.txt")).label_map == {
        "neg": 0, "pos": 1}  # JSON in a .txt file is still JSON
    formats = r"a label file holds a JSON list of labels or object \{label: id\}, or one label per line"
    for content, message in [("0\tneg\n1\tpos\n", r"odd.txt:1: a tab in a list of one label per line; "),
                             ("neg\n\npos\n", r"odd.txt:2: an empty line in a list of one label per line; "),
                             ('["neg", "pos"', r"odd.txt:1: not valid JSON \(.*\); ")]:
        with pytest.raises(ValueError, match=message + formats):
            ClassifyReader(uncased_vocab, 16, label_map=write(tmp_path, content, "odd.txt"))
    with pytest.raises(ValueError, match=r"odd.json:1: not valid JSON \(.*\); a label file holds"):
        ClassifyReader(uncased_vocab, 16, label_map=write(tmp_path, "neg\npos\n", "odd.json"))


def test_predict_file_without_the_label_the_columns_declare_last(tmp_path, uncased_vocab):
    """The training file's columns, label last, read an unlabelled predict file (one field short) as unlabelled;
    any other count is an error saying how to declare a predict file's columns."""
    from torchpalm.reader import MatchReader

    unlabelled = write(tmp_path, "a man sleeps\ta person rests\nit rains\tthe sun shines\n", "test.tsv")
    columns = ["text_a", "text_b", "label"]
    for cls in (ClassifyReader, MatchReader):
        r = cls(uncased_vocab, 16, phase="predict", label_map=["no", "yes"])
        r.load_data(unlabelled, 2, columns=columns)
        assert r.num_examples == 2 and "label_ids" not in next(iter(r))
        labelled = cls(uncased_vocab, 16, phase="predict", label_map=["no", "yes"])
        labelled.load_data(write(tmp_path, "a\tb\tyes\nc\td\tno\n", "dev.tsv"), 2, columns=columns)
        assert labelled.gold_labels() == [1, 0]
        # a train file needs its labels
        with pytest.raises(DataError, match=r"test.tsv:1: expected 3 tab-separated fields \(columns: \['text_a', "
                                             r"'text_b', 'label'\]\), got 2$"):
            cls(uncased_vocab, 16, label_map=["no", "yes"]).load_data(unlabelled, 2, columns=columns)
    # label not last: which field is missing is unknown, so an error that says how to declare them
    with pytest.raises(DataError, match=r"test.tsv:1: expected 3 tab-separated fields .* got 2; in a predict file "
                                         r"the label may be left out when it is the last of the columns"):
        ClassifyReader(uncased_vocab, 16, phase="predict").load_data(unlabelled, 2,
                                                                     columns=["label", "text_a", "text_b"])


def test_a_pair_task_refuses_single_texts(tmp_path, uncased_vocab):
    """A predict reader that knows its task was trained on text pairs (from the checkpoint or bundle) refuses
    single texts, and one trained on single texts refuses pairs, saying why."""
    pred = ClassifyReader(uncased_vocab, 16, phase="predict", text_pairs=True)
    with pytest.raises(DataError, match=r"<inputs>: this task was trained on text pairs \(text_a, text_b\) but the "
                                         r"input holds single texts"):
        pred.load_inputs(["just one sentence"], 2)
    with pytest.raises(DataError, match=r"single.tsv: this task was trained on text pairs"):
        pred.load_data(write(tmp_path, "text_a\nhello\n", "single.tsv"), 2)
    pred.load_inputs([("a", "b")], 2)
    single = ClassifyReader(uncased_vocab, 16, phase="predict", text_pairs=False)
    with pytest.raises(DataError, match=r"trained on single texts \(text_a\) but the input holds text pairs"):
        single.load_inputs([("a", "b")], 2)
    ClassifyReader(uncased_vocab, 16, phase="predict").load_inputs(["a", "b"], 2)  # unknown: not checked


def test_file_without_header_takes_columns(tmp_path, uncased_vocab):
    # the first line is data: with a header it would be swallowed (or fail as 'lacks the required column')
    path = write(tmp_path, "1\thello world\n0\tgood bye\n1\tyes\n")
    r = ClassifyReader(uncased_vocab, 16)
    r.load_data(path, 3, num_epochs=1, shuffle_train=False, columns=["label", "text_a"])
    assert r.num_examples == 3 and labels_in_order(r) == [1, 0, 1]
    pairs = write(tmp_path, "a\tb\tpos\nc\td\tneg\n", "pairs.tsv")
    r2 = ClassifyReader(uncased_vocab, 16, label_map=["neg", "pos"])
    r2.load_data(pairs, 2, num_epochs=1, shuffle_train=False, columns=["text_a", "text_b", "label"])
    assert labels_in_order(r2) == [1, 0]
    r2.reset()
    assert next(iter(r2))["token_ids"].shape[1] == 5  # [CLS] a [SEP] b [SEP]: a pair
    with pytest.raises(DataError, match=r"data.tsv:1: expected 3 tab-separated fields \(columns: "):
        r.load_data(path, 3, columns=["label", "text_a", "text_b"])
    with pytest.raises(DataError, match=r"data.tsv: columns=\['text_a'\] lacks the required column\(s\) \['label'\]"):
        r.load_data(path, 3, columns=["text_a"])


CSV_TEXT = 'text_a,label,id\n"hello, world",1,a\n"a ""quoted""\nline",0,b\n\nplain,1,c\n'


def test_csv_with_quotes_commas_and_newlines(tmp_path, uncased_vocab):
    path = write(tmp_path, CSV_TEXT, "data.csv")
    r = ClassifyReader(uncased_vocab, 32, phase="predict", do_lower_case=True)
    r.load_data(path, 8)
    tok = r.tokenizer
    batch = next(iter(r))
    assert batch["token_ids"][0, 1:4].tolist() == tok.encode("hello, world")
    n = int((batch["token_ids"][1] != tok.pad_id).sum())
    assert batch["token_ids"][1, 1:n - 1].tolist() == tok.encode('a "quoted"\nline')
    assert r.gold_labels() == [1, 0, 1] and [e["line"] for e in r._examples] == [2, 3, 6]
    # the same file as TSV (explicit format) has no 'label' column: the format argument is honoured
    with pytest.raises(DataError, match=r"data.csv:1: header .* lacks the required column"):
        r.load_data(path, 8, file_format="tsv")
    headerless = write(tmp_path, '"x, y",1\nz,0\n', "nohead.csv")
    r.load_data(headerless, 8, columns=["text_a", "label"])
    assert r.gold_labels() == [1, 0]
    with pytest.raises(DataError, match=r"bad.csv:3: expected 2 comma-separated fields"):
        r.load_data(write(tmp_path, "text_a,label\nok,1\ntoo,many,1\n", "bad.csv"), 8)
    with pytest.raises(ValueError, match="file_format must be one of"):
        r.load_data(path, 8, file_format="xml")


def test_json_lines(tmp_path, uncased_vocab):
    text = '{"text_a": "good", "label": "pos"}\n\n{"sentence": "bad", "label": "neg", "idx": 3}\n'
    for name, fmt in (("data.jsonl", None), ("data.json", None), ("data.txt", "jsonl"), ("data2.txt", "json")):
        r = ClassifyReader(uncased_vocab, 16, label_map={"neg": 0, "pos": 1})
        r.load_data(write(tmp_path, text, name), 2, num_epochs=1, shuffle_train=False, file_format=fmt)
        assert labels_in_order(r) == [1, 0]
    ints = ClassifyReader(uncased_vocab, 16)
    ints.load_data(write(tmp_path, '{"text_a": "x", "label": 1}\n', "ints.jsonl"), 1)
    assert ints.gold_labels() == [1]


@pytest.mark.parametrize("content, message", [
    ('{"text_a": "x", "label": 1}\n{"text_a": "y"}\n', r"bad.jsonl:2: the object lacks the required key\(s\) "
                                                       r"\['label'\]"),
    ('{"text_a": "x", "label": 1}\n["y", 0]\n', r"bad.jsonl:2: expected a JSON object"),
    ('{"text_a": "x", "label": 1}\n{"text_a": "y", label: 0}\n', r"bad.jsonl:2: not a JSON object"),
    ('{"text_a": ["x"], "label": 1}\n', r"bad.jsonl:1: key 'text_a' must be a string"),
    ('{"text_a": "x", "label": 1, "text_b": "z"}\n{"text_a": "y", "label": 0}\n', r"bad.jsonl:2: keys .* differ"),
])
def test_json_lines_errors_name_file_and_line(tmp_path, uncased_vocab, content, message):
    with pytest.raises(DataError, match=message):
        ClassifyReader(uncased_vocab, 16).load_data(write(tmp_path, content, "bad.jsonl"), 1)


def test_json_array_files(tmp_path, uncased_vocab):
    # pandas' to_json(orient="records") and many datasets' .json files: one array of objects, pretty-printed
    text = '[\n  {"text": "good", "label": 1, "idx": [0]},\n\n  {"text": "bad",\n   "label": 0}\n]\n'
    r = ClassifyReader(uncased_vocab, 16, do_lower_case=True)
    r.load_data(write(tmp_path, "\ufeff" + text, "array.json"), 2, num_epochs=1, shuffle_train=False)
    assert labels_in_order(r) == [1, 0]
    assert [e["line"] for e in r._examples] == [2, 4]  # where each element starts
    assert r._examples[0]["token_ids"].tolist() == [101, 2204, 102]


@pytest.mark.parametrize("content, message", [
    ('[\n {"text_a": "x", "label": 1},\n {"text_a": "y" "label": 0}\n]', r"bad.json:3: not valid JSON"),
    ('[\n {"text_a": "x", "label": 1},\n {"text_a": "y"}\n]', r"bad.json:3: the object lacks the required key"),
    ('[\n {"text_a": "x", "label": 1},\n ["y", 0]\n]', r"bad.json:3: expected a JSON object"),
    ('[\n {"text_a": "x", "label": 1}\n {"text_a": "y", "label": 0}]', r"bad.json:3: expected ',' or ']' after the "
                                                                       r"array element that starts on line 2"),
    ('[{"text_a": "x", "label": 1}]\n[]', r"bad.json:2: text after the closing"),
    ('[{"text_a": "x", "label": 1},\n', r"bad.json:2: not valid JSON"),
    (' [ ]\n', r"bad.json: the JSON array is empty"),
])
def test_json_array_errors_name_file_and_line(tmp_path, uncased_vocab, content, message):
    with pytest.raises(DataError, match=message):
        ClassifyReader(uncased_vocab, 16).load_data(write(tmp_path, content, "bad.json"), 1)


@pytest.mark.parametrize("header, expected", [
    (["text", "label"], ["text_a", "label"]),                                    # HF datasets (IMDB, AG News, ...)
    (["review", "sentiment"], ["text_a", "label"]),                              # IMDB's CSV on Kaggle
    (["idx", "sentence", "label"], ["idx", "text_a", "label"]),                  # SST-2, CoLA
    (["premise", "hypothesis", "label"], ["text_a", "text_b", "label"]),          # SNLI / MNLI / XNLI exports
    (["sentence1", "sentence2", "gold_label"], ["text_a", "text_b", "label"]),    # SNLI / MNLI originals
    (["index", "question", "sentence", "label"], ["index", "text_a", "text_b", "label"]),  # QNLI
    (["question", "passage", "label"], ["text_a", "text_b", "label"]),          # BoolQ
    (["question", "label"], ["question", "label"]),                              # a lone question is no text
    (["label", "gold_label", "sentence"], ["label", "gold_label", "text_a"]),     # PALM's name wins
    (["text_a", "text", "label"], ["text_a", "text", "label"]),
    (["sentence", "text", "label"], ["text_a", "text", "label"]),                # never two columns named alike
])
def test_public_column_names(header, expected):
    from torchpalm.reader.base import canonical_columns
    assert canonical_columns(header) == expected


def test_public_pair_headers_load_in_order(tmp_path, uncased_vocab):
    qnli = write(tmp_path, "index\tquestion\tsentence\tlabel\n0\twhat is it?\tit is good.\tentailment\n", "qnli.tsv")
    r = ClassifyReader(uncased_vocab, 32, label_map=["entailment", "not_entailment"], do_lower_case=True)
    r.load_data(qnli, 1)
    reference = ClassifyReader(uncased_vocab, 32, label_map=["entailment", "not_entailment"], do_lower_case=True)
    reference.load_data(write(tmp_path, "label\ttext_a\ttext_b\nentailment\twhat is it?\tit is good.\n"), 1)
    assert r._examples[0]["token_ids"].tolist() == reference._examples[0]["token_ids"].tolist()
    assert r._examples[0]["segment_ids"].tolist() == reference._examples[0]["segment_ids"].tolist()


def test_uncased_vocab_without_lower_casing_warns(caplog, uncased_vocab):
    import torchpalm.tokenizer as tok
    tok._warned_uncased.discard(str(uncased_vocab))
    with caplog.at_level("WARNING", logger="torchpalm"):
        ClassifyReader(uncased_vocab, 16, do_lower_case=True)
        assert "do_lower_case=False" not in caplog.text
        ClassifyReader(uncased_vocab, 16)
    assert "no upper-case word pieces" in caplog.text and "pass do_lower_case=True" in caplog.text
    assert tok.is_uncased_vocab({"[CLS]": 0, "<S>": 1, "the": 2})
    assert not tok.is_uncased_vocab({"[CLS]": 0, "The": 1, "the": 2})


def test_predictions_carry_label_names(tmp_path, uncased_vocab):
    import json

    import numpy as np

    from torchpalm.head import Classify
    from torchpalm.trainer import finish_prediction

    r = ClassifyReader(uncased_vocab, 16, phase="predict", label_map=["neg", "pos"])
    r.load_data(write(tmp_path, "text_a\nx\ny\n"), 2)
    head = Classify(2, 8, phase="predict")
    head.batch_postprocess({"logits": np.array([[0.1, 0.9], [2.0, -1.0]]), "probs": np.array([[0.3, 0.7]] * 2)})
    out = finish_prediction(r, head, str(tmp_path / "pred"))
    assert [(p["label"], p["label_name"]) for p in out] == [(1, "pos"), (0, "neg")]
    lines = [json.loads(line) for line in open(tmp_path / "pred" / "predictions.json")]
    assert [p["label_name"] for p in lines] == ["pos", "neg"]
    # no label map: PALM's results, unchanged
    plain = ClassifyReader(uncased_vocab, 16, phase="predict")
    plain.load_data(write(tmp_path, "text_a\nx\n", "plain.tsv"), 1)
    head.batch_postprocess({"logits": np.array([[0.1, 0.9]]), "probs": np.array([[0.3, 0.7]])})
    assert set(finish_prediction(plain, head, None)[0]) == {"index", "label", "logits", "probs"}


def test_parquet_files_as_the_hub_ships_them(tmp_path, uncased_vocab):
    # glue/sst2's train-00000-of-00001.parquet layout: sentence, label (int), idx
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("a good film", 1), ("bad , slow", 0), ("fine", 1)]
    pq.write_table(pa.table({"sentence": [t for t, _ in rows], "label": [y for _, y in rows],
                             "idx": list(range(3))}), tmp_path / "train.parquet")
    tsv = write(tmp_path, "label\ttext_a\n" + "".join(f"{y}\t{t}\n" for t, y in rows))
    hub, ref = (ClassifyReader(uncased_vocab, 16, do_lower_case=True) for _ in range(2))
    hub.load_data(str(tmp_path / "train.parquet"), 3, num_epochs=1, shuffle_train=False)
    ref.load_data(tsv, 3, num_epochs=1, shuffle_train=False)
    assert [e["token_ids"].tolist() for e in hub._examples] == [e["token_ids"].tolist() for e in ref._examples]
    assert hub.gold_labels() == [1, 0, 1]
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable Parquet file"):
        hub.load_data(str(tmp_path / "broken.parquet"), 3)


def test_tsv_quoted_the_csv_way_reads_the_original_text(tmp_path):
    """pandas' to_csv(sep="\\t") (the csv module's minimal quoting) quotes a field holding quotes and doubles
    them; raw quotes in PALM/GLUE TSVs (no quoting at all) stay text."""
    import csv

    from torchpalm.reader.base import read_table

    texts = ['He said "hi" twice', '"Yes."', '"', 'a "" b', "plain"]
    path = tmp_path / "exported.tsv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["label", "text_a"])
        writer.writerows([[str(i % 2), t] for i, t in enumerate(texts)])
    assert '"He said ""hi"" twice"' in path.read_text()  # really quoted by the writer
    assert [r["text_a"] for _, r in read_table(str(path), ("label", "text_a"))] == texts

    raw = ['"Yes," he said.', '"Yes."', 'the "" thing', '" a quote at each end "', '""']  # GLUE-style: no quoting
    path = tmp_path / "raw.tsv"
    path.write_text("label\ttext_a\n" + "".join(f"1\t{t}\n" for t in raw), encoding="utf-8")
    assert [r["text_a"] for _, r in read_table(str(path), ("label", "text_a"))] == raw
