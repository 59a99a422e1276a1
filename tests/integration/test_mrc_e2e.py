"""MRC end to end: a tiny BERT overfits PALM's MRQA sample with palm.Trainer and predicts every question, and the
mrc example runs both presets on short slices (full runs and their numbers: examples/mrc/README.md)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import ROOT, shared

import torchpalm as palm
from torchpalm.reader.mrc import read_squad_json


def _example_run():
    spec = importlib.util.spec_from_file_location("mrc_example_run_test", ROOT / "examples" / "mrc" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subset(tmp_path, n):
    data = read_squad_json(str(shared("palm_demo_samples", "mrqa", "train.json")))
    data["data"] = data["data"][:n]
    path = tmp_path / "mrqa_subset.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    qids = [qa["id"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    return str(path), qids


def test_tiny_bert_overfits_mrqa_and_predicts_every_question(tmp_path, uncased_vocab, tiny_config):
    torch.manual_seed(0)
    path, qids = _subset(tmp_path, 12)
    reader = palm.reader.MRCReader(uncased_vocab, 128, 32, 64, do_lower_case=True, seed=0)
    reader.load_data(path, 4, num_epochs=15)
    backbone = palm.backbone.BERT.from_config({**tiny_config, "hidden_dropout_prob": 0.0,
                                               "attention_probs_dropout_prob": 0.0})
    reader.register_with(backbone)
    head = palm.head.MRC(32, tiny_config["hidden_size"], do_lower_case=True)
    trainer = palm.Trainer("mrqa", device="cpu")
    model = trainer.build_forward(backbone, head)
    steps = reader.steps_per_epoch * 15
    trainer.build_backward(palm.optimizer.Adam(model, 5e-3, palm.lr_sched.TriangularSchedualer(4, steps)), 0.01)
    trainer.fit_reader(reader)
    losses = [float(trainer.train_one_step(trainer.get_one_batch())["mrqa.loss"]) for _ in range(steps)]
    assert np.mean(losses[:4]) > 4.0  # ~ln(128) from a random start
    assert np.mean(losses[-4:]) < 0.25 * np.mean(losses[:4]), losses

    # the trained windows: start and end are recovered
    model.eval()
    reader.reset()
    hits = total = 0
    with torch.no_grad():
        for batch in list(reader)[:reader.steps_per_epoch]:
            out = model(batch)
            hits += int((out["start_logits"].argmax(-1) == batch["start_positions"]).sum())
            hits += int((out["end_logits"].argmax(-1) == batch["end_positions"]).sum())
            total += 2 * len(batch["start_positions"])
    assert hits / total > 0.8, (hits, total)

    pred_reader = palm.reader.MRCReader(uncased_vocab, 128, 32, 64, do_lower_case=True, phase="predict")
    pred_reader.load_data(path, 16)
    pred_backbone = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    pred_reader.register_with(pred_backbone)
    trainer.build_predict_forward(pred_backbone, palm.head.MRC(32, tiny_config["hidden_size"], phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    out_dir = tmp_path / "pred"
    preds = trainer.predict(output_dir=str(out_dir))
    assert pred_reader.num_examples > 5 * len(qids)  # many windows per question
    written = json.loads((out_dir / "predictions.json").read_text(encoding="utf-8"))
    nbest = json.loads((out_dir / "nbest_predictions.json").read_text(encoding="utf-8"))
    assert written == preds and sorted(written) == sorted(qids) and sorted(nbest) == sorted(qids)
    contexts = {qa["id"]: p["context"] for a in read_squad_json(path)["data"] for p in a["paragraphs"]
                for qa in p["qas"]}
    assert all(text and text in contexts[q] for q, text in written.items())  # exact slices of the context
    assert not (out_dir / "null_odds.json").exists()


def test_example_squad_preset_short_run(tmp_path, uncased_vocab, tiny_config):
    shared("squad_v1.1", "dev-v1.1.json.zip")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config))
    scores = _example_run().main(
        ["--pretrain", "none", "--config", str(config), "--vocab", uncased_vocab, "--train_examples", "24",
         "--eval_examples", "10", "--max_seqlen", "128", "--num_epochs", "1", "--batch_size", "8",
         "--save_path", str(tmp_path / "out"), "--print_steps", "0"])
    assert scores["total"] == 10 and scores["unanswered"] == 0 and 0 <= scores["f1"] <= 100
    train_half = read_squad_json(str(tmp_path / "out" / "squad_train_half.json"))
    eval_half = read_squad_json(str(tmp_path / "out" / "squad_eval_half.json"))
    full = read_squad_json(str(shared("squad_v1.1", "dev-v1.1.json.zip")))
    assert [a["title"] for a in train_half["data"]] == [a["title"] for a in full["data"][0::2]]
    assert [a["title"] for a in eval_half["data"]] == [a["title"] for a in full["data"][1::2]]
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["scores"] == scores and results["args"]["max_ans_len"] == 30


def test_example_cmrc_preset_short_run(tmp_path):
    shared("cmrc2018", "cmrc2018_trial.json")
    scores = _example_run().main(
        ["--preset", "cmrc", "--train_examples", "16", "--eval_examples", "6", "--max_seqlen", "128",
         "--num_epochs", "1", "--save_path", str(tmp_path), "--print_steps", "0"])
    assert scores["total"] == 6 and 0 <= scores["exact_match"] <= 1
    config = json.loads((tmp_path / "cmrc_small_bert_config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["intermediate_size"], config["max_position_embeddings"], config["vocab_size"]) == \
           (256, 4, 4, 1024, 512, 21128)
    preds = json.loads((tmp_path / "predict" / "predictions.json").read_text(encoding="utf-8"))
    contexts = {qa["id"]: p["context"] for a in read_squad_json(str(tmp_path / "eval.first6.json"))["data"]
                for p in a["paragraphs"] for qa in p["qas"]}
    # Chinese answers are exact slices of the context (PALM inserted spaces between characters)
    assert sorted(preds) == sorted(contexts) and all(t in contexts[q] for q, t in preds.items())


def test_example_on_squad2_as_huggingface_exports_it(tmp_path, uncased_vocab, tiny_config):
    # SQuAD 2.0 from `datasets` (flat JSON lines, empty answers = unanswerable), with only the paths given: the
    # example notices the unanswerable questions, trains and predicts with negatives and scores with v2.0
    full = read_squad_json(str(shared("squad_v1.1", "dev-v1.1.json.zip")))
    paragraphs = [p for a in full["data"][:4] for p in a["paragraphs"][:3]]
    records = []
    for k, p in enumerate(paragraphs):
        for qa in p["qas"][:2]:
            records.append({"id": qa["id"], "title": "t", "context": p["context"], "question": qa["question"],
                            "answers": {"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [a["answer_start"] for a in qa["answers"]]}})
        other = paragraphs[(k + 1) % len(paragraphs)]["qas"][0]  # a question this context does not answer
        records.append({"id": f"neg{k}", "title": "t", "context": p["context"], "question": other["question"],
                        "answers": {"text": [], "answer_start": []}})
    for name, part in (("train", records), ("dev", records[:9])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config))
    out = tmp_path / "out"
    scores = _example_run().main(
        ["--pretrain", "none", "--config", str(config), "--vocab", uncased_vocab, "--train_file",
         str(tmp_path / "train.jsonl"), "--predict_file", str(tmp_path / "dev.jsonl"), "--max_seqlen", "128",
         "--num_epochs", "1", "--batch_size", "8", "--save_path", str(out), "--print_steps", "0"])
    assert scores["total"] == 9 and scores["NoAns_total"] == 3 and scores["HasAns_total"] == 6
    assert (out / "predict" / "null_odds.json").exists()
    results = json.loads((out / "eval_results.json").read_text())
    assert results["args"]["with_negative"] == "auto"
    with pytest.raises(SystemExit):  # an explicit choice is checked
        _example_run().main(["--with_negative", "yes"])
