"""Sequence labelling end to end through palm.Trainer on a tiny BERT: the CRF and softmax heads overfit a small
tagging set, prediction writes one tag per word (also for truncated sentences), and the tagging example's
evaluate.py scores entity F1 = 1.0 on the memorised data; plus short runs of examples/tagging/run.py."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import ROOT, shared

import torchpalm as palm

TAGGING = ROOT / "examples" / "tagging"


def load_module(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluate = load_module("tagging_evaluate_under_test", TAGGING / "evaluate.py").evaluate

# each word has one tag wherever it occurs, so a small model can memorise the data exactly
LEXICON = {"john": "B-PER", "mary": "B-PER", "smith": "I-PER", "jones": "I-PER", "paris": "B-LOC",
           "berlin": "B-LOC", "new": "B-LOC", "york": "I-LOC", "acme": "B-ORG", "corp": "I-ORG"}
FILLER = ["visited", "likes", "the", "and", "today", "saw", "with", "in"]
PHRASES = [["john"], ["mary", "jones"], ["john", "smith"], ["paris"], ["new", "york"], ["berlin"],
           ["acme", "corp"], ["acme"]]


def write_tagging_file(path, n=24, seed=0) -> tuple[str, list[list[str]]]:
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n):
        words = []
        for _ in range(int(rng.integers(1, 4))):
            words += list(rng.choice(FILLER, size=int(rng.integers(0, 3))))
            words += PHRASES[int(rng.integers(len(PHRASES)))]
        sentences.append(words)
    with open(path, "w", encoding="utf-8") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for words in sentences:
            f.writelines(f"{w} X {LEXICON.get(w, 'O')}\n" for w in words)
            f.write("\n")
    return str(path), sentences


def train_tiny(tmp_path, vocab, config, use_crf: bool, steps: int = 60):
    torch.manual_seed(0)
    config = {**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    train_file, sentences = write_tagging_file(tmp_path / "train.txt")
    reader = palm.reader.SequenceLabelReader(vocab, 32, None, seed=0, do_lower_case=True)
    reader.load_data(train_file, 8, num_epochs=steps // 3)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    label_map = reader.label_map
    head = palm.head.SequenceLabel(len(label_map), config["hidden_size"], 0.1, use_crf=use_crf)
    trainer = palm.Trainer("ner", device="cpu")
    loss_var = trainer.build_forward(backbone, head)
    adam = palm.optimizer.Adam(loss_var, 5e-3, palm.lr_sched.TriangularSchedualer(3, steps))
    trainer.build_backward(adam, weight_decay=0.01)
    trainer.fit_reader(reader)
    losses = [float(trainer.train_one_step(trainer.get_one_batch())["ner.loss"]) for _ in range(steps)]
    return trainer, reader, train_file, sentences, losses


def predict(trainer, vocab, config, label_map, path, out_dir, max_len=32, use_crf=True):
    reader = palm.reader.SequenceLabelReader(vocab, max_len, label_map, do_lower_case=True, phase="predict")
    reader.load_data(path, 5)
    backbone = palm.backbone.BERT.from_config(config, phase="predict")
    reader.register_with(backbone)
    trainer.build_predict_forward(backbone, palm.head.SequenceLabel(len(label_map), config["hidden_size"],
                                                                    phase="predict", use_crf=use_crf))
    trainer.fit_reader(reader, phase="predict")
    results = trainer.predict(output_dir=str(out_dir), print_steps=0)
    lines = [json.loads(line) for line in open(out_dir / "predictions.json")]
    assert lines == results
    return results, reader


@pytest.mark.parametrize("use_crf", [True, False], ids=["crf", "softmax"])
def test_overfit_predict_and_evaluate(tmp_path, uncased_vocab, tiny_config, use_crf):
    trainer, reader, train_file, sentences, losses = train_tiny(tmp_path, uncased_vocab, tiny_config, use_crf)
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5]), losses
    label_map = reader.label_map
    assert label_map == {"B-LOC": 0, "B-ORG": 1, "B-PER": 2, "I-LOC": 3, "I-ORG": 4, "I-PER": 5, "O": 6}
    results, _ = predict(trainer, uncased_vocab, tiny_config, label_map, train_file, tmp_path / "pred",
                         use_crf=use_crf)
    assert [len(r) for r in results] == [len(s) for s in sentences]  # one tag per word
    scores = evaluate(str(tmp_path / "pred" / "predictions.json"), train_file, label_map, verbose=False)
    assert scores["n"] == 24
    assert scores["f1"] == 1.0 and scores["palm_token_f1"] == 1.0, scores
    assert set(scores["per_type"]) == {"PER", "LOC", "ORG"}

    # truncated sentences still get one prediction per word; the cut words get the no-entity id
    short, _ = predict(trainer, uncased_vocab, tiny_config, label_map, train_file, tmp_path / "short", max_len=5,
                       use_crf=use_crf)
    assert [len(r) for r in short] == [len(s) for s in sentences]
    cut = [k for k, s in enumerate(sentences) if len(s) > 3]
    assert cut
    for k in cut:
        assert short[k][3:] == [label_map["O"]] * (len(sentences[k]) - 3)
    partial = evaluate(str(tmp_path / "short" / "predictions.json"), train_file, label_map, verbose=False)
    assert partial["f1"] < 1.0


def test_tagging_example_conll_tiny_from_scratch(tmp_path, uncased_vocab, tiny_config, capsys):
    shared("conll2003", "train.txt")
    run = load_module("tagging_run_under_test", TAGGING / "run.py")
    (tmp_path / "tiny.json").write_text(json.dumps(tiny_config))
    out = tmp_path / "out"
    metrics = run.main(["--pretrain", "none", "--config", str(tmp_path / "tiny.json"), "--vocab", uncased_vocab,
                        "--train_examples", "64", "--predict_examples", "40", "--num_epochs", "1",
                        "--lr", "1e-3", "--save_path", str(out), "--print_steps", "0", "--use_crf", "0"])
    assert metrics["n"] == 40 and 0.0 <= metrics["f1"] <= 1.0 and 0.0 < metrics["palm_token_f1"] <= 1.0
    label_map = json.loads((out / "label_map.json").read_text())
    assert label_map["O"] == 8 and len(label_map) == 9
    preds = [json.loads(line) for line in open(out / "predict" / "predictions.json")]
    assert len(preds) == 40 and all(0 <= i < 9 for row in preds for i in row)
    printed = capsys.readouterr().out
    assert "data num: 40" in printed and "entity f1:" in printed and "f1: " in printed
    with pytest.raises(SystemExit):
        run.main(["--preset", "no-such-preset"])


def test_tagging_example_on_a_huggingface_json_export(tmp_path, uncased_vocab, tiny_config):
    # CoNLL-2003 as `datasets` exports it (integer ner_tags, names given by --label_map) trains and scores exactly
    # as the same sentences in CoNLL columns with the same label map
    from torchpalm.reader.sequence_label import read_tagged_file
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    (tmp_path / "names.json").write_text(json.dumps(names))
    (tmp_path / "tiny.json").write_text(json.dumps(tiny_config))
    for split, n in (("train", 48), ("test", 24)):
        sentences = read_tagged_file(shared("conll2003", f"{split}.txt"))[1][:n]
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for k, sent in enumerate(sentences):
                f.write(json.dumps({"id": str(k), "tokens": sent.words, "pos_tags": [0] * len(sent.words),
                                    "ner_tags": [names.index(t) for t in sent.tags]}) + "\n")
        with open(tmp_path / f"{split}.txt", "w") as f:
            f.write("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(sent.words, sent.tags)) for sent in sentences))
    run = load_module("tagging_run_json_under_test", TAGGING / "run.py")
    scores = {}
    for name, ext in (("jsonl", "jsonl"), ("txt", "txt"), ("txt_again", "txt")):
        scores[name] = run.main(["--pretrain", "none", "--config", str(tmp_path / "tiny.json"), "--vocab",
                                 uncased_vocab, "--train_file", str(tmp_path / f"train.{ext}"), "--predict_file",
                                 str(tmp_path / f"test.{ext}"), "--label_map", str(tmp_path / "names.json"),
                                 "--num_epochs", "1", "--lr", "1e-3", "--save_path", str(tmp_path / name),
                                 "--print_steps", "0", "--use_crf", "0", "--train_examples", "40"])
    assert scores["txt_again"] == scores["txt"]  # --seed makes a run reproducible
    assert scores["jsonl"]["n"] == 24
    assert scores["jsonl"] == scores["txt"]
    assert (tmp_path / "jsonl" / "predict" / "predictions.json").read_text() == \
        (tmp_path / "txt" / "predict" / "predictions.json").read_text()

    # as a Hub Parquet file: the tag names come from its `datasets` metadata, no --label_map needed
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    features = {"ner_tags": {"feature": {"names": names, "_type": "ClassLabel"}, "_type": "Sequence"}}
    for split, n in (("train", 40), ("test", 24)):  # the 40 sentences --train_examples 40 took above
        rows = [json.loads(line) for line in open(tmp_path / f"{split}.jsonl")][:n]
        table = pa.Table.from_pylist(rows).replace_schema_metadata(
            {"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, tmp_path / f"{split}.parquet")
    scores["parquet"] = run.main(["--pretrain", "none", "--config", str(tmp_path / "tiny.json"), "--vocab",
                                  uncased_vocab, "--train_file", str(tmp_path / "train.parquet"), "--predict_file",
                                  str(tmp_path / "test.parquet"), "--num_epochs", "1", "--lr", "1e-3", "--save_path",
                                  str(tmp_path / "parquet"), "--print_steps", "0", "--use_crf", "0"])
    assert json.loads((tmp_path / "parquet" / "label_map.json").read_text()) == {t: i for i, t in enumerate(names)}
    assert scores["parquet"] == scores["txt"]


def test_tagging_example_msra_preset_tiny(tmp_path):
    shared("msra_ner", "full_bio", "MSRA.zip")
    run = load_module("tagging_run_under_test_msra", TAGGING / "run.py")
    out = tmp_path / "out"
    metrics = run.main(["--preset", "msra", "--train_examples", "32", "--predict_examples", "16",
                        "--max_seqlen", "64", "--num_epochs", "1", "--save_path", str(out), "--print_steps", "0"])
    assert metrics["n"] == 16
    # PALM's ernie_split test file (PALM's \x02 TSV) is scored as well, from the same trained weights
    ernie_test = str(shared("msra_ner", "ernie_split", "test.tsv"))
    assert set(metrics["by_file"]) == {"zip:msra_test_bio", ernie_test}
    assert metrics["by_file"][ernie_test]["n"] == 16
    assert len((out / "predict_1" / "predictions.json").read_text().splitlines()) == 16
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 256 and config["num_hidden_layers"] == 4 and config["vocab_size"] == 21128
    assert json.loads((out / "label_map.json").read_text())["O"] == 6


def test_evaluate_bmes_strict_and_unknown_gold_tags(tmp_path, capsys):
    # a BMES gold file (M- tags used to crash evaluation) with a gold tag the label map lacks (not an error)
    gold = tmp_path / "gold.txt"
    gold.write_text("北\tB-LOC\n京\tM-LOC\n市\tE-LOC\n在\tO\n\n张\tS-PER\n三\tS-NEW\n\n", encoding="utf-8")
    label_map = {"O": 0, "B-LOC": 1, "M-LOC": 2, "E-LOC": 3, "S-PER": 4}
    preds = tmp_path / "predictions.json"
    preds.write_text("[1, 2, 3, 0]\n[4, 0]\n")
    scores = evaluate(str(preds), str(gold), label_map, verbose=True)
    assert "(BMES, seqeval default mode)" in capsys.readouterr().out  # the scheme read off the label map
    assert (scores["precision"], scores["recall"]) == (1.0, 2 / 3)
    assert scores["palm_token_f1"] == 5 / 6  # the unknown gold tag is a miss, not a crash
    # strict mode drops the ill-formed predicted chunk B- M- (no E-) that the default mode accepts
    preds.write_text("[1, 2, 0, 0]\n[4, 0]\n")
    default = evaluate(str(preds), str(gold), label_map, verbose=False)
    strict = evaluate(str(preds), str(gold), label_map, verbose=False, mode="strict")
    assert default["precision"] == 0.5 and strict["precision"] == 1.0
