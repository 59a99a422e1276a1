"""The `torchpalm` command line (torchpalm/cli.py) and its YAML configs (torchpalm/config.py), on a tiny BERT:
train / predict / evaluate of one task and of two, the example configs, bad keys, and HF <-> torchpalm conversion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY_CONFIG
from safetensors.torch import load_file
from toy_data import sentences, write_cls, write_tags

import torchpalm as palm
from torchpalm import config as C
from torchpalm.cli import main


def write_pairs(path, n, seed=0) -> str:
    rows = ["label\ttext_a\ttext_b"] + [f"{label}\t{' '.join(s)}\t{' '.join(s[::-1])}"
                                        for label, s in sentences(n, seed)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def write_squad(path, n, seed=0) -> str:
    """SQuAD-style questions whose answer is the first word of the context."""
    paragraphs = [{"context": " ".join(s), "qas": [{"id": f"q{i}", "question": "which word comes first",
                                                   "answers": [{"text": s[0], "answer_start": 0}]}]}
                  for i, (_, s) in enumerate(sentences(n, seed))]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}),
                    encoding="utf-8")
    return str(path)


WRITERS = {"classify": write_cls, "match": write_pairs, "sequence_label": write_tags, "mrc": write_squad}


def write_config(tmp_path, vocab, tasks, name="run.yaml", **train) -> str:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    cfg = {"backbone": {"type": "bert", "config": "tiny.json", "vocab": vocab},
           "tasks": tasks,
           "optimizer": {"type": "adam", "lr": 3e-3, "weight_decay": 0.01},
           "schedule": {"type": "triangular", "warmup": 0.5},
           "train": {"epochs": 2, "batch_size": 8, "max_len": 32, "seed": 0, "save_path": "out", "print_steps": 3,
                     "device": "cpu", **train}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(path)


def cls_task(tmp_path, **extra) -> dict:
    return {"name": "cls", "reader": {"type": "classify", "do_lower_case": True},
            "head": {"type": "classify", "num_classes": 2, "dropout_prob": 0.1},
            "train_file": os.path.basename(write_cls(tmp_path / "train.tsv", 24)),
            # 3/4 of the dev labels are 1 (the training file is balanced): a score on the wrong file shows
            "dev_file": os.path.basename(write_cls(tmp_path / "dev.tsv", 12, seed=1, every=4)),
            "predict_file": "dev.tsv", **extra}


def script_run(tmp_path, vocab) -> dict:
    """What `cls_task` + `write_config` say, as PALM's 8-step script: the weights it ends with."""
    torch.manual_seed(0)
    reader = palm.reader.ClassifyReader(vocab, 32, seed=0, do_lower_case=True)
    reader.load_data(str(tmp_path / "train.tsv"), 8, num_epochs=2)
    backbone = palm.backbone.BERT.from_config(dict(TINY_CONFIG))
    reader.register_with(backbone)
    trainer = palm.Trainer("cls", device="cpu")
    loss = trainer.build_forward(backbone, palm.head.Classify(2, TINY_CONFIG["hidden_size"], 0.1))
    sched = palm.lr_sched.TriangularSchedualer(0.5, None)
    trainer.build_backward(palm.optimizer.Adam(loss, 3e-3, sched), weight_decay=0.01)
    trainer.fit_reader(reader)
    trainer.train(print_steps=0)
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_single_task_train_predict_evaluate(tmp_path, uncased_vocab, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, uncased_vocab, [cls_task(tmp_path)])
    assert main(["train", path]) == 0
    ckpt = tmp_path / "out" / "ckpt.step6"  # 2 epochs of 24 // 8 batches
    state = load_file(str(ckpt / "model.safetensors"))
    # the CLI is PALM's flow: the same weights as the 8-step script with the same settings
    expected = script_run(tmp_path, uncased_vocab)
    names = {k.replace("heads.", "", 1): k for k in expected}  # checkpoints name heads by task
    assert set(state) == set(names)
    for key, name in names.items():
        torch.testing.assert_close(state[key], expected[name], rtol=0, atol=0, msg=name)
    dev = json.loads((tmp_path / "out" / "dev_metrics.json").read_text())

    assert main(["predict", path, "--checkpoint", str(ckpt)]) == 0
    lines = (tmp_path / "out" / "predict" / "cls" / "predictions.json").read_text().splitlines()
    predicted = [json.loads(x)["label"] for x in lines]
    gold = [label for label, _ in sentences(12, seed=1, every=4)]
    assert len(predicted) == 12

    assert main(["evaluate", path, "--checkpoint", str(ckpt), "--output", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    accuracy = float(np.mean(np.array(predicted) == np.array(gold)))
    assert metrics["cls"]["accuracy"] == pytest.approx(accuracy) == pytest.approx(dev["cls"]["accuracy"])
    assert f"cls: accuracy {accuracy:.4f}" in capsys.readouterr().out

    # --input predicts another file; --set changes a value from the command line
    other = write_cls(tmp_path / "other.tsv", 5, seed=3)
    assert main(["predict", path, "--checkpoint", str(ckpt), "--input", other, "--output",
                 str(tmp_path / "p2")]) == 0
    assert len((tmp_path / "p2" / "cls" / "predictions.json").read_text().splitlines()) == 5
    # relative paths: in the file relative to the file, on the command line relative to the working directory
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["train", path, "--set", "train.epochs=1", "--set", "train.save_path=o1"]) == 0
    assert (tmp_path / "cwd" / "o1" / "ckpt.step3").is_dir()
    # with periodic saving, the last step is saved once, by the saver
    assert main(["train", path, "--set", "train.epochs=1", "--set", "train.save_path=o2", "--set",
                 "train.save_steps=2", "--set", "train.tensorboard=true"]) == 0
    assert sorted(os.listdir(tmp_path / "cwd" / "o2")) == ["ckpt.step2", "ckpt.step3", "dev_metrics.json",
                                                         "metrics.jsonl", "metrics.png", "tensorboard"]


def test_two_task_train_predict_evaluate(tmp_path, uncased_vocab):
    tag = {"name": "tag", "reader": {"type": "sequence_label", "label_map_config": None, "do_lower_case": True},
           "head": {"type": "sequence_label"},  # num_classes: the size of the map built from the train tags
           "train_file": write_tags(tmp_path / "tag.tsv", 32), "dev_file": write_tags(tmp_path / "tagdev.tsv", 8, 2),
           "predict_file": "tagdev.tsv"}
    cls = cls_task(tmp_path, mix_ratio=0.5, loss_weight=2.0)
    path = write_config(tmp_path, uncased_vocab, [tag, cls], evaluate_every=4)
    assert main(["train", path]) == 0
    (ckpt,) = (tmp_path / "out").glob("ckpt.step*")  # the final one (save_steps unset)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    # budgets: 2 epochs of the reference (tag, 32 // 8 = 4 steps each) times each task's mix ratio; a task that
    # reached its budget keeps being drawn until every main task has
    assert {n: t["budget"] for n, t in state["tasks"].items()} == {"tag": 8, "cls": 4}
    assert all(t["step"] >= t["budget"] for t in state["tasks"].values())
    assert state["heads"]["tag"]["config"]["num_classes"] == 2
    keys = load_file(str(ckpt / "model.safetensors"))
    assert {k.split(".")[0] for k in keys} == {"backbone", "tag", "cls"}
    assert (tmp_path / "out" / "best.aggregate").is_dir()
    dev = json.loads((tmp_path / "out" / "dev_metrics.json").read_text())
    assert set(dev) == {"tag", "cls"} and "f1" in dev["tag"] and "accuracy" in dev["cls"]

    assert state["step"] == int(ckpt.name[len("ckpt.step"):]) >= 12
    assert main(["predict", path, "--checkpoint", str(ckpt)]) == 0  # the tag map is rebuilt from train_file
    assert len((tmp_path / "out" / "predict" / "tag" / "predictions.json").read_text().splitlines()) == 8
    assert main(["evaluate", path, "--checkpoint", str(ckpt)]) == 0
    metrics = json.loads((tmp_path / "out" / "evaluate" / "metrics.json").read_text())
    # the final evaluation during training saw the same weights
    assert {t: pytest.approx(m) for t, m in metrics.items()} == dev


def test_mrc_train_predict_evaluate(tmp_path, uncased_vocab):
    task = {"name": "qa", "reader": {"type": "mrc", "max_query_len": 8, "doc_stride": 8, "do_lower_case": True},
            "head": {"type": "mrc", "do_lower_case": True},  # max_query_len: the reader's
            "train_file": write_squad(tmp_path / "train.json", 16), "dev_file": write_squad(tmp_path / "dev.json", 6, 1),
            "predict_file": "dev.json"}
    path = write_config(tmp_path, uncased_vocab, [task], epochs=1)
    assert main(["train", path]) == 0
    (ckpt,) = (tmp_path / "out").glob("ckpt.step*")
    assert main(["predict", path, "--checkpoint", str(ckpt)]) == 0
    answers = json.loads((tmp_path / "out" / "predict" / "qa" / "predictions.json").read_text())
    assert sorted(answers) == [f"q{i}" for i in range(6)]
    assert main(["evaluate", path, "--checkpoint", str(ckpt)]) == 0
    metrics = json.loads((tmp_path / "out" / "evaluate" / "metrics.json").read_text())["qa"]
    gold = {f"q{i}": s[0] for i, (_, s) in enumerate(sentences(6, 1))}
    exact = np.mean([answers[q].strip().lower() == gold[q] for q in gold])
    assert set(metrics) == {"f1", "exact_match"} and metrics["exact_match"] == pytest.approx(exact)


def test_mask_lm_trains_and_has_no_default_metric(tmp_path, uncased_vocab, capsys):
    rows = ["text_a"] + [" ".join(s) for _, s in sentences(16)]
    (tmp_path / "text.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    task = {"name": "mlm", "reader": {"type": "mask_lm", "do_lower_case": True},
            "head": {"type": "mask_lm"},  # vocab_size and hidden_act: the backbone's
            "train_file": "text.tsv", "dev_file": "text.tsv"}
    path = write_config(tmp_path, uncased_vocab, [task], epochs=1)
    assert main(["train", path]) == 2
    assert "tasks[0].dev_file: the MaskLM head has no default metric" in capsys.readouterr().err
    assert main(["train", path, "--set", "tasks[0].dev_file=null"]) == 0
    assert main(["evaluate", path, "--checkpoint", str(tmp_path / "out" / "ckpt.step2"),
                 "--set", "tasks[0].dev_file=null"]) == 2
    assert "no task has a dev_file" in capsys.readouterr().err


def test_pairwise_match_builds_a_pairwise_backbone(tmp_path, uncased_vocab):
    rows = ["text_a\ttext_b\ttext_b_neg"] + [f"{' '.join(s)}\t{' '.join(s[::-1])}\tbad plot"
                                             for _, s in sentences(16)]
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    task = {"name": "rank", "reader": {"type": "match", "learning_strategy": "pairwise", "do_lower_case": True},
            "head": {"type": "match", "num_classes": 1, "learning_strategy": "pairwise"},
            "train_file": "pairs.tsv"}
    # (the pairwise head reads the backbone's `*_neg` outputs, which only an `is_pairwise` backbone gives)
    assert main(["train", write_config(tmp_path, uncased_vocab, [task], epochs=1)]) == 0
    assert (tmp_path / "out" / "ckpt.step2").is_dir()


EXAMPLES = ["classification", "matching", "tagging", "multi_task", "mrc"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_config_validates_and_builds(example, tmp_path, uncased_vocab, capsys):
    path = ROOT / "examples" / example / "config.yaml"
    cfg = C.load(path)  # the config as it is, with its real data paths
    # Build every component (readers read, heads sized, trainer, optimizer) on small files and the tiny BERT.
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    sets = ["backbone.pretrained=null", f"backbone.config={tmp_path / 'tiny.json'}", f"backbone.vocab={uncased_vocab}",
            f"train.save_path={tmp_path / 'out'}", "train.max_len=32"]
    for i, task in enumerate(cfg["tasks"]):
        small = WRITERS[task["reader"]["type"]](tmp_path / f"{i}.tsv", 16, seed=i)
        sets += [f"tasks[{i}].{key}={small}" for key in ("train_file", "dev_file", "predict_file")]
        if "max_len" in task["reader"]:
            sets.append(f"tasks[{i}].reader.max_len=32")
        if task["reader"]["type"] == "mrc":  # a question and a window within 32 sub-tokens
            sets += [f"tasks[{i}].reader.max_query_len=8", f"tasks[{i}].reader.doc_stride=8"]
        if C.label_map_option(task["reader"]) is not None:
            sets.append(f"tasks[{i}].reader.label_map_config=[O, B-POS]")
    assert main(["train", str(path), "--dry-run", *(x for s in sets for x in ("--set", s))]) == 0
    assert "dry run" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob("*"))  # nothing trained, nothing saved

    # The same config with its label maps and num_classes left out trains on text labels (and tags) read from
    # the data, and evaluates from its checkpoint (issue 29).
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    tasks = raw["tasks"] if isinstance(raw["tasks"], list) else [raw["tasks"]]
    for i, task in enumerate(tasks):
        for key in ("label_map", "label_map_config"):
            task["reader"].pop(key, None)
        if task["reader"]["type"] in ("classify", "match"):
            task["head"].pop("num_classes", None)
            table = (tmp_path / f"{i}.tsv").read_text(encoding="utf-8").splitlines()
            (tmp_path / f"{i}.tsv").write_text("\n".join([table[0]] + [("pos" if row[0] == "1" else "neg") + row[1:]
                                                                       for row in table[1:]]) + "\n")
    (tmp_path / "from_data.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    sets = [s for s in sets if "label_map_config" not in s] + ["train.epochs=1", "train.save_steps=null"]
    assert main(["train", str(tmp_path / "from_data.yaml"), *(x for s in sets for x in ("--set", s))]) == 0
    (checkpoint,) = (tmp_path / "out").glob("ckpt.step*")
    assert main(["evaluate", str(tmp_path / "from_data.yaml"), "--checkpoint", str(checkpoint),
                 *(x for s in sets for x in ("--set", s))]) == 0
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    for task in tasks:
        if task["reader"]["type"] in ("classify", "match", "sequence_label"):
            options = state["tasks"][task["name"]]["reader"]["data_options"]
            label_map = options.get("label_map", options.get("label_map_config"))
            assert label_map == ({"neg": 0, "pos": 1} if task["reader"]["type"] != "sequence_label" else
                                 {"B-POS": 0, "O": 1})


def bad_config(tmp_path, vocab, edit) -> str:
    tasks = [cls_task(tmp_path), cls_task(tmp_path, name="cls2")]
    path = write_config(tmp_path, vocab, tasks)
    raw = yaml.safe_load(open(path))
    edit(raw)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(tmp_path / "bad.yaml")


def rename(section: dict, old: str, new: str) -> None:
    section[new] = section.pop(old)


BAD = {
    "misspelt reader option": (lambda r: r["tasks"][1]["reader"].update(max_lne=64),
                               ["tasks[1].reader.max_lne: unknown key (did you mean max_len?)",
                                "valid keys: columns, do_lower_case, file_format, label_map, lang, max_len"]),
    "misspelt head option": (lambda r: rename(r["tasks"][0]["head"], "num_classes", "num_clases"),
                             ["tasks[0].head.num_clases: unknown key (did you mean num_classes?)",
                              "dropout_prob", "param_initializer_range"]),
    "misspelt train key": (lambda r: rename(r["train"], "batch_size", "batchsize"),
                           ["train.batchsize: unknown key (did you mean batch_size?)", "evaluate_every"]),
    "misspelt section": (lambda r: rename(r, "optimizer", "optimiser"),
                         ["optimiser: unknown key (did you mean optimizer?)", "multi_task"]),
    "misspelt task key": (lambda r: rename(r["tasks"][0], "dev_file", "dev_flie"),
                          ["tasks[0].dev_flie: unknown key (did you mean dev_file?)", "predict_file"]),
    "unknown reader type": (lambda r: r["tasks"][0]["reader"].update(type="clasify"),
                            ["tasks[0].reader.type: unknown reader type 'clasify' (did you mean classify?)",
                             "sequence_label"]),
    "missing lr": (lambda r: r["optimizer"].pop("lr"), ["optimizer.lr: missing required key", "weight_decay"]),
    # (a classify or match reader implies it: the label map's size, or the largest label id + 1)
    "missing num_classes": (lambda r: r["tasks"][0].update(reader={"type": "mask_lm"}, head={"type": "classify"}),
                            ["tasks[0].head.num_classes: missing required key (or give the reader a label map)"]),
    "missing max_len": (lambda r: r["train"].pop("max_len"),
                        ["tasks[0].reader.max_len: missing required key (or train.max_len)"]),
    "missing tasks": (lambda r: r.pop("tasks"), ["tasks: missing required key"]),
    "wrong type train": (lambda r: r["train"].update(batch_size="32"),
                         ['train.batch_size: expected integer, got string "32"']),
    "wrong type reader": (lambda r: r["tasks"][0]["reader"].update(do_lower_case="yes"),
                          ['tasks[0].reader.do_lower_case: expected boolean, got string "yes"']),
    "wrong type head": (lambda r: r["tasks"][0]["head"].update(dropout_prob="high"),
                        ['tasks[0].head.dropout_prob: expected number, got string "high"']),
    "boolean for a number": (lambda r: r["train"].update(epochs=True), ["train.epochs: expected number, got boolean true"]),
    "wrong type task": (lambda r: r["tasks"][1].update(aux="no"), ['tasks[1].aux: expected boolean, got string']),
    "wrong choice": (lambda r: r["schedule"].update(type="cosine"),
                     ["schedule.type: 'cosine' is not one of triangular, warmup, none"]),
    "no saves as 0": (lambda r: r.setdefault("train", {}).update(save_steps=0),
                      ["train.save_steps: must be >= 1 (null: only the final checkpoint), got 0"]),
    "evaluate_every 0": (lambda r: r.setdefault("train", {}).update(evaluate_every=0),
                         ["train.evaluate_every: must be >= 1 (null: once, at the end), got 0"]),
    "batch size 0": (lambda r: r.setdefault("train", {}).update(batch_size=0),
                     ["train.batch_size: must be >= 1, got 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_a_clear_error_before_building(case, tmp_path, uncased_vocab, capsys):
    edit, fragments = BAD[case]
    path = bad_config(tmp_path, uncased_vocab, edit)
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "out").exists()


BUILD_ERRORS = {
    # values only a constructor can judge: its message, under the key the value came from
    "reader value": (lambda r: r["tasks"][0]["reader"].update(lang="fr"),
                     "tasks[0].reader (ClassifyReader): lang must be one of 'en', 'english', 'cn', 'chinese', got 'fr'"),
    "head value": (lambda r: r["tasks"][1]["head"].update(num_classes=1),
                   "tasks[1].head (Classify): num_classes must be >= 2, got 1"),
    "task value": (lambda r: r["tasks"][1].update(loss_weight=0), "tasks[1]: loss_weight must be > 0, got 0"),
    "multi-task value": (lambda r: r.update(multi_task={"sampling": "random"}), "multi_task: "),
    "backbone config": (lambda r: r["backbone"].update(config={"hidden_size": 32}),
                        "backbone.config (BERT): "),
    "all aux": (lambda r: [t.update(aux=True) for t in r["tasks"]], "tasks: every task has aux: true"),
    # bad data: the file and line, and what was expected
    "unknown label": (lambda r: r["tasks"][0]["reader"].update(label_map=["neg", "pos"]),
                      "train.tsv:2: "),
    "missing file": (lambda r: r["tasks"][1].update(train_file="nowhere.tsv"),
                     "bad.yaml: tasks[1].train_file: data file not found: "),
    "missing dev file": (lambda r: r["tasks"][1].update(dev_file="nowhere.tsv"),
                         "bad.yaml: tasks[1].dev_file: data file not found: "),
    "missing label map file": (lambda r: r["tasks"][0]["reader"].update(label_map="labels.json"),
                               "tasks[0].reader (ClassifyReader): label map file not found: "),
    "unrecognised format": (lambda r: r["tasks"][0].update(reader={"type": "sequence_label", "label_map_config": None},
                                                           head={"type": "sequence_label"}, dev_file=None,
                                                           train_file="odd.tsv"),
                            "odd.tsv:1: expected a word and a tag (at least 2 columns), got 1 column 'justoneword'"),
    "tags without the no-entity tag": (lambda r: r["tasks"][0].update(
        reader={"type": "sequence_label", "label_map_config": None}, head={"type": "sequence_label"}, dev_file=None,
        train_file="four.tsv"), "tasks[0].train_file: no_entity_label 'O' is not in the label map"),
}


@pytest.mark.parametrize("case", sorted(BUILD_ERRORS))
def test_bad_values_and_data_name_their_key_or_line(case, tmp_path, uncased_vocab, capsys):
    edit, fragment = BUILD_ERRORS[case]
    (tmp_path / "odd.tsv").write_text("justoneword\n", encoding="utf-8")
    (tmp_path / "four.tsv").write_text("a\tb\tc\td\n", encoding="utf-8")
    assert main(["train", bad_config(tmp_path, uncased_vocab, edit), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_missing_predict_files_name_their_key(tmp_path, uncased_vocab, capsys):
    path = bad_config(tmp_path, uncased_vocab, lambda r: r["tasks"][1].update(predict_file="gone.tsv"))
    assert main(["predict", path, "--checkpoint", str(tmp_path), "--output", str(tmp_path / "p")]) == 2
    assert "bad.yaml: tasks[1].predict_file: data file not found: " in capsys.readouterr().err
    assert main(["predict", path, "--checkpoint", str(tmp_path), "--input", "cls=gone.tsv"]) == 2
    assert "--input: data file not found: " in capsys.readouterr().err


def test_bad_set_override(tmp_path, uncased_vocab, capsys):
    path = write_config(tmp_path, uncased_vocab, [cls_task(tmp_path)])
    assert main(["train", path, "--set", "tasks[3].name=x"]) == 2
    assert "--set tasks[3]: '3' is not an index of this list of 1" in capsys.readouterr().err
    assert main(["train", path, "--set", "optimizer={type: adam"]) == 2
    assert "the value is not valid YAML" in capsys.readouterr().err
    assert main(["train", path, "--set", "train.epochs"]) == 2
    assert "expected key.path=value" in capsys.readouterr().err
    assert main(["train", path, "--set", "tasks[0].reader.max_lne=3"]) == 2
    assert "tasks[0].reader.max_lne: unknown key (did you mean max_len?)" in capsys.readouterr().err


def test_help_on_every_command(capsys):
    for command in ([], ["train"], ["predict"], ["evaluate"], ["convert"], ["download"]):
        with pytest.raises(SystemExit) as e:
            main([*command, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: torchpalm" in out
        if command not in (["convert"], ["download"]):
            assert "tasks:" in out and "optimizer:" in out  # the config's description
    out = subprocess.run([sys.executable, "-m", "torchpalm", "--help"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True).stdout
    assert "train" in out and "convert" in out and "download" in out
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"] == {"torchpalm": "torchpalm.cli:main"}  # the console script
    assert any(d.startswith("pyyaml") for d in project["dependencies"])


def test_convert_round_trip_is_exact(tmp_path, tiny_config, uncased_vocab):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_dir = tmp_path / "hf"
    transformers.BertModel(transformers.BertConfig(**tiny_config)).save_pretrained(hf_dir)
    (hf_dir / "vocab.txt").write_text(open(uncased_vocab, encoding="utf-8").read(), encoding="utf-8")
    assert main(["convert", "--from", "hf", "--to", "torchpalm", str(hf_dir), str(tmp_path / "tp")]) == 0
    assert main(["convert", "--from", "torchpalm", "--to", "hf", str(tmp_path / "tp"), str(tmp_path / "back")]) == 0
    original, back = load_file(str(hf_dir / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(original) == set(back)
    for k in original:
        assert torch.equal(original[k], back[k]), k
    assert sorted(os.listdir(tmp_path / "back")) == ["config.json", "model.safetensors", "tokenizer_config.json",
                                                     "vocab.txt"]

    # the torchpalm side is what load_pretrain reads: the same backbone outputs as HF's model
    backbone = palm.backbone.BERT.from_config(str(tmp_path / "tp" / "config.json"), phase="predict")
    palm.trainer.load_pretrained_backbone(backbone, str(tmp_path / "tp"))
    ids = torch.tensor([[101, 2204, 3185, 102]])
    batch = {"token_ids": ids, "position_ids": torch.arange(4)[None], "segment_ids": torch.zeros_like(ids),
             "input_mask": torch.ones_like(ids)}
    hf = transformers.BertModel.from_pretrained(tmp_path / "back").eval()
    torch.testing.assert_close(backbone(batch)["encoder_outputs"], hf(ids).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_convert_checkpoint_to_hf_and_refusals(tmp_path, uncased_vocab, capsys):
    transformers = pytest.importorskip("transformers")
    path = write_config(tmp_path, uncased_vocab, [cls_task(tmp_path)], epochs=1)
    assert main(["train", path]) == 0
    ckpt = tmp_path / "out" / "ckpt.step3"
    assert main(["convert", "--from", "torchpalm", "--to", "hf", str(ckpt), str(tmp_path / "hf")]) == 0
    hf = transformers.BertModel.from_pretrained(tmp_path / "hf")  # config.json from the checkpoint's record
    state = load_file(str(ckpt / "model.safetensors"))
    torch.testing.assert_close(hf.embeddings.word_embeddings.weight, state["backbone.word_embeddings.weight"],
                               rtol=0, atol=0)
    # an ERNIE (PALM-style config, task embedding) converts to HF's ErnieModel, task embedding included
    ernie = palm.backbone.ERNIE.from_config({**TINY_CONFIG, "task_type_vocab_size": 3})
    torch.nn.init.normal_(ernie.task_embeddings.weight)
    from safetensors.torch import save_file

    (tmp_path / "ernie").mkdir()
    save_file({f"backbone.{k}": v.contiguous() for k, v in ernie.state_dict().items()},
              str(tmp_path / "ernie" / "model.safetensors"))
    assert main(["convert", "--from", "torchpalm", "--to", "hf", str(tmp_path / "ernie"), str(tmp_path / "x")]) == 2
    assert "config.json" in capsys.readouterr().err  # nothing says what the backbone is
    (tmp_path / "ernie" / "config.json").write_text(json.dumps({**TINY_CONFIG, "task_type_vocab_size": 3}))
    assert main(["convert", "--from", "torchpalm", "--to", "hf", str(tmp_path / "ernie"), str(tmp_path / "x")]) == 0
    hf_ernie = transformers.AutoModel.from_pretrained(tmp_path / "x")
    assert type(hf_ernie).__name__ == "ErnieModel"
    assert torch.equal(hf_ernie.embeddings.task_type_embeddings.weight, ernie.task_embeddings.weight)
    with pytest.raises(SystemExit):
        main(["convert", "--from", "hf", "--to", "hf", str(tmp_path / "hf"), str(tmp_path / "y")])


def test_torch_optimizer_and_schedule_from_the_config(tmp_path, uncased_vocab, capsys):
    """`optimizer.type: SGD` and `schedule.type: CosineAnnealingLR` build palm.optimizer.Torch and
    palm.lr_sched.Torch: the same weights as that script; bad options name their key."""
    path = write_config(tmp_path, uncased_vocab, [cls_task(tmp_path)], save_steps=100)
    cfg = yaml.safe_load(open(path))
    cfg["optimizer"] = {"type": "SGD", "lr": 0.05, "weight_decay": 0.01, "options": {"momentum": 0.9}}
    cfg["schedule"] = {"type": "CosineAnnealingLR", "options": {"T_max": "num_train_steps", "eta_min": 0.001}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", path]) == 0
    state = load_file(str(tmp_path / "out" / "ckpt.step6" / "model.safetensors"))
    # the script: PALM's 8 steps with the torch optimizer and schedule
    torch.manual_seed(0)
    reader = palm.reader.ClassifyReader(uncased_vocab, 32, seed=0, do_lower_case=True)
    reader.load_data(str(tmp_path / "train.tsv"), 8, num_epochs=2)
    backbone = palm.backbone.BERT.from_config(TINY_CONFIG)
    reader.register_with(backbone)
    trainer = palm.Trainer("cls", device="cpu")
    loss_var = trainer.build_forward(backbone, palm.head.Classify(2, 32, 0.1))
    sched = palm.lr_sched.Torch(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=palm.lr_sched.NUM_TRAIN_STEPS,
                                eta_min=0.001)
    trainer.build_backward(palm.optimizer.Torch(torch.optim.SGD, 0.05, sched, loss_var, momentum=0.9), 0.01)
    trainer.fit_reader(reader)
    trainer.train(print_steps=0)
    assert sched.num_train_steps == 6
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(state[name.replace("heads.", "", 1)], value, rtol=0, atol=0, msg=name)
    for section, options, message in [
        ("optimizer", {"momentun": 0.9}, "optimizer.options.momentun: unknown option (did you mean momentum?)"),
        ("optimizer", {"weight_decay": 0.1}, "optimizer.options.weight_decay: unknown option (set by the trainer)"),
        ("schedule", {"T_maxx": 3}, "schedule.options.T_maxx: unknown option (did you mean T_max?)")]:
        cfg[section]["options"] = options
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", path]) == 2 and message in capsys.readouterr().err
        cfg = yaml.safe_load(open(tmp_path / "run.yaml"))
        cfg["optimizer"]["options"], cfg["schedule"]["options"] = {"momentum": 0.9}, {"T_max": "num_train_steps"}
    cfg["optimizer"]["type"] = "SDG"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", path]) == 2 and "optimizer.type: 'SDG' is not one of adam, " in capsys.readouterr().err


def test_train_resume_continues_a_killed_run_exactly(tmp_path, uncased_vocab, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, uncased_vocab, [cls_task(tmp_path)], save_steps=2)
    assert main(["train", path, "--set", "train.save_path=full"]) == 0
    # a run killed after its step-2 checkpoint: only that is on disk
    shutil.copytree(tmp_path / "full" / "ckpt.step2", tmp_path / "killed" / "ckpt.step2")
    assert main(["train", path, "--set", "train.save_path=killed", "--resume"]) == 0
    full, resumed = (load_file(str(tmp_path / d / "ckpt.step6" / "model.safetensors")) for d in ("full", "killed"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    # without a checkpoint, --resume starts from the beginning
    assert main(["train", path, "--set", "train.save_path=fresh", "--resume"]) == 0
    fresh = load_file(str(tmp_path / "fresh" / "ckpt.step6" / "model.safetensors"))
    assert all(torch.equal(full[k], fresh[k]) for k in full)
