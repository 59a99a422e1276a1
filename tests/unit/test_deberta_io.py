"""DeBERTa-v2/v3 models in and out: from_hf / to_hf (an exported model loads in transformers.AutoModel with the
same outputs), the downloader's names fetched from a local Hub cache, and refusals naming the file."""

from __future__ import annotations

import json
import os

import pytest
import torch

import torchpalm as palm
from torchpalm import downloader

transformers = pytest.importorskip("transformers")
COMMIT = "d" * 40
V3 = {"vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
      "max_position_embeddings": 64, "relative_attention": True, "position_buckets": 8, "norm_rel_ebd": "layer_norm",
      "share_att_key": True, "pos_att_type": "p2c|c2p", "position_biased_input": False, "type_vocab_size": 0}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def random_deberta(task_class=None, seed=0):
    torch.manual_seed(seed)
    config = transformers.DebertaV2Config(**V3)
    model = task_class(config) if task_class else transformers.DebertaV2Model(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def ids_and_mask():
    ids = torch.tensor([[1, 5, 9, 11, 30, 2, 0, 0], [1, *range(3, 9), 2]])
    return ids, (ids != 0).long()


def hidden(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def test_from_hf_and_back_gives_transformers_the_same_model(tmp_path):
    hf = random_deberta(transformers.DebertaV2ForSequenceClassification)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    (tmp_path / "hf" / "spm.model").write_bytes(b"sentencepiece stand-in")
    palm.convert.from_hf(tmp_path / "hf", tmp_path / "tp")
    config = json.loads((tmp_path / "tp" / "config.json").read_text())
    assert config["model_type"] == "deberta-v2"
    ours = palm.backbone.DeBERTaV2.from_config(str(tmp_path / "tp" / "config.json"), phase="predict")
    trainer = palm.Trainer("t")
    trainer.build_predict_forward(ours, palm.head.Classify(2, 32, phase="predict"))
    trainer.load_pretrain(str(tmp_path / "tp"))
    ids, mask = ids_and_mask()
    expected = hidden(hf.deberta, ids, mask)
    with torch.no_grad():
        got = ours({"token_ids": ids, "input_mask": mask})
    assert (got["encoder_outputs"] - expected)[mask.bool()].abs().max() <= 1e-5
    assert torch.allclose(got["sentence_embedding"], hf.pooler(expected), atol=1e-5)  # the pooler came along

    palm.convert.to_hf(tmp_path / "tp", tmp_path / "back")
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "back").eval()
    assert type(reloaded).__name__ == "DebertaV2Model" and reloaded.config.position_buckets == 8
    assert torch.equal(hidden(reloaded, ids, mask), expected)
    assert (tmp_path / "tp" / "spm.model").is_file() and (tmp_path / "back" / "spm.model").is_file()


def test_a_torchpalm_checkpoint_exports_to_hf(tmp_path):
    """A training checkpoint (trainer_state.json names DeBERTaV2) converts to an HF DebertaV2Model directory."""
    hf = random_deberta(seed=1)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    backbone = palm.backbone.DeBERTaV2.from_config(str(tmp_path / "hf" / "config.json"))
    trainer = palm.Trainer("t")
    model = trainer.build_forward(backbone, palm.head.Classify(2, 32))
    trainer.build_backward(palm.optimizer.Adam(model, 1e-3))
    trainer.load_pretrain(str(tmp_path / "hf"))
    saved = trainer.save(str(tmp_path / "ckpt"))
    palm.convert.to_hf(saved, tmp_path / "out")
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
    ids, mask = ids_and_mask()
    assert torch.equal(hidden(reloaded, ids, mask), hidden(hf, ids, mask))


def fake_hub_cache(cache, repo):
    """A tiny DeBERTa-v3 in the Hub cache layout (refs/main -> commit, snapshots/<commit>/ symlinks to blobs/)."""
    model = random_deberta(seed=2)
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot, blobs = storage / "snapshots" / COMMIT, storage / "blobs"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    model.save_pretrained(snapshot, safe_serialization=True)
    (snapshot / "spm.model").write_bytes(b"sentencepiece stand-in")
    blobs.mkdir()
    for i, f in enumerate(sorted(snapshot.iterdir())):
        blob = blobs / f"blob{i}"
        f.rename(blob)
        f.symlink_to(os.path.relpath(blob, snapshot))
    return model


@pytest.mark.parametrize("name, repo", [("DeBERTa-v3-base", "microsoft/deberta-v3-base"),
                                        ("microsoft/deberta-v3-large", "microsoft/deberta-v3-large")])
def test_downloader_installs_deberta_v3_from_a_local_hub_cache(tmp_path, capsys, name, repo):
    model = fake_hub_cache(tmp_path / "cache", repo)
    target = downloader.download("pretrain", name, str(tmp_path / "models"), cache_dir=str(tmp_path / "cache"))
    assert sorted(os.listdir(target)) == ["config.json", "download.json", "model.safetensors", "params", "spm.model"]
    assert downloader.find(name).backbone == "DeBERTaV2"
    backbone = palm.backbone.DeBERTaV2.from_config(os.path.join(target, "config.json"), phase="predict")
    trainer = palm.Trainer("t")
    trainer.build_predict_forward(backbone, palm.head.Classify(2, 32, phase="predict"))
    trainer.load_pretrain(target)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        got = backbone({"token_ids": ids, "input_mask": mask})["encoder_outputs"]
    assert (got - hidden(model, ids, mask))[mask.bool()].abs().max() <= 1e-5
    downloader.ls("pretrain")
    assert repo in capsys.readouterr().out


def test_deberta_configs_that_cannot_work_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "config.json"
    for config, message in [
        ({**V3, "pos_att_type": "p2c|x2y"}, "pos_att_type 'x2y' is not a relative attention term"),
        ({**V3, "attention_head_size": 5}, "attention_head_size 5 x num_attention_heads 4 != hidden_size 32"),
        ({**V3, "hidden_act": "gelu_fast_unknown"}, "hidden_act 'gelu_fast_unknown' is not supported"),
        ({k: v for k, v in V3.items() if k != "num_hidden_layers"}, "lacks 'num_hidden_layers'"),
        ({**V3, "hidden_size": 30}, "'hidden_size' 30 is not divisible by 'num_attention_heads' 4")]:
        path.write_text(json.dumps(config))
        with pytest.raises((ValueError, KeyError), match=str(path).replace(".", r"\.") + ".*" + message
                           .replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
            palm.backbone.DeBERTaV2.from_config(str(path))
