"""MaskLMReader masking (spec §5.6, fixes §17.31) and the MaskLM head (spec §8.5, fix §17.1).

The masking statistics are tested against their exact expectations over thousands of real sentences:
a token is selected with probability p, a sentence with nothing selected gets one forced selection, and a
selected token becomes [MASK] / a random token / itself with probability 0.8 / 0.1 / 0.1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared

import torchpalm as palm
from torchpalm.reader import MaskLMReader
from torchpalm.reader.base import read_tsv

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class FakeBackbone:
    inputs_attr = {n: None for n in ("token_ids", "position_ids", "segment_ids", "input_mask", "task_ids")}


@pytest.fixture(scope="module")
def mrpc_text_file(tmp_path_factory):
    rows = read_tsv(shared("mrpc", "train.tsv"), required=("text_a", "text_b"))
    path = tmp_path_factory.mktemp("mlm") / "mrpc_sentences.tsv"
    sentences = [r["text_a"] for _, r in rows] + [r["text_b"] for _, r in rows]
    path.write_text("text_a\n" + "\n".join(sentences) + "\n", encoding="utf-8")
    return str(path)


def make(vocab, path, phase="train", batch=64, epochs=1, seed=5, **kw):
    reader = MaskLMReader(vocab, 64, seed=seed, do_lower_case=True, phase=phase, **kw)
    reader.load_data(path, batch, num_epochs=epochs, shuffle_train=False)
    reader.register_with(FakeBackbone())
    return reader


def unmasked(reader, position: int) -> np.ndarray:
    """The padded original ids of the batch at `position` (no shuffling), built independently of masking."""
    b = reader.batch_size
    seqs = [reader._examples[i]["token_ids"] for i in range(position * b, (position + 1) * b)]
    out = np.zeros((len(seqs), max(map(len, seqs))), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def test_masking_statistics_match_the_recipe(uncased_vocab, mrpc_text_file):
    reader = make(uncased_vocab, mrpc_text_file)
    special_ids = {reader.tokenizer.vocab[t] for t in SPECIALS}
    expected_m = var_m = 0.0
    selected = n_maskable = n_mask = n_same = n_random = 0
    p = 0.15
    for position, batch in enumerate(reader):
        orig = unmasked(reader, position)
        masked, pos, label = batch["token_ids"].numpy(), batch["mask_pos"].numpy(), batch["mask_label"].numpy()
        assert masked.shape == orig.shape
        # mask_pos are flat [B*L] indices holding the originals; everything else is untouched
        np.testing.assert_array_equal(orig.reshape(-1)[pos], label)
        untouched = np.ones(orig.size, dtype=bool)
        untouched[pos] = False
        np.testing.assert_array_equal(masked.reshape(-1)[untouched], orig.reshape(-1)[untouched])
        assert np.all(np.diff(pos) > 0)
        assert not set(label.tolist()) & special_ids  # never [CLS]/[SEP]/[PAD]/...
        new = masked.reshape(-1)[pos]
        n_mask += int((new == reader.tokenizer.mask_id).sum())
        n_same += int((new == label).sum())
        random_ids = new[(new != reader.tokenizer.mask_id) & (new != label)]
        n_random += len(random_ids)
        tokens = reader.tokenizer.convert_ids_to_tokens(random_ids)
        assert not any(t.startswith("[") and t.endswith("]") for t in tokens)  # no specials, no [unusedN]
        selected += len(pos)
        # exact mean and variance of M = X + 1{X=0}, X ~ Binomial(n, p), per sentence
        for row in orig:
            n = int(sum(1 for t in row if t not in special_ids))
            n_maskable += n
            q0 = (1 - p) ** n if n else 0.0
            mean = n * p + q0
            expected_m += mean
            var_m += n * p * (1 - p) + (n * p) ** 2 + q0 - mean**2
        # one selection at least in every sentence
        rows_hit = set((pos // orig.shape[1]).tolist())
        assert rows_hit == set(range(orig.shape[0]))
    assert abs(selected - expected_m) < 3 * var_m**0.5, (selected, expected_m, var_m**0.5)
    assert 0.15 < selected / n_maskable < 0.16  # 15%, plus the rare forced selection in short sentences
    for count, share in ((n_mask, 0.8), (n_random, 0.1), (n_same, 0.1)):
        sigma = (selected * share * (1 - share)) ** 0.5
        assert abs(count - selected * share) < 3 * sigma + 5, (count, selected * share, sigma)


def test_same_masks_for_same_seed_epoch_position_and_exact_resume(uncased_vocab, mrpc_text_file):
    a = [b["token_ids"] for b in make(uncased_vocab, mrpc_text_file, batch=512, epochs=2)]
    b = [b["token_ids"] for b in make(uncased_vocab, mrpc_text_file, batch=512, epochs=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    per_epoch = len(a) // 2
    # same examples (no shuffling) at the same position of the next epoch: fresh masks
    assert not torch.equal(a[0], a[per_epoch])
    other_seed = [b["token_ids"] for b in make(uncased_vocab, mrpc_text_file, batch=512, epochs=1, seed=6)]
    assert not torch.equal(a[0], other_seed[0])
    # a resumed reader yields exactly the batches that follow
    reader = make(uncased_vocab, mrpc_text_file, batch=512, epochs=2)
    it = iter(reader)
    for _ in range(per_epoch + 2):
        next(it)
    state = reader.state_dict()
    fresh = make(uncased_vocab, mrpc_text_file, batch=512, epochs=2, seed=99)
    fresh.load_state_dict(state)
    rest = [b["token_ids"] for b in fresh]
    assert len(rest) == len(a) - per_epoch - 2
    assert all(torch.equal(x, y) for x, y in zip(rest, a[per_epoch + 2:]))
    # masks within one epoch differ across positions (different generators), even for identical rows
    dup = make(uncased_vocab, mrpc_text_file, batch=512, epochs=1)
    dup._examples = [dup._examples[0]] * 1024
    first, second = list(dup)
    assert not torch.equal(first["mask_pos"], second["mask_pos"]) or not torch.equal(
        first["token_ids"], second["token_ids"])


def test_whole_word_masking_never_splits_a_word(uncased_vocab, mrpc_text_file):
    reader = make(uncased_vocab, mrpc_text_file, whole_word_mask=True, epochs=1)
    cont = reader._is_continuation
    multi_piece_words = 0
    for position, batch in enumerate(reader):
        if position == 20:
            break
        orig = unmasked(reader, position)
        sel = np.zeros(orig.size, dtype=bool)
        sel[batch["mask_pos"].numpy()] = True
        sel = sel.reshape(orig.shape)
        for r in range(orig.shape[0]):
            j = 1
            while j < orig.shape[1]:
                k = j + 1
                while k < orig.shape[1] and cont[orig[r, k]]:
                    k += 1
                if orig[r, j] not in (0, 101, 102):
                    word = sel[r, j:k]
                    assert word.all() or not word.any(), (r, j, k, orig[r, j:k])
                    multi_piece_words += (k - j > 1) and word.all()
                j = k
    assert multi_piece_words > 20  # the test did see whole multi-piece words masked


def test_chinese_whole_word_is_one_character(chinese_vocab, tmp_path):
    path = tmp_path / "zh.txt"
    path.write_text("我们变而以书会友，以书结缘。\n今天天气很好，我们去公园散步吧。\n" * 40, encoding="utf-8")
    reader = MaskLMReader(chinese_vocab, 64, seed=1, phase="train", whole_word_mask=True)
    reader.load_data(str(path), 80, num_epochs=1, file_format="txt")
    reader.register_with(FakeBackbone())
    (batch,) = list(reader)
    maskable = int((batch["input_mask"].sum()) - 2 * 80 - (batch["token_ids"] == reader.tokenizer.vocab["[UNK]"]).sum())
    share = len(batch["mask_pos"]) / maskable
    assert 0.10 < share < 0.20  # characters are selected one by one, not whole sentences
    assert not reader._is_continuation[batch["mask_label"].numpy()].any()


def test_txt_format_equals_tsv_and_short_inputs_do_not_crash(uncased_vocab, tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n\x07\nthe cat sat on the mat\n", encoding="utf-8")
    (tmp_path / "a.tsv").write_text("text_a\nhello world\n\x07\nthe cat sat on the mat\n", encoding="utf-8")
    txt = MaskLMReader(uncased_vocab, 32, seed=3, do_lower_case=True)
    txt.load_data(str(tmp_path / "a.txt"), 3, num_epochs=1, file_format="txt")
    tsv = MaskLMReader(uncased_vocab, 32, seed=3, do_lower_case=True)
    tsv.load_data(str(tmp_path / "a.tsv"), 3, num_epochs=1)
    for r in (txt, tsv):
        r.register_with(FakeBackbone())
    (x,), (y,) = list(txt), list(tsv)
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert x["input_mask"][1].sum() == 2  # the control-character line is just [CLS] [SEP], never masked
    assert not ((x["mask_pos"] >= x["token_ids"].shape[1]) & (x["mask_pos"] < 2 * x["token_ids"].shape[1])).any()
    # a batch of length-2 inputs only: nothing to mask, no crash
    (tmp_path / "empty.txt").write_text("\x07\n\x08\n", encoding="utf-8")
    empty = MaskLMReader(uncased_vocab, 32, seed=3)
    empty.load_data(str(tmp_path / "empty.txt"), 2, num_epochs=1, file_format="txt")
    (batch,) = list(empty)
    assert batch["mask_pos"].numel() == 0 and batch["mask_label"].numel() == 0
    with pytest.raises(ValueError, match="file_format"):
        empty.load_data(str(tmp_path / "empty.txt"), 2, file_format="json")


def test_predict_masks_nothing_unless_asked(uncased_vocab, tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("text_a\nthe capital of france is [MASK] .\nno blanks here\n[MASK] [MASK] cats\n", encoding="utf-8")
    reader = MaskLMReader(uncased_vocab, 32, do_lower_case=True, phase="predict")
    reader.load_data(str(path), 8)
    reader.register_with(FakeBackbone())
    (batch,) = list(reader)
    assert "mask_label" not in batch
    ids = batch["token_ids"].reshape(-1)
    assert torch.equal(ids[batch["mask_pos"]], torch.full((3,), reader.tokenizer.mask_id))
    length = batch["token_ids"].shape[1]
    assert batch["mask_pos"].tolist() == [6, 2 * length + 1, 2 * length + 2]
    asked = MaskLMReader(uncased_vocab, 32, do_lower_case=True, phase="predict", mask_in_predict=True, seed=0)
    asked.load_data(str(path), 8)
    asked.register_with(FakeBackbone())
    asked.require_attr("mask_label")
    (masked,) = list(asked)
    assert masked["mask_label"].numel() == masked["mask_pos"].numel() >= 3


def tiny_backbone(config, phase="train"):
    torch.manual_seed(0)
    return palm.backbone.BERT.from_config(config, phase=phase)


def batch_of(ids: list[list[int]]) -> dict:
    length = max(map(len, ids))
    token_ids = torch.tensor([s + [0] * (length - len(s)) for s in ids])
    mask = (token_ids != 0).long()
    return {"token_ids": token_ids, "position_ids": torch.arange(length).expand_as(token_ids) * mask,
            "segment_ids": torch.zeros_like(token_ids), "input_mask": mask}


def test_head_gathers_the_true_positions_with_tied_weights(tiny_config):
    backbone = tiny_backbone(tiny_config, "predict")
    head = palm.head.MaskLM(32, tiny_config["vocab_size"], "gelu", phase="predict")
    batch = batch_of([[101, 7592, 103, 2088, 102], [101, 103, 102]])
    batch["mask_pos"] = torch.tensor([2, 6])  # row 0 position 2, row 1 position 1 (L = 5)
    batch["mask_label"] = torch.tensor([2088, 2000])
    feats = backbone(batch)
    out = head(feats, batch)
    enc = feats["encoder_outputs"]
    rows = torch.stack([enc[0, 2], enc[1, 1]])

    def expected_logits(h):
        h = F.layer_norm(F.gelu(h @ head.transform.weight.T + head.transform.bias), (32,),
                         head.layer_norm.weight, head.layer_norm.bias, eps=1e-6)
        return h @ backbone.word_embeddings.weight.T + head.output_bias

    torch.testing.assert_close(out["logits"], expected_logits(rows))
    torch.testing.assert_close(out["loss"], F.cross_entropy(expected_logits(rows), batch["mask_label"]))
    assert torch.equal(out["word_ids"], out["logits"].argmax(-1))
    # PALM's clamp-to-0 bug would read flat position 0 ([CLS] of row 0) for every masked token
    clamped = expected_logits(enc.reshape(-1, 32)[[0, 0]])
    assert not torch.allclose(out["logits"], clamped, atol=1e-3)
    # the output layer is the word-embedding table: its gradient reaches the backbone
    out["loss"].backward()
    assert backbone.word_embeddings.weight.grad is not None
    assert backbone.word_embeddings.weight.grad[batch["mask_label"]].abs().sum() > 0
    assert not any(p.shape == backbone.word_embeddings.weight.shape for p in head.parameters())


def test_head_rejects_positions_outside_the_batch(tiny_config):
    backbone = tiny_backbone(tiny_config)
    head = palm.head.MaskLM(32, tiny_config["vocab_size"], "gelu")
    batch = batch_of([[101, 7592, 102], [101, 2088, 102]])
    feats = backbone(batch)
    for bad in ([0, 6], [-1]):
        with pytest.raises(ValueError, match=r"0 <= pos < B\*L = 2\*3 = 6"):
            head(feats, {**batch, "mask_pos": torch.tensor(bad), "mask_label": torch.tensor([1] * len(bad))})
    with pytest.raises(ValueError, match="vocab_size 100"):
        palm.head.MaskLM(32, 100, "gelu")(feats, {**batch, "mask_pos": torch.tensor([1])})
    empty = head(feats, {**batch, "mask_pos": torch.zeros(0, dtype=torch.long),
                         "mask_label": torch.zeros(0, dtype=torch.long)})
    assert empty["loss"].item() == 0.0 and empty["logits"].shape == (0, tiny_config["vocab_size"])
