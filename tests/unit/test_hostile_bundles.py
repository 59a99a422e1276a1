"""Hostile inference bundles and Paddle files (issue 28 items 5 and 6): a bundle reads only files inside its own
folder, and a bad bundle or Paddle file is an error naming the file and the key, never a bare TypeError,
SafetensorError or RecursionError."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_CONFIG

import torchpalm as palm
from torchpalm import checkpoint as ckpt
from torchpalm.convert import PaddleFormatError, torchpalm_to_paddle, write_params
from torchpalm.convert.paddle import load_paddle_model, read_tensor


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A bundle of a tiny classifier (label names neg / pos), exported once for the module."""
    tmp = tmp_path_factory.mktemp("bundle")
    vocab = str(ROOT.parent / "shared" / "data" / "vocab" / "bert-base-uncased-vocab.txt")
    if not os.path.isfile(vocab):
        pytest.skip(f"data not available: {vocab}")
    torch.manual_seed(0)
    rows = ["label\ttext_a"] + [f"pos\tgood film {i}" if i % 2 else f"neg\tbad plot {i}" for i in range(8)]
    (tmp / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    reader = palm.reader.ClassifyReader(vocab, 16, seed=0, do_lower_case=True, label_map=["neg", "pos"])
    reader.load_data(str(tmp / "train.tsv"), 4)
    backbone = palm.backbone.BERT.from_config(dict(TINY_CONFIG))
    reader.register_with(backbone)
    trainer = palm.Trainer("cls", device="cpu")
    loss = trainer.build_forward(backbone, palm.head.Classify(2, TINY_CONFIG["hidden_size"]))
    trainer.build_backward(palm.optimizer.Adam(loss, 1e-3))
    trainer.fit_reader(reader)
    return palm.export(trainer, tmp / "bundle")


def edited(bundle, tmp_path, edit, name="edited"):
    """A copy of the bundle changed by `edit(folder, spec)`, with the completeness marker updated to match, as
    a deliberate attacker would (so only the new checks can stop it)."""
    folder = str(tmp_path / name)
    shutil.copytree(bundle, folder, symlinks=True)
    spec = json.load(open(os.path.join(folder, "bundle.json")))
    edit(folder, spec)
    if spec is not None:
        json.dump(spec, open(os.path.join(folder, "bundle.json"), "w"))
    marker = os.path.join(folder, ckpt.MARKER)
    record = json.load(open(marker))
    record["files"] = {n: os.path.getsize(os.path.join(folder, n)) for n in record["files"]}
    json.dump(record, open(marker, "w"))
    return folder


def secret(tmp_path, vocab_of):
    """A file outside the bundle the attacker wants read (a copy of a real vocabulary, so reading succeeds)."""
    (tmp_path / "secret").mkdir(exist_ok=True)
    shutil.copyfile(os.path.join(vocab_of, "reader.cls", "vocab.txt"), tmp_path / "secret" / "vocab.txt")
    return str(tmp_path / "secret" / "vocab.txt")


def set_vocab(value):
    def edit(folder, spec):
        spec["tasks"]["cls"]["reader"]["files"]["vocab_path"] = value
    return edit


# ---------------------------------------------------------------- item 5: files stay inside the bundle
def test_the_exported_bundle_loads(exported):
    predictor = palm.Predictor.load(exported, device="cpu")
    assert len(predictor.predict(["good film"])) == 1


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_vocab_path_outside_the_bundle_is_refused(exported, tmp_path, kind):
    outside = secret(tmp_path, exported)
    value = os.path.relpath(outside, tmp_path / "edited") if kind == "dotdot" else outside
    folder = edited(exported, tmp_path, set_vocab(value))
    with pytest.raises(ValueError, match=rf"bundle.json: tasks.cls.reader.files.vocab_path: '{value}' is not "
                                         rf"inside the bundle folder"):
        palm.Predictor.load(folder, device="cpu")


def test_a_symlink_leading_out_is_refused_and_one_inside_is_not(exported, tmp_path):
    outside = secret(tmp_path, exported)

    def link_out(folder, spec):
        os.remove(os.path.join(folder, "reader.cls", "vocab.txt"))
        os.symlink(outside, os.path.join(folder, "reader.cls", "vocab.txt"))

    with pytest.raises(ValueError, match=r"vocab_path: 'reader.cls/vocab.txt' is a symbolic link leading out of the "
                                         r"bundle folder"):
        palm.Predictor.load(edited(exported, tmp_path, link_out, "out"), device="cpu")

    def link_folder_out(folder, spec):  # the link is a folder on the way, not the file itself
        shutil.move(os.path.join(folder, "reader.cls"), tmp_path / "elsewhere")
        os.symlink(tmp_path / "elsewhere", os.path.join(folder, "reader.cls"))

    with pytest.raises(ValueError, match="symbolic link leading out"):
        palm.Predictor.load(edited(exported, tmp_path, link_folder_out, "folder_out"), device="cpu")

    def link_weights_out(folder, spec):
        shutil.move(os.path.join(folder, "model.safetensors"), tmp_path / "weights.safetensors")
        os.symlink(tmp_path / "weights.safetensors", os.path.join(folder, "model.safetensors"))

    with pytest.raises(ValueError, match=r"the weights: 'model.safetensors' is a symbolic link leading out"):
        palm.Predictor.load(edited(exported, tmp_path, link_weights_out, "weights_out"), device="cpu")

    def link_inside(folder, spec):
        os.rename(os.path.join(folder, "reader.cls", "vocab.txt"), os.path.join(folder, "vocab.txt"))
        os.symlink(os.path.join("..", "vocab.txt"), os.path.join(folder, "reader.cls", "vocab.txt"))

    palm.Predictor.load(edited(exported, tmp_path, link_inside, "inside"), device="cpu")


def test_a_label_map_option_naming_a_file_outside_is_refused(exported, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text('["neg", "pos"]')

    def edit(folder, spec):
        spec["tasks"]["cls"]["reader"]["options"]["label_map"] = str(labels)

    with pytest.raises(ValueError, match=r"tasks.cls.reader.options.label_map: '.*labels.json' is not inside"):
        palm.Predictor.load(edited(exported, tmp_path, edit), device="cpu")


def test_predict_bundle_command_refuses_it_too(exported, tmp_path):
    folder = edited(exported, tmp_path, set_vocab(secret(tmp_path, exported)))
    (tmp_path / "in.txt").write_text("good film\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "torchpalm", "predict", "--bundle", folder, "--input",
                           str(tmp_path / "in.txt")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "vocab_path" in done.stderr and "is not inside the bundle folder" in done.stderr


# ---------------------------------------------------------------- item 6: errors name the file and key
@pytest.mark.parametrize(("part", "name"), [("backbone", "Backbone"), ("head", "Head"), ("reader", "Reader")])
def test_the_abstract_base_classes_are_refused_by_name(exported, tmp_path, part, name):
    def edit(folder, spec):
        (spec["backbone"] if part == "backbone" else spec["tasks"]["cls"][part])["class"] = name

    with pytest.raises(ValueError, match=rf"bundle.json: unknown {part} class '{name}'"):
        palm.Predictor.load(edited(exported, tmp_path, edit), device="cpu")


@pytest.mark.parametrize("part", ["head", "reader"])
def test_an_unknown_option_names_the_file_and_key(exported, tmp_path, part):
    def edit(folder, spec):
        spec["tasks"]["cls"][part]["config" if part == "head" else "options"]["bogus"] = 1

    key = "head.config \\(Classify\\)" if part == "head" else "reader.options \\(ClassifyReader\\)"
    with pytest.raises(ValueError, match=rf"bundle.json: tasks.cls.{key}: .*unexpected keyword argument 'bogus'"):
        palm.Predictor.load(edited(exported, tmp_path, edit), device="cpu")


def test_a_bad_backbone_config_names_the_file_and_key(exported, tmp_path):
    def edit(folder, spec):
        spec["backbone"]["config"]["num_attention_heads"] = 0

    with pytest.raises(ValueError, match=r"bundle.json: backbone.config \(BERT\): .*'num_attention_heads'"):
        palm.Predictor.load(edited(exported, tmp_path, edit), device="cpu")


def test_truncated_or_corrupt_bundle_weights_name_the_file(exported, tmp_path):
    def truncate(folder, spec):
        path = os.path.join(folder, "model.safetensors")
        os.truncate(path, os.path.getsize(path) // 2)

    folder = edited(exported, tmp_path, truncate)
    with pytest.raises(ValueError, match=rf"{folder}/model.safetensors: not a readable safetensors file"):
        palm.Predictor.load(folder, device="cpu")


def test_deeply_nested_bundle_json_names_the_file(exported, tmp_path):
    def deep(folder, spec):
        with open(os.path.join(folder, "bundle.json"), "w") as f:
            f.write("[" * 200_000 + "]" * 200_000)

    folder = str(tmp_path / "deep")
    shutil.copytree(exported, folder)
    deep(folder, None)
    with pytest.raises(ValueError, match=rf"{folder}/bundle.json: JSON nested too deeply"):
        palm.Predictor.load(folder, device="cpu")


# ---------------------------------------------------------------- item 6: Paddle files
def paddle_header(dims, code=5) -> bytes:
    """A Paddle variable file's header (FP32 = 5) declaring `dims`, as `write_tensor` writes it."""
    def varint(value):
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)
    desc = b"\x08" + varint(code) + b"".join(b"\x10" + varint(d) for d in dims)
    return struct.pack("<IQI", 0, 0, 0) + struct.pack("<i", len(desc)) + desc


def test_a_paddle_shape_whose_size_overflows_names_the_file(tmp_path):
    path = tmp_path / "pooled_fc.b_0"
    path.write_bytes(paddle_header([2**62, 4]))  # 2**64 elements: numpy's product wraps to 0
    with pytest.raises(PaddleFormatError, match=rf"{path}: truncated: its header declares a torch.float32 tensor "
                                                r"of shape \[4611686018427387904, 4\], which needs "
                                                r"73786976294838206464 data bytes, the file has 0"):
        read_tensor(path)


def test_a_huge_word_embedding_header_is_blamed_on_word_embedding(tmp_path):
    """Without a config the sizes come from word_embedding's header: a lie there must not be reported as a
    wrong shape of another file."""
    torch.manual_seed(0)
    state = palm.backbone.BERT.from_config(dict(TINY_CONFIG)).state_dict()
    params = tmp_path / "params"
    write_params(params, torchpalm_to_paddle(state))
    load_paddle_model(params)  # the honest folder loads
    embedding = params / "word_embedding"
    embedding.write_bytes(paddle_header([10**9, 10**6]) + b"\0" * 64)
    with pytest.raises(PaddleFormatError, match=rf"{embedding}: truncated: its header declares a torch.float32 "
                                                r"tensor of shape \[1000000000, 1000000\]"):
        load_paddle_model(params)
