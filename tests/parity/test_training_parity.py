"""A whole training step equals HuggingFace's, for every head, over 24 steps.

Each test starts a torchpalm Trainer and the matching `transformers` model from the same weights (a tiny random
BERT saved with `save_pretrained` and read back by `trainer.load_pretrain`, the head's weights copied across),
feeds both the same batches in the same order (the ones torchpalm's reader yields, turned into HF's inputs), with
dropout off and fp32, and checks every step's loss and all weights at the end within 1e-4. The HF side is the
standard `run_*_no_trainer` recipe: AdamW with weight decay off biases and LayerNorms, a LambdaLR schedule.

Where PALM's semantics differ on purpose, the HF side is given the same rule, stated next to it:
* PALM's default `TriangularSchedualer` decays from step 0 (spec §9.4), not from the end of warmup: checked with a
  LambdaLR of that formula, beside HF's own `get_linear_schedule_with_warmup` for `decay_from_warmup_end=True`;
* MRC masks padding positions out of the start/end softmax (HF's `BertForQuestionAnswering` does not): the HF loss
  is computed from its logits with the same mask;
* the CRF (no HF counterpart): HF's token classifier gives the emissions and the loss is a CRF negative
  log-likelihood written here by the forward algorithm, with the transitions not weight-decayed and learning at
  `crf_lr_multiplier` x the rate, as the head declares.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG, shared

import torchpalm as palm
from torchpalm.convert import torchpalm_to_hf

TOL = 1e-4
BATCH, EPOCHS, LR, WARMUP, WEIGHT_DECAY = 8, 2, 1e-3, 4, 0.01
# BERT's own Adam epsilon. With 1e-8, an element whose first gradient is ~1e-9 (a rare token's embedding) takes a
# full +-lr step whose sign is float noise, so two correct implementations can end 2e-4 apart there.
EPS = 1e-6
CONFIG = {**TINY_CONFIG, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _hf_config(**extra):
    from transformers import BertConfig

    return BertConfig(**CONFIG, **extra)


def _save_hf(model, vocab: str, tmp_path) -> str:
    """The HF model's weights (backbone and head) and the vocabulary, as a user's pretrained directory."""
    out = tmp_path / "hf_model"
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(vocab, out / "vocab.txt")
    return str(out)


def _palm_schedule(n_steps: int, hf_style: bool):
    return palm.lr_sched.TriangularSchedualer(WARMUP, n_steps, decay_from_warmup_end=hf_style)


def _hf_optimizer(model, n_steps: int, hf_style: bool, extra_groups=()):
    """run_glue_no_trainer's AdamW groups and schedule (or PALM's triangular formula, decaying from step 0)."""
    from transformers import get_linear_schedule_with_warmup

    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0},
              *extra_groups]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=EPS)
    if hf_style:
        return opt, get_linear_schedule_with_warmup(opt, WARMUP, n_steps)

    def palm_triangular(t):  # spec §9.4: t/warmup, then 1 - t/N (decay counted from step 0)
        return t / WARMUP if t < WARMUP else 1.0 - min(t, n_steps) / n_steps

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, palm_triangular)


def _hf_inputs(batch):
    return {"input_ids": batch["token_ids"], "token_type_ids": batch["segment_ids"],
            "attention_mask": batch["input_mask"]}


def _train_side_by_side(trainer, batches, hf_model, hf_loss, opt, sched):
    """Trains both sides on `batches`; returns the per-step losses (ours, HF's)."""
    ours, theirs = [], []
    hf_model.initial_state = {n: p.detach().clone() for n, p in hf_model.named_parameters()}
    hf_model.train()
    for batch in batches:
        ours.append(float(trainer.train_one_step(batch)[f"{trainer.name}.loss"]))
        loss = hf_loss(batch)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        theirs.append(loss.item())
    return ours, theirs


def _build(trainer_name, reader, head, hf_dir, n_steps, hf_style, backbone=None):
    """A trainer of `head` on `backbone` (default: BERT of CONFIG; the DeBERTa and ModernBERT parity tests pass
    theirs) over the reader's batches, the HF directory's weights loaded; returns (trainer, batches)."""
    backbone = palm.backbone.BERT.from_config(CONFIG) if backbone is None else backbone
    reader.register_with(backbone)
    trainer = palm.Trainer(trainer_name)
    model = trainer.build_forward(backbone, head)
    trainer.build_backward(palm.optimizer.Adam(model, LR, _palm_schedule(n_steps, hf_style), eps=EPS),
                           weight_decay=WEIGHT_DECAY)
    batches = list(trainer.fit_reader(reader))
    assert len(batches) == n_steps == trainer.num_train_steps
    trainer.load_pretrain(hf_dir)
    return trainer, batches


def _assert_same_training(ours, theirs, trainer, hf_model, head_pairs, prefix="bert.", weight_tol=TOL,
                          noise_only=()):
    """`noise_only`: parameters whose true gradient is zero, so Adam moves them by float noise normalised to
    about lr per step, in a direction that depends on the summation order (the thread count, the packed
    backbone's order): they are only checked to stay within Adam's largest possible step,
    lr (1 - beta1) / sqrt(1 - beta2) = 3.16 lr, per step."""
    assert len(ours) == len(theirs) >= 20
    diffs = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    assert max(diffs) <= TOL, f"per-step loss differences: {diffs}"
    hf_state = dict(hf_model.named_parameters())
    expected = torchpalm_to_hf({n: p for n, p in trainer.model.backbone.named_parameters()}, prefix)
    expected = {n: p for n, p in expected.items() if n in hf_state}  # HF's token/QA models have no pooler
    expected.update({hf_name: trainer.model.heads[trainer.name].get_parameter(ours_name)
                     for ours_name, hf_name in head_pairs})
    assert set(expected) >= {n for n in hf_state if n.startswith(prefix)}  # every backbone weight compared
    for n in noise_only:
        bound = 3.17 * LR * len(ours)
        assert (expected.pop(n) - hf_model.initial_state[n]).abs().max().item() <= bound, n
        assert (hf_state[n] - hf_model.initial_state[n]).abs().max().item() <= bound, n
    worst = max(((expected[n] - hf_state[n]).abs().max().item(), n) for n in expected)
    assert worst[0] <= weight_tol, worst
    # and each tensor's change over training agrees to 1% (a rule applied to a few parameters, such as weight decay
    # on the LayerNorms, shows here even where it is too small for the absolute tolerance)
    for n, p in expected.items():
        change = hf_state[n] - hf_model.initial_state[n]
        # (+TOL: some parameters have no true gradient and move by float noise only: the key biases, which softmax
        # ignores, and for MRC the last LayerNorm bias, which shifts every position's logit alike)
        assert n in noise_only or ((p - hf_model.initial_state[n]) - change).norm() <= 1e-2 * change.norm() + TOL, n
    moved = max(c.abs().max().item() for c in (hf_state[n] - hf_model.initial_state[n] for n in expected))
    assert moved > 30 * TOL  # the steps really moved the weights (Adam moves each by <= ~lr per step)


def _copy_head(head, hf_model, pairs):
    with torch.no_grad():
        for ours_name, hf_name in pairs:
            head.get_parameter(ours_name).copy_(hf_model.get_parameter(hf_name))


@pytest.mark.parametrize("hf_style", [True, False], ids=["hf_linear_schedule", "palm_triangular_schedule"])
def test_classify_trains_like_bert_for_sequence_classification(tmp_path, uncased_vocab, hf_style):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    hf = BertForSequenceClassification(_hf_config(num_labels=2))
    hf_dir = _save_hf(hf, uncased_vocab, tmp_path)
    data = tmp_path / "sst2.tsv"
    data.write_text("".join(open(shared("sst2", "train.tsv"), encoding="utf-8").readlines()[:97]), encoding="utf-8")
    reader = palm.reader.ClassifyReader(uncased_vocab, 64, do_lower_case=True, seed=3)
    reader.load_data(str(data), BATCH, num_epochs=EPOCHS)
    head = palm.head.Classify(2, CONFIG["hidden_size"])
    pairs = [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    _copy_head(head, hf, pairs)
    trainer, batches = _build("sst2", reader, head, hf_dir, 96 // BATCH * EPOCHS, hf_style)
    opt, sched = _hf_optimizer(hf, len(batches), hf_style)
    ours, theirs = _train_side_by_side(
        trainer, batches, hf, lambda b: hf(**_hf_inputs(b), labels=b["label_ids"]).loss, opt, sched)
    _assert_same_training(ours, theirs, trainer, hf, pairs)


def test_pointwise_match_trains_like_bert_for_sequence_classification(tmp_path, uncased_vocab):
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    hf = BertForSequenceClassification(_hf_config(num_labels=2))
    hf_dir = _save_hf(hf, uncased_vocab, tmp_path)
    data = tmp_path / "mrpc.tsv"
    data.write_text("".join(open(shared("mrpc", "train.tsv"), encoding="utf-8-sig").readlines()[:97]),
                    encoding="utf-8")
    reader = palm.reader.MatchReader(uncased_vocab, 96, do_lower_case=True, seed=4)
    reader.load_data(str(data), BATCH, num_epochs=EPOCHS)
    head = palm.head.Match(2, CONFIG["hidden_size"])
    pairs = [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    _copy_head(head, hf, pairs)
    trainer, batches = _build("mrpc", reader, head, hf_dir, 96 // BATCH * EPOCHS, True)
    assert bool((batches[0]["segment_ids"] == 1).any())  # really sentence pairs
    opt, sched = _hf_optimizer(hf, len(batches), True)
    ours, theirs = _train_side_by_side(
        trainer, batches, hf, lambda b: hf(**_hf_inputs(b), labels=b["label_ids"]).loss, opt, sched)
    _assert_same_training(ours, theirs, trainer, hf, pairs)


def _conll_file(tmp_path, n_sentences):
    lines, count = [], 0
    for line in open(shared("conll2003", "train.txt"), encoding="utf-8"):
        if line.startswith("-DOCSTART-"):
            continue
        if not line.strip():
            if lines and lines[-1] != "\n":
                lines.append("\n")
                count += 1
                if count == n_sentences:
                    break
            continue
        lines.append(line)
    path = tmp_path / "conll.txt"
    path.write_text("".join(lines), encoding="utf-8")
    labels = sorted({ln.split()[-1] for ln in lines if ln.strip()})
    return str(path), {t: i for i, t in enumerate(labels)}


TAGGER_PAIRS = [("emission.weight", "classifier.weight"), ("emission.bias", "classifier.bias")]


def _tagging_start(tmp_path, vocab, hf_class, seed):
    """A random HF token classifier saved as a pretrained directory, and a train reader over 96 CoNLL sentences."""
    path, label_map = _conll_file(tmp_path, 96)
    torch.manual_seed(seed)
    hf = hf_class(_hf_config(num_labels=len(label_map)))
    hf_dir = _save_hf(hf, vocab, tmp_path)
    reader = palm.reader.SequenceLabelReader(vocab, 24, label_map, do_lower_case=True, seed=seed + 3)
    reader.load_data(path, BATCH, num_epochs=EPOCHS)
    return hf, reader, label_map, hf_dir


def _token_labels(batch):
    """HF token-classification labels: each word's tag on its first sub-token, -100 everywhere else."""
    labels = torch.full_like(batch["token_ids"], -100)
    words = batch["label_ids"] != -100
    rows = torch.arange(labels.size(0))[:, None].expand_as(words)
    labels[rows[words], batch["word_starts"][words]] = batch["label_ids"][words]
    return labels


def test_softmax_sequence_label_trains_like_bert_for_token_classification(tmp_path, uncased_vocab):
    from transformers import BertForTokenClassification

    hf, reader, label_map, hf_dir = _tagging_start(tmp_path, uncased_vocab, BertForTokenClassification, seed=2)
    head = palm.head.SequenceLabel(len(label_map), CONFIG["hidden_size"], use_crf=False)
    _copy_head(head, hf, TAGGER_PAIRS)
    trainer, batches = _build("conll", reader, head, hf_dir, 96 // BATCH * EPOCHS, True)
    assert any(bool((b["word_starts"][:, 1:] - b["word_starts"][:, :-1] > 1).any()) for b in batches)  # sub-words
    opt, sched = _hf_optimizer(hf, len(batches), True)
    ours, theirs = _train_side_by_side(
        trainer, batches, hf, lambda b: hf(**_hf_inputs(b), labels=_token_labels(b)).loss, opt, sched)
    _assert_same_training(ours, theirs, trainer, hf, TAGGER_PAIRS)


def _crf_nll(emissions, tags, lengths, start, end, trans):
    """Mean over sentences of log Z - score(gold), by the forward algorithm, one sentence at a time."""
    losses = []
    for e, y, n in zip(emissions, tags, lengths.tolist(), strict=True):
        e, y = e[:n], y[:n]
        alpha = start + e[0]
        for t in range(1, n):
            alpha = torch.logsumexp(alpha[:, None] + trans, dim=0) + e[t]
        log_z = torch.logsumexp(alpha + end, dim=0)
        gold = start[y[0]] + e.gather(1, y[:, None]).sum() + trans[y[:-1], y[1:]].sum() + end[y[-1]]
        losses.append(log_z - gold)
    return torch.stack(losses).mean()


def test_crf_sequence_label_trains_like_a_hand_written_crf_on_hf_emissions(tmp_path, uncased_vocab):
    from transformers import BertForTokenClassification

    hf, reader, label_map, hf_dir = _tagging_start(tmp_path, uncased_vocab, BertForTokenClassification, seed=3)
    multiplier = 20.0
    head = palm.head.SequenceLabel(len(label_map), CONFIG["hidden_size"], crf_lr_multiplier=multiplier)
    _copy_head(head, hf, TAGGER_PAIRS)
    crf = {k: torch.nn.Parameter(getattr(head.crf, k).detach().clone())
           for k in ("start_transitions", "end_transitions", "transitions")}
    trainer, batches = _build("conll", reader, head, hf_dir, 96 // BATCH * EPOCHS, True)
    # the transitions: never decayed, and `multiplier` x the scheduled rate
    opt, sched = _hf_optimizer(hf, len(batches), True,
                               [{"params": list(crf.values()), "weight_decay": 0.0, "lr": LR * multiplier}])

    def hf_loss(b):
        logits = hf(**_hf_inputs(b)).logits  # [B, L, C] over sub-tokens
        words = logits.gather(1, b["word_starts"][..., None].expand(-1, -1, logits.size(-1)))
        return _crf_nll(words, b["label_ids"], b["seq_lens"], crf["start_transitions"], crf["end_transitions"],
                        crf["transitions"])

    ours, theirs = _train_side_by_side(trainer, batches, hf, hf_loss, opt, sched)
    # The CRF loss sums over a sentence's words (~25x the gradient of a mean), and so is its float noise: an
    # embedding element whose true gradient is ~1e-7 gets an Adam step of noisy sign, up to ~2e-4 apart here.
    _assert_same_training(ours, theirs, trainer, hf, TAGGER_PAIRS, weight_tol=5 * TOL)
    for name, p in crf.items():
        assert (trainer.model.heads["conll"].crf.get_parameter(name) - p).abs().max().item() <= TOL, name
    assert (crf["transitions"] - head.crf.transitions).abs().max() > 0  # (the head object is the trained one)


def test_mrc_trains_like_bert_for_question_answering(tmp_path, uncased_vocab):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(4)
    hf = BertForQuestionAnswering(_hf_config(num_labels=2))
    hf_dir = _save_hf(hf, uncased_vocab, tmp_path)
    reader = palm.reader.MRCReader(uncased_vocab, 96, 32, 48, do_lower_case=True, seed=7)
    reader.load_data(str(shared("palm_demo_samples", "mrqa", "train.json")), BATCH, num_epochs=2)
    n_steps = reader.num_examples // BATCH * 2
    head = palm.head.MRC(32, CONFIG["hidden_size"])
    pairs = [("cls_squad_out.weight", "qa_outputs.weight"), ("cls_squad_out.bias", "qa_outputs.bias")]
    _copy_head(head, hf, pairs)
    trainer, batches = _build("mrqa", reader, head, hf_dir, n_steps, True)
    assert any(not bool(b["input_mask"].all()) for b in batches)  # padding is really masked
    opt, sched = _hf_optimizer(hf, n_steps, True)

    def hf_loss(b):
        # On purpose unlike BertForQuestionAnswering: padding positions are out of the start/end softmax.
        out = hf(**_hf_inputs(b))
        pad = b["input_mask"] == 0
        start, end = out.start_logits.masked_fill(pad, -1e9), out.end_logits.masked_fill(pad, -1e9)
        return (F.cross_entropy(start, b["start_positions"]) + F.cross_entropy(end, b["end_positions"])) / 2

    ours, theirs = _train_side_by_side(trainer, batches, hf, hf_loss, opt, sched)
    # the start/end bias is added to every position of a softmax over positions, which ignores a shift: no true
    # gradient (with one thread instead of two it ended 1.3e-4 apart, all noise)
    _assert_same_training(ours, theirs, trainer, hf, pairs, noise_only=("qa_outputs.bias",))
