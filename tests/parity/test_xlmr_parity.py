"""XLM-R on the RoBERTa backbone with its SentencePiece tokenizer: a tiny random XLMRobertaModel saved with only
`sentencepiece.bpe.model` as its tokenizer; the readers convert it, `load_pretrain` reads the weights, and the
outputs on reader-made batches equal transformers' within 1e-4. A tokenizer.json larger than the embedding table
is refused naming the file."""

from __future__ import annotations

import os

import pytest
import torch
from tokenizer_fixtures import make_bytelevel, make_xlmr_spm, sst2_sentences

import torchpalm as palm

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
TOL = 1e-4


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory) -> str:
    model_dir = make_xlmr_spm(str(tmp_path_factory.mktemp("xlmr")))
    vocab_size = len(transformers.AutoTokenizer.from_pretrained(model_dir))
    config = transformers.XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.XLMRobertaModel(config)
    with torch.no_grad():  # random (not zero) biases and LayerNorms, so a mis-mapped one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.normal_(0, 0.1).add_(1.0 if name.endswith("LayerNorm.weight") else 0.0)
    model.save_pretrained(model_dir)
    return model_dir


@pytest.mark.parametrize("pair", [False, True])
def test_xlmr_on_the_roberta_backbone_equals_transformers_through_the_reader(xlmr_dir, tmp_path, pair):
    texts = sst2_sentences(48, start=60000)
    rows = [f"0\t{a}\t{b}" for a, b in zip(texts[::2], texts[1::2])] if pair else [f"0\t{t}" for t in texts]
    (tmp_path / "dev.tsv").write_text(("label\ttext_a\ttext_b\n" if pair else "label\ttext_a\n") + "\n".join(rows)
                                      + "\n", encoding="utf-8")
    backbone = palm.backbone.RoBERTa.from_config(os.path.join(xlmr_dir, "config.json"))
    head = palm.head.Classify(2, backbone.config["hidden_size"], 0.1)
    reader = palm.reader.ClassifyReader(xlmr_dir, 128, phase="predict")  # no vocab.txt: what the folder ships
    assert os.path.basename(reader.tokenizer.vocab_path) == "sentencepiece.bpe.model"
    reader.load_data(str(tmp_path / "dev.tsv"), 8)
    reader.register_with(backbone)
    trainer = palm.Trainer("cls", device="cpu")
    trainer.build_forward(backbone, head)
    trainer.load_pretrain(xlmr_dir)
    backbone.eval()
    hf = transformers.XLMRobertaModel.from_pretrained(xlmr_dir, attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(xlmr_dir)
    with torch.no_grad():
        for i, batch in enumerate(reader):
            chunk = texts[i * 8:(i + 1) * 8] if not pair else None
            if pair:
                a, b = texts[::2][i * 8:(i + 1) * 8], texts[1::2][i * 8:(i + 1) * 8]
                expected_ids = hf_tok(a, b, padding=True, return_tensors="pt")["input_ids"]
            else:
                expected_ids = hf_tok(chunk, padding=True, return_tensors="pt")["input_ids"]
            assert torch.equal(batch["token_ids"], expected_ids)  # <s> a </s></s> b </s>, fairseq's id offset
            assert not bool(batch["input_mask"].all())  # padding in every batch
            expected = hf(input_ids=batch["token_ids"], attention_mask=batch["input_mask"])
            got = backbone(batch)
            real = batch["input_mask"].bool()
            assert (expected.last_hidden_state - got["encoder_outputs"])[real].abs().max().item() <= TOL
            assert (expected.pooler_output - got["sentence_embedding"]).abs().max().item() <= TOL


def test_a_tokenizer_larger_than_the_embedding_table_is_refused_naming_the_file(xlmr_dir, tmp_path):
    other = make_bytelevel(str(tmp_path / "other"))  # 3000 ids: another model's tokenizer.json
    config = transformers.XLMRobertaConfig.from_pretrained(xlmr_dir).to_dict()
    backbone = palm.backbone.RoBERTa.from_config({**config, "vocab_size": 1500})
    reader = palm.reader.ClassifyReader(other, 64, tokenizer="auto")
    with pytest.raises(ValueError, match=r"other/tokenizer\.json has 3000 ids but the backbone's 'vocab_size' is "
                                         r"1500"):
        reader.register_with(backbone)
    # the model's own (converted) tokenizer fits
    palm.reader.ClassifyReader(xlmr_dir, 64).register_with(palm.backbone.RoBERTa.from_config(
        os.path.join(xlmr_dir, "config.json")))


def test_xlmr_trains_exports_a_bundle_and_the_predictor_predicts_the_same(xlmr_dir, tmp_path):
    texts = sst2_sentences(64, start=63000)
    rows = [f"{int('good' in t.split() or 'best' in t.split())}\t{t}" for t in texts]
    (tmp_path / "train.tsv").write_text("label\ttext_a\n" + "\n".join(rows) + "\n", encoding="utf-8")
    config = os.path.join(xlmr_dir, "config.json")
    torch.manual_seed(0)
    reader = palm.reader.ClassifyReader(xlmr_dir, 64, seed=0)
    reader.load_data(str(tmp_path / "train.tsv"), 16, num_epochs=1)
    backbone = palm.backbone.RoBERTa.from_config(config)
    reader.register_with(backbone)
    trainer = palm.Trainer("cls", device="cpu")
    loss = trainer.build_forward(backbone, palm.head.Classify(2, 32, 0.1))
    trainer.build_backward(palm.optimizer.Adam(loss, 3e-3, palm.lr_sched.TriangularSchedualer(1, 4)))
    trainer.fit_reader(reader)
    trainer.load_pretrain(xlmr_dir)
    for _ in range(4):
        trainer.train_one_step(trainer.get_one_batch())
    pred_reader = palm.reader.ClassifyReader(xlmr_dir, 64, phase="predict")
    pred_reader.load_data(str(tmp_path / "train.tsv"), 8)
    pred_backbone = palm.backbone.RoBERTa.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.Classify(2, 32, phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    expected = [r["probs"] for r in trainer.predict(print_steps=0)]
    path = palm.export(trainer, tmp_path / "bundle")
    assert "tokenizer.json" in os.listdir(os.path.join(path, "reader.cls"))  # the converted tokenizer travels
    got = [r["probs"] for r in palm.Predictor.load(path, device="cpu").predict(texts, batch_size=8)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-6)
