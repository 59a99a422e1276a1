"""Batch plans that change the data order to cut padding: length-grouped batches and token-budget batches.

Both are options (`Reader.set_batching`); PALM's order (shuffle, then consecutive batches of `batch_size`) stays
the default. Each plan is a pure function of the example lengths and a random generator the reader derives from
`(seed, epoch)`, so a reader's state is still `(seed, epoch, position)` and a resumed run sees the same batches.

* `length_grouped_batches`: HuggingFace's `group_by_length` recipe: shuffle, cut the order into megabatches of
  `megabatch_factor * batch_size` examples, sort each megabatch by length (longest first) and cut it into
  batches; then shuffle the batch order, so long and short batches alternate. Every batch keeps `batch_size`
  examples (train drops the partial rest, as without grouping), so the step count is unchanged.
* `token_budget_batches`: fairseq's `batch_by_size`: sort by length once (ties in a seeded random order), then
  fill each batch up to `max_tokens` tokens, counted padded (`batch rows * longest row`, what the model computes
  on) or real (the sum of the lengths, for packed batches); the batches are fixed for the run and only their
  order is shuffled each epoch, so every epoch has the same number of steps.
"""

from __future__ import annotations

import numpy as np

TOKEN_COUNTS = ("padded", "real")


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None, megabatch_factor: int = 50
) -> list[np.ndarray]:
    """One epoch of full batches of `batch_size` indices, grouped by length (see the module docstring).

    Args:
        lengths: `[N]` example lengths.
        batch_size: examples per batch.
        rng: the epoch's generator (shuffles the examples, then the batches); None keeps the file order of the
            examples and the longest-first order of the batches.
        megabatch_factor: batches per megabatch (HF uses 50).

    Returns:
        `max(N // batch_size, 1)` index arrays (the partial rest is dropped; N < batch_size gives one batch).
    """
    n = len(lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    order = order[: max(n // batch_size, 1) * batch_size]
    mega = batch_size * megabatch_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def token_budget_batches(
    lengths: np.ndarray, max_tokens: int, count: str = "padded", rng: np.random.Generator | None = None,
    max_examples: int | None = None,
) -> list[np.ndarray]:
    """Batches of indices holding at most `max_tokens` tokens each, from the length-sorted order.

    Args:
        lengths: `[N]` example lengths.
        max_tokens: the token budget of a batch.
        count: 'padded' (rows times the longest row) or 'real' (sum of the lengths).
        rng: breaks ties between equal lengths at random (else by index).
        max_examples: also cap the rows of a batch (None: no cap).

    Raises:
        ValueError: when one example alone is over the budget (naming its index and length).
    """
    if count not in TOKEN_COUNTS:
        raise ValueError(f"token count must be one of {TOKEN_COUNTS}, got {count!r}")
    n = len(lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    order = order[np.argsort(lengths[order], kind="stable")]
    too_long = int(order[-1]) if n and lengths[order[-1]] > max_tokens else None
    if too_long is not None:
        raise ValueError(f"max_tokens={max_tokens} is less than example {too_long}'s {int(lengths[too_long])} "
                         f"tokens; raise max_tokens to at least the longest example (max_len)")
    batches, start, longest, total = [], 0, 0, 0
    for k, i in enumerate(order.tolist()):
        length = int(lengths[i])
        rows = k - start + 1
        cost = rows * max(longest, length) if count == "padded" else total + length
        if k > start and (cost > max_tokens or (max_examples is not None and rows > max_examples)):
            batches.append(order[start:k])
            start, longest, total = k, 0, 0
        longest, total = max(longest, length), total + length
    if n:
        batches.append(order[start:])
    return batches
