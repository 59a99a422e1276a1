"""RoBERTa equals transformers' RobertaModel (fp32, <= 1e-4), a BERT-format RoBERTa-zh loads into BERT, and
ERNIE's task embedding equals transformers' ErnieModel."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import shared
from roberta_fixtures import make_hf_roberta, sentences

import torchpalm as palm
from torchpalm.trainer import load_pretrained_backbone

transformers = pytest.importorskip("transformers")
TOL = 1e-4


def max_diff(expected: torch.Tensor, got: torch.Tensor, mask: torch.Tensor) -> float:
    return (expected - got)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("pair", [False, True])
def test_roberta_matches_transformers_through_the_reader(tmp_path, pair):
    model_dir = make_hf_roberta(tmp_path / "roberta")
    texts = sentences(24, seed=3)
    rows = [f"0\t{a}\t{b}" for a, b in zip(texts[::2], texts[1::2])] if pair else [f"0\t{t}" for t in texts]
    (tmp_path / "dev.tsv").write_text(("label\ttext_a\ttext_b\n" if pair else "label\ttext_a\n") + "\n".join(rows)
                                      + "\n", encoding="utf-8")
    ours = palm.backbone.RoBERTa.from_config(os.path.join(model_dir, "config.json"), phase="predict")
    load_pretrained_backbone(ours, model_dir)  # what trainer.load_pretrain(model_dir) does
    reader = palm.reader.ClassifyReader(model_dir, 64, tokenizer="bpe", phase="predict")
    reader.load_data(str(tmp_path / "dev.tsv"), 8)
    reader.register_with(ours)
    hf = transformers.RobertaModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        for batch in reader:
            assert not bool(batch["input_mask"].all())  # padding in every batch
            expected = hf(input_ids=batch["token_ids"], attention_mask=batch["input_mask"])
            got = ours(batch)
            assert max_diff(expected.last_hidden_state, got["encoder_outputs"], batch["input_mask"]) <= TOL
            assert (expected.pooler_output - got["sentence_embedding"]).abs().max().item() <= TOL


def test_small_roberta_fixture_matches_transformers(tmp_path):
    """fastNLP's tiny random RoBERTa: legacy torch file, no `roberta.` prefix, no pad_token_id in its config."""
    model_dir = str(shared("tiny_random_fixtures", "small_roberta"))
    config_file = os.path.join(model_dir, "config.json")
    ours = palm.backbone.RoBERTa.from_config(config_file, phase="predict")
    state, file = palm.checkpoint.load_backbone_weights(model_dir)
    assert palm.checkpoint.assign_state(ours, state, file) == []  # every parameter from the file
    hf = transformers.RobertaModel(transformers.RobertaConfig.from_json_file(config_file))
    missing, unexpected = hf.load_state_dict(torch.load(os.path.join(model_dir, "small_pytorch_model.bin"),
                                                        weights_only=True), strict=False)
    assert not unexpected and not missing
    hf.eval()
    # 18 tokens is the most its 20 position rows hold (positions start after the padding index 1)
    ids = torch.tensor([[0, *range(5, 21), 2], [0, 57, 58, 59, 60, 2, *[1] * 12]])
    mask = (ids != 1).long()
    with torch.no_grad():
        expected, got = hf(input_ids=ids, attention_mask=mask), ours({"token_ids": ids, "input_mask": mask})
    assert max_diff(expected.last_hidden_state, got["encoder_outputs"], mask) <= TOL
    assert (expected.pooler_output - got["sentence_embedding"]).abs().max().item() <= TOL
    # converted to torchpalm and back, it is an HF RobertaModel directory with the same outputs
    palm.convert.from_hf(model_dir, tmp_path / "tp")
    palm.convert.to_hf(tmp_path / "tp", tmp_path / "hf")
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(reloaded).__name__ == "RobertaModel" and reloaded.config.pad_token_id == 1
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).last_hidden_state, expected.last_hidden_state)


def test_bert_format_roberta_zh_loads_into_bert(tmp_path, chinese_vocab):
    """hfl/chinese-roberta-wwm-ext and PALM's RoBERTa-zh are BERT checkpoints (WordPiece vocab.txt, `bert.*`
    names, positions from 0): they load into palm.backbone.BERT, as PALM did, and equal transformers' BertModel."""
    model_dir = tmp_path / "chinese-roberta-wwm-ext"
    torch.manual_seed(0)
    vocab_size = sum(1 for _ in open(chinese_vocab, encoding="utf-8"))
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    transformers.BertForPreTraining(config).save_pretrained(model_dir)  # `bert.*` (pooler too), `cls.*`: as hfl
    (model_dir / "vocab.txt").write_bytes(open(chinese_vocab, "rb").read())
    assert palm.convert.model_type_of(transformers.BertConfig.from_pretrained(model_dir).to_dict()) == "bert"

    (tmp_path / "dev.tsv").write_text("label\ttext_a\ttext_b\n0\t今天天气很好\t我们去公园散步吧\n1\t这部电影不好看\t太长了\n",
                                      encoding="utf-8")
    ours = palm.backbone.BERT.from_config(str(model_dir / "config.json"), phase="predict")
    load_pretrained_backbone(ours, str(model_dir))
    reader = palm.reader.ClassifyReader(str(model_dir), 32, lang="cn", phase="predict")  # vocab.txt in the dir
    reader.load_data(str(tmp_path / "dev.tsv"), 2)
    reader.register_with(ours)
    batch = next(iter(reader))
    hf = transformers.BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = hf(input_ids=batch["token_ids"], token_type_ids=batch["segment_ids"],
                      attention_mask=batch["input_mask"])
        got = ours(batch)
    assert max_diff(expected.last_hidden_state, got["encoder_outputs"], batch["input_mask"]) <= TOL
    assert (expected.pooler_output - got["sentence_embedding"]).abs().max().item() <= TOL


def ernie_hf_model(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.ErnieConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                                      task_type_vocab_size=3, use_task_id=True)
    return transformers.ErnieModel(config).eval()


def test_ernie_task_embedding_matches_transformers_both_ways(tmp_path):
    hf = ernie_hf_model()
    assert hf.embeddings.task_type_embeddings.weight.abs().sum() > 0  # random rows, so dropping them shows
    hf.save_pretrained(tmp_path / "hf")
    palm.convert.from_hf(tmp_path / "hf", tmp_path / "tp")
    ours = palm.backbone.ERNIE.from_config(str(tmp_path / "tp" / "config.json"), phase="predict")
    assert ours.use_task_emb and ours.task_embeddings.num_embeddings == 3
    load_pretrained_backbone(ours, str(tmp_path / "tp"))
    ids = torch.tensor([[1, 5, 6, 7, 2, 9], [1, 8, 2, 0, 0, 0]])
    mask = (ids != 0).long()
    segments = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])
    tasks = torch.tensor([[2, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1]])  # non-zero task ids: the table is used
    batch = {"token_ids": ids, "position_ids": torch.arange(6)[None].expand(2, 6), "segment_ids": segments,
             "input_mask": mask, "task_ids": tasks}
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=segments, attention_mask=mask, task_type_ids=tasks)
        got = ours(batch)
    assert max_diff(expected.last_hidden_state, got["encoder_outputs"], mask) <= TOL
    # and back: our ERNIE -> an HF directory that AutoModel loads as ErnieModel with the same task embedding
    palm.convert.to_hf(tmp_path / "tp", tmp_path / "back")
    back = transformers.AutoModel.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == "ErnieModel" and back.config.use_task_id
    assert torch.equal(back.embeddings.task_type_embeddings.weight, hf.embeddings.task_type_embeddings.weight)
    with torch.no_grad():
        again = back(input_ids=ids, token_type_ids=segments, attention_mask=mask, task_type_ids=tasks)
    assert torch.equal(again.last_hidden_state, expected.last_hidden_state)
