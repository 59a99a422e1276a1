"""Our BERT equals transformers' BertModel on real checkpoints (fp32, max abs difference <= 1e-4)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import shared

import torchpalm as palm
from torchpalm.checkpoint import assign_state, load_backbone_weights
from torchpalm.convert import hf_to_torchpalm, torchpalm_to_hf
from torchpalm.reader import ClassifyReader

TOL = 1e-4


def _hf_inputs(batch):
    return {"input_ids": batch["token_ids"], "token_type_ids": batch["segment_ids"],
            "attention_mask": batch["input_mask"]}


def _our_backbone(model_dir, cls=palm.backbone.BERT):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    backbone = cls.from_config(config, phase="predict")
    state, file = load_backbone_weights(model_dir)
    assert assign_state(backbone, state, file) == []  # every parameter came from the checkpoint
    return backbone


@pytest.mark.parametrize("pair", [False, True])
def test_minilm_matches_transformers_on_real_sentences(minilm_dir, pair, tmp_path):
    from transformers import BertModel

    texts = [line.rstrip("\n").split("\t")[0] for line in open(shared("sst2", "dev.tsv"), encoding="utf-8")][1:65]
    if pair:
        rows = [f"0\t{a}\t{b}" for a, b in zip(texts[::2], texts[1::2])]
        header = "label\ttext_a\ttext_b"
    else:
        rows, header = [f"0\t{t}" for t in texts], "label\ttext_a"
    path = tmp_path / "dev.tsv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")

    ours = _our_backbone(minilm_dir)
    reader = ClassifyReader(os.path.join(minilm_dir, "vocab.txt"), 128, do_lower_case=True, phase="predict")
    reader.load_data(str(path), 16)
    reader.register_with(ours)
    hf = BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        for batch in reader:
            assert not bool(batch["input_mask"].all())  # real padding in every batch
            expected = hf(**_hf_inputs(batch))
            got = ours(batch)
            mask = batch["input_mask"].bool()
            diff = (expected.last_hidden_state - got["encoder_outputs"])[mask].abs().max().item()
            assert diff <= TOL, diff
            assert (expected.pooler_output - got["sentence_embedding"]).abs().max().item() <= TOL


def test_legacy_torch_file_with_bert_prefix(tmp_path):
    """fastNLP's tiny random BERT: legacy (pre-zip) torch.save, keys prefixed 'bert.'."""
    from transformers import BertConfig, BertModel

    model_dir = str(shared("tiny_random_fixtures", "small_bert"))
    ours = _our_backbone(model_dir)
    hf = BertModel(BertConfig.from_json_file(os.path.join(model_dir, "config.json")), add_pooling_layer=True)
    state = torch.load(os.path.join(model_dir, "small_pytorch_model.bin"), weights_only=True)
    hf.load_state_dict({k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}, strict=False)
    hf.eval()
    ids = torch.tensor([[2, 4, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    batch = {"token_ids": ids, "segment_ids": torch.zeros_like(ids), "input_mask": mask,
             "position_ids": torch.arange(7)[None].expand(2, 7)}
    with torch.no_grad():
        expected, got = hf(input_ids=ids, attention_mask=mask), ours(batch)
    diff = (expected.last_hidden_state - got["encoder_outputs"])[mask.bool()].abs().max().item()
    assert diff <= TOL


def test_hf_name_map_round_trips(minilm_dir):
    from safetensors.torch import load_file

    hf_state = load_file(os.path.join(minilm_dir, "model.safetensors"))
    ours, unused = hf_to_torchpalm(hf_state)
    assert unused == []
    back = torchpalm_to_hf(ours)
    assert set(back) == {k for k in hf_state if not k.endswith("position_ids")}
    for k, v in back.items():
        assert torch.equal(v, hf_state[k]), k
