"""The training loop's wiring, checked through the public Trainer API on a tiny BERT: the optimizer's parameter
groups (weight decay, a head's `no_weight_decay()`, `lr_scale`) and the update they really produce, decoupled
weight decay, EMA, gradient clipping, SequenceLabelReader's exact-fit truncation, and the consistency and order of
predictions.

Every expectation is derived independently of the code under test (module types, the AdamW formula, hand-computed
EMA), so a loop that drops one of these features fails here even when the loss still goes down.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchpalm as palm
from torchpalm.tokenizer import WordPieceTokenizer

TASK = "wired"
TAGS = {"B-PER": 0, "I-PER": 1, "O": 2}
CRF_LR = 5.0
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # palm.optimizer.Adam's documented defaults


def checkpoint_key(part: str, name: str, ema: bool = False, task: str = TASK) -> str:
    """The key of a tensor in `model.safetensors`: part is 'backbone' or 'head', name its name in that module.

    The one place that knows the checkpoint naming (`backbone.<name>`, `<task>.<name>`, and for the EMA weights
    `ema.` before those), so a renaming breaks here only.
    """
    key = f"backbone.{name}" if part == "backbone" else f"{task}.{name}"
    return f"ema.{key}" if ema else key


def no_dropout(config: dict) -> dict:
    return dict(config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# ------------------------------------------------------------------------------------------ data


def write_tagging(tmp_path, n: int = 40) -> str:
    """CoNLL columns: person names tagged B-PER/I-PER among O words."""
    rng = np.random.default_rng(0)
    others = ["went", "to", "the", "market", "today", "with", "a", "friend", "saw", "film"]
    people = [["john", "smith"], ["mary"], ["anna", "lee"]]
    blocks = []
    for _ in range(n):
        words = [str(w) for w in rng.choice(others, size=int(rng.integers(2, 6)))]
        tags = ["O"] * len(words)
        person = people[int(rng.integers(0, len(people)))]
        k = int(rng.integers(0, len(words) + 1))
        words[k:k] = person
        tags[k:k] = ["B-PER"] + ["I-PER"] * (len(person) - 1)
        blocks.append("".join(f"{w} {t}\n" for w, t in zip(words, tags, strict=True)))
    path = tmp_path / "tagging.txt"
    path.write_text("\n".join(blocks), encoding="utf-8")
    return str(path)


def write_pairs(tmp_path, n: int, name: str, kind: str) -> str:
    """Classify (`label, text_a`) or Match (`text_a, text_b, label`) rows; label 1 iff "good" appears."""
    rng = np.random.default_rng(1 if name.startswith("test") else 0)
    words = ["bad", "movie", "plot", "actor", "film", "story", "awful", "scene"]
    lines = ["label\ttext_a" if kind == "classify" else "text_a\ttext_b\tlabel"]
    for i in range(n):
        sent = [str(w) for w in rng.choice(words, size=int(rng.integers(2, 6)))]
        label = i % 2
        if label:
            sent.insert(int(rng.integers(0, len(sent) + 1)), "good")
        if kind == "classify":
            lines.append(f"{label}\t{' '.join(sent)}")
        else:
            lines.append(f"{' '.join(sent[:2])}\t{' '.join(sent[2:]) or 'film'}\t{label}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------ set-ups


def tagging_setup(tmp_path, vocab, config, *, weight_decay=0.01, lr=1e-3, seed=0, **trainer_kw):
    """SequenceLabel + CRF (transitions at CRF_LR x the rate); 10 steps per epoch; the schedule is linear decay
    from step 0 (no warmup), so the rate of step 0 differs from that of step 1."""
    torch.manual_seed(seed)
    reader = palm.reader.SequenceLabelReader(vocab, 32, TAGS, seed=seed, do_lower_case=True)
    reader.load_data(write_tagging(tmp_path), 4, num_epochs=1, shuffle_train=False)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    head = palm.head.SequenceLabel(len(TAGS), config["hidden_size"], dropout_prob=0.0, crf_lr_multiplier=CRF_LR)
    trainer = palm.Trainer(TASK, device="cpu", **trainer_kw)
    loss = trainer.build_forward(backbone, head)
    adam = palm.optimizer.Adam(loss, lr, palm.lr_sched.TriangularSchedualer(0, reader.num_examples // 4))
    trainer.build_backward(adam, weight_decay=weight_decay)
    trainer.fit_reader(reader)
    return SimpleNamespace(trainer=trainer, backbone=backbone, head=head, adam=adam)


def pair_setup(tmp_path, vocab, config, kind="classify", *, seed=0, lr=3e-3, use_ema=False, ema_decay=None,
               init_range=0.02, **trainer_kw):
    torch.manual_seed(seed)
    reader_cls = palm.reader.ClassifyReader if kind == "classify" else palm.reader.MatchReader
    reader = reader_cls(vocab, 32, seed=seed, do_lower_case=True)
    reader.load_data(write_pairs(tmp_path, 32, "train.tsv", kind), 8, num_epochs=2)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    head_cls = palm.head.Classify if kind == "classify" else palm.head.Match
    head = head_cls(2, config["hidden_size"], 0.0, param_initializer_range=init_range)
    trainer = palm.Trainer(TASK, device="cpu", **trainer_kw)
    loss = trainer.build_forward(backbone, head)
    adam = palm.optimizer.Adam(loss, lr, palm.lr_sched.TriangularSchedualer(0, 8))
    trainer.build_backward(adam, weight_decay=0.01, use_ema=use_ema, ema_decay=ema_decay)
    trainer.fit_reader(reader)
    return SimpleNamespace(trainer=trainer, backbone=backbone, head=head, adam=adam, kind=kind)


def predict_modules(config, kind):
    backbone = palm.backbone.BERT.from_config(config, phase="predict")
    head_cls = palm.head.Classify if kind == "classify" else palm.head.Match
    return backbone, head_cls(2, config["hidden_size"], phase="predict")


def build_predict(trainer, config, kind):
    """Builds the predict modules of a pair task on `trainer`; returns the predict backbone."""
    backbone, head = predict_modules(config, kind)
    trainer.build_predict_forward(backbone, head)
    return backbone


def pair_predict(trainer, backbone, vocab, path, kind, batch_size=5):
    """Fits a fresh predict reader over `path` (registered with the predict `backbone`); returns the results."""
    reader_cls = palm.reader.ClassifyReader if kind == "classify" else palm.reader.MatchReader
    reader = reader_cls(vocab, 32, do_lower_case=True, phase="predict")
    reader.load_data(path, batch_size)
    reader.register_with(backbone)
    trainer.fit_reader(reader, phase="predict")
    return trainer.predict()


# ------------------------------------------------------------------------------------------ helpers


def expected_groups(backbone: nn.Module, head) -> dict[int, tuple[bool, float]]:
    """{id(param): (decayed?, lr_scale)} from module types and the head's own CRF, not from the optimizer code:
    biases, LayerNorm parameters and the CRF transitions are not decayed; the transitions learn at CRF_LR x."""
    crf = {id(p) for p in (head.crf.start_transitions, head.crf.end_transitions, head.crf.transitions)}
    # the head declares the same set (the trainer is expected to honour these declarations)
    assert {id(head.get_parameter(n)) for n in head.no_weight_decay()} == crf
    assert {id(head.get_parameter(n)): s for n, s in head.param_lr_scales().items()} == dict.fromkeys(crf, CRF_LR)
    out = {}
    for module in (backbone, head):
        for mod in module.modules():
            for pname, p in mod.named_parameters(recurse=False):
                decayed = not (isinstance(mod, nn.LayerNorm) or pname == "bias" or id(p) in crf)
                assert p.ndim == 2 or not decayed, pname  # every decayed tensor is a 2-D weight
                out[id(p)] = (decayed, CRF_LR if id(p) in crf else 1.0)
    return out


def param_names(backbone, head) -> dict[int, str]:
    names = {id(p): f"backbone.{n}" for n, p in backbone.named_parameters()}
    names.update({id(p): f"head.{n}" for n, p in head.named_parameters()})
    return names


def snapshot(*modules) -> dict[int, torch.Tensor]:
    return {id(p): p.detach().clone() for m in modules for p in m.parameters()}


def record_grads_at_step(trainer) -> list[dict[int, torch.Tensor | None]]:
    """Wraps the torch optimizer's `step` so that each call records every model parameter's gradient (id -> grad
    clone, None when absent) at the moment the update is applied (after any clipping)."""
    opt = trainer.torch_optimizer
    original = opt.step
    records: list[dict[int, torch.Tensor | None]] = []

    def step(*args, **kwargs):
        records.append({id(p): None if p.grad is None else p.grad.detach().clone()
                        for p in trainer.model.parameters()})
        return original(*args, **kwargs)

    opt.step = step
    return records


def global_norm(grads: dict) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads.values() if g is not None])))


# ------------------------------------------------------------------------------------------ 1. parameter groups


def test_param_groups_and_the_first_update_they_produce(tmp_path, uncased_vocab, tiny_config):
    s = tagging_setup(tmp_path, uncased_vocab, no_dropout(tiny_config), weight_decay=0.01)
    expected, names = expected_groups(s.backbone, s.head), param_names(s.backbone, s.head)
    groups = s.trainer.torch_optimizer.param_groups
    # every model parameter is in exactly one group, and the model is exactly backbone + head
    held = [id(p) for g in groups for p in g["params"]]
    assert len(held) == len(set(held)), "a parameter is in two optimizer groups"
    assert {id(p) for p in s.trainer.model.parameters()} == set(expected)
    assert set(held) == set(expected), sorted(names[i] for i in set(expected) ^ set(held))
    for g in groups:
        for p in g["params"]:
            decayed, scale = expected[id(p)]
            assert g["weight_decay"] == (0.01 if decayed else 0.0), (names[id(p)], g["weight_decay"])
            assert g.get("lr_scale", 1.0) == scale, (names[id(p)], g.get("lr_scale"))
    crf_group = next(g for g in groups if any(p is s.head.crf.transitions for p in g["params"]))
    assert crf_group["weight_decay"] == 0.0 and crf_group["lr_scale"] == CRF_LR

    # The update really applied at step 0 (AdamW's first step, by hand, in float64):
    #   p1 = p0 (1 - lr_t s wd) - lr_t s g / (|g| + eps),  lr_t = adam.lr_at(0), s = the lr scale.
    lr0 = s.adam.lr_at(0)
    assert lr0 > 0 and abs(s.adam.lr_at(1) - lr0) > 0.05 * lr0  # a rate taken from the wrong step shows
    before = snapshot(s.backbone, s.head)
    grads = record_grads_at_step(s.trainer)
    s.trainer.train_one_step(s.trainer.get_one_batch())
    assert len(grads) == 1
    worst = {}
    for m in (s.backbone, s.head):
        for p in m.parameters():
            p0, g, (decayed, scale) = before[id(p)].double(), grads[0][id(p)], expected[id(p)]
            if g is None:  # unused (the pooler): AdamW leaves it alone
                want = p0
            else:
                lr = lr0 * scale
                g = g.double()
                want = p0 * (1 - lr * (0.01 if decayed else 0.0)) - lr * g / (g.abs() + EPS)
            # within 2 fp32 ulps (+1e-8): a wrong rate is off by >= 1e-4, a missing decay by 1e-5 |p|
            err = ((p.detach().double() - want).abs() / (1e-8 + 2.4e-7 * want.abs())).max().item()
            worst[names[id(p)]] = err
    bad = {n: e for n, e in worst.items() if e > 1}
    assert not bad, bad
    # spelled out for the CRF: where the gradient is not tiny, the first step moves each transition by lr0 * 5
    g = grads[0][id(s.head.crf.transitions)]
    moved = (s.head.crf.transitions.detach() - before[id(s.head.crf.transitions)]).abs()[g.abs() > 1e-5]
    assert moved.numel() > 0
    torch.testing.assert_close(moved, torch.full_like(moved, lr0 * CRF_LR), rtol=1e-3, atol=0)


# ------------------------------------------------------------------------------------------ 2. weight decay


def test_decoupled_weight_decay_is_applied_to_decayed_weights_only(tmp_path, uncased_vocab, tiny_config):
    config = no_dropout(tiny_config)
    runs = {}
    for wd in (0.0, 0.5):
        s = tagging_setup(tmp_path, uncased_vocab, config, weight_decay=wd)
        before = snapshot(s.backbone, s.head)  # the same init in both runs (same seed)
        grads = record_grads_at_step(s.trainer)
        s.trainer.train_one_step(s.trainer.get_one_batch())
        runs[wd] = s
    plain, decayed_run = runs[0.0], runs[0.5]
    expected = expected_groups(decayed_run.backbone, decayed_run.head)
    names = param_names(decayed_run.backbone, decayed_run.head)
    lr0 = decayed_run.adam.lr_at(0)
    pairs = [*zip(plain.backbone.parameters(), decayed_run.backbone.parameters(), strict=True),
             *zip(plain.head.parameters(), decayed_run.head.parameters(), strict=True)]
    n_decayed = 0
    for p_plain, p_wd in pairs:
        name = names[id(p_wd)]
        decayed, scale = expected[id(p_wd)]
        p0 = before[id(p_wd)]
        if decayed and grads[0][id(p_wd)] is not None:  # AdamW skips a parameter without gradient (the pooler)
            # AdamW: p <- p (1 - lr wd) before the Adam step, which is the same in both runs
            n_decayed += 1
            diff = p_wd.detach().double() - p_plain.detach().double()
            want = -lr0 * scale * 0.5 * p0.double()  # 5e-4 |p0|; fp32 rounding of the two runs: < 2 ulps of p0
            err = ((diff - want).abs() / (1e-9 + 2.4e-7 * p0.double().abs())).max().item()
            assert err <= 1, (name, err)
        else:
            assert torch.equal(p_wd, p_plain), f"{name} is decayed (it must not be)"
    assert n_decayed >= 10 and not expected[id(decayed_run.head.crf.transitions)][0]


# ------------------------------------------------------------------------------------------ 3. EMA


def test_ema_weights_are_saved_and_used_for_prediction(tmp_path, uncased_vocab, tiny_config):
    config = no_dropout(tiny_config)
    s = pair_setup(tmp_path, uncased_vocab, config, use_ema=True, ema_decay=0.9)
    modules = {"backbone": s.backbone, "head": s.head}

    def weights():
        return {(part, n): v.detach().double().clone() for part, m in modules.items()
                for n, v in m.state_dict().items() if v.is_floating_point()}

    ema = weights()
    for _ in range(3):
        s.trainer.train_one_step(s.trainer.get_one_batch())
        live = weights()
        ema = {k: 0.9 * ema[k] + 0.1 * live[k] for k in ema}
    saved = load_file(os.path.join(s.trainer.save(str(tmp_path / "ckpt")), "model.safetensors"))
    moved = 0.0
    for (part, name), want in ema.items():
        got = saved[checkpoint_key(part, name, ema=True)].double()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=f"EMA of {part}.{name}")
        # the plain keys hold the live weights
        torch.testing.assert_close(saved[checkpoint_key(part, name)].double(), live[(part, name)], rtol=0, atol=0)
        moved = max(moved, (want - live[(part, name)]).abs().max().item())
    assert moved > 1e-3  # EMA and live weights differ: the comparison above can tell them apart

    # prediction runs on the EMA weights, and the live weights come back afterwards
    test_file = write_pairs(tmp_path, 10, "test.tsv", "classify")
    pred_backbone = build_predict(s.trainer, config, "classify")
    got = np.array([r["logits"] for r in pair_predict(s.trainer, pred_backbone, uncased_vocab, test_file, "classify")])
    assert weights().keys() == live.keys()
    for k, v in weights().items():
        assert torch.equal(v, live[k]), f"{k} not restored after predict"

    def logits_with(state_of):
        ref = palm.Trainer("ref", device="cpu")
        backbone, head = predict_modules(config, "classify")
        for part, m in (("backbone", backbone), ("head", head)):
            params = {n for n, v in m.state_dict().items() if v.is_floating_point()}
            m.load_state_dict({n: state_of(part, n).float() for n in params}, strict=False)
        ref.build_predict_forward(backbone, head)
        return np.array([r["logits"] for r in pair_predict(ref, backbone, uncased_vocab, test_file, "classify")])

    with_ema = logits_with(lambda part, n: saved[checkpoint_key(part, n, ema=True)])
    with_live = logits_with(lambda part, n: live[(part, n)])
    np.testing.assert_allclose(got, with_ema, rtol=0, atol=1e-5)
    assert np.abs(with_live - with_ema).max() > 1e-4  # the live weights would have given other logits


# ------------------------------------------------------------------------------------------ 4. gradient clipping


def test_grad_clip_bounds_the_global_norm_the_optimizer_sees(tmp_path, uncased_vocab, tiny_config):
    config = no_dropout(tiny_config)
    recorded = {}
    for clip in (None, 0.01):
        s = tagging_setup(tmp_path, uncased_vocab, config, grad_clip=clip)
        grads = record_grads_at_step(s.trainer)
        s.trainer.train_one_step(s.trainer.get_one_batch())
        recorded[clip] = grads[0]
    raw, clipped = recorded[None], recorded[0.01]
    raw_norm = global_norm(raw)
    assert raw_norm > 0.01 * 100, raw_norm  # the same first batch, unclipped: clipping has something to do
    clipped_norm = global_norm(clipped)
    assert clipped_norm <= 0.01 + 1e-6, f"the optimizer saw gradients of global norm {clipped_norm}"
    # global-norm clipping rescales every gradient by one factor (not per tensor, not by value)
    factor = 0.01 / (raw_norm + 1e-6)
    raw_grads = [g for g in raw.values() if g is not None]
    clipped_grads = [g for g in clipped.values() if g is not None]
    assert len(raw_grads) == len(clipped_grads)
    for a, b in zip(raw_grads, clipped_grads, strict=True):
        torch.testing.assert_close(b, a * factor, rtol=1e-4, atol=1e-10)


def test_loss_weight_scales_the_gradients_but_not_the_reported_loss(tmp_path, uncased_vocab, tiny_config):
    config = no_dropout(tiny_config)
    recorded, losses = {}, {}
    for weight in (1.0, 0.25):
        s = tagging_setup(tmp_path, uncased_vocab, config, loss_weight=weight)
        grads = record_grads_at_step(s.trainer)
        losses[weight] = float(s.trainer.train_one_step(s.trainer.get_one_batch())[f"{TASK}.loss"])
        recorded[weight] = grads[0]
    assert losses[0.25] == pytest.approx(losses[1.0], rel=1e-6)  # the logged loss is the task's own
    full = [g for g in recorded[1.0].values() if g is not None]
    scaled = [g for g in recorded[0.25].values() if g is not None]
    assert len(full) == len(scaled) > 0
    for a, b in zip(full, scaled, strict=True):
        torch.testing.assert_close(b, 0.25 * a, rtol=1e-4, atol=1e-10)
    with pytest.raises(ValueError, match="loss_weight must be > 0"):
        palm.Trainer("w", loss_weight=0)


# ------------------------------------------------------------------------------------------ 5. truncation


def test_sequence_label_exact_fit_keeps_every_word(tmp_path, uncased_vocab, tiny_config):
    tok = WordPieceTokenizer(uncased_vocab, do_lower_case=True)  # the reader's tokenizer settings
    words = ["hello", "tokenization", "world", "gastroenterology"]
    pieces = [tok.encode(w) for w in words]
    assert [len(p) for p in pieces[:3]] == [1, 2, 1] and len(pieces[3]) >= 2, pieces
    budget = sum(len(p) for p in pieces)  # the last (multi-piece) word ends exactly at the budget
    max_len = budget + 2
    sentences = [words,                               # exact fit: all 4 words kept
                 ["the", *words],                     # one sub-token more: the last word is cut
                 words[:3] + ["a"] * len(pieces[3])]  # exact fit ending with a one-piece word
    assert len(tok.encode("the")) == len(tok.encode("a")) == 1
    text = "\n".join("".join(f"{w} O\n" for w in sent) for sent in sentences)
    path = tmp_path / "cut.txt"
    path.write_text(text, encoding="utf-8")

    reader = palm.reader.SequenceLabelReader(uncased_vocab, max_len, TAGS, seed=0, do_lower_case=True)
    reader.load_data(str(path), 3, num_epochs=1, shuffle_train=False)
    backbone = palm.backbone.BERT.from_config(tiny_config, phase="predict")
    reader.register_with(backbone)
    batch = next(iter(reader))
    flat = [i for p in pieces for i in p]
    n_tok = batch["input_mask"].sum(1).tolist()
    assert n_tok == [max_len, 1 + 1 + 4 + 1, max_len]
    assert batch["token_ids"][0, :max_len].tolist() == [tok.cls_id, *flat, tok.sep_id]
    assert batch["seq_lens"].tolist() == [4, 4, 3 + len(pieces[3])]
    assert batch["word_starts"][0, :4].tolist() == [1, 2, 4, 5]
    assert batch["label_ids"][0, :4].tolist() == [TAGS["O"]] * 4
    assert batch["token_ids"][1, : n_tok[1]].tolist() == [tok.cls_id, *tok.encode("the"), *flat[:4], tok.sep_id]
    counts = reader.get_epoch_outputs()
    assert counts["word_counts"] == [4, 5, 3 + len(pieces[3])]
    assert counts["kept_word_counts"] == [4, 4, 3 + len(pieces[3])]

    # prediction still gives one tag per INPUT word; the cut word gets the no-entity tag
    pred_reader = palm.reader.SequenceLabelReader(uncased_vocab, max_len, TAGS, do_lower_case=True, phase="predict")
    pred_reader.load_data(str(path), 2)
    pred_reader.register_with(backbone)
    trainer = palm.Trainer(TASK, device="cpu")
    trainer.build_predict_forward(backbone, palm.head.SequenceLabel(len(TAGS), tiny_config["hidden_size"],
                                                                    phase="predict"))
    trainer.fit_reader(pred_reader, phase="predict")
    results = trainer.predict()
    assert [len(r) for r in results] == [len(sent) for sent in sentences]
    assert results[1][-1] == TAGS["O"]


# ------------------------------------------------------------------------------------------ 6. predictions


@pytest.mark.parametrize("kind", ["classify", "match"])
def test_predictions_are_consistent_and_in_input_order(tmp_path, uncased_vocab, tiny_config, kind):
    # a wider init than BERT's 0.02 so that the tiny model's logits differ clearly between inputs
    config = dict(tiny_config, initializer_range=0.2)
    s = pair_setup(tmp_path, uncased_vocab, config, kind, init_range=0.2)
    for _ in range(2):
        s.trainer.train_one_step(s.trainer.get_one_batch())
    pred_backbone = build_predict(s.trainer, config, kind)
    test_file = write_pairs(tmp_path, 11, "test.tsv", kind)
    # Two steps do not teach the tiny model the task, so its labels would all be alike. This is a consistency
    # test, not an accuracy one: shift the class-1 bias so that the rows split between the two classes.
    margins = sorted(r["logits"][1] - r["logits"][0]
                     for r in pair_predict(s.trainer, pred_backbone, uncased_vocab, test_file, kind))
    assert margins[6] - margins[5] > 1e-4  # a clean split: 6 rows of class 0, 5 of class 1
    with torch.no_grad():
        s.head.classifier.bias[1] -= (margins[5] + margins[6]) / 2
    results = pair_predict(s.trainer, pred_backbone, uncased_vocab, test_file, kind, batch_size=4)
    assert [r["index"] for r in results] == list(range(11))
    logits = np.array([r["logits"] for r in results], dtype=np.float64)
    probs = np.array([r["probs"] for r in results], dtype=np.float64)
    assert [r["label"] for r in results] == logits.argmax(1).tolist()
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, softmax / softmax.sum(1, keepdims=True), rtol=0, atol=1e-5)
    assert sorted(r["label"] for r in results) == [0] * 6 + [1] * 5  # so the label check means something
    # every row's logits differ from every other's by far more than the tolerance below: the order is visible
    row_gaps = np.abs(logits[:, None] - logits[None]).max(-1) + np.eye(len(logits))
    assert row_gaps.min() > 1e-3, row_gaps.min()

    # result i belongs to input row i: the same rows reversed, one per batch, give the reversed results
    lines = open(test_file, encoding="utf-8").read().splitlines()
    reversed_file = tmp_path / "reversed.tsv"
    reversed_file.write_text("\n".join([lines[0], *lines[:0:-1]]) + "\n", encoding="utf-8")
    again = pair_predict(s.trainer, pred_backbone, uncased_vocab, str(reversed_file), kind, batch_size=1)
    np.testing.assert_allclose([r["logits"] for r in again][::-1], logits, rtol=0, atol=1e-5)
