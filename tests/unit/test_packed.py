"""The packed path (dense layers on real tokens only) against the padded reference path, for every head.

Same weights, same padded batch, dropout off: the head outputs, the loss and every parameter's gradient must
agree to fp32 tolerances, and the backbone outputs at every real position."""

from __future__ import annotations

import pytest
import torch

import torchpalm as palm
from torchpalm.backbone.packing import Packing

VOCAB = 100


def tiny(kind: str = "bert", pairwise: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
                  max_position_embeddings=64, hidden_act="gelu", hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, initializer_range=0.2, intermediate_size=48, is_pairwise=pairwise)
    if kind == "ernie":
        model = palm.backbone.ERNIE(sent_type_vocab_size=2, task_type_vocab_size=3, **config)
        torch.nn.init.normal_(model.task_embeddings.weight)  # zero at start: make it matter
        return model
    return palm.backbone.BERT(type_vocab_size=2, **config)


def padded_inputs(lengths: list[int], gen: torch.Generator, suffix: str = "") -> dict[str, torch.Tensor]:
    """A right-padded batch: ids of real tokens in [1, VOCAB), 0 past each length, mask 1/0."""
    b, width = len(lengths), max(lengths) + 2  # two all-pad columns too
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, VOCAB, (b, width), generator=gen) * mask
    segments = (torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return {"token_ids" + suffix: ids, "position_ids" + suffix: torch.arange(width).expand(b, -1).clone(),
            "segment_ids" + suffix: segments, "input_mask" + suffix: mask,
            "task_ids" + suffix: torch.randint(0, 3, (b, width), generator=gen)}


LENGTHS = [5, 12, 3, 9]


def head_batch(name: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    batch = padded_inputs(LENGTHS, gen)
    b, width = batch["token_ids"].shape
    if name in ("classify", "match"):
        batch["label_ids"] = torch.randint(0, 3, (b,), generator=gen)
    elif name == "match_pairwise":
        batch.update(padded_inputs([7, 2, 11, 4], gen, "_neg"))
    elif name.startswith("tagging"):
        words = [n - 2 for n in LENGTHS]  # word w starts at token w + 1 ([CLS] first)
        batch["word_starts"] = torch.tensor([[w + 1 if w < n else 0 for w in range(max(words))] for n in words])
        batch["seq_lens"] = torch.tensor(words)
        batch["label_ids"] = torch.randint(0, 4, (b, max(words)), generator=gen)
    elif name == "mrc":
        batch["start_positions"] = torch.tensor([1, 4, 2, 6])
        batch["end_positions"] = torch.tensor([3, 10, 2, 8])
    elif name == "mask_lm":
        pos = [i * width + p for i, n in enumerate(LENGTHS) for p in range(1, n, 2)]
        batch["mask_pos"] = torch.tensor(pos)
        batch["mask_label"] = torch.randint(1, VOCAB, (len(pos),), generator=gen)
    return batch


def make_head(name: str) -> torch.nn.Module:
    torch.manual_seed(1)
    if name == "classify":
        return palm.head.Classify(3, 32)
    if name == "match":
        return palm.head.Match(3, 32)
    if name == "match_pairwise":
        return palm.head.Match(2, 32, learning_strategy="pairwise")
    if name == "tagging_softmax":
        return palm.head.SequenceLabel(4, 32, use_crf=False)
    if name == "tagging_crf":
        return palm.head.SequenceLabel(4, 32, use_crf=True)
    if name == "mrc":
        return palm.head.MRC(8, 32)
    if name == "mask_lm":
        return palm.head.MaskLM(32, VOCAB, "gelu")
    raise AssertionError(name)


def run(backbone, head, batch, pack: bool):
    backbone.pack_tokens = pack
    backbone.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    enc = backbone(batch)
    out = head(enc, batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in [*backbone.named_parameters(), *head.named_parameters()]
             if p.grad is not None}
    return enc, out, grads


HEADS = ["classify", "match", "match_pairwise", "tagging_softmax", "tagging_crf", "mrc", "mask_lm"]


@pytest.mark.parametrize("kind", ["bert", "ernie"])
@pytest.mark.parametrize("name", HEADS)
def test_packed_matches_padded_outputs_and_gradients(name, kind):
    backbone = tiny(kind, pairwise=name == "match_pairwise")
    head = make_head(name)
    batch = head_batch(name, torch.Generator().manual_seed(2))
    enc_ref, out_ref, grads_ref = run(backbone, head, batch, pack=False)
    enc, out, grads = run(backbone, head, batch, pack=True)
    mask = batch["input_mask"].bool()
    for key in ("encoder_outputs", "word_embedding"):
        torch.testing.assert_close(enc[key][mask], enc_ref[key][mask], rtol=1e-5, atol=1e-5)
        assert not enc[key][~mask].any()  # padded positions are zeros on the packed path
    torch.testing.assert_close(enc["sentence_embedding"], enc_ref["sentence_embedding"], rtol=1e-5, atol=1e-5)
    for key in out_ref:
        torch.testing.assert_close(out[key], out_ref[key], rtol=1e-5, atol=1e-5, msg=f"output {key}")
    assert grads.keys() == grads_ref.keys()
    for n in grads_ref:
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-4, atol=1e-6, msg=f"gradient of {n}")


def test_packing_round_trip_and_offsets():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    packing = Packing.from_mask(mask)
    assert packing.index.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert packing.cu_seqlens.tolist() == [0, 3, 4, 8] and packing.max_seqlen == 4 and packing.prefix
    x = torch.arange(12.0).reshape(3, 4, 1)
    assert packing.pack(x).flatten().tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    torch.testing.assert_close(packing.unpack(packing.pack(x)), x * mask[..., None])
    assert not Packing.from_mask(torch.tensor([[1, 0], [0, 1]])).prefix  # a hole: no varlen attention
    assert Packing.from_mask(torch.ones(2, 3)) is None  # nothing padded: the plain path
    assert Packing.from_mask(torch.tensor([[1, 1], [0, 0]])) is None  # an empty row: the padded path


def test_predict_clone_keeps_the_switch_and_eval_mode_agrees():
    backbone = tiny()
    backbone.pack_tokens = False
    predict = backbone.clone("predict")
    assert predict.pack_tokens is False and not predict.training
    batch = head_batch("classify", torch.Generator().manual_seed(3))
    reference = predict(batch)["sentence_embedding"]
    predict.pack_tokens = True
    torch.testing.assert_close(predict(batch)["sentence_embedding"], reference, rtol=1e-5, atol=1e-5)


def test_length_groups_cover_every_token_once_and_attend_like_the_padded_batch():
    """More sequences than attention groups, of many lengths: each group is padded to its own longest row, so
    shorter rows in a group rely on the key-padding bias (a row per group would not test it)."""
    from torchpalm.backbone.packing import MAX_GROUPS

    lengths = [5, 12, 3, 9, 17, 2, 8, 8, 14, 6, 11]
    gen = torch.Generator().manual_seed(4)
    batch = padded_inputs(lengths, gen)
    packing = Packing.from_mask(batch["input_mask"])
    groups = packing.attention_groups()
    assert 1 < len(groups.shapes) <= MAX_GROUPS and sum(n for n, _ in groups.shapes) == len(lengths)
    assert any(n > 1 for n, _ in groups.shapes)  # some group mixes lengths
    total = sum(lengths)
    # each packed token has one place in the layout, which gathers that token back
    assert torch.equal(groups.gather[groups.select], torch.arange(total))
    assert len(set(groups.select.tolist())) == total
    laid_out = groups.split(torch.arange(total, dtype=torch.float64)[:, None])
    assert torch.equal(groups.merge(laid_out), torch.arange(total, dtype=torch.float64)[:, None])
    # padded places are masked out and repeat their own row's first token (never another row's)
    first_tokens = set(packing.cu_seqlens[:-1].tolist())
    for part, bias, (n, width) in zip(laid_out, groups.biases, groups.shapes, strict=True):
        assert part.shape == (n, width, 1)
        padded = bias.view(n, width) < 0
        assert set(part[padded].long().view(-1).tolist()) <= first_tokens
        assert all(part[r, 0].item() == part[r][padded[r]].unique().item() for r in range(n) if padded[r].any())
    # in float64 the two paths are the same math to rounding; in fp32 the attention kernel's different block
    # shapes change the summation order, which this large-weight model amplifies through LayerNorm's backward
    backbone = tiny().double()
    outputs, grads = {}, {}
    for pack in (False, True):
        backbone.pack_tokens = pack
        backbone.zero_grad()
        enc = backbone(batch)["encoder_outputs"]
        (enc[batch["input_mask"].bool()] ** 2).sum().backward()
        outputs[pack] = enc.detach()
        grads[pack] = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    mask = batch["input_mask"].bool()
    torch.testing.assert_close(outputs[True][mask], outputs[False][mask], rtol=1e-10, atol=1e-10)
    for n in grads[False]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-8, atol=1e-12, msg=n)


def sentence_only_run(backbone, head, batch, hinted: bool):
    from torchpalm.loop import backbone_features

    backbone.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    enc = backbone_features(backbone, head, batch) if hinted else backbone(batch)
    out = head(enc, batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in [*backbone.named_parameters(), *head.named_parameters()]
             if p.grad is not None}
    return enc, out, grads


@pytest.mark.parametrize("kind", ["bert", "ernie"])
@pytest.mark.parametrize("name", ["classify", "match", "match_pairwise"])
@pytest.mark.parametrize("pack", [False, True])
def test_sentence_heads_run_the_last_layer_on_cls_alone_with_the_same_results(name, kind, pack):
    # Classify and Match read only pooled [CLS] features: the last layer computes the [CLS] rows alone (keys and
    # values from every token). Same loss and gradients as the full encoder, to float64 rounding.
    backbone = tiny(kind, pairwise=name == "match_pairwise").double()
    backbone.pack_tokens = pack
    head = make_head(name).double()
    batch = head_batch(name, torch.Generator().manual_seed(2))
    enc_ref, out_ref, grads_ref = sentence_only_run(backbone, head, batch, hinted=False)
    enc, out, grads = sentence_only_run(backbone, head, batch, hinted=True)
    assert "encoder_outputs" in enc_ref and "encoder_outputs" not in enc  # the hint took effect
    torch.testing.assert_close(out["loss"], out_ref["loss"], rtol=1e-12, atol=1e-12)
    assert grads.keys() == grads_ref.keys()  # every last-layer weight still gets its gradient
    for n in grads_ref:
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-9, atol=1e-12, msg=f"gradient of {n}")


def test_sentence_only_without_padding_and_token_heads_keep_the_full_encoder():
    from torchpalm.loop import MultiTaskModel, backbone_features

    backbone = tiny().double()
    gen = torch.Generator().manual_seed(5)
    batch = {k: v[:, :6] for k, v in padded_inputs([6, 6, 6], gen).items()}  # nothing padded: no bias, no packing
    assert batch["input_mask"].all()
    full = backbone(batch)["sentence_embedding"]
    torch.testing.assert_close(backbone(batch, outputs=["sentence_embedding"])["sentence_embedding"], full,
                               rtol=1e-12, atol=1e-12)
    tagger = make_head("tagging_softmax").double()
    assert "encoder_outputs" in backbone_features(backbone, tagger, batch)
    # the model the trainers build asks for what each task's head reads
    seen = []
    original = backbone.forward
    backbone.forward = lambda b, outputs=None: seen.append(outputs) or original(b, outputs)
    model = MultiTaskModel(backbone, {"cls": make_head("classify").double(), "tag": tagger})
    tag_batch = head_batch("tagging_softmax", gen)
    model("cls", {**tag_batch, "label_ids": torch.zeros(4, dtype=torch.long)})
    model("tag", tag_batch)
    assert seen == [["sentence_embedding"], ["encoder_outputs"]]
