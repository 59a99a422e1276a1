"""LinearChainCRF against brute-force enumeration, gradcheck, a tiny training run and edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from torchpalm.head.crf import LinearChainCRF

# ---------------------------------------------------------------------------- brute-force references


def _path_score(em, start, end, trans, path) -> float:
    """Score of one tag path for one sequence, in plain Python floats (em: list of rows)."""
    s = start[path[0]] + em[0][path[0]] + end[path[-1]]
    for t in range(1, len(path)):
        s += trans[path[t - 1]][path[t]] + em[t][path[t]]
    return s


def _brute_force(crf: LinearChainCRF, emissions: torch.Tensor, lengths: list[int]):
    """Per sequence: (log Z, {path: score}) by enumerating every tag sequence with itertools.product."""
    start = crf.start_transitions.detach().double().tolist()
    end = crf.end_transitions.detach().double().tolist()
    trans = crf.transitions.detach().double().tolist()
    out = []
    for b, n in enumerate(lengths):
        em = emissions[b, :n].detach().double().tolist()
        scores = {
            p: _path_score(em, start, end, trans, p) for p in itertools.product(range(crf.num_tags), repeat=n)
        }
        m = max(scores.values())
        log_z = m + math.log(sum(math.exp(v - m) for v in scores.values()))
        out.append((log_z, scores))
    return out


def _random_crf(num_tags: int, seed: int, dtype=torch.float64) -> LinearChainCRF:
    torch.manual_seed(seed)
    crf = LinearChainCRF(num_tags).to(dtype)
    with torch.no_grad():  # larger than the default init so transitions really matter
        for p in crf.parameters():
            p.normal_(0.0, 1.0)
    return crf


def _batch(lengths: list[int], num_tags: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths)
    emissions = torch.randn(B, L, num_tags, generator=g, dtype=dtype) * 2.0
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    tags = torch.randint(0, num_tags, (B, L), generator=g)
    tags = tags.masked_fill(~mask, -100)  # ignore index outside the mask is fine
    return emissions, tags, mask


LENGTHS = [5, 1, 3, 4, 2, 5]


# ---------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("num_tags,seed", [(3, 0), (4, 1), (3, 2)])
def test_log_partition_nll_and_viterbi_match_brute_force(num_tags, seed):
    crf = _random_crf(num_tags, seed)
    emissions, tags, mask = _batch(LENGTHS, num_tags, seed + 100)
    ref = _brute_force(crf, emissions, LENGTHS)

    log_z = crf.log_partition(emissions, mask)
    assert log_z.dtype == torch.float64
    torch.testing.assert_close(
        log_z, torch.tensor([r[0] for r in ref], dtype=torch.float64), rtol=0, atol=1e-10
    )

    gold = [tuple(tags[b, :n].tolist()) for b, n in enumerate(LENGTHS)]
    gold_score = torch.tensor([ref[b][1][gold[b]] for b in range(len(LENGTHS))], dtype=torch.float64)
    torch.testing.assert_close(crf.score(emissions, tags, mask), gold_score, rtol=0, atol=1e-10)

    nll_ref = torch.tensor([ref[b][0] - ref[b][1][gold[b]] for b in range(len(LENGTHS))], dtype=torch.float64)
    nll = crf(emissions, tags, mask, reduction="none")
    torch.testing.assert_close(nll, nll_ref, rtol=0, atol=1e-10)
    assert bool((nll > 0).all())

    best_ref = [list(max(r[1], key=r[1].get)) for r in ref]
    assert crf.decode(emissions, mask) == best_ref
    padded = crf.decode_tensor(emissions, mask)
    assert padded.shape == mask.shape and padded.dtype == torch.long
    for b, n in enumerate(LENGTHS):
        assert padded[b, :n].tolist() == best_ref[b]
        assert bool((padded[b, n:] == -1).all())
    assert bool((crf.decode_tensor(emissions, mask, pad_value=7)[~mask] == 7).all())


def test_float32_module_matches_float64_reference():
    crf = _random_crf(4, 3, dtype=torch.float32)
    emissions, tags, mask = _batch([4, 2, 3], 4, 7, dtype=torch.float32)
    ref = _brute_force(crf, emissions, [4, 2, 3])
    log_z = crf.log_partition(emissions, mask)
    assert log_z.dtype == torch.float32
    torch.testing.assert_close(
        log_z, torch.tensor([r[0] for r in ref], dtype=torch.float32), rtol=1e-5, atol=1e-5
    )


def test_padding_content_is_ignored():
    crf = _random_crf(3, 4)
    emissions, tags, mask = _batch([4, 2, 3], 3, 8)
    emissions.requires_grad_(True)
    loss = crf(emissions, tags, mask, reduction="sum")
    (grad,) = torch.autograd.grad(loss, emissions)

    garbage = emissions.detach().clone()
    garbage[~mask] = float("nan")
    garbage[1, 3] = float("inf")
    garbage.requires_grad_(True)
    loss2 = crf(garbage, tags, mask, reduction="sum")
    (grad2,) = torch.autograd.grad(loss2, garbage)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(grad2, grad)
    assert bool((grad2[~mask] == 0).all())
    assert crf.decode(garbage.detach(), mask) == crf.decode(emissions.detach(), mask)


def test_all_true_mask_default():
    crf = _random_crf(3, 5)
    emissions, tags, _ = _batch([3, 3], 3, 9)
    full = torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(crf(emissions, tags), crf(emissions, tags, full))
    assert crf.decode(emissions) == crf.decode(emissions, full)


# ---------------------------------------------------------------------------- gradients


def test_gradcheck_emissions_and_parameters():
    crf = _random_crf(3, 6)
    emissions, tags, mask = _batch([3, 1, 2], 3, 10)
    emissions.requires_grad_(True)
    names = ["start_transitions", "end_transitions", "transitions"]
    params = [getattr(crf, n).detach().clone().requires_grad_(True) for n in names]

    def fn(em, start, end, trans):
        return torch.func.functional_call(
            crf, dict(zip(names, (start, end, trans), strict=True)), (em, tags, mask), {"reduction": "none"}
        )

    assert torch.autograd.gradcheck(fn, (emissions, *params))


def test_gradient_is_expected_counts():
    """d logZ / d emissions = posterior marginals: sums to 1 over tags at every real position."""
    crf = _random_crf(4, 11)
    emissions, _, mask = _batch([4, 2], 4, 12)
    emissions.requires_grad_(True)
    (grad,) = torch.autograd.grad(crf.log_partition(emissions, mask).sum(), emissions)
    torch.testing.assert_close(grad.sum(-1), mask.double())


# ---------------------------------------------------------------------------- training sanity


def test_training_learns_transitions():
    """Tags O=0, B=1, I=2. Token 'w' is B after 'a'/start and I after another 'w': a per-token classifier
    cannot tell B from I, so decoding the gold sequences requires learnt transitions."""
    torch.manual_seed(0)
    vocab = {"<pad>": 0, "a": 1, "w": 2}
    sentences = ["w w a w", "a w w w a", "a a w", "w a w w", "w", "a w a w w w", "w w w w a a"]
    tokens, gold = [], []
    for s in sentences:
        words = s.split()
        tokens.append([vocab[w] for w in words])
        gold.append(
            [0 if w == "a" else (2 if i > 0 and words[i - 1] == "w" else 1) for i, w in enumerate(words)]
        )
    B, L = len(tokens), max(len(t) for t in tokens)
    ids = torch.zeros(B, L, dtype=torch.long)
    tags = torch.full((B, L), -100, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, (t, y) in enumerate(zip(tokens, gold, strict=True)):
        ids[b, : len(t)] = torch.tensor(t)
        tags[b, : len(y)] = torch.tensor(y)
        mask[b, : len(t)] = True

    crf = LinearChainCRF(3)
    emission_table = nn.Parameter(torch.zeros(len(vocab), 3))
    opt = torch.optim.Adam([emission_table, *crf.parameters()], lr=0.1)
    losses = []
    for _ in range(150):
        loss = crf(emission_table[ids], tags, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    assert losses[-1] < 0.05 * losses[0]
    assert crf.decode(emission_table[ids].detach(), mask) == gold
    # emissions alone give 'w' one fixed tag, so they cannot reproduce both B and I
    unigram = emission_table.detach()[ids].argmax(-1)
    assert [unigram[b, : len(y)].tolist() for b, y in enumerate(gold)] != gold
    # and the learnt transitions forbid O -> I and start -> I
    assert crf.transitions[0, 2] < crf.transitions[0, 1]
    assert crf.start_transitions[2] < crf.start_transitions[1]


# ---------------------------------------------------------------------------- validation and reductions


def test_mask_and_tag_validation():
    crf = LinearChainCRF(3)
    emissions = torch.randn(2, 3, 3)
    tags = torch.zeros(2, 3, dtype=torch.long)
    good = torch.tensor([[True, True, False], [True, True, True]])

    with pytest.raises(ValueError, match=r"mask\[:, 0\]"):
        crf(emissions, tags, torch.tensor([[False, True, True], [True, True, True]]))
    with pytest.raises(ValueError, match=r"mask\[:, 0\]"):
        crf.decode(emissions, torch.tensor([[False, False, False], [True, True, True]]))
    with pytest.raises(ValueError, match="contiguous"):
        crf(emissions, tags, torch.tensor([[True, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match="ignore index"):
        crf(emissions, torch.tensor([[0, -100, 0], [0, 1, 2]]), good)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        crf(emissions, torch.tensor([[0, 3, 0], [0, 1, 2]]), good)
    with pytest.raises(ValueError, match="emissions"):
        crf(torch.randn(2, 3, 4), tags, good)
    with pytest.raises(ValueError, match="mask"):
        crf(emissions, tags, good[:, :2])
    with pytest.raises(ValueError, match="tags"):
        crf(emissions, tags[:, :2], good)
    with pytest.raises(ValueError, match="reduction"):
        crf(emissions, tags, good, reduction="avg")
    # -100 (or anything) outside the mask is fine
    crf(emissions, torch.tensor([[0, 1, -100], [0, 1, 2]]), good)


def test_reductions_are_consistent():
    crf = _random_crf(4, 13)
    lengths = [5, 1, 3, 4]
    emissions, tags, mask = _batch(lengths, 4, 14)
    none = crf(emissions, tags, mask, reduction="none")
    total = crf(emissions, tags, mask, reduction="sum")
    mean = crf(emissions, tags, mask, reduction="mean")
    token_mean = crf(emissions, tags, mask, reduction="token_mean")
    assert none.shape == (4,)
    torch.testing.assert_close(total, none.sum())
    torch.testing.assert_close(total, mean * len(lengths))
    torch.testing.assert_close(token_mean, total / sum(lengths))
    torch.testing.assert_close(mean, crf(emissions, tags, mask))  # default is PALM's per-sequence mean


# ---------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_emissions_are_upcast(half):
    crf = _random_crf(5, 15, dtype=torch.float32)
    emissions, tags, mask = _batch([6, 3, 5, 1], 5, 16, dtype=torch.float32)
    em_half = emissions.to(half).requires_grad_(True)

    loss = crf(em_half, tags, mask, reduction="none")
    assert loss.dtype == torch.float32
    # identical to running float32 on the rounded values (the computation itself is float32)
    torch.testing.assert_close(loss, crf(em_half.detach().float(), tags, mask, reduction="none"))
    # and close to the unrounded float32 result
    torch.testing.assert_close(loss, crf(emissions, tags, mask, reduction="none"), rtol=2e-2, atol=5e-2)

    loss.sum().backward()
    assert em_half.grad is not None and em_half.grad.dtype == half
    assert crf.start_transitions.grad is not None and crf.start_transitions.grad.dtype == torch.float32
    assert crf.decode(em_half.detach(), mask) == crf.decode(em_half.detach().float(), mask)


def test_half_precision_module_computes_in_float32():
    crf = _random_crf(3, 17, dtype=torch.float32)
    emissions, tags, mask = _batch([3, 2], 3, 18, dtype=torch.float32)
    ref = crf(emissions.bfloat16().float(), tags, mask, reduction="none")
    crf_bf16 = crf.to(torch.bfloat16)
    out = crf_bf16(emissions.bfloat16(), tags, mask, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=5e-2)
