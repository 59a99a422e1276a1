"""Inference bundles and the Predictor: a tiny model exported by `palm.export` / `set_saver(save_type='predict')`
predicts exactly what its trainer predicts, without the training script; bad bundles are refused by name; the
Predictor and `trainer.predict()` are safe from many threads; the ONNX graph equals PyTorch (onnxruntime)."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch

import torchpalm as palm
from torchpalm import bundle

WORDS = ["good", "bad", "movie", "plot", "actor", "film", "story", "great", "awful", "scene"]
TAGS = ["O", "B-POS"]


def sentences(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sent = [str(w) for w in rng.choice(WORDS[1:], size=int(rng.integers(2, 7)))]
        if i % 2:
            sent.insert(int(rng.integers(0, len(sent) + 1)), "Good")  # upper case: lower-casing matters
        out.append(sent)
    return out


def write_cls(path, sents) -> str:
    rows = ["label\ttext_a"] + [f"{'pos' if 'Good' in s else 'neg'}\t{' '.join(s)}" for s in sents]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def write_tags(path, sents) -> str:
    rows = ["text_a\tlabel"] + ["\x02".join(s) + "\t" + "\x02".join("B-POS" if w == "Good" else "O" for w in s)
                                for s in sents]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


class Tasks:
    """A tiny BERT with a Classify task ('cls', label names) and a CRF tagger ('tag'), trained a few steps, alone
    (`single`) or together in a MultiHeadTrainer (`multi`); predict sides fitted on a test file."""

    def __init__(self, tmp_path, vocab, config, multi: bool, steps: int = 6, batch: int = 4):
        torch.manual_seed(0)
        self.vocab, self.config, self.batch = vocab, config, batch
        self.test_sents = sentences(11, seed=5)
        self.test_cls = write_cls(tmp_path / "test_cls.tsv", self.test_sents)
        self.test_tag = write_tags(tmp_path / "test_tag.tsv", self.test_sents)
        backbone = palm.backbone.BERT.from_config(config)
        pred_backbone = palm.backbone.BERT.from_config(config, phase="predict")
        cls_reader = palm.reader.ClassifyReader(vocab, 24, seed=0, do_lower_case=True, label_map=["neg", "pos"])
        cls_reader.load_data(write_cls(tmp_path / "cls.tsv", sentences(24)), batch, num_epochs=None)
        cls_reader.register_with(backbone)
        self.cls = palm.Trainer("cls", device="cpu")
        loss = self.cls.build_forward(backbone, palm.head.Classify(2, config["hidden_size"], 0.1))
        self.readers = [cls_reader]
        self.trainers = [self.cls]
        if multi:
            tag_reader = palm.reader.SequenceLabelReader(vocab, 24, TAGS, seed=0, do_lower_case=True)
            tag_reader.load_data(write_tags(tmp_path / "tag.tsv", sentences(24, 1)), batch, num_epochs=None)
            tag_reader.register_with(backbone)
            self.tag = palm.Trainer("tag", device="cpu")
            self.tag.build_forward(backbone, palm.head.SequenceLabel(2, config["hidden_size"], 0.1, use_crf=True))
            self.readers.insert(0, tag_reader)
            self.trainers.insert(0, self.tag)
            self.mh = palm.MultiHeadTrainer(self.trainers)
            loss = self.mh.build_forward()
            self.mh.build_backward(palm.optimizer.Adam(loss, 3e-3), weight_decay=0.01)
            self.mh.fit_readers_with_mixratio(self.readers, "tag", 2)
            for _ in range(steps):
                self.mh.train_one_step(self.mh.get_one_batch())
        else:
            self.cls.build_backward(palm.optimizer.Adam(loss, 3e-3))
            self.cls.fit_reader(cls_reader)
            for _ in range(steps):
                self.cls.train_one_step(self.cls.get_one_batch())
        self.cls_pred = self._predict_reader(palm.reader.ClassifyReader(
            vocab, 24, do_lower_case=True, label_map=["neg", "pos"], phase="predict"), self.test_cls, pred_backbone)
        self.cls.build_predict_forward(pred_backbone, palm.head.Classify(2, config["hidden_size"], phase="predict"))
        if multi:
            self.tag_pred = self._predict_reader(palm.reader.SequenceLabelReader(
                vocab, 24, TAGS, do_lower_case=True, phase="predict"), self.test_tag, pred_backbone)
            self.tag.build_predict_forward(pred_backbone, palm.head.SequenceLabel(2, config["hidden_size"],
                                                                                  use_crf=True, phase="predict"))
            self.mh.build_predict_forward()
            self.mh.merge_inference_readers([self.tag_pred, self.cls_pred])
        else:
            self.cls.fit_reader(self.cls_pred, phase="predict")
        self.owner = self.mh if multi else self.cls

    def _predict_reader(self, reader, path, backbone):
        reader.load_data(path, self.batch)
        reader.register_with(backbone)
        return reader


def probs(results) -> np.ndarray:
    return np.array([r["probs"] for r in results])


@pytest.fixture
def single(tmp_path, uncased_vocab, tiny_config):
    return Tasks(tmp_path, uncased_vocab, tiny_config, multi=False)


@pytest.fixture
def multi(tmp_path, uncased_vocab, tiny_config):
    return Tasks(tmp_path, uncased_vocab, tiny_config, multi=True)


def test_exported_bundle_predicts_what_the_trainer_predicts(tmp_path, single):
    expected = single.cls.predict(print_steps=0)
    path = palm.export(single.cls, tmp_path / "bundle")
    assert {"model.safetensors", "bundle.json", "complete.json", "reader.cls"} <= set(os.listdir(path))
    spec = json.load(open(os.path.join(path, "bundle.json")))
    assert spec["format_version"] == bundle.FORMAT_VERSION and spec["torchpalm_version"] == palm.__version__
    assert spec["tasks"]["cls"]["reader"]["options"]["label_map"] == {"neg": 0, "pos": 1}
    assert json.load(open(os.path.join(path, "complete.json")))["files"]["reader.cls/vocab.txt"] > 0

    predictor = palm.Predictor.load(path, device="cpu")
    from_file = predictor.predict(single.test_cls, batch_size=single.batch)
    texts = [" ".join(s) for s in single.test_sents]
    from_list = predictor.predict(texts, batch_size=single.batch)
    for got in (from_file, from_list):
        np.testing.assert_array_equal(probs(got), probs(expected))
        assert [r["label_name"] for r in got] == [r["label_name"] for r in expected]
    assert {r["label_name"] for r in from_list} <= {"neg", "pos"}
    # a pair input is a different kind of input: named, not silently mixed
    with pytest.raises(ValueError, match="input 2 has"):
        predictor.predict(["one text", ("a", "pair")])


def test_set_saver_predict_writes_bundles(tmp_path, single, monkeypatch):
    single.cls.set_saver(str(tmp_path / "out"), 2, save_type="predict")
    for _ in range(2):
        single.cls.train_one_step(single.cls.get_one_batch())
    saved = tmp_path / "out" / f"pred.step{single.cls.cur_train_step}"
    expected = single.cls.predict(print_steps=0)
    predictor = palm.Predictor.load(saved, device="cpu")
    np.testing.assert_array_equal(probs(predictor.predict(single.test_cls, batch_size=single.batch)),
                                  probs(expected))
    # a reader that cannot describe itself (one of the user's own) still gets its weights saved, as before
    monkeypatch.delattr(palm.reader.ClassifyReader, "export_options")
    for _ in range(2):
        single.cls.train_one_step(single.cls.get_one_batch())
    saved = tmp_path / "out" / f"pred.step{single.cls.cur_train_step}"
    assert {"model.safetensors", "complete.json"} <= set(os.listdir(saved)) and "bundle.json" not in os.listdir(saved)
    with pytest.raises(NotImplementedError, match="ClassifyReader cannot be exported"):
        palm.export(single.cls, tmp_path / "explicit")


def test_multi_head_bundle_predicts_every_head_with_one_backbone_pass(tmp_path, multi):
    expected = multi.mh.predict(print_steps=0)
    predictor = palm.Predictor.load(palm.export(multi.mh, tmp_path / "bundle"), device="cpu")
    assert predictor.tasks == ["tag", "cls"]
    passes = []
    predictor.backbone.register_forward_hook(lambda *args: passes.append(1))
    texts = [" ".join(s) for s in multi.test_sents]  # the tagger splits them on spaces, the classifier reads them
    got = predictor.predict(texts, batch_size=multi.batch)
    n_batches = -(-len(multi.test_sents) // multi.batch)
    assert len(passes) == n_batches  # the tagger and the classifier read the same tokens: one pass each batch
    np.testing.assert_array_equal(probs(got["cls"]), probs(expected["cls"]))
    assert [r["tag_ids"] for r in got["tag"]] == [list(r) for r in expected["tag"]]
    assert [r["tags"] for r in got["tag"]] == [r.tags for r in expected["tag"]]
    assert got["tag"][1]["words"] == multi.test_sents[1]
    only = predictor.predict(texts, task="cls", batch_size=multi.batch)
    # the classifier alone reads the same tokens through another pass: equal to float rounding (it was bit-equal
    # by chance; with other trained weights one of 22 probabilities differed by 1 ulp)
    np.testing.assert_allclose(probs(only), probs(expected["cls"]), rtol=1e-6, atol=0)
    with pytest.raises(KeyError, match="no task 'intent'.*tag"):
        predictor.predict(["x"], task="intent")


def test_match_and_mrc_bundles(tmp_path, uncased_vocab, tiny_config):
    torch.manual_seed(0)
    pairs = [("a good movie", "a great film"), ("bad plot", "the actor"), ("story", "a scene with a plot")]
    match_file = tmp_path / "match.tsv"
    match_file.write_text("text_a\ttext_b\n" + "".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    squad = {"data": [{"paragraphs": [{"context": "The actor was born in Paris in 1970 and lives in Rome with his family, two dogs and a cat since 2001.",
                                       "qas": [{"id": "q1", "question": "Where was the actor born?"},
                                               {"id": "q2", "question": "When was he born?"}]}]}]}
    mrc_file = tmp_path / "mrc.json"
    mrc_file.write_text(json.dumps(squad), encoding="utf-8")
    cases = [
        ("match", palm.reader.MatchReader(uncased_vocab, 32, do_lower_case=True, phase="predict"), match_file,
         palm.head.Match(2, 32, phase="predict"), pairs),
        ("mrc", palm.reader.MRCReader(uncased_vocab, 24, 8, 6, do_lower_case=True, phase="predict"), mrc_file,
         palm.head.MRC(8, 32, phase="predict"),
         [(qa["question"], squad["data"][0]["paragraphs"][0]["context"])
          for qa in squad["data"][0]["paragraphs"][0]["qas"]]),
    ]
    for name, reader, path, head, inputs in cases:
        backbone = palm.backbone.BERT.from_config(tiny_config, phase="predict")
        reader.load_data(str(path), 2)
        reader.register_with(backbone)
        trainer = palm.Trainer(name, device="cpu")
        trainer.build_predict_forward(backbone, head)
        trainer.fit_reader(reader, phase="predict")
        expected = trainer.predict(print_steps=0)
        predictor = palm.Predictor.load(palm.export(trainer, tmp_path / name), device="cpu")
        got = predictor.predict(inputs, batch_size=2)
        if name == "match":
            np.testing.assert_array_equal(probs(got), probs(expected))
        else:  # windows of 24 tokens over a longer context: several features per question
            assert len(reader.features) > len(inputs)
            assert got == [expected["q1"], expected["q2"]] and all(got)
            assert predictor.predict(str(path), batch_size=2) == expected


def test_bad_bundles_are_refused_by_name(tmp_path, single):
    path = palm.export(single.cls, tmp_path / "bundle")

    def variant(name, edit):
        copy = str(tmp_path / name)
        shutil.copytree(path, copy)
        edit(copy)
        return copy

    def newer(d):
        spec = json.load(open(os.path.join(d, "bundle.json")))
        spec.update(format_version=bundle.FORMAT_VERSION + 1, torchpalm_version="9.0.0")
        json.dump(spec, open(os.path.join(d, "bundle.json"), "w"))

    with pytest.raises(ValueError, match=r"format version 2 was written by torchpalm 9\.0\.0.*reads format versions "
                                         r"up to 1"):
        palm.Predictor.load(variant("newer", newer))
    with pytest.raises(FileNotFoundError, match=r"missing reader\.cls/vocab\.txt"):
        palm.Predictor.load(variant("novocab", lambda d: os.remove(os.path.join(d, "reader.cls", "vocab.txt"))),
                            _unfinished=True)  # past the completeness marker, which catches it first:
    with pytest.raises(ValueError, match=r"incomplete inference bundle.*reader\.cls/vocab\.txt"):
        palm.Predictor.load(tmp_path / "novocab")
    with pytest.raises(FileNotFoundError, match="no bundle.json"):
        palm.Predictor.load(variant("nospec", lambda d: os.remove(os.path.join(d, "bundle.json"))))

    def unknown_head(d):
        spec = json.load(open(os.path.join(d, "bundle.json")))
        spec["tasks"]["cls"]["head"]["class"] = "os.system"
        json.dump(spec, open(os.path.join(d, "bundle.json"), "w"))

    with pytest.raises(ValueError, match="unknown head class 'os.system'"):
        palm.Predictor.load(variant("unknown", unknown_head), _unfinished=True)


def run_in_threads(fn, inputs: list) -> list:
    """fn(x) for every x, each in its own thread, all started together; exceptions are re-raised."""
    results, errors = [None] * len(inputs), []
    barrier = threading.Barrier(len(inputs))

    def run(i):
        try:
            barrier.wait()
            results[i] = fn(inputs[i])
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_predictor_is_safe_from_eight_threads(tmp_path, multi):
    predictor = palm.Predictor.load(palm.export(multi.mh, tmp_path / "bundle"), device="cpu")
    # different inputs per thread, of different lengths and counts
    inputs = [[" ".join(s) for s in sentences(3 + i, seed=100 + i)] for i in range(8)]
    sequential = [predictor.predict(x, batch_size=2) for x in inputs]
    for _ in range(3):
        concurrent = run_in_threads(lambda x: predictor.predict(x, batch_size=2), inputs)
        for seq, conc in zip(sequential, concurrent):
            np.testing.assert_array_equal(probs(conc["cls"]), probs(seq["cls"]))
            assert conc["tag"] == seq["tag"]


def test_trainer_predict_from_four_threads_returns_every_result(single):
    sequential = single.cls.predict(print_steps=0)
    assert len(sequential) == len(single.test_sents)
    for _ in range(3):
        results = run_in_threads(lambda _: single.cls.predict(print_steps=0), [None] * 4)
        for got in results:
            np.testing.assert_array_equal(probs(got), probs(sequential))


def test_onnx_export_of_a_backbone_with_two_heads_matches_pytorch(tmp_path, multi):
    pytest.importorskip("onnxscript")  # torch.onnx.export(dynamo=True) needs it; the `onnx` extra installs it
    ort = pytest.importorskip("onnxruntime")
    path = palm.export(multi.mh, tmp_path / "bundle", onnx=True)
    files = json.load(open(os.path.join(path, "complete.json")))["files"]
    assert "model.onnx" in files and "model.onnx.data" not in files  # one self-contained file
    predictor = palm.Predictor.load(path, device="cpu")
    session = ort.InferenceSession(os.path.join(path, "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    assert names == ["token_ids", "position_ids", "segment_ids", "input_mask", "word_starts", "seq_lens"]
    assert [o.name for o in session.get_outputs()] == ["tag", "cls"]
    # two batch sizes and lengths, padded batches (the mask matters), none of them the traced sample's
    for n, seed in ((3, 7), (6, 8)):
        sents = [" ".join(s) for s in sentences(n, seed)]
        sents[0] = " ".join([sents[0]] * 3)
        tag_reader = predictor.reader_for("tag", sents, n)
        batch = next(iter(tag_reader))
        feeds = {k: batch[k].numpy() for k in names}
        assert batch["token_ids"].shape[0] == n and batch["input_mask"].min() == 0
        with torch.no_grad():
            features = predictor.backbone(batch)
            want = [predictor.heads[t].export_output(features, batch).numpy() for t in ("tag", "cls")]
        got = session.run(["tag", "cls"], feeds)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(got[1].argmax(-1), [r["label"] for r in predictor.predict(sents, task="cls")])


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoints_bundles_and_conversions_follow_the_umask(tmp_path, single, umask):
    """Written through a private temporary folder (mkdtemp: 0700) and safetensors (0600), they used to be readable
    by their owner alone; every file and folder now has the mode the umask gives ordinary files."""
    from torchpalm.reader import cache

    previous = os.umask(umask)
    try:
        single.cls.save(str(tmp_path / "ckpt.step6"))
        palm.export(single.cls, tmp_path / "bundle")
        palm.convert.to_hf(str(tmp_path / "ckpt.step6"), str(tmp_path / "hf"), tokenizer_dir=str(tmp_path / "bundle" / "reader.cls"))
        assert cache.save_entry(str(tmp_path / "cache" / "entry.npz"), "k", [{"token_ids": np.arange(3)}])
    finally:
        os.umask(previous)
    checked = 0
    for name in ("ckpt.step6", "bundle", "hf", "cache"):
        for root, _, files in os.walk(tmp_path / name):
            assert oct(os.stat(root).st_mode & 0o777) == oct(0o777 & ~umask), root
            for f in files:
                assert oct(os.stat(os.path.join(root, f)).st_mode & 0o777) == oct(0o666 & ~umask), f
                checked += 1
    assert checked >= 10
