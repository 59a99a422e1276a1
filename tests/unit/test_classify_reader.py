"""ClassifyReader: PALM's batching (spec §5.1-5.2), exact resume, sharding, and clear errors on bad input."""

from __future__ import annotations

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
    with pytest.raises(ValueError, match="not divisible"):
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
    [("label\ttext\n1\thello\n", r"data.tsv:1: header .* lacks the required column\(s\) \['text_a'\]"),
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
