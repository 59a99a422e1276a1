"""Task sampling (torchpalm.sampling): every strategy's probabilities against its published formula, realised
frequencies over 10,000 draws within 3 standard deviations, purity of the draws, PALM's budgets and run length."""

from __future__ import annotations

import math

import numpy as np
import pytest

from torchpalm.sampling import STRATEGIES, TaskSampler, run_length, step_budgets

SIZES = [100, 400, 1600, 25]
RATIOS = [1.0, 0.5, 2.0, 0.25]
DRAWS = 10_000


def expected(strategy: str, step: int, total: int, temperature=2.0, cap=None, anneal_to=0.2) -> np.ndarray:
    """The formulas as written by their authors, computed here independently of the sampler."""
    n = np.array(SIZES, dtype=float)
    if strategy == "ratio":  # PaddlePALM: mix_ratio_t / sum
        w = np.array(RATIOS)
    elif strategy == "proportional":  # MT-DNN: n_t / sum
        w = n
    elif strategy == "temperature":  # jiant: min(n, cap)^(1/T)
        w = np.minimum(n, cap if cap else np.inf) ** (1 / temperature)
    elif strategy == "annealed":  # BERT and PALs: n^alpha, alpha linear from 1 to anneal_to over the run
        alpha = 1 - (1 - anneal_to) * min(step / total, 1.0)
        w = n ** alpha
    else:
        w = np.ones(len(n))
    return w / w.sum()


@pytest.mark.parametrize("strategy,kwargs", [(s, {}) for s in STRATEGIES] + [
    ("temperature", {"temperature": 5.0, "max_examples": 300}), ("annealed", {"anneal_to": 0.0})])
def test_realised_frequencies_match_the_configured_probabilities(strategy, kwargs):
    sampler = TaskSampler(strategy, SIZES, RATIOS, seed=7, total_steps=DRAWS, **kwargs)
    formula_args = {"temperature": kwargs.get("temperature", 2.0), "cap": kwargs.get("max_examples"),
                    "anneal_to": kwargs.get("anneal_to", 0.2)}
    probs = np.array([expected(strategy, s, DRAWS, **formula_args) for s in range(DRAWS)])
    np.testing.assert_allclose(sampler.probabilities(0), probs[0], rtol=1e-12)
    np.testing.assert_allclose(sampler.probabilities(DRAWS // 2), probs[DRAWS // 2], rtol=1e-12)
    counts = np.bincount([sampler.draw(s) for s in range(DRAWS)], minlength=len(SIZES))
    mean = probs.sum(axis=0)
    std = np.sqrt((probs * (1 - probs)).sum(axis=0))
    assert np.all(np.abs(counts - mean) <= 3 * std), (strategy, counts, mean.round(1), std.round(1))


def test_annealed_goes_from_proportional_to_the_target_exponent():
    s = TaskSampler("annealed", SIZES, RATIOS, seed=0, anneal_to=0.0, total_steps=100)
    np.testing.assert_allclose(s.probabilities(0), np.array(SIZES) / sum(SIZES))
    np.testing.assert_allclose(s.probabilities(100), [0.25] * 4)  # uniform at the end
    np.testing.assert_allclose(s.probabilities(500), [0.25] * 4)  # and after


def test_draws_are_a_pure_function_of_seed_and_step():
    a = TaskSampler("proportional", SIZES, RATIOS, seed=3)
    b = TaskSampler("proportional", SIZES, RATIOS, seed=3)
    forward = [a.draw(s) for s in range(3000)]
    backward = [b.draw(s) for s in reversed(range(3000))][::-1]  # any order, same draws
    assert forward == backward
    other = TaskSampler("proportional", SIZES, RATIOS, seed=4)
    assert forward != [other.draw(s) for s in range(3000)]
    restored = TaskSampler("proportional", SIZES, RATIOS, seed=99)
    restored.load_state_dict(a.state_dict())
    assert [restored.draw(s) for s in range(1500, 3000)] == forward[1500:]


def test_budgets_follow_palm_and_the_run_length_is_exact():
    ratio = TaskSampler("ratio", SIZES, RATIOS, seed=1)
    # PALM: int(num_epochs * mix_ratio_t * (reference examples // batch)); reference steps per epoch = 10
    assert step_budgets(ratio, ref=0, ref_steps_per_epoch=10, num_epochs=3) == [30, 15, 60, 7]
    prop = TaskSampler("proportional", SIZES, RATIOS, seed=1)
    budgets = step_budgets(prop, ref=1, ref_steps_per_epoch=10, num_epochs=2)
    assert budgets[1] == 20 and budgets == [5, 20, 80, 1]  # each task's expected share of that run
    is_aux = [False, False, False, True]
    total = run_length(ratio, [30, 15, 60, 7], is_aux)
    # simulate PALM's loop: draw, count, stop when every main task reached its budget
    counts, step = [0] * 4, 0
    while not all(counts[t] >= b for t, b in enumerate([30, 15, 60, 7]) if not is_aux[t]):
        counts[ratio.draw(step)] += 1
        step += 1
    assert total == step and total >= 105
    # from a resumed position the remaining run is the same
    assert run_length(ratio, [30, 15, 60, 7], is_aux, start=50,
                      task_steps=np.bincount([ratio.draw(s) for s in range(50)], minlength=4).tolist()) == total


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sampling must be one of"):
        TaskSampler("round_robin", SIZES, RATIOS, seed=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TaskSampler("temperature", SIZES, RATIOS, seed=0, temperature=0)
    with pytest.raises(ValueError, match="mix ratios must be >= 0"):
        TaskSampler("ratio", SIZES, [1, -1, 0, 0], seed=0)
    never = TaskSampler("ratio", [10, 10], [1.0, 0.0], seed=0)
    assert run_length(never, [5, 0], [False, False]) == 5  # a zero-ratio task has a zero budget
    with pytest.raises(RuntimeError, match="would not finish"):
        run_length(never, [5, 5], [False, False])
    assert math.isclose(sum(TaskSampler("uniform", SIZES, RATIOS, seed=0).probabilities()), 1.0)
