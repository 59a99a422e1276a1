"""Head base class: a plain `nn.Module` from backbone outputs (+ reader fields) to logits and a loss."""

from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn

logger = logging.getLogger("torchpalm")


class Head(nn.Module):
    """A task head.

    `forward(backbone_outputs, batch)` returns a dict of tensors: the predictions, plus `loss` (a scalar)
    when the batch carries labels. After each predict batch the trainer calls `batch_postprocess(outputs)`
    with numpy arrays, and `epoch_postprocess(post_inputs, output_dir)` at the end, which writes
    `output_dir/predictions.json` and returns the results. Heads never print; they log.

    A head of your own (see docs/customizing.md) subclasses this and defines:

    * `inputs_attrs`: `{"reader": {name: (shape, dtype)}, "backbone": {name: (shape, dtype)}}`, the batch
      fields and backbone outputs `forward` reads (checked by `build_forward` and `fit_reader`); the reader
      part usually depends on `self.phase` (labels only in 'train').
    * `forward(backbone_outputs, batch) -> dict`: as above. The trainer backpropagates `loss`. When `loss` is
      a mean, `loss_count` (a scalar tensor: the examples, words or tokens it averages over) lets data-parallel
      training weight each process's mean by its share, so the step follows the mean over the global batch
      exactly (without it, the processes' means are averaged: exact only when their counts are equal).
    * for prediction, `batch_postprocess(outputs)` appending to `self._results` (the base `epoch_postprocess`
      returns and writes them) and, if needed, `epoch_postprocess`.

    Optional: `config()` (constructor arguments, saved in checkpoints), `no_weight_decay()` and
    `param_lr_scales()` (the optimizer's parameter groups), `check_reader(reader)` (validate the data before
    training). Evaluation during training scores a custom head with `trainer.set_dev(reader, metric=fn)`.
    """

    def __init__(self, phase: str = "train"):
        super().__init__()
        if phase not in ("train", "predict"):
            raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
        self._phase = phase
        self._results: list = []

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def inputs_attrs(self) -> dict:
        """{'reader': {name: attr}, 'backbone': {name: attr}} this head reads (checked by `fit_reader`)."""
        return {"reader": {}, "backbone": {}}

    @property
    def outputs_attr(self) -> dict:
        return {}

    @property
    def epoch_inputs_attrs(self) -> dict:
        return {}

    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable, to rebuild this head without the training script."""
        return {}

    def export_output(self, backbone_outputs: dict, batch: dict) -> torch.Tensor:
        """The one tensor this head contributes to an exported (ONNX) graph: its `logits` by default. Heads
        whose prediction needs a search (a CRF's Viterbi path) export the scores the search runs on."""
        return self(backbone_outputs, batch)["logits"]

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (relative to this head) that must not be weight-decayed."""
        return set()

    def param_lr_scales(self) -> dict[str, float]:
        """Learning-rate factors for some of this head's parameters (relative names), e.g. CRF transitions."""
        return {}

    def check_reader(self, reader) -> None:
        """Validates the reader's data against this head (e.g. label range) before training starts."""

    def reset(self) -> None:
        self._results = []

    def batch_postprocess(self, outputs: dict) -> None:
        """Turns one batch of numpy outputs into per-example results (kept until `epoch_postprocess`)."""

    def epoch_postprocess(self, post_inputs: dict | None, output_dir: str | None = None):
        results, self._results = self._results, []
        if output_dir is not None:
            write_json_lines(results, output_dir)
        return results


def add_label_names(results: list[dict], post_inputs: dict | None) -> list[dict]:
    """Adds `"label_name"` (the predicted label's name) to every result when the reader had a label map, i.e.
    gave `id2label` in its epoch outputs; `"label"` stays the integer id, as in PALM."""
    id2label = ((post_inputs or {}).get("reader") or {}).get("id2label")
    if id2label:
        for r in results:
            r["label_name"] = id2label.get(r["label"])
    return results


def write_json_lines(results: list, output_dir: str, ensure_ascii: bool = True,
                     name: str = "predictions.json") -> str:
    """Writes one JSON object per line to `output_dir/<name>` (PALM's `predictions.json` by default)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r, ensure_ascii=ensure_ascii) + "\n")
    logger.info("Predictions saved at %s", path)
    return path


def truncated_normal_(weight: torch.Tensor, std: float) -> torch.Tensor:
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
