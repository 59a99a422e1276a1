"""Hostile and mistaken inputs: each is refused with a message naming the file (and key or line) and what was
expected, before training, or has a documented behaviour; never a crash deep in torch or a hang."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from conftest import shared
from safetensors.torch import save_file

import torchpalm as palm
from torchpalm import checkpoint as ckpt
from torchpalm.backbone.bert import MAX_LAYERS
from torchpalm.reader import DataError
from torchpalm.reader import mrc as mrc_module


# ---------------------------------------------------------------- helpers
def write_config(tmp_path, config, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def write_tsv(tmp_path, n=16, name="train.tsv"):
    lines = ["label\ttext_a"] + [f"{i % 2}\t{'good movie' if i % 2 else 'bad plot'} {i}" for i in range(n)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def small_trainer(tmp_path, vocab, config, batch=4):
    """A loaded classify reader, a BERT from the config FILE (so errors can name it), a built trainer."""
    torch.manual_seed(0)
    reader = palm.reader.ClassifyReader(vocab, 32, seed=0, do_lower_case=True)
    reader.load_data(write_tsv(tmp_path), batch, num_epochs=2)
    backbone = palm.backbone.BERT.from_config(write_config(tmp_path, config))
    reader.register_with(backbone)
    head = palm.head.Classify(2, config["hidden_size"], 0.0)
    trainer = palm.Trainer("cls", device="cpu")
    loss = trainer.build_forward(backbone, head)
    trainer.build_backward(palm.optimizer.Adam(loss, 1e-3))
    trainer.fit_reader(reader)
    return trainer


def deep_json(depth=100_000):
    return "[" * depth + "]" * depth


# ---------------------------------------------------------------- configs
BAD_CONFIG_VALUES = [
    ("vocab_size", 0, ValueError, "at least 1"),
    ("vocab_size", -5, ValueError, "at least 1"),
    ("num_attention_heads", 0, ValueError, "at least 1"),
    ("num_attention_heads", 3, ValueError, "not divisible by 'num_attention_heads' 3"),
    ("hidden_size", "32", TypeError, "an integer"),
    ("num_hidden_layers", 2.0, TypeError, "an integer"),
    ("hidden_dropout_prob", "0.1", TypeError, "a number in [0, 1)"),
    ("attention_probs_dropout_prob", 1.5, ValueError, "a number in [0, 1)"),
    ("type_vocab_size", 0, ValueError, "at least 1"),
    ("num_hidden_layers", 10**6, ValueError, f"at most {MAX_LAYERS}"),
    ("vocab_size", 10**11, ValueError, "more than this machine's"),  # 3.2e12 parameters
    ("layer_norm_eps", 0, ValueError, "a positive number"),
]


@pytest.mark.parametrize(("key", "value", "error", "expected"), BAD_CONFIG_VALUES,
                         ids=[f"{k}-{v}" for k, v, _, _ in BAD_CONFIG_VALUES])
def test_bad_config_values_name_file_and_key(tmp_path, tiny_config, key, value, error, expected):
    path = write_config(tmp_path, {**tiny_config, key: value})
    with pytest.raises(error) as info:
        palm.backbone.BERT.from_config(path)
    message = str(info.value)
    assert path in message and f"'{key}'" in message and expected in message
    with pytest.raises(error, match="BERT arguments"):  # the constructor checks too, for code-built models
        palm.backbone.BERT(**{**{k: tiny_config[k] for k in tiny_config}, key: value})


def test_ernie_config_and_missing_keys_name_the_file(tmp_path, tiny_config):
    path = write_config(tmp_path, {**tiny_config, "task_type_vocab_size": 0})
    with pytest.raises(ValueError, match=rf"{path}: 'task_type_vocab_size' must be at least 1"):
        palm.backbone.ERNIE.from_config(path)
    missing = write_config(tmp_path, {k: v for k, v in tiny_config.items() if k != "vocab_size"}, "missing.json")
    with pytest.raises(KeyError, match=rf"{missing} lacks 'vocab_size'"):
        palm.backbone.BERT.from_config(missing)


def test_deeply_nested_config_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(deep_json(), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}: backbone config nested too deeply"):
        palm.backbone.BERT.from_config(str(path))


def test_reader_longer_than_position_table_is_refused_when_connected(tmp_path, uncased_vocab, tiny_config):
    path = write_config(tmp_path, tiny_config)  # max_position_embeddings 128
    backbone = palm.backbone.BERT.from_config(path)
    reader = palm.reader.ClassifyReader(uncased_vocab, 200, do_lower_case=True)
    expected = rf"max_len=200 is above the backbone's 'max_position_embeddings' 128 \({path}\)"
    with pytest.raises(ValueError, match=expected):
        reader.register_with(backbone)
    # a script that never calls register_with is stopped at fit_reader, before any step
    reader.load_data(write_tsv(tmp_path), 4)
    trainer = palm.Trainer("cls", device="cpu")
    trainer.build_forward(backbone, palm.head.Classify(2, tiny_config["hidden_size"]))
    with pytest.raises(ValueError, match=expected):
        trainer.fit_reader(reader)


def test_vocabulary_larger_than_embedding_table_is_refused(tmp_path, uncased_vocab, tiny_config):
    path = write_config(tmp_path, {**tiny_config, "vocab_size": 1000})
    backbone = palm.backbone.BERT.from_config(path)
    reader = palm.reader.ClassifyReader(uncased_vocab, 32, do_lower_case=True)
    with pytest.raises(ValueError, match=rf"{uncased_vocab} has 30522 ids but the backbone's 'vocab_size' is "
                                         rf"1000 \({path}\)"):
        reader.register_with(backbone)
    reader.load_data(write_tsv(tmp_path), 4)
    trainer = palm.Trainer("cls", device="cpu")
    trainer.build_forward(backbone, palm.head.Classify(2, tiny_config["hidden_size"]))
    with pytest.raises(ValueError, match="'vocab_size' is 1000"):
        trainer.fit_reader(reader)


# ---------------------------------------------------------------- weights
def backbone_state(tiny_config):
    torch.manual_seed(0)
    return palm.backbone.BERT.from_config(tiny_config).state_dict()


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_tensor_in_float_slot_is_refused(tmp_path, tiny_config, dtype):
    state = backbone_state(tiny_config)
    state["embed_norm.weight"] = torch.ones_like(state["embed_norm.weight"], dtype=dtype)
    file = str(tmp_path / "model.safetensors")
    save_file({f"backbone.{k}": v.contiguous() for k, v in state.items()}, file)
    backbone = palm.backbone.BERT.from_config(tiny_config)
    with pytest.raises(TypeError, match=rf"{file}: parameter 'embed_norm.weight' is {dtype} in the file"):
        palm.trainer.load_pretrained_backbone(backbone, file)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_pretrained_weights_are_refused(tmp_path, tiny_config, bad):
    state = backbone_state(tiny_config)
    state["layers.1.ffn_out.weight"][3, 5] = bad
    file = str(tmp_path / "model.safetensors")
    save_file({f"backbone.{k}": v.contiguous() for k, v in state.items()}, file)
    backbone = palm.backbone.BERT.from_config(tiny_config)
    with pytest.raises(ValueError, match=rf"{file}: parameter 'layers.1.ffn_out.weight' holds 1 NaN or infinite"):
        palm.trainer.load_pretrained_backbone(backbone, file)


def test_truncated_or_corrupt_safetensors_name_the_file(tmp_path, tiny_config):
    state = backbone_state(tiny_config)
    file = str(tmp_path / "model.safetensors")
    save_file(state, file)
    raw = open(file, "rb").read()
    backbone = palm.backbone.BERT.from_config(tiny_config)
    for broken in (raw[: len(raw) // 2], b"\xff" * 8 + raw[8:], b""):
        with open(file, "wb") as f:
            f.write(broken)
        with pytest.raises(ValueError, match=rf"{file}: not a readable safetensors file, truncated or corrupt"):
            palm.trainer.load_pretrained_backbone(backbone, file)
    torch_file = str(tmp_path / "pytorch_model.bin")
    torch.save(state, torch_file)
    with open(torch_file, "r+b") as f:
        f.truncate(os.path.getsize(torch_file) // 2)
    with pytest.raises(ValueError, match=rf"{torch_file}: not a readable torch file, truncated or corrupt"):
        ckpt.load_state_file(torch_file)


class RunsCode:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def replace_in_checkpoint(directory, name, data: bytes):
    """Replaces a checkpoint file and updates the completeness marker, as a deliberate attacker would."""
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)
    marker = os.path.join(directory, ckpt.MARKER)
    record = json.load(open(marker))
    record["files"][name] = len(data)
    json.dump(record, open(marker, "w"))


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_pickle_in_optimizer_or_rng_file_is_refused_by_name(tmp_path, uncased_vocab, tiny_config, name):
    trainer = small_trainer(tmp_path, uncased_vocab, tiny_config)
    trainer.train_one_step(trainer.get_one_batch())
    directory = trainer.save(str(tmp_path / "ckpt.step1"))
    flag = str(tmp_path / "payload_ran")
    replace_in_checkpoint(directory, name, pickle.dumps({"state": RunsCode(flag)}))
    with pytest.raises(ValueError, match=rf"{os.path.join(directory, name)}: refused to load: the file holds "
                                         rf"pickled objects"):
        trainer.load_ckpt(directory)
    assert not os.path.exists(flag)


def test_corrupt_checkpoint_weights_name_the_file(tmp_path, uncased_vocab, tiny_config):
    trainer = small_trainer(tmp_path, uncased_vocab, tiny_config)
    directory = trainer.save(str(tmp_path / "ckpt.step0"))
    file = os.path.join(directory, "model.safetensors")
    size = os.path.getsize(file)
    with open(file, "r+b") as f:  # same size, so the completeness marker agrees: the bytes are wrong
        f.write(b"\xff" * 16)
    assert os.path.getsize(file) == size
    with pytest.raises(ValueError, match=rf"{file}: not a readable safetensors file"):
        trainer.load_ckpt(directory)


# ---------------------------------------------------------------- data: MRC windows in linear time and memory
def quadratic_max_context_flags(spans, num_tokens):
    """The implementation before this fix (a windows x tokens score table), kept as the equality reference."""
    if num_tokens == 0:
        return [np.zeros(length, dtype=bool) for _, length in spans]
    positions = np.arange(num_tokens)
    scores = np.full((len(spans), num_tokens), -np.inf)
    for w, (start, length) in enumerate(spans):
        end = start + length - 1
        p = positions[start:start + length]
        scores[w, start:start + length] = np.minimum(p - start, end - p) + 0.01 * length
    best = np.argmax(scores, axis=0)
    return [best[start:start + length] == w for w, (start, length) in enumerate(spans)]


def squad_subset(tmp_path, n_articles=4):
    with zipfile.ZipFile(shared("squad_v1.1", "dev-v1.1.json.zip")) as zf:
        data = json.loads(zf.read("dev-v1.1.json"))
    path = tmp_path / "squad_subset.json"
    path.write_text(json.dumps({"version": "1.1", "data": data["data"][:n_articles]}), encoding="utf-8")
    return str(path)


def features_of(vocab, path, phase, lower, monkeypatch=None, flags=None):
    if flags is not None:
        monkeypatch.setattr(mrc_module, "max_context_flags", flags)
    reader = palm.reader.MRCReader(vocab, 64, 16, 24, do_lower_case=lower, phase=phase, seed=0,
                                   skip_bad_examples=True)
    reader.load_data(path, 4)
    return reader.features


@pytest.mark.parametrize("dataset", ["cmrc2018", "squad"])
def test_mrc_features_identical_to_the_quadratic_version(tmp_path, monkeypatch, dataset):
    if dataset == "cmrc2018":
        vocab, lower = str(shared("vocab", "bert-base-chinese-vocab.txt")), False
        path = str(shared("cmrc2018", "cmrc2018_trial.json"))
    else:
        vocab, lower = str(shared("vocab", "bert-base-uncased-vocab.txt")), True
        path = squad_subset(tmp_path)
    for phase in ("train", "predict"):
        new = features_of(vocab, path, phase, lower)
        old = features_of(vocab, path, phase, lower, monkeypatch, quadratic_max_context_flags)
        monkeypatch.undo()
        assert len(new) == len(old) > 100
        assert sum(not f.token_is_max_context.all() for f in new) > 50  # overlapping windows were exercised
        for a, b in zip(new, old, strict=True):
            assert (a.unique_id, a.example_index, a.doc_span_index, a.doc_start, a.start_position,
                    a.end_position) == (b.unique_id, b.example_index, b.doc_span_index, b.doc_start,
                                        b.start_position, b.end_position)
            np.testing.assert_array_equal(a.token_ids, b.token_ids)
            np.testing.assert_array_equal(a.token_offsets, b.token_offsets)
            np.testing.assert_array_equal(a.token_is_max_context, b.token_is_max_context)


def test_max_context_flags_match_on_edge_cases():
    for n, window, stride in [(0, 5, 2), (1, 5, 2), (7, 7, 3), (10, 4, 1), (50, 9, 4), (33, 8, 8), (40, 6, 5)]:
        spans = mrc_module.doc_spans(n, window, stride)
        for a, b in zip(mrc_module.max_context_flags(spans, n), quadratic_max_context_flags(spans, n), strict=True):
            assert a.dtype == bool
            np.testing.assert_array_equal(a, b)
    # hand-made windows where a later one is longer: only the 0.01 * length term decides token 2 (to window 1)
    spans = [(0, 4), (1, 6)]
    for a, b in zip(mrc_module.max_context_flags(spans, 7), quadratic_max_context_flags(spans, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert mrc_module.max_context_flags(spans, 7)[1][1]


def test_long_context_encodes_in_linear_memory(tmp_path, uncased_vocab):
    """A 200,000-character context: the windows are the sliding-window count, every per-window array is at
    most one window long, and the peak Python-side memory per context token does not grow with the context
    (the windows x tokens table took ~5,000 bytes per token here, growing with the length)."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    context = " ".join(words[i % 5] for i in range(200_000 // 6))[:200_000]
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": [
        {"id": "q", "question": "which letter?", "answers": [{"text": "alpha", "answer_start": 0}]}]}]}]}),
        encoding="utf-8")
    reader = palm.reader.MRCReader(uncased_vocab, 128, 16, 64, do_lower_case=True, phase="predict")
    tracemalloc.start()
    try:
        reader.load_data(str(path), 8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n_tokens = len(reader.tokenizer.encode(context))
    window = 128 - len(reader.tokenizer.encode("which letter?")) - 3
    assert reader.num_examples == len(mrc_module.doc_spans(n_tokens, window, 64)) > 500
    for f in reader.features:
        assert len(f.token_ids) <= 128 and len(f.token_is_max_context) == f.num_doc_tokens <= window
    assert peak < 1_000 * n_tokens, f"peak {peak / 1e6:.0f} MB for {n_tokens} tokens"


# ---------------------------------------------------------------- data: deep JSON, CR, NUL, empty fields
def test_deeply_nested_json_is_a_clear_error(tmp_path, uncased_vocab):
    squad = tmp_path / "deep.json"
    squad.write_text('{"data": ' + deep_json() + "}", encoding="utf-8")
    reader = palm.reader.MRCReader(uncased_vocab, 64, 16, 24)
    with pytest.raises(DataError, match=rf"{squad}: JSON nested too deeply"):
        reader.load_data(str(squad), 4)
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text('{"label": 1, "text_a": "fine"}\n{"text_a": ' + deep_json() + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{jsonl}:2: JSON nested too deeply"):
        palm.reader.ClassifyReader(uncased_vocab, 32).load_data(str(jsonl), 4)
    label_map = tmp_path / "labels.json"
    label_map.write_text(deep_json(), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{label_map}: JSON nested too deeply"):
        palm.reader.ClassifyReader(uncased_vocab, 32, label_map=str(label_map))


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_cr_only_line_endings_are_named(tmp_path, uncased_vocab, suffix):
    lines = (["label\ttext_a", "1\tgood", "0\tbad"] if suffix == ".tsv"
             else ['{"label": 1, "text_a": "good"}', '{"label": 0, "text_a": "bad"}'])
    path = tmp_path / f"cr{suffix}"
    path.write_bytes("\r".join(lines).encode() + b"\r")
    with pytest.raises(DataError, match=rf"{path}:1: a carriage return .* CR-only"):
        palm.reader.ClassifyReader(uncased_vocab, 32).load_data(str(path), 2)


def test_cr_only_csv_reads_like_newlines_as_documented(tmp_path, uncased_vocab):
    rows = ["label,text_a", "1,good film", "0,bad plot"]
    cr, lf = tmp_path / "cr.csv", tmp_path / "lf.csv"
    cr.write_bytes("\r".join(rows).encode() + b"\r")
    lf.write_bytes("\n".join(rows).encode() + b"\n")
    readers = [palm.reader.ClassifyReader(uncased_vocab, 32, phase="predict") for _ in range(2)]
    readers[0].load_data(str(cr), 2)
    readers[1].load_data(str(lf), 2)
    assert [list(e["token_ids"]) for e in readers[0]._examples] == [list(e["token_ids"]) for e in readers[1]._examples]


def test_cr_only_conll_is_named(tmp_path, uncased_vocab):
    path = tmp_path / "cr.conll"
    path.write_bytes(b"EU B-ORG\rrejects O\r\rGerman B-MISC\r")
    reader = palm.reader.SequenceLabelReader(uncased_vocab, 32, label_map_config=["O", "B-ORG", "B-MISC"])
    with pytest.raises(DataError, match=rf"{path}:1: a carriage return"):
        reader.load_data(str(path), 2)


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_nul_bytes_are_named_with_their_line(tmp_path, uncased_vocab, suffix):
    sep = {".tsv": "\t", ".csv": ","}.get(suffix)
    lines = ([f"label{sep}text_a", f"1{sep}good", f"0{sep}ba\x00d"] if sep
             else ['{"label": 1, "text_a": "good"}', '{"label": 0, "text_a": "bad"}\x00'])
    path = tmp_path / f"nul{suffix}"
    path.write_bytes("\n".join(lines).encode() + b"\n")
    with pytest.raises(DataError, match=rf"{path}:{len(lines)}: NUL byte"):
        palm.reader.ClassifyReader(uncased_vocab, 32).load_data(str(path), 2)


def test_utf16_file_is_named(tmp_path, uncased_vocab):
    path = tmp_path / "utf16.tsv"
    path.write_bytes("label\ttext_a\n1\tgood\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=rf"{path}:1: NUL byte.*UTF-16"):
        palm.reader.ClassifyReader(uncased_vocab, 32).load_data(str(path), 1)


def test_empty_text_field_is_kept_and_reported(tmp_path, uncased_vocab, caplog):
    path = tmp_path / "empty.tsv"
    path.write_text("label\ttext_a\n1\tgood\n0\t\n1\t  \n", encoding="utf-8")
    reader = palm.reader.ClassifyReader(uncased_vocab, 32)
    with caplog.at_level(logging.WARNING, logger="torchpalm"):
        reader.load_data(str(path), 1)
    assert reader.num_examples == 3
    assert list(reader._examples[1]["token_ids"]) == [reader.tokenizer.cls_id, reader.tokenizer.sep_id]
    assert f"{path}:3: empty text_a (2 row(s) of 3" in caplog.text


# ---------------------------------------------------------------- saving
def test_unwritable_save_folder_is_refused_at_set_saver(tmp_path, uncased_vocab, tiny_config):
    trainer = small_trainer(tmp_path, uncased_vocab, tiny_config)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = str(blocker / "ckpts")
    with pytest.raises(PermissionError, match=rf"cannot write checkpoints to the save folder {target}"):
        trainer.set_saver(target, 1)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match=str(locked)):
            trainer.set_saver(str(locked), 1)


def test_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, uncased_vocab, tiny_config, monkeypatch):
    trainer = small_trainer(tmp_path, uncased_vocab, tiny_config)
    save_path = tmp_path / "out"
    trainer.set_saver(str(save_path), 2)
    trainer.train_one_step(trainer.get_one_batch())
    trainer.train_one_step(trainer.get_one_batch())  # saves ckpt.step2
    assert ckpt.latest(save_path) == str(save_path / "ckpt.step2")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    trainer.train_one_step(trainer.get_one_batch())
    with pytest.raises(OSError, match=rf"the disk holding {save_path} is full .* ckpt.step4: the unfinished copy "
                                      rf"was removed and earlier checkpoints are untouched") as info:
        trainer.train_one_step(trainer.get_one_batch())
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [n for n in os.listdir(save_path) if n.startswith("ckpt")] == ["ckpt.step2"]  # no .tmp-* left
    assert ckpt.latest(save_path) == str(save_path / "ckpt.step2")
    trainer.load_ckpt(ckpt.latest(save_path))
    assert trainer.cur_train_step == 2
