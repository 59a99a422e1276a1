"""ModernBERT equals transformers' ModernBertModel (fp32, <= 1e-4) on tiny random configs whose sentences are far
longer than the local window: padded and packed batches, both poolings, with and without biases, old and new
config layouts; and converted to HF and back it loads in `transformers.AutoModel` with the same outputs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from modernbert_fixtures import VOCAB_SIZE, make_hf_modernbert

import torchpalm as palm
from torchpalm.trainer import load_pretrained_backbone

transformers = pytest.importorskip("transformers")
TOL = 1e-4
LENGTHS = [37, 5, 21, 1, 40, 12, 33]  # up to 5x the 8-token window; one single-token row


def _batch(seed=0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1000, VOCAB_SIZE, (len(lengths), width), generator=g) * mask  # [PAD] = 0 at padding
    return {"token_ids": ids, "input_mask": mask}


def _ours(model_dir):
    backbone = palm.backbone.ModernBERT.from_config(os.path.join(model_dir, "config.json"), phase="predict")
    load_pretrained_backbone(backbone, model_dir)  # what trainer.load_pretrain(model_dir) does
    return backbone


def _hf_outputs(hf, batch, pooling):
    out = hf.model(input_ids=batch["token_ids"], attention_mask=batch["input_mask"]).last_hidden_state
    mask = batch["input_mask"].unsqueeze(-1).float()
    pooled = out[:, 0] if pooling == "cls" else (out * mask).sum(1) / mask.sum(1)
    return out, hf.head(out), hf.head(pooled)


def _worst(expected, got, mask):
    return (expected - got)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("biases", [False, True], ids=["no_bias", "biases"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_modernbert_matches_transformers(tmp_path, pooling, biases, packed):
    extra = dict(attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True) if biases else {}
    hf = make_hf_modernbert(tmp_path / "mb", classifier_pooling=pooling, seed=len(extra), **extra)
    ours = _ours(tmp_path / "mb")
    ours.pack_tokens = packed
    batch = _batch()
    with torch.no_grad():
        last, tokens, sentence = _hf_outputs(hf, batch, pooling)
        got = ours(batch)
    assert _worst(last, got["last_hidden_state"], batch["input_mask"]) <= TOL
    assert _worst(tokens, got["encoder_outputs"], batch["input_mask"]) <= TOL
    assert (sentence - got["sentence_embedding"]).abs().max().item() <= TOL
    assert got["embedding_table"] is ours.tok_embeddings.weight
    # told only sentence-level features are read (a Classify head), the same sentence embedding
    with torch.no_grad():
        sentence_only = ours(batch, outputs=["sentence_embedding"])
    assert "encoder_outputs" not in sentence_only
    assert torch.allclose(sentence_only["sentence_embedding"], got["sentence_embedding"], atol=1e-6)


def test_unpadded_batch_and_old_config_layout(tmp_path):
    """A config written by transformers 4.x (global_attn_every_n_layers, global/local_rope_theta, no layer_types,
    no rope_parameters) gives the same model; a batch with no padding takes the padded path."""
    hf = make_hf_modernbert(tmp_path / "mb", global_attn_every_n_layers=3, num_hidden_layers=5, seed=3)
    path = tmp_path / "mb" / "config.json"
    config = json.loads(path.read_text())
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention", "full_attention",
                                     "sliding_attention"]
    for key in ("layer_types", "rope_parameters"):
        config.pop(key)
    config.update(global_attn_every_n_layers=3, global_rope_theta=1000.0, local_rope_theta=50.0)
    path.write_text(json.dumps(config))
    ours = _ours(tmp_path / "mb")
    assert ours.config["layer_types"] == hf.config.layer_types
    batch = _batch(1, [24, 24, 24])
    with torch.no_grad():
        last, tokens, _ = _hf_outputs(hf, batch, "cls")
        got = ours(batch)
    assert _worst(last, got["last_hidden_state"], batch["input_mask"]) <= TOL


def test_converted_to_hf_loads_in_automodel_with_the_same_outputs(tmp_path):
    hf = make_hf_modernbert(tmp_path / "mb", seed=5)
    palm.convert.from_hf(tmp_path / "mb", tmp_path / "tp")
    palm.convert.to_hf(tmp_path / "tp", tmp_path / "hf")
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(reloaded).__name__ == "ModernBertModel"
    assert reloaded.config.layer_types == hf.config.layer_types
    batch = _batch(2)
    with torch.no_grad():
        expected = hf.model(input_ids=batch["token_ids"], attention_mask=batch["input_mask"]).last_hidden_state
        got = reloaded(input_ids=batch["token_ids"], attention_mask=batch["input_mask"]).last_hidden_state
    assert torch.equal(expected, got)
    # the prediction head travels too: HF's task models read it from the exported directory
    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", num_labels=2)
    assert torch.equal(classifier.head.dense.weight, hf.head.dense.weight)
