"""Multi-task prediction runs the backbone once for tasks whose batches give it the same inputs, and never for
tasks whose batches only look alike: two readers of the same file that tokenise it differently (here one keeps
the case, so an uncased vocabulary turns capitalised words into [UNK]) give batches of the same shapes and
different ids. Each task must then get the features of its own ids, in `MultiHeadTrainer.predict` and in a
bundle's `Predictor.predict`, exactly as when it is predicted alone."""

from __future__ import annotations

import numpy as np
import torch
from toy_data import sentences

import torchpalm as palm

TEXTS = [" ".join(w.capitalize() for w in words) for _, words in sentences(12, seed=3)]


def write_file(path) -> str:
    path.write_text("label\ttext_a\n" + "".join(f"{i % 2}\t{t}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    return str(path)


def reader(vocab, lower: bool, **kw):
    # the same file, encoded two ways: lower-cased (real word ids) or not ([UNK] for every capitalised word)
    return palm.reader.ClassifyReader(vocab, 32, do_lower_case=lower, **kw)


def test_the_two_readers_give_batches_of_the_same_shapes_and_other_ids(tmp_path, uncased_vocab):
    path = write_file(tmp_path / "caps.tsv")
    batches = []
    for lower in (True, False):
        r = reader(uncased_vocab, lower, phase="predict")
        r.load_data(path, 5)
        batches.append(next(iter(r)))
    assert batches[0]["token_ids"].shape == batches[1]["token_ids"].shape
    assert not torch.equal(batches[0]["token_ids"], batches[1]["token_ids"])


def test_multi_head_predict_shares_no_pass_between_look_alike_batches(tmp_path, uncased_vocab, tiny_config):
    torch.manual_seed(0)
    path = write_file(tmp_path / "caps.tsv")
    pb = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    trainers, readers = [], []
    for name, lower in (("lower", True), ("cased", False)):
        t = palm.Trainer(name, device="cpu")
        r = reader(uncased_vocab, lower, phase="predict")
        r.load_data(path, 5)
        r.register_with(pb)
        t.build_predict_forward(pb, palm.head.Classify(2, 32, phase="predict"))
        trainers.append(t)
        readers.append(r)
    mh = palm.MultiHeadTrainer(trainers)
    mh.build_predict_forward()
    mh.merge_inference_readers(readers)
    joint = mh.predict()
    assert mh.backbone_passes == 2 * 3  # every batch of each task: ceil(12 / 5) = 3 batches each, not shared
    for t, lower in zip(trainers, (True, False)):  # equal to each task predicted on its own
        alone_reader = reader(uncased_vocab, lower, phase="predict")
        alone_reader.load_data(path, 5)
        alone_reader.register_with(pb)
        t.fit_reader(alone_reader, phase="predict")
        alone = t.predict()
        np.testing.assert_allclose([x["logits"] for x in joint[t.name]], [x["logits"] for x in alone], atol=1e-6)
    assert not np.allclose([x["logits"] for x in joint["lower"]], [x["logits"] for x in joint["cased"]])


def test_a_bundle_shares_no_pass_between_look_alike_batches(tmp_path, uncased_vocab, tiny_config):
    torch.manual_seed(0)
    path = write_file(tmp_path / "caps.tsv")
    backbone = palm.backbone.BERT.from_config(tiny_config)
    trainers, readers = [], []
    for name, lower in (("lower", True), ("cased", False)):
        r = reader(uncased_vocab, lower, seed=0)
        r.load_data(path, 4, num_epochs=None)
        r.register_with(backbone)
        t = palm.Trainer(name, device="cpu")
        t.build_forward(backbone, palm.head.Classify(2, 32))
        trainers.append(t)
        readers.append(r)
    mh = palm.MultiHeadTrainer(trainers)
    loss = mh.build_forward()
    mh.build_backward(palm.optimizer.Adam(loss, 1e-3))
    mh.fit_readers_with_mixratio(readers, "lower", 1)
    palm.export(mh, str(tmp_path / "bundle"))

    predictor = palm.Predictor.load(str(tmp_path / "bundle"))
    joint = predictor.predict(TEXTS, batch_size=5)
    for name in ("lower", "cased"):
        alone = predictor.predict(TEXTS, task=name, batch_size=5)
        np.testing.assert_allclose([x["logits"] for x in joint[name]], [x["logits"] for x in alone], atol=1e-6)
    assert not np.allclose([x["logits"] for x in joint["lower"]], [x["logits"] for x in joint["cased"]])
