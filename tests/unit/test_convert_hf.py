"""palm.convert.from_hf / to_hf and `torchpalm convert`: HF BERT, RoBERTa and ERNIE directories to torchpalm and
back, exactly; the HF side loads with AutoModel and gives the same outputs; bad input names tensor and file."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import TINY_CONFIG
from roberta_fixtures import make_hf_roberta
from safetensors.torch import load_file, save_file

import torchpalm as palm
from torchpalm.cli import main
from torchpalm.convert import ConversionError, from_hf, to_hf

transformers = pytest.importorskip("transformers")
SMALL = {**TINY_CONFIG, "vocab_size": 120, "intermediate_size": 48}


def make_hf(model_type: str, model_dir, seed: int = 0) -> str:
    """A random HF base model of `model_type` saved with save_pretrained (plus tokenizer files)."""
    if model_type == "roberta":
        return make_hf_roberta(model_dir, seed)
    torch.manual_seed(seed)
    if model_type == "bert":
        model = transformers.BertModel(transformers.BertConfig(**SMALL))
    else:  # "ernie", or "ernie-no-task": HF's ERNIE without the task embedding (use_task_id false)
        model = transformers.ErnieModel(transformers.ErnieConfig(**SMALL, task_type_vocab_size=3,
                                                                 use_task_id=model_type == "ernie"))
    model.save_pretrained(model_dir)
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                   + [f"w{i}" for i in range(115)]) + "\n", encoding="utf-8")
    return str(model_dir)


def ids_and_mask(pad: int):
    ids = torch.tensor([[3, 5, 6, 7, 8, 9], [3, 10, 11, 4, pad, pad]])
    return ids, (ids != pad).long()


@pytest.mark.parametrize("variant", ["bert", "roberta", "ernie", "ernie-no-task"])
def test_hf_to_torchpalm_to_hf_is_exact_and_loads_with_automodel(tmp_path, variant):
    hf_dir = make_hf(variant, tmp_path / "hf")
    model_type = variant.split("-")[0]
    assert from_hf(hf_dir, tmp_path / "tp") == str(tmp_path / "tp")
    to_hf(tmp_path / "tp", tmp_path / "back")
    original, back = load_file(os.path.join(hf_dir, "model.safetensors")), load_file(str(tmp_path / "back" /
                                                                                           "model.safetensors"))
    assert sorted(original) == sorted(back)
    for name in original:
        assert torch.equal(original[name], back[name]), name
    # a WordPiece vocab.txt gets a tokenizer_config.json (below); RoBERTa's byte-level BPE needs none
    tokenizer_files = {"bert": ["vocab.txt", "tokenizer_config.json"], "ernie": ["vocab.txt", "tokenizer_config.json"],
                       "roberta": ["merges.txt", "vocab.json"]}
    assert sorted(os.listdir(tmp_path / "back")) == sorted(["config.json", "model.safetensors",
                                                            *tokenizer_files[model_type]])

    # the HF directory loads with AutoModel as the right class and computes what the original computes
    hf = transformers.AutoModel.from_pretrained(hf_dir).eval()
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "back").eval()
    assert type(reloaded) is type(hf)
    pad = hf.config.pad_token_id
    ids, mask = ids_and_mask(pad)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).last_hidden_state, expected)

    # the torchpalm side: the backbone class its config names, loaded by load_pretrain, equals HF
    config = json.load(open(tmp_path / "tp" / "config.json"))
    assert config["model_type"] == model_type
    assert reloaded.config.to_dict().get("use_task_id") == hf.config.to_dict().get("use_task_id")
    cls = {"bert": palm.backbone.BERT, "roberta": palm.backbone.RoBERTa, "ernie": palm.backbone.ERNIE}[model_type]
    ours = cls.from_config(config, phase="predict")
    state, file = palm.checkpoint.load_backbone_weights(str(tmp_path / "tp"))
    assert palm.checkpoint.assign_state(ours, state, file) == []
    batch = {"token_ids": ids, "position_ids": torch.arange(6)[None].expand(2, 6), "input_mask": mask,
             "segment_ids": torch.zeros_like(ids), "task_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        got = ours(batch)["encoder_outputs"]
    assert (got - expected)[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("task_model", ["RobertaForMaskedLM", "ErnieForMaskedLM"])
def test_task_model_directories_convert_their_base_model(tmp_path, task_model):
    """HF task models prefix the base model (`roberta.*`, `ernie.*`) and add a head, which is left out."""
    if task_model.startswith("Roberta"):
        config = transformers.RobertaConfig(**{**SMALL, "max_position_embeddings": 130, "type_vocab_size": 1})
    else:
        config = transformers.ErnieConfig(**SMALL, task_type_vocab_size=3, use_task_id=True)
    torch.manual_seed(0)
    model = getattr(transformers, task_model)(config)
    model.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "tp")
    to_hf(tmp_path / "tp", tmp_path / "back")
    base = model.base_model.state_dict()
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(back) == sorted(k for k in base if not k.endswith("position_ids"))
    for name, value in back.items():
        assert torch.equal(value, base[name]), name


def test_torchpalm_checkpoint_to_hf_and_back_is_exact(tmp_path):
    """A torchpalm RoBERTa checkpoint (backbone record in trainer_state.json, a head beside it) -> HF -> torchpalm."""
    hf_dir = make_hf("roberta", tmp_path / "hf")
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    torch.manual_seed(1)
    backbone = palm.backbone.RoBERTa.from_config(config)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["cls.weight"] = torch.randn(2, 32)  # a head: not part of the HF model, left out
    palm.checkpoint.save_checkpoint(str(tmp_path / "ckpt.step5"), state,
                                    {"backbone": {"class": "RoBERTa", "config": backbone.config}})
    to_hf(tmp_path / "ckpt.step5", tmp_path / "hf_out")
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "hf_out")
    assert type(reloaded).__name__ == "RobertaModel"
    assert reloaded.config.pad_token_id == 1 and reloaded.config.layer_norm_eps == 1e-5
    from_hf(tmp_path / "hf_out", tmp_path / "tp")
    again = load_file(str(tmp_path / "tp" / "model.safetensors"))
    assert sorted(again) == sorted(k for k in state if k.startswith("backbone."))
    for name, value in again.items():
        assert torch.equal(value, state[name]), name


def test_missing_or_misshapen_tensors_name_the_tensor_the_file_and_the_expectation(tmp_path):
    hf_dir = make_hf("bert", tmp_path / "hf")
    weights = os.path.join(hf_dir, "model.safetensors")
    state = load_file(weights)
    del state["encoder.layer.1.attention.self.key.weight"]
    save_file(state, weights)
    with pytest.raises(ConversionError, match=r"model\.safetensors: missing tensor 'encoder\.layer\.1\.attention\."
                                              r"self\.key\.weight' \(expected shape \[32, 32\] for an HF bert model"):
        from_hf(hf_dir, tmp_path / "tp")
    state["encoder.layer.1.attention.self.key.weight"] = torch.zeros(32, 31)
    save_file(state, weights)
    with pytest.raises(ConversionError, match=r"model\.safetensors: tensor 'encoder\.layer\.1\.attention\.self\.key\."
                                              r"weight' has shape \[32, 31\], expected \[32, 32\]"):
        from_hf(hf_dir, tmp_path / "tp")

    # torchpalm -> HF: the same checks on torchpalm's names, and a tensor HF's model has no place for
    make_hf("bert", tmp_path / "hf2")
    from_hf(tmp_path / "hf2", tmp_path / "tp")
    tp_weights = str(tmp_path / "tp" / "model.safetensors")
    good = load_file(tp_weights)
    save_file({k: v for k, v in good.items() if k != "backbone.layers.0.qkv.bias"}, tp_weights)
    with pytest.raises(ConversionError, match=r"tp/model\.safetensors: missing tensor 'layers\.0\.qkv\.bias' "
                                              r"\(expected shape \[96\] for the BERT that .*config\.json describes"):
        to_hf(tmp_path / "tp", tmp_path / "out")
    save_file({**good, "backbone.task_embeddings.weight": torch.zeros(3, 32)}, tp_weights)
    with pytest.raises(ConversionError, match=r"tensor 'task_embeddings\.weight' has no place in the BERT"):
        to_hf(tmp_path / "tp", tmp_path / "out")
    os.remove(tmp_path / "tp" / "config.json")
    with pytest.raises(ConversionError, match="neither trainer_state.json .* nor config.json"):
        to_hf(tmp_path / "tp", tmp_path / "out")
    with pytest.raises(ConversionError, match="no config.json"):
        from_hf(tmp_path / "tp", tmp_path / "out")
    with pytest.raises(ConversionError, match="is the source directory"):
        from_hf(tmp_path / "hf2", tmp_path / "hf2")


def test_cli_converts_roberta_both_ways_and_reports_bad_input(tmp_path, capsys):
    hf_dir = make_hf("roberta", tmp_path / "hf")
    assert main(["convert", "--from", "hf", "--to", "torchpalm", hf_dir, str(tmp_path / "tp")]) == 0
    assert main(["convert", "--from", "torchpalm", "--to", "hf", str(tmp_path / "tp"), str(tmp_path / "back")]) == 0
    assert transformers.AutoModel.from_pretrained(tmp_path / "back").config.model_type == "roberta"
    assert json.load(open(tmp_path / "tp" / "config.json"))["model_type"] == "roberta"
    capsys.readouterr()
    os.remove(tmp_path / "tp" / "config.json")
    assert main(["convert", "--from", "torchpalm", "--to", "hf", str(tmp_path / "tp"), str(tmp_path / "x")]) == 2
    assert "torchpalm convert: error:" in capsys.readouterr().err


@pytest.mark.parametrize("cased", [True, False])
def test_to_hf_writes_the_tokenizer_config_hf_needs_to_keep_the_case(tmp_path, cased):
    """A vocab.txt alone (PALM's folders, a checkpoint plus --tokenizer): HF's BertTokenizer would lower-case by
    default, so a cased model exported without a tokenizer_config.json gets other ids than it trained on."""
    words = ["Paris", "is", "in", "France", "paris", "france", "the", "The"] if cased else \
        ["paris", "is", "in", "france", "the"]
    model_dir = tmp_path / "model"
    make_hf("bert", model_dir)
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n",
                                         encoding="utf-8")
    from_hf(model_dir, tmp_path / "tp")
    to_hf(tmp_path / "tp", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["do_lower_case"] is not cased
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    ours = palm.tokenizer.load_tokenizer("wordpiece", str(tmp_path / "out" / "vocab.txt"), do_lower_case=not cased)
    text = "The Paris is in France"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    if cased:  # the capitals keep their own pieces
        assert hf_tok.convert_ids_to_tokens(ours.encode(text))[:2] == ["The", "Paris"]

    # the CLI's --do_lower_case overrides the inference (and a copied tokenizer_config.json's value)
    assert main(["convert", "--from", "torchpalm", "--to", "hf", str(tmp_path / "tp"), str(tmp_path / "forced"),
                 "--do_lower_case", "1"]) == 0
    assert json.loads((tmp_path / "forced" / "tokenizer_config.json").read_text())["do_lower_case"] is True
    # a tokenizer_config.json that comes along is kept as it is, unless do_lower_case is given
    from_hf(tmp_path / "forced", tmp_path / "tp2")
    to_hf(tmp_path / "tp2", tmp_path / "kept")
    assert json.loads((tmp_path / "kept" / "tokenizer_config.json").read_text())["do_lower_case"] is True
    to_hf(tmp_path / "tp2", tmp_path / "set", do_lower_case=False)
    assert json.loads((tmp_path / "set" / "tokenizer_config.json").read_text())["do_lower_case"] is False


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_hf_checkpoints_load_like_single_files(tmp_path, safe):
    """save_pretrained(max_shard_size=...) writes shards and an index (model.safetensors.index.json, or
    pytorch_model.bin.index.json); from_hf and load_backbone_weights read every shard the index names."""
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**SMALL))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    if not safe:  # transformers 5 writes safetensors only; older releases wrote these .bin shards
        old_index = tmp_path / "sharded" / "model.safetensors.index.json"
        weight_map = json.loads(old_index.read_text())["weight_map"]
        renamed = {}
        for shard in set(weight_map.values()):
            renamed[shard] = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
            torch.save(load_file(str(tmp_path / "sharded" / shard)), tmp_path / "sharded" / renamed[shard])
            os.remove(tmp_path / "sharded" / shard)
        old_index.unlink()
        (tmp_path / "sharded" / index).write_text(json.dumps({"metadata": {},
                                                              "weight_map": {k: renamed[v] for k, v in
                                                                             weight_map.items()}}))
    shards = sorted(set(json.loads((tmp_path / "sharded" / index).read_text())["weight_map"].values()))
    assert len(shards) > 2  # really sharded
    state, file = palm.checkpoint.load_backbone_weights(str(tmp_path / "sharded"))
    assert file.endswith(index)
    single, _ = palm.checkpoint.load_backbone_weights(make_hf("bert", tmp_path / "single"))  # seed 0, same model
    assert sorted(state) == sorted(single)
    for name in single:
        assert torch.equal(state[name], single[name]), name

    from_hf(tmp_path / "sharded", tmp_path / "tp")
    back = load_file(str(tmp_path / "tp" / "model.safetensors"))
    assert sorted(back) == sorted(f"backbone.{k}" for k in single)

    # a shard gone, a tensor missing from its shard, a shard outside the directory: errors naming the index
    index_path = tmp_path / "sharded" / index
    weight_map = json.loads(index_path.read_text())["weight_map"]
    first = sorted(weight_map)[0]
    index_path.write_text(json.dumps({"weight_map": {**weight_map, "not.in.any.shard": shards[0]}}))
    with pytest.raises(ValueError, match=r"index\.json: tensor 'not\.in\.any\.shard' is not in its shard"):
        palm.checkpoint.load_backbone_weights(str(tmp_path / "sharded"))
    index_path.write_text(json.dumps({"weight_map": {**weight_map, first: "../elsewhere/" + shards[0]}}))
    with pytest.raises(ValueError, match="is not a file name in"):
        palm.checkpoint.load_backbone_weights(str(tmp_path / "sharded"))
    index_path.write_text(json.dumps({"weight_map": weight_map}))
    os.remove(tmp_path / "sharded" / shards[-1])
    with pytest.raises(FileNotFoundError, match=f"shard {shards[-1]} is missing"):
        palm.checkpoint.load_backbone_weights(str(tmp_path / "sharded"))
