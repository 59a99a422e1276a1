"""DeBERTa-v2/v3 equals transformers' DebertaV2Model (fp32, <= 1e-4) on tiny random configs, padded and packed.

Each model is a random `DebertaV2ForSequenceClassification` saved with `save_pretrained` and read back the way
`trainer.load_pretrain` does; its LayerNorms and biases are randomised first, so a weight loaded into the wrong
place (a swapped q/k slice, a missed LayerNorm) changes the outputs. Sequences are longer than the position
buckets, so the log-bucketed distances are exercised too.
"""

from __future__ import annotations

import pytest
import torch
from conftest import shared

import torchpalm as palm
from torchpalm.backbone.deberta import log_bucket
from torchpalm.trainer import load_pretrained_backbone

transformers = pytest.importorskip("transformers")
TOL = 1e-4
BASE = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 128, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}
# deberta-v3-base's settings (config.json as published: "p2c|c2p" as a string), with 8 buckets instead of 256
V3 = {**BASE, "relative_attention": True, "position_buckets": 8, "norm_rel_ebd": "layer_norm",
      "share_att_key": True, "pos_att_type": "p2c|c2p", "position_biased_input": False, "type_vocab_size": 0,
      "max_relative_positions": -1, "layer_norm_eps": 1e-7}
# deberta-v2-style: no buckets (distances clamped at max_relative_positions), separate position projections,
# absolute positions and segments in the input
V2 = {**BASE, "relative_attention": True, "max_relative_positions": 16, "pos_att_type": ["c2p", "p2c"],
      "position_biased_input": True, "type_vocab_size": 2}
VARIANTS = {
    "v3": V3,
    "v2": V2,
    "c2p_only_buckets_below_max_relative": {**BASE, "relative_attention": True, "position_buckets": 6,
                                            "max_relative_positions": 20, "pos_att_type": ["c2p"],
                                            "type_vocab_size": 2, "position_biased_input": False},
    "p2c_only": {**BASE, "relative_attention": True, "pos_att_type": ["p2c"], "max_relative_positions": 5},
    "no_relative_attention": {**BASE, "relative_attention": False, "pos_att_type": ["p2c", "c2p"],
                              "type_vocab_size": 2},
    "conv_and_embedding_projection": {**V3, "conv_kernel_size": 3, "conv_act": "gelu", "embedding_size": 24},
}


def make_hf_deberta(path, config: dict, seed: int = 0, num_labels: int = 2):
    """A random DebertaV2ForSequenceClassification with random LayerNorms and biases, saved to `path`."""
    torch.manual_seed(seed)
    hf = transformers.DebertaV2ForSequenceClassification(transformers.DebertaV2Config(**config,
                                                                                       num_labels=num_labels))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(path, safe_serialization=True)
    return hf.eval()


def batch_of(seed: int, rows: int = 4, length: int = 40, vocab: int = 30522) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (rows, length), generator=g)
    lengths = [length, 25, 7, 31][:rows]
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    segments = (torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return {"token_ids": ids * mask, "input_mask": mask, "segment_ids": segments}


def hf_outputs(hf, batch, config):
    kwargs = {"token_type_ids": batch["segment_ids"]} if config.get("type_vocab_size") else {}
    hidden = hf.deberta(input_ids=batch["token_ids"], attention_mask=batch["input_mask"], **kwargs)
    return hidden.last_hidden_state, hf.pooler(hidden.last_hidden_state)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_deberta_matches_transformers(tmp_path, variant):
    config = VARIANTS[variant]
    hf = make_hf_deberta(tmp_path, config)
    ours = palm.backbone.DeBERTaV2.from_config(str(tmp_path / "config.json"), phase="predict")
    load_pretrained_backbone(ours, str(tmp_path))
    batch = batch_of(1)
    with torch.no_grad():
        expected, pooled = hf_outputs(hf, batch, config)
        for packed in (True, False):
            ours.pack_tokens = packed
            got = ours(batch)
            real = batch["input_mask"].bool()
            assert (expected - got["encoder_outputs"])[real].abs().max().item() <= TOL, packed
            assert (pooled - got["sentence_embedding"]).abs().max().item() <= TOL, packed
    assert expected[real].abs().max() > 0.1 and pooled.abs().max() > 0.01  # not trivially equal


def test_deberta_training_mode_runs_packed_with_dropout(tmp_path):
    """With dropout on, packed and padded batches both train (the relative embeddings get a mask per layer)."""
    make_hf_deberta(tmp_path, {**V3, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1})
    ours = palm.backbone.DeBERTaV2.from_config(str(tmp_path / "config.json"))
    batch = batch_of(2)
    for packed in (True, False):
        ours.pack_tokens = packed
        ours.zero_grad()
        ours(batch)["encoder_outputs"].square().mean().backward()
        assert ours.rel_embeddings.weight.grad.abs().sum() > 0 and ours.layers[0].qkv.weight.grad.abs().sum() > 0


def test_log_buckets_equal_transformers():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    distances = torch.arange(-600, 601)[None, :]
    for buckets, max_position in ((256, 512), (8, 128), (6, 20), (32, 64)):
        assert torch.equal(log_bucket(distances, buckets, max_position),
                           make_log_bucket_position(distances, buckets, max_position).long())


def test_deberta_through_the_reader_with_sentence_pairs(tmp_path, uncased_vocab):
    """MRPC pairs from the ClassifyReader (segment ids 0/1, padding in every batch) give transformers' outputs."""
    hf = make_hf_deberta(tmp_path, V2, seed=3)
    rows = open(shared("mrpc", "train.tsv"), encoding="utf-8-sig").readlines()[:17]
    (tmp_path / "pairs.tsv").write_text("label\ttext_a\ttext_b\n" + "".join(
        "\t".join([r.split("\t")[0], r.split("\t")[3], r.rstrip("\n").split("\t")[4]]) + "\n" for r in rows[1:]),
        encoding="utf-8")
    ours = palm.backbone.DeBERTaV2.from_config(str(tmp_path / "config.json"), phase="predict")
    load_pretrained_backbone(ours, str(tmp_path))
    reader = palm.reader.ClassifyReader(uncased_vocab, 96, do_lower_case=True, phase="predict")
    reader.load_data(str(tmp_path / "pairs.tsv"), 8)
    reader.register_with(ours)
    with torch.no_grad():
        for batch in reader:
            assert not bool(batch["input_mask"].all()) and bool((batch["segment_ids"] == 1).any())
            expected, pooled = hf_outputs(hf, batch, V2)
            got = ours(batch)
            real = batch["input_mask"].bool()
            assert (expected - got["encoder_outputs"])[real].abs().max().item() <= TOL
            assert (pooled - got["sentence_embedding"]).abs().max().item() <= TOL
