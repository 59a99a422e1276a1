"""HFEncoder: any transformers.AutoModel encoder as a backbone (tiny random ELECTRA, DistilBERT, ALBERT), and the
refusals of configs that cannot be built (an unknown architecture, a DeBERTa key the backbone does not know)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared

import torchpalm as palm
from torchpalm.trainer import load_pretrained_backbone

transformers = pytest.importorskip("transformers")
TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "max_position_embeddings": 128}
CONFIGS = {
    "electra": lambda: transformers.ElectraConfig(**TINY, embedding_size=24),
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2,
                                                        hidden_dim=37, max_position_embeddings=128),
    "albert": lambda: transformers.AlbertConfig(**TINY, embedding_size=16),
}


def save_random(path, config, task_class=None, seed: int = 0):
    """A random HF model (its LayerNorms and biases randomised too) saved to `path`: the base model, or the task
    model `task_class` (whose weights carry its prefix, e.g. `electra.`)."""
    torch.manual_seed(seed)
    model = task_class(config) if task_class else transformers.AutoModel.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return model.eval()


def batch_of(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (3, 20), generator=g)
    mask = (torch.arange(20)[None, :] < torch.tensor([[20], [12], [5]])).long()
    return {"token_ids": ids * mask, "input_mask": mask, "segment_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_outputs_equal_automodel(tmp_path, kind):
    hf = save_random(tmp_path, CONFIGS[kind]())
    ours = palm.backbone.HFEncoder(str(tmp_path), phase="predict")
    load_pretrained_backbone(ours, str(tmp_path))  # what trainer.load_pretrain(dir) does
    reloaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    batch = batch_of()
    with torch.no_grad():
        expected = reloaded(input_ids=batch["token_ids"], attention_mask=batch["input_mask"])
        got = ours(batch)
    assert torch.equal(got["encoder_outputs"], expected.last_hidden_state)
    pooled = getattr(expected, "pooler_output", None)
    assert torch.equal(got["sentence_embedding"], expected.last_hidden_state[:, 0] if pooled is None else pooled)
    assert got["embedding_table"] is ours.model.get_input_embeddings().weight
    assert (expected.last_hidden_state - hf(input_ids=batch["token_ids"], attention_mask=batch["input_mask"])
            .last_hidden_state).abs().max() == 0  # the saved weights, not a fresh initialisation


def test_task_model_weights_load_into_the_base_model(tmp_path):
    """An ElectraForSequenceClassification directory (weights under `electra.`, plus its classifier) loads."""
    hf = save_random(tmp_path, CONFIGS["electra"](), transformers.ElectraForSequenceClassification)
    ours = palm.backbone.HFEncoder(str(tmp_path), phase="predict")
    state, _ = ours.pretrained_state(str(tmp_path))
    assert palm.checkpoint.assign_state(ours, state, "x") == []  # every parameter from the file
    batch = batch_of(2)
    with torch.no_grad():
        expected = hf.electra(input_ids=batch["token_ids"], attention_mask=batch["input_mask"]).last_hidden_state
        assert torch.equal(ours(batch)["encoder_outputs"], expected)


def test_a_classifier_trains_on_hfencoder(tmp_path, uncased_vocab):
    save_random(tmp_path / "model", CONFIGS["distilbert"]())
    data = tmp_path / "sst2.tsv"
    data.write_text("".join(open(shared("sst2", "train.tsv"), encoding="utf-8").readlines()[:17]), encoding="utf-8")
    torch.manual_seed(0)
    backbone = palm.backbone.HFEncoder.from_config(str(tmp_path / "model" / "config.json"))
    reader = palm.reader.ClassifyReader(uncased_vocab, 32, do_lower_case=True, seed=1)
    reader.load_data(str(data), 16, num_epochs=30)
    reader.register_with(backbone)
    trainer = palm.Trainer("sst2")
    model = trainer.build_forward(backbone, palm.head.Classify(2, 32))
    trainer.build_backward(palm.optimizer.Adam(model, 3e-3))
    trainer.load_pretrain(str(tmp_path / "model"))
    losses = [float(trainer.train_one_step(b)["sst2.loss"]) for b in trainer.fit_reader(reader)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses  # it fits the 16 sentences


def test_unknown_architecture_is_refused_naming_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model", **TINY}))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'no-such-model' is not an architecture"):
        palm.backbone.HFEncoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(ValueError, match=r"config\.json: no 'model_type'"):
        palm.backbone.HFEncoder(str(tmp_path))


def test_deberta_refuses_a_config_key_it_does_not_understand(tmp_path):
    config = {"model_type": "deberta-v2", **TINY, "relative_attention": True, "position_bucket": 256}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: DeBERTaV2 does not understand the config key "
                                         r"'position_bucket' \(did you mean 'position_buckets'\?\)"):
        palm.backbone.DeBERTaV2.from_config(str(tmp_path / "config.json"))
    del config["position_bucket"]
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'bert' is not DeBERTa"):
        palm.backbone.DeBERTaV2.from_config(str(tmp_path / "config.json"))


def test_the_command_line_names_the_config_file_of_a_bad_backbone(tmp_path, uncased_vocab, capsys):
    from torchpalm.cli import main

    (tmp_path / "model").mkdir()
    (tmp_path / "t.tsv").write_text("label\ttext_a\n1\tgood\n0\tbad\n")
    run = {"backbone": {"type": "hf", "pretrained": "model", "vocab": uncased_vocab},
           "tasks": [{"name": "cls", "reader": {"type": "classify", "do_lower_case": True},
                      "head": {"type": "classify", "num_classes": 2}, "train_file": "t.tsv"}],
           "optimizer": {"type": "adam", "lr": 1e-3}, "train": {"epochs": 1, "batch_size": 2, "max_len": 16}}
    config = tmp_path / "model" / "config.json"
    for backbone, content, message in [
            ("hf", {"model_type": "no-such-model", **TINY}, "model_type 'no-such-model' is not an architecture"),
            ("deberta-v2", {"model_type": "deberta-v2", **TINY, "position_bucket": 8},
             "does not understand the config key 'position_bucket'"),
            ("modernbert", {"model_type": "modernbert", **TINY, "global_rope_thetta": 8.0},
             "ModernBERT does not understand the config key 'global_rope_thetta'")]:
        config.write_text(json.dumps(content))
        run["backbone"]["type"] = backbone
        (tmp_path / "run.yaml").write_text(json.dumps(run))  # JSON is YAML
        assert main(["train", str(tmp_path / "run.yaml")]) == 2
        err = capsys.readouterr().err
        assert str(config) in err and message in err, err


@pytest.mark.parametrize("kind", ["distilbert", "albert"])
def test_heads_take_their_width_from_the_backbone_not_a_config_key(tmp_path, uncased_vocab, kind):
    """A YAML run's heads get `input_dim` from the backbone's `hidden_size`, the width of its outputs: DistilBERT's
    config.json names it `dim` (no `hidden_size` key), ALBERT's token embeddings (16) are narrower than its
    outputs (32). Trains, then predicts from the checkpoint, through the command line; and through the API."""
    import yaml
    from toy_data import write_cls, write_tags

    from torchpalm.cli import main

    save_random(tmp_path / "model", CONFIGS[kind]())
    assert ("hidden_size" in json.loads((tmp_path / "model" / "config.json").read_text())) == (kind == "albert")
    write_cls(tmp_path / "cls.tsv", 8)
    write_tags(tmp_path / "tag.tsv", 8, seed=1)
    cfg = {"backbone": {"type": "hf", "pretrained": str(tmp_path / "model"), "vocab": uncased_vocab},
           "tasks": [{"name": "cls", "reader": {"type": "classify", "do_lower_case": True},
                      "head": {"type": "classify", "num_classes": 2}, "train_file": str(tmp_path / "cls.tsv"),
                      "predict_file": str(tmp_path / "cls.tsv")},
                     {"name": "tag", "reader": {"type": "sequence_label", "do_lower_case": True},
                      "head": {"type": "sequence_label", "use_crf": False}, "train_file": str(tmp_path / "tag.tsv"),
                      "predict_file": str(tmp_path / "tag.tsv")}],
           "optimizer": {"type": "adam", "lr": 1e-3},
           "train": {"epochs": 1, "batch_size": 4, "max_len": 16, "save_path": str(tmp_path / "out"),
                     "save_steps": 2, "device": "cpu"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    final = max((tmp_path / "out").glob("ckpt.step*"), key=lambda p: int(p.name[len("ckpt.step"):]))
    assert main(["predict", str(tmp_path / "run.yaml"), "--checkpoint", str(final), "--output",
                 str(tmp_path / "pred")]) == 0
    assert main(["export", str(tmp_path / "run.yaml"), "--checkpoint", str(final), "--out",
                 str(tmp_path / "bundle")]) == 0
    predicted = {task: (tmp_path / "pred" / task / "predictions.json").read_text().splitlines()
                 for task in ("cls", "tag")}
    assert len(predicted["cls"]) == len(predicted["tag"]) == 8
    # the API: the backbone says its width
    backbone = palm.backbone.HFEncoder(str(tmp_path / "model"))
    assert backbone.hidden_size == 32
    reader = palm.reader.ClassifyReader(uncased_vocab, 16, do_lower_case=True, seed=1)
    reader.load_data(str(tmp_path / "cls.tsv"), 4, num_epochs=1)
    reader.register_with(backbone)
    trainer = palm.Trainer("cls")
    model = trainer.build_forward(backbone, palm.head.Classify(2, backbone.hidden_size))
    trainer.build_backward(palm.optimizer.Adam(model, 1e-3))
    trainer.load_pretrain(str(tmp_path / "model"))
    assert all(np.isfinite(float(trainer.train_one_step(b)["cls.loss"])) for b in trainer.fit_reader(reader))


def test_modernbert_refuses_a_config_key_it_does_not_understand(tmp_path):
    """A typo (or another model's setting) in a ModernBERT config.json is refused naming the file, as DeBERTa's;
    every key of transformers' own ModernBertConfig, and benchmarks/modernbert_base.json, still load."""
    from pathlib import Path

    config = transformers.ModernBertConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=2, local_attention=8).to_dict()
    config["model_type"] = "modernbert"
    (tmp_path / "config.json").write_text(json.dumps(config))
    palm.backbone.ModernBERT.from_config(str(tmp_path / "config.json"))
    base = Path(__file__).resolve().parents[2] / "benchmarks" / "modernbert_base.json"
    assert palm.backbone.ModernBERT.from_config(str(base)).config["num_hidden_layers"] == 22
    (tmp_path / "config.json").write_text(json.dumps({**config, "local_atention": 64}))
    with pytest.raises(ValueError, match=r"config\.json: ModernBERT does not understand the config key "
                                         r"'local_atention' \(did you mean 'local_attention'\?\)"):
        palm.backbone.ModernBERT.from_config(str(tmp_path / "config.json"))
