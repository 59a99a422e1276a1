"""End to end on tiny BERTs through palm.Trainer: pointwise and pairwise matching (train, predict,
predictions.json), masked-LM pretraining whose loss falls, MLM prediction files, and fine-tuning from an
MLM checkpoint with `load_pretrain`."""

from __future__ import annotations

import json

import numpy as np
import torch

import torchpalm as palm

WORDS = ["apple", "river", "music", "green", "house", "table", "cloud", "stone", "light", "paper", "horse", "dream"]


def pair_rows(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(a, b_pos, b_neg): a positive b draws its words from the first half of WORDS, a negative from the second
    (learnable by a tiny model in a few dozen steps; the test is about the pipeline, not the model)."""
    rng = np.random.default_rng(seed)
    half = len(WORDS) // 2
    rows = []
    for _ in range(n):
        a = " ".join(rng.choice(WORDS, 3, replace=False))
        pos = " ".join(rng.choice(WORDS[:half], 3, replace=False))
        neg = " ".join(rng.choice(WORDS[half:], 3, replace=False))
        rows.append((a, pos, neg))
    return rows


def setup_trainer(name, reader, backbone, head, lr, steps):
    trainer = palm.Trainer(name, device="cpu")
    model = trainer.build_forward(backbone, head)
    trainer.build_backward(palm.optimizer.Adam(model, lr, palm.lr_sched.TriangularSchedualer(2, steps)),
                           weight_decay=0.01)
    trainer.fit_reader(reader)
    return trainer


def test_pointwise_match_trains_and_writes_predictions(tmp_path, uncased_vocab, tiny_config):
    torch.manual_seed(0)
    rows = pair_rows(64)
    lines = ["label\ttext_a\ttext_b"]  # column order differs from PALM's example on purpose
    for i, (a, pos, neg) in enumerate(rows):
        lines.append(f"{i % 2}\t{a}\t{pos if i % 2 else neg}")
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reader = palm.reader.MatchReader(uncased_vocab, 32, seed=1, do_lower_case=True)
    reader.load_data(str(path), 16, num_epochs=15)
    backbone = palm.backbone.BERT.from_config(tiny_config)
    reader.register_with(backbone)
    trainer = setup_trainer("match", reader, backbone, palm.head.Match(2, 32, 0.1), 5e-3, 60)
    trainer.train(print_steps=0)

    test = tmp_path / "test.tsv"
    test.write_text("text_a\ttext_b\n" + "".join(f"{a}\t{pos if i % 2 else neg}\n" for i, (a, pos, neg)
                                                in enumerate(pair_rows(20, seed=5))) + "héllo\twörld 中文\n",
                    encoding="utf-8")
    pred_reader = palm.reader.MatchReader(uncased_vocab, 32, do_lower_case=True, phase="predict")
    pred_reader.load_data(str(test), 8)
    pred_backbone = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.Match(2, 32, phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    results = trainer.predict(output_dir=str(tmp_path / "pred"))
    written = [json.loads(x) for x in open(tmp_path / "pred" / "predictions.json", encoding="utf-8")]
    assert written == results and len(written) == 21
    assert set(written[0]) == {"index", "label", "logits", "probs"} and [r["index"] for r in written] == list(range(21))
    assert abs(sum(written[0]["probs"]) - 1) < 1e-5
    accuracy = np.mean([r["label"] == i % 2 for i, r in enumerate(written[:20])])
    assert accuracy >= 0.8, accuracy


def test_pairwise_match_trains_and_scores_positives_higher(tmp_path, uncased_vocab, tiny_config):
    torch.manual_seed(0)
    rows = pair_rows(64)
    path = tmp_path / "pairwise.tsv"
    path.write_text("text_a\ttext_b\ttext_b_neg\n" + "".join(f"{a}\t{p}\t{n}\n" for a, p, n in rows),
                    encoding="utf-8")
    reader = palm.reader.MatchReader(uncased_vocab, 32, seed=1, do_lower_case=True, learning_strategy="pairwise")
    reader.load_data(str(path), 16, num_epochs=15)
    backbone = palm.backbone.BERT.from_config({**tiny_config, "is_pairwise": True})
    reader.register_with(backbone)
    head = palm.head.Match(2, 32, 0.1, learning_strategy="pairwise", margin=0.5)
    trainer = setup_trainer("pw", reader, backbone, head, 5e-3, 60)
    losses = [float(trainer.train_one_step(b)["pw.loss"]) for b in reader]
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1, losses

    test_rows = pair_rows(20, seed=7)
    test = tmp_path / "test.tsv"
    test.write_text("text_a\ttext_b\n" + "".join(f"{a}\t{p}\n{a}\t{n}\n" for a, p, n in test_rows),
                    encoding="utf-8")
    pred_reader = palm.reader.MatchReader(uncased_vocab, 32, do_lower_case=True, learning_strategy="pairwise",
                                          phase="predict")
    pred_reader.load_data(str(test), 16)
    pred_backbone = palm.backbone.BERT.from_config({**tiny_config, "is_pairwise": True}, phase="predict")
    pred_reader.register_with(pred_backbone)
    assert "token_ids_neg" not in pred_reader.outputs_attr
    trainer.build_predict_forward(pred_backbone, palm.head.Match(2, 32, learning_strategy="pairwise",
                                                                 phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    trainer.predict(output_dir=str(tmp_path / "pred"))
    written = [json.loads(x) for x in open(tmp_path / "pred" / "predictions.json", encoding="utf-8")]
    assert len(written) == 40 and set(written[0]) == {"index", "probs"} and isinstance(written[0]["probs"], float)
    scores = np.array([r["probs"] for r in written]).reshape(20, 2)
    assert np.mean(scores[:, 0] > scores[:, 1]) >= 0.8, scores


def mlm_corpus(tmp_path) -> str:
    rng = np.random.default_rng(0)
    templates = ["the {} is near the {}", "a {} and a {} are here", "my {} likes the {}"]
    lines = ["text_a"] + [templates[i % 3].format(*rng.choice(WORDS, 2, replace=False)) for i in range(96)]
    path = tmp_path / "corpus.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_mlm_pretraining_loss_falls_and_checkpoint_feeds_fine_tuning(tmp_path, uncased_vocab, tiny_config):
    torch.manual_seed(0)
    config = {**tiny_config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    reader = palm.reader.MaskLMReader(uncased_vocab, 32, seed=2, do_lower_case=True)
    reader.load_data(mlm_corpus(tmp_path), 16, num_epochs=8)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    head = palm.head.MaskLM(32, config["vocab_size"], config["hidden_act"])
    trainer = setup_trainer("mlm", reader, backbone, head, 1e-2, 48)
    losses = []
    for batch in trainer.fit_reader(reader):
        losses.append(float(trainer.train_one_step(batch)["mlm.loss"]))
    assert len(losses) == trainer.cur_train_step == 48
    assert losses[0] > 9.0  # ~ln(30522) at the start
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 3.0, losses
    ckpt = trainer.save(str(tmp_path / "mlm_ckpt"))

    # fine-tuning starts from the MLM backbone (load_pretrain reads torchpalm checkpoints)
    cls_reader = palm.reader.ClassifyReader(uncased_vocab, 32, seed=1, do_lower_case=True)
    cls_file = tmp_path / "cls.tsv"
    cls_file.write_text("label\ttext_a\n1\tthe apple\n0\tthe river\n", encoding="utf-8")
    cls_reader.load_data(str(cls_file), 2, num_epochs=1)
    cls_backbone = palm.backbone.BERT.from_config(config)
    cls_reader.register_with(cls_backbone)
    cls_trainer = setup_trainer("cls", cls_reader, cls_backbone, palm.head.Classify(2, 32), 1e-3, 4)
    cls_trainer.load_pretrain(ckpt)
    for name, value in backbone.state_dict().items():
        assert torch.equal(cls_backbone.state_dict()[name], value), name

    # prediction on [MASK]s written in the text: one {"index", "word_id"} line per [MASK]
    pred_file = tmp_path / "blanks.tsv"
    pred_file.write_text("text_a\nthe [MASK] is near the river\nno blank\n[MASK] and [MASK]\n", encoding="utf-8")
    pred_reader = palm.reader.MaskLMReader(uncased_vocab, 32, do_lower_case=True, phase="predict")
    pred_reader.load_data(str(pred_file), 2)
    pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.MaskLM(32, config["vocab_size"], "gelu", phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    results = trainer.predict(output_dir=str(tmp_path / "mlm_pred"))
    written = [json.loads(x) for x in open(tmp_path / "mlm_pred" / "predictions.json", encoding="utf-8")]
    assert written == results == [{"index": i, "word_id": r["word_id"]} for i, r in enumerate(written)]
    assert len(written) == 3
    # the model learnt the corpus: the first blank is filled with one of its nouns
    vocab = pred_reader.tokenizer.vocab
    assert written[0]["word_id"] in {vocab[w] for w in WORDS}, pred_reader.tokenizer.convert_ids_to_tokens(
        [r["word_id"] for r in written])
