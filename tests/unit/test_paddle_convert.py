"""PaddlePALM / ERNIE Paddle parameter directories: the file format (spec §10.4), the name map (§7.5), loading
them with load_pretrain / load_ckpt, the converter, and its errors.

Fixtures are written here from known tensors: a tiny random transformers BERT/ERNIE whose weights are laid out
by hand (below, independently of torchpalm's map) under PALM's names with [in, out] fc weights.
"""

from __future__ import annotations

import os
import struct

import pytest
import torch

import torchpalm as palm
from torchpalm.checkpoint import assign_state, load_backbone_weights, load_checkpoint_dir
from torchpalm.cli import main as cli_main
from torchpalm.convert import (
    PaddleFormatError,
    load_paddle_model,
    paddle_to_torchpalm,
    read_params,
    read_tensor,
    torchpalm_to_paddle,
    write_params,
    write_tensor,
)
from torchpalm.convert.paddle import heads_to_torchpalm

H, INTER, LAYERS, VOCAB = 32, 64, 2, 50
TOL = 1e-5


def hf_config(**extra) -> dict:
    return {"hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": 2, "intermediate_size": INTER,
            "vocab_size": VOCAB, "max_position_embeddings": 40, "type_vocab_size": 2, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "layer_norm_eps": 1e-12, **extra}


def hf_model(ernie: bool = False):
    """A tiny random transformers BertModel (or ErnieModel with a task embedding), with non-trivial norms."""
    from transformers import BertConfig, BertModel, ErnieConfig, ErnieModel

    torch.manual_seed(0)
    if ernie:
        model = ErnieModel(ErnieConfig(**hf_config(use_task_id=True, task_type_vocab_size=3)))
    else:
        model = BertModel(BertConfig(**hf_config()))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)  # so a dropped/misplaced one shows
    return model.eval()


def paddle_names_by_hand(hf_state: dict) -> dict:
    """HF BertModel/ErnieModel tensors under PALM's Paddle names, fc weights stored [in, out] (spec §7.5)."""
    e = "embeddings."
    out = {"word_embedding": hf_state[e + "word_embeddings.weight"],
           "pos_embedding": hf_state[e + "position_embeddings.weight"],
           "sent_embedding": hf_state[e + "token_type_embeddings.weight"],
           "pre_encoder_layer_norm_scale": hf_state[e + "LayerNorm.weight"],
           "pre_encoder_layer_norm_bias": hf_state[e + "LayerNorm.bias"],
           "pooled_fc.w_0": hf_state["pooler.dense.weight"].T, "pooled_fc.b_0": hf_state["pooler.dense.bias"]}
    if e + "task_type_embeddings.weight" in hf_state:
        out["task_embedding"] = hf_state[e + "task_type_embeddings.weight"]
    for i in range(LAYERS):
        hf, pd = f"encoder.layer.{i}.", f"encoder_layer_{i}_"
        fcs = {"attention.self.query": "multi_head_att_query_fc", "attention.self.key": "multi_head_att_key_fc",
               "attention.self.value": "multi_head_att_value_fc", "attention.output.dense": "multi_head_att_output_fc",
               "intermediate.dense": "ffn_fc_0", "output.dense": "ffn_fc_1"}
        for theirs, ours in fcs.items():
            out[f"{pd}{ours}.w_0"] = hf_state[f"{hf}{theirs}.weight"].T
            out[f"{pd}{ours}.b_0"] = hf_state[f"{hf}{theirs}.bias"]
        for theirs, ours in (("attention.output.LayerNorm", "post_att_layer_norm"),
                             ("output.LayerNorm", "post_ffn_layer_norm")):
            out[f"{pd}{ours}_scale"] = hf_state[f"{hf}{theirs}.weight"]
            out[f"{pd}{ours}_bias"] = hf_state[f"{hf}{theirs}.bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def write_model(root, model, name="bert") -> str:
    """PALM's downloaded layout: <root>/params/<one file per variable>, <name>_config.json, vocab.txt."""
    os.makedirs(root, exist_ok=True)
    write_params(os.path.join(root, "params"), paddle_names_by_hand(model.state_dict()))
    config = hf_config(**({"task_type_vocab_size": 3, "sent_type_vocab_size": 2} if name == "ernie" else {}))
    import json

    with open(os.path.join(root, f"{name}_config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(root, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]) + "\n")
    return os.path.join(root, "params")


def batch(task_ids: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    b = {"token_ids": ids, "segment_ids": (torch.arange(9) >= 5).long().expand(3, 9).contiguous(),
         "position_ids": torch.arange(9).expand(3, 9).contiguous(), "input_mask": mask}
    if task_ids:
        b["task_ids"] = torch.tensor([[0] * 9, [1] * 9, [2] * 9])
    return b


def hf_outputs(model, b):
    kwargs = {"input_ids": b["token_ids"], "token_type_ids": b["segment_ids"], "attention_mask": b["input_mask"],
              "position_ids": b["position_ids"]}
    if "task_ids" in b:
        kwargs["task_type_ids"] = b["task_ids"]
    with torch.no_grad():
        return model(**kwargs)


def assert_same_outputs(ours, model, b):
    expected = hf_outputs(model, b)
    with torch.no_grad():
        got = ours(b)
    mask = b["input_mask"].bool()
    assert (expected.last_hidden_state - got["encoder_outputs"])[mask].abs().max().item() <= TOL
    assert (expected.pooler_output - got["sentence_embedding"]).abs().max().item() <= TOL


# ------------------------------------------------------------------------------------------- the file format
def test_writer_writes_the_bytes_spec_10_4_describes(tmp_path):
    path = tmp_path / "w"
    write_tensor(path, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    desc = bytes([0x08, 5, 0x10, 2, 0x10, 3])  # data_type FP32 = 5; dims 2, 3 (proto2: unpacked)
    expected = struct.pack("<IQIi", 0, 0, 0, len(desc)) + desc + struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    assert path.read_bytes() == expected


def test_reader_skips_a_lod_and_reads_packed_dims(tmp_path):
    # a LoDTensor with one LoD level and a TensorDesc whose dims are packed (another valid protobuf encoding)
    lod = struct.pack("<3Q", 0, 1, 2)
    desc = bytes([0x08, 3, 0x12, 3, 2, 1, 3])  # INT64, dims [2, 1, 3]
    data = struct.pack("<6q", -1, 2, 3, 4, 5, 1 << 40)
    raw = struct.pack("<IQ", 0, 1) + struct.pack("<Q", len(lod)) + lod + struct.pack("<Ii", 0, len(desc)) + desc
    (tmp_path / "t").write_bytes(raw + data)
    got = read_tensor(tmp_path / "t")
    assert got.dtype == torch.int64
    assert torch.equal(got, torch.tensor([-1, 2, 3, 4, 5, 1 << 40]).view(2, 1, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                   torch.int32, torch.int8, torch.uint8, torch.bool])
def test_round_trip_is_exact(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 300, generator=g) * 100  # 300: a dimension that needs a 2-byte varint
    tensor = values.to(dtype) if dtype != torch.bool else values > 0
    write_tensor(tmp_path / "x", tensor)
    back = read_tensor(tmp_path / "x")
    assert back.dtype == dtype and back.shape == tensor.shape and torch.equal(back, tensor)
    write_tensor(tmp_path / "s", torch.tensor(7.5))  # a scalar: no dims
    assert read_tensor(tmp_path / "s").item() == 7.5


def test_name_map_round_trip_is_exact():
    paddle = paddle_names_by_hand(hf_model(ernie=True).state_dict())
    ours, unused = paddle_to_torchpalm(paddle)
    assert unused == []
    back = torchpalm_to_paddle(ours)
    assert back.keys() == paddle.keys()
    assert all(torch.equal(back[k], paddle[k]) for k in paddle)


def test_a_truncated_or_corrupt_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "encoder_layer_0_ffn_fc_0.w_0"
    write_tensor(path, torch.randn(H, INTER))
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(PaddleFormatError, match=r"encoder_layer_0_ffn_fc_0\.w_0: truncated.*8192 data bytes.*8182"):
        read_tensor(path)
    path.write_bytes(raw[:10])
    with pytest.raises(PaddleFormatError, match=r"encoder_layer_0_ffn_fc_0\.w_0: truncated file"):
        read_tensor(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + raw[8:])
    with pytest.raises(PaddleFormatError, match=r"encoder_layer_0_ffn_fc_0\.w_0: not a Paddle parameter file"):
        read_tensor(path)
    path.write_bytes(raw[:24] + bytes([0x08, 99]) + raw[26:])  # an unknown data type
    with pytest.raises(PaddleFormatError, match=r"ffn_fc_0\.w_0: unsupported Paddle data type 99"):
        read_tensor(path)


# ------------------------------------------------------------------------------------------- loading models
def predict_trainer(backbone, name="cls", head=None):
    trainer = palm.Trainer(name)
    trainer.build_predict_forward(backbone, head or palm.head.Classify(2, H, phase="predict"))
    return trainer


def test_load_pretrain_reads_a_paddle_params_dir_and_equals_transformers(tmp_path):
    model = hf_model()
    params = write_model(tmp_path / "BERT-tiny", model)
    backbone = palm.backbone.BERT.from_config(hf_config(), phase="predict")
    predict_trainer(backbone).load_pretrain(params)  # PALM's call, on PALM's folder layout
    assert_same_outputs(backbone, model, batch())
    # the model root works too (PALM's multi-task example passed it; PALM then loaded nothing, spec §14.7)
    other = palm.backbone.BERT.from_config(hf_config(), phase="predict")
    predict_trainer(other).load_predict_model(str(tmp_path / "BERT-tiny"))
    assert_same_outputs(other, model, batch())


def test_ernie_task_embedding_loads_and_equals_transformers_ernie(tmp_path):
    model = hf_model(ernie=True)
    params = write_model(tmp_path / "ERNIE-tiny", model, name="ernie")
    ernie = palm.backbone.ERNIE.from_config(hf_config(task_type_vocab_size=3), phase="predict")
    state, source = load_backbone_weights(params, ernie.config)
    assert assign_state(ernie, state, source) == []  # every parameter, the task embedding included
    assert_same_outputs(ernie, model, batch(task_ids=True))


def test_convert_cli_writes_a_torchpalm_folder_that_loads_the_same(tmp_path, capsys):
    model = hf_model()
    write_model(tmp_path / "BERT-tiny", model)
    out = tmp_path / "converted"
    assert cli_main(["convert", "--from", "paddle", "--to", "torchpalm", str(tmp_path / "BERT-tiny"), str(out)]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "vocab.txt"]
    backbone = palm.backbone.BERT.from_config(str(out / "config.json"), phase="predict")
    predict_trainer(backbone).load_pretrain(str(out))
    assert_same_outputs(backbone, model, batch())
    # converted back to Paddle names: exactly the files we wrote
    state, _ = load_backbone_weights(str(out))
    original = read_params(tmp_path / "BERT-tiny" / "params")
    back = torchpalm_to_paddle(state)
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)


def test_a_palm_checkpoint_loads_backbone_and_head(tmp_path):
    model = hf_model()
    files = paddle_names_by_hand(model.state_dict())
    w, b = torch.randn(H, 2), torch.randn(2)
    files.update({"chnsenticorp.cls_out_w": w, "chnsenticorp.cls_out_b": b,
                  # what else a PALM checkpoint holds (spec §10.1): optimizer moments and counters, not read
                  "word_embedding_moment1_0": torch.randn(VOCAB, H), "chnsenticorp.cls_out_w_moment2_0": w,
                  "learning_rate_0": torch.tensor([1e-3]), "@LR_DECAY_COUNTER@": torch.tensor([5])})
    write_params(tmp_path / "ckpt.step100", files)
    backbone = palm.backbone.BERT.from_config(hf_config(), phase="predict")
    head = palm.head.Classify(2, H, phase="predict")
    predict_trainer(backbone, "chnsenticorp", head).load_ckpt(str(tmp_path / "ckpt.step100"))
    assert_same_outputs(backbone, model, batch())
    assert torch.equal(head.classifier.weight, w.T) and torch.equal(head.classifier.bias, b)
    with pytest.raises(KeyError, match="no parameters for task 'other'"):
        predict_trainer(palm.backbone.BERT.from_config(hf_config(), phase="predict"), "other").load_ckpt(
            str(tmp_path / "ckpt.step100"))
    _, trainer_state, optimizer, _ = load_checkpoint_dir(str(tmp_path / "ckpt.step100"))
    assert trainer_state == {"format": "paddle"} and optimizer is None


def test_head_names_map_onto_torchpalm_heads():
    c = 3
    crfw = torch.arange((c + 2) * c, dtype=torch.float32).view(c + 2, c)
    emission_w = torch.randn(H, c)
    got = heads_to_torchpalm({"ner.fc_0.w_0": emission_w, "ner.cls_out_b": torch.ones(c), "ner.crfw": crfw,
                              "mrc.cls_squad_out_w": torch.ones(H, 2), "mrc.cls_squad_out_b": torch.zeros(2),
                              "qqp.cls_out_w_pr": torch.ones(H, 1), "qqp.cls_out_b_pr": torch.zeros(1),
                              "mlm.mask_lm_trans_fc.w_0": emission_w, "mlm.mask_lm_out_fc.b_0": torch.ones(VOCAB)})
    assert torch.equal(got["ner.emission.weight"], emission_w.T) and torch.equal(got["ner.emission.bias"],
                                                                                 torch.ones(c))
    # crfw rows: start, end, then transitions[i, j] from tag i to tag j
    assert torch.equal(got["ner.crf.start_transitions"], crfw[0])
    assert torch.equal(got["ner.crf.end_transitions"], crfw[1])
    assert torch.equal(got["ner.crf.transitions"], crfw[2:])
    assert got["mrc.cls_squad_out.weight"].shape == (2, H) and got["qqp.classifier.weight"].shape == (1, H)
    assert torch.equal(got["mlm.transform.weight"], emission_w.T) and "mlm.output_bias" in got
    sl = palm.head.SequenceLabel(c, H, phase="predict")  # the names exist in the real heads
    assert assign_state(sl, {k[4:]: v for k, v in got.items() if k.startswith("ner.")}, "t") == []


# ------------------------------------------------------------------------------------------- bad input
def test_a_missing_variable_is_named_with_the_directory(tmp_path):
    params = write_model(tmp_path / "m", hf_model())
    os.remove(os.path.join(params, "encoder_layer_1_multi_head_att_key_fc.b_0"))
    with pytest.raises(PaddleFormatError, match=rf"{params}: Paddle parameter "
                       r"'encoder_layer_1_multi_head_att_key_fc\.b_0' not found"):
        load_paddle_model(params)
    backbone = palm.backbone.BERT.from_config(hf_config(), phase="predict")
    with pytest.raises(PaddleFormatError, match=r"'encoder_layer_1_multi_head_att_key_fc\.b_0' not found"):
        predict_trainer(backbone).load_pretrain(params)
    # a config with more layers than the files hold names the first missing layer's variable
    with pytest.raises(PaddleFormatError, match=r"'encoder_layer_1_multi_head_att_key_fc\.b_0' not found"):
        load_paddle_model(params, hf_config(num_hidden_layers=3))


def test_a_wrong_shape_names_the_variable_and_both_shapes(tmp_path):
    params = write_model(tmp_path / "m", hf_model())
    name = "encoder_layer_0_ffn_fc_0.w_0"
    write_tensor(os.path.join(params, name), read_tensor(os.path.join(params, name)).T.contiguous())  # torch layout
    with pytest.raises(PaddleFormatError, match=rf"'{name}' has shape \[64, 32\], expected \[32, 64\].*\[in, out\]"):
        load_paddle_model(params)
    # against the model's config: a checkpoint of another size is reported by Paddle name
    params2 = write_model(tmp_path / "m2", hf_model())
    wider = palm.backbone.BERT.from_config(hf_config(vocab_size=VOCAB + 1), phase="predict")
    with pytest.raises(PaddleFormatError, match=r"'word_embedding' has shape \[50, 32\], expected \[51, 32\]"):
        predict_trainer(wider).load_pretrain(params2)


def test_a_folder_without_weights_says_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file found.*Paddle parameter files"):
        load_backbone_weights(str(tmp_path))


def test_a_palm_checkpoint_into_a_training_trainer_starts_a_fresh_run_from_its_weights(tmp_path, caplog):
    model = hf_model()
    files = paddle_names_by_hand(model.state_dict())
    files.update({"cls.cls_out_w": torch.randn(H, 2), "cls.cls_out_b": torch.randn(2)})
    write_params(tmp_path / "ckpt.step7", files)
    backbone = palm.backbone.BERT.from_config(hf_config())
    trainer = palm.Trainer("cls", device="cpu")
    loss = trainer.build_forward(backbone, palm.head.Classify(2, H))
    trainer.build_backward(palm.optimizer.Adam(loss, 1e-3))
    with caplog.at_level("WARNING", logger="torchpalm"):
        trainer.load_ckpt(str(tmp_path / "ckpt.step7"))  # PALM resumed from such folders; we take the weights
    assert "PaddlePALM checkpoint: training starts at step 0" in caplog.text
    backbone.eval()
    assert_same_outputs(backbone, model, batch())


@pytest.mark.parametrize("where", ["root", "params"])
def test_a_config_run_takes_a_paddle_model_folder_as_pretrained(tmp_path, where, capsys, caplog):
    import yaml

    write_model(tmp_path / "ERNIE-tiny", hf_model(ernie=True), name="ernie")
    (tmp_path / "train.tsv").write_text("label\ttext_a\n1\tw1 w2 w3\n0\tw4 w5\n", encoding="utf-8")
    pretrained = "ERNIE-tiny" if where == "root" else "ERNIE-tiny/params"
    cfg = {"backbone": {"type": "ernie", "pretrained": pretrained},  # config and vocab found PALM's way
           "tasks": [{"name": "cls", "reader": {"type": "classify"}, "head": {"type": "classify", "num_classes": 2},
                      "train_file": "train.tsv"}],
           "optimizer": {"type": "adam", "lr": 1e-3}, "schedule": {"type": "none"},
           "train": {"epochs": 1, "batch_size": 2, "max_len": 16, "device": "cpu", "save_path": "out"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with caplog.at_level("INFO", logger="torchpalm"):
        assert cli_main(["train", str(tmp_path / "run.yaml"), "--dry-run"]) == 0, capsys.readouterr().err
    assert "Loading pretraining parameters from" in caplog.text and "not found in" not in caplog.text


def test_torchpalm_to_paddle_cli_writes_the_original_files_back_byte_for_byte(tmp_path):
    model = hf_model(ernie=True)
    write_model(tmp_path / "ERNIE-tiny", model, name="ernie")
    assert cli_main(["convert", "--from", "paddle", "--to", "torchpalm", str(tmp_path / "ERNIE-tiny"),
                     str(tmp_path / "tp")]) == 0
    assert cli_main(["convert", "--from", "torchpalm", "--to", "paddle", str(tmp_path / "tp"),
                     str(tmp_path / "back")]) == 0
    original, back = tmp_path / "ERNIE-tiny" / "params", tmp_path / "back" / "params"
    assert sorted(os.listdir(back)) == sorted(os.listdir(original))
    assert all((back / n).read_bytes() == (original / n).read_bytes() for n in os.listdir(original))
    assert sorted(os.listdir(tmp_path / "back")) == ["ernie_config.json", "params", "vocab.txt"]
    # and PALM's layout loads again
    ernie = palm.backbone.ERNIE.from_config(str(tmp_path / "back" / "ernie_config.json"), phase="predict")
    state, source = load_backbone_weights(str(tmp_path / "back"), ernie.config)
    assert assign_state(ernie, state, source) == []
    assert_same_outputs(ernie, model, batch(task_ids=True))


def test_multihead_trainer_load_pretrain_and_load_ckpt_read_paddle_folders(tmp_path):
    model = hf_model()
    params = write_model(tmp_path / "BERT-tiny", model)
    w_a, w_b = torch.randn(H, 2), torch.randn(H, 3)
    files = {**read_params(params), "a.cls_out_w": w_a, "a.cls_out_b": torch.zeros(2), "b.cls_out_w": w_b,
             "b.cls_out_b": torch.ones(3)}
    write_params(tmp_path / "ckpt.step9", files)
    pb = palm.backbone.BERT.from_config(hf_config(), phase="predict")
    heads = {"a": palm.head.Classify(2, H, phase="predict"), "b": palm.head.Classify(3, H, phase="predict")}
    trainers = []
    for name, head in heads.items():
        t = palm.Trainer(name, device="cpu")
        t.build_predict_forward(pb, head)
        trainers.append(t)
    mh = palm.MultiHeadTrainer(trainers)
    mh.build_predict_forward()
    mh.load_pretrain(params)
    assert_same_outputs(pb, model, batch())
    mh.load_ckpt(str(tmp_path / "ckpt.step9"))  # a PALM multi-task checkpoint: both heads
    assert torch.equal(heads["a"].classifier.weight, w_a.T) and torch.equal(heads["b"].classifier.weight, w_b.T)
    assert torch.equal(heads["b"].classifier.bias, torch.ones(3))
