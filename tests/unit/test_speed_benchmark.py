"""The speed benchmark's batching helpers (benchmarks/speed_vs_hf.py): HF's length grouping, the round plan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from speed_vs_hf import group_by_length, spread, token_budget_batches  # noqa: E402


def test_group_by_length_is_hf_length_grouped_sampler_order():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = (torch.randperm(500, generator=torch.Generator().manual_seed(9)) % 97).tolist()  # many ties
    lengths[123] = 500  # one longest, which HF swaps to the front
    for seed in range(3):
        order = torch.randperm(500, generator=torch.Generator().manual_seed(seed)).tolist()
        theirs = get_length_grouped_indices(lengths, 4, mega_batch_mult=50,
                                            generator=torch.Generator().manual_seed(seed))
        assert group_by_length(lengths, 4, order) == theirs


def test_rounds_spread_over_all_batches_and_budget_batches_hold_the_budget():
    plan = spread(50, 10, 3)
    assert sorted(i for r in plan for i in r) == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49]
    assert [len(r) for r in plan] == [4, 3, 3] and plan[0][0] == 0 and plan[0][1] == 16  # round-robin
    examples = [{"ids": [0] * n} for n in (5, 5, 5, 9, 2, 2, 7)]
    assert token_budget_batches(examples, list(range(7)), 10) == [[0, 1], [2], [3], [4, 5]]


# each ModernBERT-base / DeBERTa-v3-base run of benchmarks/gpu_speed.py: the training and prediction sides it
# must measure (token-budget batches: the packed path alone, training only)
GPU_RUNS = {
    "modernbert_base_batch32": ({"torchpalm", "torchpalm_padded", "hf", "hf_grouped"},
                                {"torchpalm", "torchpalm_padded", "hf", "hf_grouped"}),
    "modernbert_base_token_budget": ({"torchpalm", "torchpalm_budget"}, set()),
    "deberta_v3_base_batch32": ({"torchpalm", "torchpalm_padded", "hf", "hf_grouped"},
                                {"torchpalm", "torchpalm_padded", "hf"}),
}


@pytest.mark.parametrize("run", list(GPU_RUNS))
def test_gpu_speed_smoke_runs_modernbert_and_deberta_against_hf_on_cpu(tmp_path, monkeypatch, run):
    """benchmarks/gpu_speed.py's ModernBERT-base and DeBERTa-v3-base runs, at tiny sizes on CPU (`--smoke`, the
    script's check where no GPU is at hand): torchpalm's backbones (packed, padded, token-budget batches) and
    HF's ...ForSequenceClassification train and predict, with rates, MFU and ratios."""
    import gpu_speed

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the test process's threads alone
    results = gpu_speed.main(["--device", "cpu", "--precision", "fp32", "--smoke", "--runs", run,
                              "--out", str(tmp_path / "gpu_speed.json")])
    assert set(results) == {run}
    sst2 = results[run]["sst2"]
    train, predict = GPU_RUNS[run]
    assert set(sst2["train"]) == train and set(sst2["predict"]) == predict
    for side in (*sst2["train"].values(), *sst2["predict"].values()):
        assert side["real_tokens_per_second"] > 0 and 0 < side["mfu_real_tokens"] < 1
    if "hf" in train:
        assert "torchpalm_over_best_hf" in sst2["train_ratios"]
    if "torchpalm_budget" in train:  # token-budget batches are fuller than batches of 32 random sentences
        assert sst2["train"]["torchpalm_budget"]["real_token_fraction"] > sst2["train"]["torchpalm"][
            "real_token_fraction"]
    # MFU counts the non-embedding parameters: the tiny model's, without its token embeddings
    assert 0 < sst2["parameters_for_flops"] < 100_000
