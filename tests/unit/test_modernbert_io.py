"""ModernBERT in and out: the downloader's names installed from a local Hub cache, `backbone: {type: modernbert}`
in YAML configs, the heads a config builds on it, FSDP units, and bad configs refused naming the file and key.
Nothing here touches the network."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from modernbert_fixtures import make_hf_modernbert

import torchpalm as palm
from torchpalm import components, downloader
from torchpalm import config as C

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _hub_cache(cache, repo):
    """A ModernBERT repository in the Hub cache layout (tokenizer.json, no vocab.txt, as the real ones)."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    model = make_hf_modernbert(snapshot, vocab_size=64, max_position_embeddings=64)
    (snapshot / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    blobs = storage / "blobs"
    blobs.mkdir()
    for i, f in enumerate(sorted(snapshot.iterdir())):
        blob = blobs / f"blob{i}"
        f.rename(blob)
        f.symlink_to(os.path.relpath(blob, snapshot))
    return model


@pytest.mark.parametrize("name, repo", [("ModernBERT-base", "answerdotai/ModernBERT-base"),
                                        ("Ettin-encoder-150m", "jhu-clsp/ettin-encoder-150m"),
                                        ("mmBERT-base", "jhu-clsp/mmBERT-base")])
def test_download_from_a_local_hub_cache_loads_into_the_backbone(tmp_path, name, repo):
    assert {m.name: m.repo for m in downloader.ls("pretrain")}[name] == repo
    hf = _hub_cache(tmp_path / "cache", repo)
    target = downloader.download("pretrain", name, str(tmp_path / "models"), cache_dir=str(tmp_path / "cache"))
    assert sorted(os.listdir(target)) == ["config.json", "download.json", "model.safetensors", "params",
                                          "tokenizer.json"]
    backbone = palm.backbone.ModernBERT.from_config(os.path.join(target, "config.json"), phase="predict")
    trainer = palm.Trainer("cls")
    trainer.build_predict_forward(backbone, palm.head.Classify(2, 32, phase="predict"))
    trainer.load_pretrain(os.path.join(target, "params"))
    ids = torch.tensor([[1, 7, 9, 33, 2, 0], [1, 5, 2, 0, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        expected = hf.model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = backbone({"token_ids": ids, "input_mask": mask})["last_hidden_state"]
    assert (expected - got)[mask.bool()].abs().max() <= 1e-5


def test_offline_help_names_the_tokenizer_file(tmp_path):
    with pytest.raises(downloader.DownloadError, match=r"hf download answerdotai/ModernBERT-large config.json "
                                                       r"tokenizer.json model.safetensors"):
        downloader.download("pretrain", "ModernBERT-large", str(tmp_path), cache_dir=str(tmp_path / "empty"))


def _config(tmp_path, model_dir, tasks):
    cfg = {"backbone": {"type": "modernbert", "pretrained": str(model_dir)}, "tasks": tasks,
           "optimizer": {"type": "adam", "lr": 1e-3}, "schedule": {"type": "none"},
           "train": {"epochs": 1, "batch_size": 4, "max_len": 32, "device": "cpu", "save_path": "out"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return C.load(path)


def test_yaml_config_builds_modernbert_and_its_heads(tmp_path, uncased_vocab):
    make_hf_modernbert(tmp_path / "mb", vocab=uncased_vocab)
    (tmp_path / "train.tsv").write_text("label\ttext_a\n1\tgood\n0\tbad\n", encoding="utf-8")
    (tmp_path / "corpus.tsv").write_text("text_a\nthe film was good\n", encoding="utf-8")
    cfg = _config(tmp_path, tmp_path / "mb", [
        {"name": "cls", "reader": {"type": "classify"}, "head": {"type": "classify", "num_classes": 2},
         "train_file": str(tmp_path / "train.tsv")},
        {"name": "mlm", "reader": {"type": "mask_lm"}, "head": {"type": "mask_lm"},
         "train_file": str(tmp_path / "corpus.tsv")}])
    config, vocab, pretrained = components.backbone_files(cfg)
    assert vocab == str(tmp_path / "mb" / "vocab.txt") and pretrained == str(tmp_path / "mb")
    backbone = components.build_backbone(cfg, config, "train")
    assert isinstance(backbone, palm.backbone.ModernBERT) and backbone.config["layer_types"][1] == "sliding_attention"
    mlm = components.build_head(cfg["tasks"][1], backbone, "train", None)
    # on ModernBERT the MaskLM head is the tied decoder alone: the backbone applies the prediction head
    assert mlm.config()["transform"] is False and mlm.hidden_act == "gelu"
    assert not any(n.startswith("transform") for n, _ in mlm.named_parameters())
    # a model shipping tokenizer.json and no vocab.txt: the readers are given the model folder
    os.remove(tmp_path / "mb" / "vocab.txt")
    assert components.backbone_files(cfg)[1] == str(tmp_path / "mb")


@pytest.mark.parametrize("change, message", [
    ({"layer_types": ["full_attention"]}, "'layer_types' must list 4 entries"),
    ({"layer_types": None, "global_attn_every_n_layers": 0}, "'global_attn_every_n_layers' must be an integer"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}}, "only plain rotary"),
    ({"classifier_pooling": "max"}, "classifier_pooling must be one of"),
    ({"hidden_activation": "swiglu"}, "hidden_activation 'swiglu' is not supported"),
    ({"hidden_size": 33}, "not divisible by 'num_attention_heads'"),
    ({"hidden_size": 34}, "must be even (rotary embeddings"),
    ({"local_attention": 1}, "local_attention must be an integer >= 2"),
    ({"model_type": "bert"}, "model_type 'bert' is not a ModernBERT"),
])
def test_bad_configs_are_refused_naming_the_file(tmp_path, change, message):
    make_hf_modernbert(tmp_path / "mb")
    path = tmp_path / "mb" / "config.json"
    config = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps(config))
    with pytest.raises((ValueError, TypeError)) as e:
        palm.backbone.ModernBERT.from_config(str(path))
    assert str(e.value).startswith(str(path)) and message in str(e.value), str(e.value)


def test_a_vocabulary_larger_than_the_embedding_table_is_refused(tmp_path, uncased_vocab):
    make_hf_modernbert(tmp_path / "mb", vocab_size=1000)
    backbone = palm.backbone.ModernBERT.from_config(str(tmp_path / "mb"))
    reader = palm.reader.ClassifyReader(uncased_vocab, 32)
    with pytest.raises(ValueError, match=r"has 30522 ids but the backbone's 'vocab_size' is 1000 \(.*config.json\)"):
        reader.register_with(backbone)


def test_every_layer_is_one_fsdp_unit():
    """fsdp.shard_model makes each module of a backbone ModuleList a unit: ModernBERT's layers are that list."""
    backbone = palm.backbone.ModernBERT(32, 3, 2, 64, intermediate_size=48)
    lists = [m for m in backbone.modules() if isinstance(m, torch.nn.ModuleList)]
    assert lists == [backbone.layers] and all(isinstance(x, torch.nn.Module) for x in backbone.layers)
    layer_params = {id(p) for layer in backbone.layers for p in layer.parameters()}
    rest = [n for n, p in backbone.named_parameters() if id(p) not in layer_params]
    assert sorted(rest) == ["embed_norm.weight", "final_norm.weight", "head.dense.weight", "head.norm.weight",
                            "tok_embeddings.weight"]
