"""Which task trains at each step of multi-task training: the sampling strategies and the step budgets.

The draw at global step `s` is a pure function of `(seed, s)` (no global numpy state, unlike PALM's
`np.random.choice`, spec §17.22), so a resumed run draws exactly what an uninterrupted one would, every process
of a distributed run draws the same task, and the length of a whole run can be computed before it starts.

Strategies (probability of task t; n_t = its number of training examples):
    ratio         mix_ratio_t / sum(mix_ratio)                        PaddlePALM's rule, the default
    proportional  n_t / sum(n)                                        MT-DNN
    temperature   min(n_t, cap)^(1/T), normalised                    jiant's "temperature" (T=1: proportional)
    annealed      n_t^alpha, alpha from 1 down to `anneal_to` linearly over training  (BERT and PALs)
    uniform       1 / number of tasks
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("ratio", "proportional", "temperature", "annealed", "uniform")
_BLOCK = 1024  # draws per generator block (one generator per block keeps a draw O(1) and still pure)


class TaskSampler:
    """Draws a task index per global step.

    Args:
        strategy: one of STRATEGIES.
        sizes: number of training examples of each task (proportional, temperature, annealed).
        mix_ratios: each task's mix ratio (ratio).
        seed: the generator seed; the draws depend on nothing else.
        temperature: T of the temperature strategy (> 0).
        max_examples: optional cap on n_t before the temperature is applied (jiant's `examples_cap`).
        anneal_to: the exponent the annealed strategy ends at (0: uniform at the end; BERT and PALs used 0.2).
        total_steps: the run length the annealing is spread over (annealed only).
    """

    def __init__(self, strategy: str, sizes: list[int], mix_ratios: list[float], seed: int,
                 temperature: float = 2.0, max_examples: int | None = None, anneal_to: float = 0.2,
                 total_steps: int | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"sampling must be one of {list(STRATEGIES)}, got {strategy!r}")
        if len(sizes) != len(mix_ratios) or not sizes:
            raise ValueError("sizes and mix_ratios must be non-empty and of the same length")
        if strategy == "temperature" and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if strategy == "ratio" and (min(mix_ratios) < 0 or sum(mix_ratios) <= 0):
            raise ValueError(f"mix ratios must be >= 0 with a positive sum, got {mix_ratios}")
        if strategy != "ratio" and min(sizes) < 1:
            raise ValueError(f"every task needs at least one training example, got sizes {sizes}")
        if max_examples is not None and max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {max_examples}")
        self.strategy = strategy
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.mix_ratios = np.asarray(mix_ratios, dtype=np.float64)
        self.seed = int(seed)
        self.temperature, self.max_examples = float(temperature), max_examples
        self.anneal_to = float(anneal_to)
        self.total_steps = total_steps
        self._block_index, self._block = -1, None

    def probabilities(self, step: int = 0) -> np.ndarray:
        """The probability of each task at global step `step` (0-based); only 'annealed' depends on it."""
        n = self.sizes
        if self.strategy == "ratio":
            w = self.mix_ratios
        elif self.strategy == "proportional":
            w = n
        elif self.strategy == "temperature":
            capped = np.minimum(n, self.max_examples) if self.max_examples is not None else n
            w = capped ** (1.0 / self.temperature)
        elif self.strategy == "annealed":
            w = n ** self._alpha(self._progress(step))
        else:
            w = np.ones_like(n)
        return w / w.sum()

    def _progress(self, step: int) -> float:
        if not self.total_steps:
            raise ValueError("the annealed strategy needs total_steps (the length of the run)")
        return min(max(step, 0) / self.total_steps, 1.0)

    def _alpha(self, progress: float) -> float:
        return 1.0 - (1.0 - self.anneal_to) * progress

    def mean_probabilities(self) -> np.ndarray:
        """Each task's share of the steps over a whole run (the time average for 'annealed')."""
        if self.strategy != "annealed":
            return self.probabilities()
        weights = [self.sizes ** self._alpha(p) for p in np.linspace(0.0, 1.0, 201)]
        return np.mean([w / w.sum() for w in weights], axis=0)

    def _uniform(self, step: int) -> float:
        block, offset = divmod(step, _BLOCK)
        if block != self._block_index:
            self._block = np.random.default_rng([self.seed, block]).random(_BLOCK)
            self._block_index = block
        return float(self._block[offset])

    def draw(self, step: int) -> int:
        """The task index for global step `step`."""
        cdf = np.cumsum(self.probabilities(step))
        return int(min(np.searchsorted(cdf, self._uniform(step) * cdf[-1], side="right"), len(cdf) - 1))

    def state_dict(self) -> dict:
        return {"strategy": self.strategy, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("strategy", self.strategy) != self.strategy:
            raise ValueError(f"the checkpoint was trained with sampling {state['strategy']!r}, "
                             f"this trainer uses {self.strategy!r}")
        self.seed = int(state["seed"])
        self._block_index, self._block = -1, None


def step_budgets(sampler: TaskSampler, ref: int, ref_steps_per_epoch: int, num_epochs: float) -> list[int]:
    """Each task's number of steps (PALM spec §4.2).

    'ratio' is PaddlePALM's rule exactly: `int(num_epochs * mix_ratio_t * steps_per_epoch_of_the_reference)`.
    The other strategies give every task its expected share of the run in which the reference task trains
    `num_epochs` epochs: `int(num_epochs * steps_per_epoch_ref * share_t / share_ref)` (the same as PALM's rule
    when the reference's ratio is 1).
    """
    base = num_epochs * ref_steps_per_epoch
    if sampler.strategy == "ratio":
        return [int(base * r) for r in sampler.mix_ratios]
    share = sampler.mean_probabilities()
    return [int(base * s / share[ref]) for s in share]


def run_length(sampler: TaskSampler, budgets: list[int], is_aux: list[bool], start: int = 0,
               task_steps: list[int] | None = None) -> int:
    """The exact number of global steps until every main task has reached its budget (PALM's finish rule:
    finished tasks keep being sampled, auxiliary tasks never block the end), given the sampler's seed."""
    counts = list(task_steps) if task_steps is not None else [0] * len(budgets)
    remaining = {t for t, aux in enumerate(is_aux) if not aux and counts[t] < budgets[t]}
    step = start
    while remaining:
        if step - start > 100 * (sum(budgets) + 1) + 10_000:
            raise RuntimeError("multi-task training would not finish: a main task is (almost) never sampled; "
                               f"probabilities {sampler.probabilities(step).round(6).tolist()}")
        t = sampler.draw(step)
        counts[t] += 1
        if t in remaining and counts[t] >= budgets[t]:
            remaining.discard(t)
        step += 1
    return step
