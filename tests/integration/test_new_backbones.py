"""A multi-task run (a classifier and a CRF tagger on one backbone) on DeBERTa-v3, on HFEncoder(ELECTRA) and on XLM-R
(the RoBERTa backbone with XLM-R's SentencePiece tokenizer), tiny random models, through the command line and YAML
configs (`backbone: {type: deberta-v2 | hf | roberta}`): it trains, a
run killed with SIGKILL right after its step-4 checkpoint resumes to the same weights bit for bit (dropout on,
so the random stream must resume too), the final checkpoint exports as an inference bundle, and the bundle's
predictions equal those of `predict` from the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tokenizer_fixtures import make_xlmr_spm
from toy_data import write_cls, write_tags

import torchpalm as palm
from torchpalm.cli import main

transformers = pytest.importorskip("transformers")
SRC = Path(__file__).resolve().parents[2] / "src"
TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 64}
MODELS = {
    "deberta-v2": lambda: transformers.DebertaV2Model(transformers.DebertaV2Config(
        **TINY, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type="p2c|c2p", position_biased_input=False, type_vocab_size=0)),
    "hf": lambda: transformers.ElectraModel(transformers.ElectraConfig(**TINY, embedding_size=24)),
    # XLM-R on the RoBERTa backbone, with only its SentencePiece model as tokenizer (made in write_run)
    "xlmr": lambda vocab_size: transformers.XLMRobertaModel(transformers.XLMRobertaConfig(
        **{**TINY, "vocab_size": vocab_size, "max_position_embeddings": 66}, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2)),
}
BACKBONE_TYPE = {"deberta-v2": "deberta-v2", "hf": "hf", "xlmr": "roberta"}
BACKBONE_CLASS = {"deberta-v2": "DeBERTaV2", "hf": "HFEncoder", "xlmr": "RoBERTa"}
# the child process: the CLI's training, killed by SIGKILL as soon as the step-4 checkpoint is complete
KILLED_RUN = """
import logging, os, signal, sys
import torchpalm as palm
from torchpalm.cli import main

class KillAfterStep4(logging.Handler):
    def emit(self, record):
        if "checkpoint has been saved" in record.getMessage() and "ckpt.step4" in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)

logging.getLogger("torchpalm").addHandler(KillAfterStep4())
logging.getLogger("torchpalm").setLevel(logging.INFO)
main(["train", sys.argv[1], "--set", "train.save_path=killed"])
"""


def write_run(tmp_path: Path, backbone_type: str, vocab: str) -> str:
    torch.manual_seed(0)
    if backbone_type == "xlmr":  # the readers find sentencepiece.bpe.model in the model folder
        pytest.importorskip("sentencepiece")
        make_xlmr_spm(str(tmp_path / "model"))
        model = MODELS[backbone_type](len(transformers.AutoTokenizer.from_pretrained(tmp_path / "model")))
    else:
        model = MODELS[backbone_type]()
        (tmp_path / "model").mkdir()
        shutil.copy(vocab, tmp_path / "model" / "vocab.txt")
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    write_cls(tmp_path / "cls.tsv", 32)
    write_cls(tmp_path / "cls_dev.tsv", 9, seed=1)
    write_tags(tmp_path / "tag.tsv", 32, seed=2)
    write_tags(tmp_path / "tag_dev.tsv", 7, seed=3)
    cfg = {"backbone": {"type": BACKBONE_TYPE[backbone_type], "pretrained": "model"},
           "tasks": [{"name": "cls", "reader": {"type": "classify", "do_lower_case": True},
                      "head": {"type": "classify", "num_classes": 2, "dropout_prob": 0.1},
                      "train_file": "cls.tsv", "predict_file": "cls_dev.tsv"},
                     {"name": "tag", "reader": {"type": "sequence_label", "label_map_config": None,
                                                "do_lower_case": True},
                      "head": {"type": "sequence_label"},  # a CRF (the default)
                      "train_file": "tag.tsv", "predict_file": "tag_dev.tsv"}],
           "optimizer": {"type": "adam", "lr": 3e-3, "weight_decay": 0.01},
           "schedule": {"type": "triangular", "warmup": 0.2},
           "train": {"epochs": 3, "batch_size": 8, "max_len": 32, "seed": 0, "save_steps": 4, "print_steps": 4,
                     "device": "cpu"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(path)


def last_checkpoint(folder: Path) -> Path:
    return max(folder.glob("ckpt.step*"), key=lambda p: int(p.name[len("ckpt.step"):]))


@pytest.mark.parametrize("backbone_type", list(MODELS))
def test_multi_task_trains_resumes_after_sigkill_exports_and_predicts(tmp_path, backbone_type, uncased_vocab,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_run(tmp_path, backbone_type, uncased_vocab)
    assert main(["train", path, "--set", "train.save_path=full"]) == 0
    final = last_checkpoint(tmp_path / "full")
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["backbone"]["class"] == BACKBONE_CLASS[backbone_type]
    assert int(final.name[len("ckpt.step"):]) >= 12

    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, path], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "killed").glob("ckpt.step*")) == ["ckpt.step4"]
    assert main(["train", path, "--set", "train.save_path=killed", "--resume"]) == 0
    full, resumed = (load_file(str(last_checkpoint(tmp_path / d) / "model.safetensors")) for d in ("full", "killed"))
    assert last_checkpoint(tmp_path / "killed").name == final.name
    assert full.keys() == resumed.keys() and {k.split(".")[0] for k in full} == {"backbone", "cls", "tag"}
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    initial = load_file(str(tmp_path / "model" / "model.safetensors"))
    some = next(k for k in initial if "layer.1" in k and k.endswith("weight"))
    assert not torch.equal(initial[some], full[f"backbone.model.{some}" if backbone_type == "hf" else
                                               next(k for k in full if k.startswith("backbone.layers.1."))])

    assert main(["export", path, "--checkpoint", str(final), "--out", "bundle", "--onnx"]) == 0
    assert main(["predict", "--bundle", "bundle", "--input", "cls=cls_dev.tsv", "--input", "tag=tag_dev.tsv",
                 "--output", "from_bundle"]) == 0
    assert main(["predict", path, "--checkpoint", str(final), "--output", "from_ckpt"]) == 0
    read = {src: {task: [json.loads(x) for x in (tmp_path / src / task / "predictions.json").read_text().splitlines()]
                  for task in ("cls", "tag")} for src in ("from_bundle", "from_ckpt")}
    bundle, ckpt = read["from_bundle"], read["from_ckpt"]
    assert len(bundle["cls"]) == len(ckpt["cls"]) == 9 and len(bundle["tag"]) == len(ckpt["tag"]) == 7
    assert [r["label"] for r in bundle["cls"]] == [r["label"] for r in ckpt["cls"]]
    for a, b in zip(bundle["cls"], ckpt["cls"], strict=True):  # up to float summation order (other batches)
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
    assert [r["tag_ids"] for r in bundle["tag"]] == ckpt["tag"]  # `predict` writes PALM's tag-id lists
    # the ONNX graph of the bundle (backbone + both heads) equals PyTorch on padded batches it was not traced with
    ort = pytest.importorskip("onnxruntime")
    predictor = palm.Predictor.load(str(tmp_path / "bundle"), device="cpu")
    session = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    texts = [line.split("\t")[1] for line in (tmp_path / "cls_dev.tsv").read_text().splitlines()[1:]]
    texts[0] = " ".join([texts[0]] * 4)  # longer than the traced sample and than the position buckets
    batch = next(iter(predictor.reader_for("tag", texts, len(texts))))
    assert batch["input_mask"].min() == 0 and batch["token_ids"].shape[1] > 12
    with torch.no_grad():
        features = predictor.backbone(batch)
        want = [predictor.heads[t].export_output(features, batch).numpy() for t in ("cls", "tag")]
    got = session.run(["cls", "tag"], {k: batch[k].numpy() for k in names})
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and abs(g - w).max() <= 1e-4


# the killed child runs with one thread (OMP_NUM_THREADS=1): see conftest.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")
