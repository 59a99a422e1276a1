"""The example configs reproduce their run.py: the same short run (tiny BERT, small files) through
`examples/<name>/run.py` and through `torchpalm train` + `torchpalm predict` on `examples/<name>/config.yaml`
gives the same predictions (predict: `torchpalm predict --backbone-only`; train_with_eval and pretraining: the
same weights, evaluations and, chaining pretraining's two configs, predictions). (tagging's run.py leaves torch
unseeded and multi_task's seeds each head apart, as their configs say, so those two are only validated, in
tests/unit/test_cli.py.)"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_CONFIG

import torchpalm as palm
from torchpalm.checkpoint import load_checkpoint_dir
from torchpalm.cli import main
from torchpalm.metrics_log import read_metrics

WORDS = ["good", "bad", "movie", "plot", "actor", "film", "story", "great", "awful", "scene"]


def write_rows(path, n: int, seed: int = 0, pairs: bool = False) -> str:
    """A labelled TSV: label 1 iff text_a contains "good"; `pairs` adds text_b (text_a reversed)."""
    rng = np.random.default_rng(seed)
    rows = ["label\ttext_a" + ("\ttext_b" if pairs else "")]
    for i in range(n):
        words = [str(w) for w in rng.choice(WORDS[1:], size=int(rng.integers(2, 6)))] + (["good"] if i % 2 else [])
        rows.append(f"{i % 2}\t{' '.join(words)}" + (f"\t{' '.join(words[::-1])}" if pairs else ""))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_example_run", ROOT / "examples" / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logits(path) -> torch.Tensor:
    return torch.tensor([json.loads(line)["logits"] for line in open(path, encoding="utf-8")])


def cli_run(tmp_path, example: str, vocab: str, train_file: str, predict_file: str) -> torch.Tensor:
    """`torchpalm train` then `predict` on the example's config, on the same tiny model and files as run.py."""
    config = str(ROOT / "examples" / example / "config.yaml")
    sets = ["backbone.pretrained=null", f"backbone.config={tmp_path / 'tiny.json'}", f"backbone.vocab={vocab}",
            f"tasks[0].train_file={train_file}", f"tasks[0].dev_file={predict_file}",
            f"tasks[0].predict_file={predict_file}", "tasks[0].reader.max_len=32", "train.batch_size=8",
            f"train.save_path={tmp_path / 'cli'}", "train.print_steps=0"]
    args = [x for s in sets for x in ("--set", s)]
    assert main(["train", config, *args, "--set", "train.epochs=2"]) == 0
    (checkpoint,) = (tmp_path / "cli").glob("ckpt.step*")
    assert main(["predict", config, *args, "--checkpoint", str(checkpoint)]) == 0
    (predictions,) = (tmp_path / "cli" / "predict").glob("*/predictions.json")
    return logits(predictions)


def script_args(tmp_path, vocab, train_file, predict_arg, predict_file) -> list[str]:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    return ["--pretrain", "none", "--config", str(tmp_path / "tiny.json"), "--vocab", vocab, "--train_file",
            train_file, predict_arg, predict_file, "--max_seqlen", "32", "--batch_size", "8", "--num_epochs", "2",
            "--save_path", str(tmp_path / "script"), "--print_steps", "0"]


def test_classification_config_reproduces_run_py(tmp_path, uncased_vocab):
    train_file, predict_file = write_rows(tmp_path / "train.tsv", 32), write_rows(tmp_path / "dev.tsv", 10, 1)
    load_example("classification").main(script_args(tmp_path, uncased_vocab, train_file, "--predict_file",
                                                    predict_file))
    expected = logits(tmp_path / "script" / "predict" / "predictions.json")
    torch.testing.assert_close(cli_run(tmp_path, "classification", uncased_vocab, train_file, predict_file),
                               expected, rtol=1e-6, atol=1e-6)


def test_matching_config_reproduces_run_py(tmp_path, uncased_vocab, monkeypatch):
    # 32 rows in batches of 8: run.py's schedule length (rows * epochs // batch) equals the steps trained
    train_file, predict_file = (write_rows(tmp_path / "train.tsv", 32, pairs=True),
                                 write_rows(tmp_path / "dev.tsv", 10, 1, pairs=True))
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "matching"))  # run.py imports its evaluate.py
    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    load_example("matching").main(script_args(tmp_path, uncased_vocab, train_file, "--predict_files", predict_file))
    expected = logits(tmp_path / "script" / "predict_dev" / "predictions.json")
    torch.testing.assert_close(cli_run(tmp_path, "matching", uncased_vocab, train_file, predict_file),
                               expected, rtol=1e-6, atol=1e-6)


def tiny_hf_bert(tmp_path) -> str:
    """A randomly initialised tiny BERT saved by transformers (an HF model directory, as a pretrained one)."""
    import transformers

    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY_CONFIG)).save_pretrained(tmp_path / "hf")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    return str(tmp_path / "hf")


def test_predict_config_reproduces_run_py(tmp_path, uncased_vocab):
    # predicting without fine-tuning: the pretrained backbone, an untrained head seeded by train.seed
    hf_dir, predict_file = tiny_hf_bert(tmp_path), write_rows(tmp_path / "dev.tsv", 10, 1)
    load_example("predict").main(["--pretrain", hf_dir, "--config", str(tmp_path / "tiny.json"), "--vocab",
                                  uncased_vocab, "--predict_file", predict_file, "--max_seqlen", "32",
                                  "--batch_size", "8", "--save_path", str(tmp_path / "script")])
    expected = logits(tmp_path / "script" / "predict" / "predictions.json")
    config = str(ROOT / "examples" / "predict" / "config.yaml")
    sets = [f"backbone.pretrained={hf_dir}", f"backbone.config={tmp_path / 'tiny.json'}",
            f"backbone.vocab={uncased_vocab}", f"tasks[0].predict_file={predict_file}", "tasks[0].reader.max_len=32",
            "train.batch_size=8", f"train.save_path={tmp_path / 'cli'}"]
    args = [x for s in sets for x in ("--set", s)]
    assert main(["predict", config, *args, "--backbone-only"]) == 0
    torch.testing.assert_close(logits(tmp_path / "cli" / "predict" / "sst2" / "predictions.json"), expected,
                               rtol=1e-6, atol=1e-6)
    # --checkpoint names the backbone instead of backbone.pretrained: the same predictions
    assert main(["predict", config, *args, "--set", "backbone.pretrained=null", "--checkpoint", hf_dir,
                 "--backbone-only", "--output", str(tmp_path / "cli2")]) == 0
    torch.testing.assert_close(logits(tmp_path / "cli2" / "sst2" / "predictions.json"), expected,
                               rtol=1e-6, atol=1e-6)
    # without any backbone weights to load it is an error naming the key, not a silently random model
    assert main(["predict", config, *args, "--set", "backbone.pretrained=null", "--backbone-only"]) == 2


def test_train_with_eval_config_reproduces_run_py(tmp_path, uncased_vocab, monkeypatch):
    # Dropout off: run.py builds its dev modules before training (moving torch's generator, so the dropout masks),
    # the CLI without moving it, as the config says; everything else must give the same weights and evaluations.
    hf_dir = tmp_path / "hf"
    import transformers

    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**{**TINY_CONFIG, "hidden_dropout_prob": 0.0,
                                                      "attention_probs_dropout_prob": 0.0})).save_pretrained(hf_dir)
    (hf_dir / "vocab.txt").write_text(open(uncased_vocab, encoding="utf-8").read(), encoding="utf-8")
    train_file, dev_file = write_rows(tmp_path / "train.tsv", 64), write_rows(tmp_path / "dev.tsv", 10, 1)
    trainers = []  # the script's trainer, for its final weights
    train_one_step = palm.Trainer.train_one_step
    monkeypatch.setattr(palm.Trainer, "train_one_step", lambda self, batch: trainers.append(self)
                        or train_one_step(self, batch))
    history = load_example("train_with_eval").main([
        "--pretrain", str(hf_dir), "--train_file", train_file, "--dev_file", dev_file, "--train_examples", "0",
        "--max_seqlen", "32", "--batch_size", "8", "--dropout", "0", "--lr", "1e-3", "--eval_steps", "3",
        "--print_steps", "1", "--save_path", str(tmp_path / "script")])
    assert sorted(history) == [3, 6, 8]  # every 3 steps and at the end
    monkeypatch.undo()
    config = str(ROOT / "examples" / "train_with_eval" / "config.yaml")
    sets = [f"backbone.pretrained={hf_dir}", f"tasks[0].train_file={train_file}", f"tasks[0].dev_file={dev_file}",
            "tasks[0].reader.max_len=32", "tasks[0].head.dropout_prob=0", "optimizer.lr=1.0e-3", "train.batch_size=8",
            "train.evaluate_every=3", "train.print_steps=0", f"train.save_path={tmp_path / 'cli'}"]
    assert main(["train", config, *(x for s in sets for x in ("--set", s))]) == 0
    evaluations = {r["step"]: r["eval"]["sst2"]["accuracy"] for r in read_metrics(str(tmp_path / "cli"))
                   if "eval" in r}
    assert evaluations == pytest.approx(history, abs=1e-9)
    state = load_checkpoint_dir(str(tmp_path / "cli" / "ckpt.step8"))[0]
    script_state = load_checkpoint_dir(trainers[-1].save(str(tmp_path / "script" / "final")))[0]
    assert set(state) == set(script_state)
    for name, value in state.items():
        torch.testing.assert_close(value, script_state[name], rtol=1e-6, atol=1e-6, msg=name)


CHARS = "好坏电影书店服务房间不错差很一般的了是我们"


def chinese_sentence(rng, good: bool) -> str:
    chars = [str(c) for c in rng.choice(list(CHARS[1:]), size=int(rng.integers(4, 12)))]
    return "".join(chars + (["好"] if good else []))


def write_chinese_rows(path, n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    rows = ["label\ttext_a"] + [f"{i % 2}\t{chinese_sentence(rng, bool(i % 2))}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def pretraining_data(tmp_path) -> str:
    """A tiny copy of the three corpus sources run.py reads (ChnSentiCorp train, CMRC2018 contexts, MSRA-NER)."""
    import zipfile

    data, rng = tmp_path / "data", np.random.default_rng(5)
    for folder in ("chnsenticorp", "cmrc2018", "msra_ner/full_bio"):
        (data / folder).mkdir(parents=True)
    write_chinese_rows(data / "chnsenticorp" / "train.tsv", 12, 0)
    for name in ("cmrc2018_dev.json", "cmrc2018_trial.json"):
        paragraphs = [{"context": "。".join(chinese_sentence(rng, False) for _ in range(2))} for _ in range(3)]
        (data / "cmrc2018" / name).write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}), encoding="utf-8")
    blocks = ["\n".join(f"{c}\tO" for c in chinese_sentence(rng, False)) for _ in range(6)]
    with zipfile.ZipFile(data / "msra_ner" / "full_bio" / "MSRA.zip", "w") as z:
        z.writestr("msra_train_bio", "\n\n".join(blocks))
    return str(data)


def test_pretraining_configs_reproduce_run_py(tmp_path, chinese_vocab):
    # stage 1 (MLM) and stage 2 (both fine-tuning arms) of run.py, then config.yaml and config_finetune.yaml chained
    data = pretraining_data(tmp_path)
    train_file, test_file = (write_chinese_rows(tmp_path / "train.tsv", 16, 1),
                             write_chinese_rows(tmp_path / "test.tsv", 6, 2))
    script = tmp_path / "script"
    load_example("pretraining").main([
        "--data_dir", data, "--vocab", chinese_vocab, "--save_path", str(script), "--hidden_size", "32",
        "--num_layers", "2", "--num_heads", "2", "--intermediate_size", "64", "--mlm_max_seqlen", "32",
        "--mlm_batch_size", "8", "--heldout_lines", "4", "--corpus_lines", "16", "--mlm_steps", "4",
        "--mlm_save_steps", "1000", "--train_file", train_file, "--dev_file", "", "--test_file", test_file,
        "--max_seqlen", "32", "--batch_size", "8", "--epochs", "2", "--print_steps", "1"])
    # `--stages corpus` writes the same corpus without training (config.yaml's first command)
    corpus_only = ["--data_dir", data, "--vocab", chinese_vocab, "--save_path", str(tmp_path / "corpus"),
                   "--mlm_max_seqlen", "32", "--heldout_lines", "4", "--corpus_lines", "16", "--stages", "corpus"]
    assert load_example("pretraining").main(corpus_only) == {}
    assert (tmp_path / "corpus" / "pretrain_corpus.tsv").read_text() == (script / "pretrain_corpus.tsv").read_text()
    assert not (tmp_path / "corpus" / "mlm").exists()
    # 16 corpus lines in batches of 8: run.py's 4 steps are 2 whole epochs
    common = [f"backbone.config={script / 'pretrain_config.json'}", f"backbone.vocab={chinese_vocab}",
              "train.batch_size=8", "train.print_steps=0"]
    stage1 = [*common, f"tasks[0].train_file={script / 'pretrain_corpus.tsv'}", "tasks[0].reader.max_len=32",
              "train.epochs=2", f"train.save_path={tmp_path / 'mlm'}"]
    assert main(["train", str(ROOT / "examples" / "pretraining" / "config.yaml"),
                 *(x for s in stage1 for x in ("--set", s))]) == 0
    mlm_ckpt = tmp_path / "mlm" / "ckpt.step4"
    expected = load_checkpoint_dir(str(script / "mlm" / "ckpt.final"))[0]
    got = load_checkpoint_dir(str(mlm_ckpt))[0]
    assert set(got) == set(expected)
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-8, msg=name)  # (weight decay moves ~1e-7)
    # stage 2 from the CLI's stage-1 checkpoint (the pretrained arm), and from scratch
    config = str(ROOT / "examples" / "pretraining" / "config_finetune.yaml")
    for arm, pretrained in (("pretrained", mlm_ckpt), ("scratch", None)):
        stage2 = [*common, f"backbone.pretrained={pretrained or 'null'}", f"tasks[0].train_file={train_file}",
                  "tasks[0].dev_file=null", f"tasks[0].predict_file={test_file}", "tasks[0].reader.max_len=32",
                  "train.epochs=2", f"train.save_path={tmp_path / arm}"]
        args = [x for s in stage2 for x in ("--set", s)]
        assert main(["train", config, *args]) == 0
        (checkpoint,) = (tmp_path / arm).glob("ckpt.step*")
        assert main(["predict", config, *args, "--checkpoint", str(checkpoint)]) == 0
        torch.testing.assert_close(logits(tmp_path / arm / "predict" / "chnsenticorp" / "predictions.json"),
                                   logits(script / f"predict_{arm}" / "predictions.json"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["predict/config.yaml", "train_with_eval/config.yaml", "pretraining/config.yaml",
                                  "pretraining/config_finetune.yaml"])
def test_new_example_configs_validate_as_they_are(path):
    from torchpalm import config as C

    cfg = C.load(ROOT / "examples" / path)  # (their runs on tiny data are the tests above)
    assert cfg["tasks"][0]["path"] == "tasks[0]"
