"""Batching options that cut padding: length-grouped and token-budget batches. PALM's order stays the default;
the plans follow their definitions (HF's group_by_length, fairseq's batch_by_size), are deterministic with the
seed, resume exactly (single task and under MultiHeadTrainer), and leave predict in file order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared
from test_multihead_trainer import Setup

from torchpalm.reader import ClassifyReader, MatchReader
from torchpalm.reader.batching import length_grouped_batches, token_budget_batches


@pytest.fixture
def sst2(tmp_path):
    with open(shared("sst2", "train.tsv"), encoding="utf-8") as f:
        lines = [next(f) for _ in range(1001)]
    path = tmp_path / "sst2.tsv"
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def _reader(vocab, path, batch=8, seed=3, phase="train", epochs=None, **batching):
    reader = ClassifyReader(vocab, 64, seed=seed, do_lower_case=True, phase=phase)
    reader.load_data(path, batch, num_epochs=epochs)
    reader.require_attr("input_mask")
    if batching:
        reader.set_batching(**batching)
    return reader


def _line_batches(reader, n_batches) -> list[list[tuple]]:
    """The examples (as token-id tuples) of the next `n_batches` batches."""
    out, it = [], iter(reader)
    for _ in range(n_batches):
        batch = next(it)
        out.append([tuple(row[mask.bool()].tolist()) for row, mask in zip(batch["token_ids"], batch["input_mask"])])
    return out


def _examples(reader, indices) -> list[tuple]:
    return [tuple(reader._examples[i]["token_ids"].tolist()) for i in indices]


def _padded(batch) -> int:
    return batch["token_ids"].numel()


def test_default_order_is_palms(uncased_vocab, sst2):
    plain = _reader(uncased_vocab, sst2)
    assert plain.batching is None and "batching" not in plain.state_dict()
    reset = _reader(uncased_vocab, sst2, group_by_length=False)
    for a, b in zip(_line_batches(plain, 130), _line_batches(reset, 130)):
        assert a == b
    # PALM's order: epoch e is default_rng([seed, e]).permutation, cut into consecutive batches
    order = np.random.default_rng([3, 0]).permutation(1000)
    assert _line_batches(_reader(uncased_vocab, sst2), 1)[0] == _examples(plain, order[:8])


def test_length_grouped_batches_follow_hf_recipe():
    lengths = np.random.default_rng(0).integers(3, 60, size=1003)
    batches = length_grouped_batches(lengths, 8, np.random.default_rng([5, 2]), megabatch_factor=4)
    # independent recomputation: the same generator draws the example order, then the batch order
    rng = np.random.default_rng([5, 2])
    order = rng.permutation(1003)[:1000]
    expected = []
    for start in range(0, 1000, 32):
        mega = sorted(order[start:start + 32].tolist(), key=lambda i: -lengths[i])  # stable, longest first
        expected += [mega[k:k + 8] for k in range(0, len(mega), 8)]
    expected = [expected[i] for i in rng.permutation(len(expected))]
    assert [b.tolist() for b in batches] == expected
    assert len(batches) == 125 and all(len(b) == 8 for b in batches)
    # fewer examples than a batch: one batch of all, as without grouping
    assert [len(b) for b in length_grouped_batches(lengths[:5], 8, None)] == [5]


def test_group_by_length_reader_cuts_padding_and_keeps_step_count(uncased_vocab, sst2):
    plain = _reader(uncased_vocab, sst2, epochs=2)
    grouped = _reader(uncased_vocab, sst2, epochs=2, group_by_length=True)
    assert grouped.steps_per_epoch == plain.steps_per_epoch == 125
    plain_batches, grouped_batches = list(plain), list(grouped)
    assert len(grouped_batches) == 250 and all(len(b["label_ids"]) == 8 for b in grouped_batches)
    assert sum(map(_padded, grouped_batches)) < 0.8 * sum(map(_padded, plain_batches))
    # every example of the epoch's first 1000 // 8 * 8 draws, once; epoch 1 differs from epoch 0
    grouped = _reader(uncased_vocab, sst2, epochs=2, group_by_length=True)
    lines = _line_batches(grouped, 250)
    epoch0 = [x for b in lines[:125] for x in b]
    assert sorted(epoch0) == sorted(_examples(grouped, np.random.default_rng([3, 0]).permutation(1000)))
    assert lines[:125] != lines[125:]


def _budget_cost(lengths, count):
    return len(lengths) * max(lengths) if count == "padded" else sum(lengths)


@pytest.mark.parametrize("count", ["padded", "real"])
def test_token_budget_batches_are_greedy_and_within_budget(count):
    lengths = np.random.default_rng(1).integers(2, 64, size=500)
    batches = token_budget_batches(lengths, 256, count, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    assert np.all(np.diff(lengths[flat]) >= 0)  # length-sorted
    for b, nxt in zip(batches, batches[1:]):
        assert _budget_cost(lengths[b].tolist(), count) <= 256
        # greedy: the next example would not have fit
        assert _budget_cost(lengths[b].tolist() + [lengths[nxt[0]]], count) > 256
    assert _budget_cost(lengths[batches[-1]].tolist(), count) <= 256
    capped = token_budget_batches(lengths, 256, count, None, max_examples=5)
    assert max(map(len, capped)) == 5 and all(_budget_cost(lengths[b].tolist(), count) <= 256 for b in capped)
    with pytest.raises(ValueError, match="max_tokens=50 is less than example .* 63 tokens"):
        token_budget_batches(np.array([3, 63, 5]), 50)


def test_token_budget_reader_fixed_batches_shuffled_each_epoch(uncased_vocab, sst2):
    reader = _reader(uncased_vocab, sst2, epochs=2, max_tokens=512)
    n = reader.steps_per_epoch
    batches = list(reader)
    assert len(batches) == 2 * n and n < 125  # fewer, larger batches than batch_size=8 would give
    assert all(_padded(b) <= 512 for b in batches)
    assert sum(len(b["label_ids"]) for b in batches[:n]) == 1000
    again = _reader(uncased_vocab, sst2, epochs=2, max_tokens=512)
    lines = _line_batches(again, 2 * n)
    epoch0, epoch1 = lines[:n], lines[n:]
    assert sorted(map(sorted, epoch0)) == sorted(map(sorted, epoch1)) and epoch0 != epoch1
    real = _reader(uncased_vocab, sst2, epochs=1, max_tokens=512, token_count="real")
    assert all(int(b["input_mask"].sum()) <= 512 for b in real) and real.steps_per_epoch < n
    with pytest.raises(ValueError, match="sst2.tsv: max_tokens=20 is less than"):
        _ = _reader(uncased_vocab, sst2, max_tokens=20).steps_per_epoch


def test_pairwise_length_counts_the_longer_pair(uncased_vocab, tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("text_a\ttext_b\ttext_b_neg\n" + "".join(
        f"a\tb\t{'long ' * (i % 9 * 3)}x\n" for i in range(60)))
    reader = MatchReader(uncased_vocab, 64, seed=1, learning_strategy="pairwise")
    reader.load_data(str(path), 4, num_epochs=1)
    reader.set_batching(max_tokens=120)
    for batch in reader:
        assert batch["token_ids_neg"].numel() <= 120


@pytest.mark.parametrize("options", [{"group_by_length": True, "megabatch_factor": 3}, {"max_tokens": 300}],
                         ids=["group_by_length", "max_tokens"])
def test_deterministic_and_resumes_exactly(uncased_vocab, sst2, options):
    straight = _line_batches(_reader(uncased_vocab, sst2, **options), 300)  # more than two epochs
    assert straight == _line_batches(_reader(uncased_vocab, sst2, **options), 300)
    assert straight != _line_batches(_reader(uncased_vocab, sst2, seed=4, **options), 300)
    first = _reader(uncased_vocab, sst2, **options)
    head = _line_batches(first, 170)
    state = first.state_dict()
    assert state["batching"] == first.batching
    resumed = _reader(uncased_vocab, sst2, seed=99, **options)  # another seed until the state is loaded
    _ = resumed.steps_per_epoch  # a plan built under the wrong seed must not survive the restore
    resumed.load_state_dict(state)
    assert head + _line_batches(resumed, 130) == straight
    other = _reader(uncased_vocab, sst2)
    with pytest.raises(ValueError, match="batching .* but this reader has None; call set_batching"):
        other.load_state_dict(state)


def test_a_seed_set_after_planning_replans(uncased_vocab, sst2):
    """Under torchrun every rank takes rank 0's seed (`reader.seed = ...` in `Trainer.fit_reader`) after a script
    may already have asked for steps_per_epoch, which fixed the token-budget batches under its own seed."""
    straight = _line_batches(_reader(uncased_vocab, sst2, max_tokens=300), 150)
    reader = _reader(uncased_vocab, sst2, seed=99, max_tokens=300)
    _ = reader.steps_per_epoch  # plans under seed 99
    reader.seed = 3
    assert reader.seed == 3 and _line_batches(reader, 150) == straight


def test_predict_keeps_file_order(uncased_vocab, sst2):
    for options in ({"group_by_length": True}, {"max_tokens": 200}):
        pred = _reader(uncased_vocab, sst2, phase="predict", **options)
        assert pred.steps_per_epoch == 125
        assert [x for b in _line_batches(pred, 125) for x in b] == _examples(pred, range(1000))


def test_bad_options(uncased_vocab, sst2):
    reader = _reader(uncased_vocab, sst2)
    for kwargs, match in [({"group_by_length": True, "max_tokens": 10}, "choose group_by_length or max_tokens"),
                          ({"max_tokens": 0}, "max_tokens must be a positive integer"),
                          ({"max_tokens": 100, "token_count": "rows"}, "token_count must be one of"),
                          ({"group_by_length": True, "megabatch_factor": 0}, "megabatch_factor must be")]:
        with pytest.raises(ValueError, match=match):
            reader.set_batching(**kwargs)


@pytest.mark.parametrize("world", [2, 3])
def test_token_budget_batches_shard_one_batch_per_rank(uncased_vocab, sst2, world):
    """Under N processes each step gives rank r the batch N * step + r of the epoch's order (the budget is per
    process): every rank the same number of steps, each its own batches, resumable per rank."""
    single = _reader(uncased_vocab, sst2, epochs=2, max_tokens=300)
    n_batches = single.steps_per_epoch
    order = [single._batches_of_epoch(e) for e in (0, 1)]  # the shared plan, in each epoch's order
    ranks = []
    for rank in range(world):
        reader = _reader(uncased_vocab, sst2, epochs=2, max_tokens=300)
        reader.shard(rank, world)
        assert reader.steps_per_epoch == n_batches // world
        ranks.append(_line_batches(reader, 2 * (n_batches // world)))
    steps = n_batches // world
    for epoch in (0, 1):  # the plan's batches partition the examples, so no example comes twice in an epoch
        for step in range(steps):
            for rank in range(world):
                assert ranks[rank][epoch * steps + step] == _examples(single, order[epoch][step * world + rank])
    # a rank resumes exactly from its own position
    first = _reader(uncased_vocab, sst2, epochs=2, max_tokens=300)
    first.shard(1, world)
    head = _line_batches(first, steps + 1)
    again = _reader(uncased_vocab, sst2, epochs=2, max_tokens=300)
    again.shard(1, world)
    again.load_state_dict(first.state_dict())
    assert head + _line_batches(again, steps - 1) == ranks[1]

    few = _reader(uncased_vocab, sst2, max_tokens=10 ** 6)  # one batch holds the whole file
    few.shard(0, world)
    with pytest.raises(ValueError, match=f"1 token-budget batches cannot give each of {world} processes one"):
        _ = few.steps_per_epoch


@pytest.mark.parametrize("cls_options, tag_options", [
    ({"max_tokens": 40}, {"group_by_length": True, "megabatch_factor": 2}),
    ({"group_by_length": True}, {"max_tokens": 48, "token_count": "real"}),
])
def test_multi_task_training_resumes_exactly(tmp_path, uncased_vocab, tiny_config, cls_options, tag_options):
    def setup(seed=0):
        s = Setup(tmp_path, uncased_vocab, tiny_config, seed=seed)
        s.cls_reader.set_batching(**cls_options)
        s.tag_reader.set_batching(**tag_options)
        return s

    straight = setup()
    straight.fit()
    expected = straight.losses(16)
    assert {t for t, _ in expected} == {0, 1}
    first = setup()
    first.fit()
    got = first.losses(9)
    path = first.mh.save(str(tmp_path / "ckpt"))
    torch.manual_seed(999)
    resumed = setup(seed=5)  # other init, other reader seeds: the checkpoint must restore them all
    resumed.mh.load_ckpt(path)
    resumed.fit()
    assert got + resumed.losses(7) == expected
