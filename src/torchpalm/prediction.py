"""The one prediction loop: `Trainer.predict`, `MultiHeadTrainer.predict`, evaluation and `Predictor.predict`
all run `predict_tasks`.

A prediction runs the model that trains (`model.MultiTaskModel`) in eval mode, under `torch.no_grad`:

    each task's reader -> batch -> device -> model(tasks, batches): the backbone once for the tasks whose
    batches give it the same inputs -> each task's head -> numpy outputs -> the predict head's
    batch_postprocess; at the end its epoch_postprocess (with the reader's epoch outputs) writes
    `predictions.json` and returns the results.

The predict head (PALM's `build_predict_forward(pred_backbone, pred_head)`, or a bundle's head) contributes
what it declares: which reader fields and backbone features it reads, and the post-processing (it also
collects the results); its parameters are not used. Which weights predict (EMA, gathered under FSDP) is the
training loop's business (`TrainLoop.predicting`).

Tasks whose readers have the same number of batches go through them step by step together, and share a
backbone pass at a step only when their batches hold the same backbone inputs (same ids, not just the same
shape). Under torchrun (`spread=True`) batch k goes to rank k % world_size and the outputs come back to every
rank in the original order, so every rank returns all the results.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import distributed
from .model import MultiTaskModel, autocast, to_device

logger = logging.getLogger("torchpalm")


@dataclass
class PredictTask:
    """One task to predict: the name of its head in the model, the predict head (what it reads; post-processing
    and the results buffer), the predict-phase reader (one whole pass) and where its predictions go."""

    name: str
    head: nn.Module
    reader: object
    output_dir: str | None = None


@dataclass
class Predictions:
    """What `predict_tasks` returns: {task: results} and how many backbone passes it ran (this rank's)."""

    results: dict[str, object]
    backbone_passes: int


def outputs_to_numpy(outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
            for k, v in outputs.items() if k not in ("loss", "loss_count")}


def finish_prediction(reader, head: nn.Module, output_dir: str | None):
    """The head's epoch post-processing (MRC answers need the reader's examples); writes files, returns results."""
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
    # A reader of the user's own need not have get_epoch_outputs (heads cope without it, e.g. no label names).
    wanted = head.epoch_inputs_attrs and hasattr(reader, "get_epoch_outputs")
    post = {"reader": reader.get_epoch_outputs() if wanted else None}
    return head.epoch_postprocess(post, output_dir=output_dir)


def progress_bar(total: int | None, initial: int, desc: str):
    from tqdm.auto import tqdm

    # disable=None hides the bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total if total and math.isfinite(total) else None, initial=initial, desc=desc,
                disable=None if distributed.is_main() else True, leave=False, dynamic_ncols=True)


@torch.no_grad()
def predict_batches(model: MultiTaskModel, tasks: list[PredictTask], batches: list[dict], device: torch.device,
                    precision: str, backbone_inputs: list[str]) -> tuple[list[dict[str, np.ndarray]], int]:
    """One step: each task's head outputs (numpy) on its batch, and the number of backbone passes it took."""
    batches = [to_device(b, device) for b in batches]
    with autocast(device, precision):
        outputs, passes = model([t.name for t in tasks], batches, read_by=[t.head for t in tasks],
                                backbone_inputs=backbone_inputs)
    return [outputs_to_numpy(o) for o in outputs], passes


def predict_one_batch(model: MultiTaskModel, task: PredictTask, batch: dict, device: torch.device, precision: str,
                      backbone_inputs: list[str]) -> dict[str, np.ndarray]:
    """PALM's `predict_one_batch`: the task head's outputs (numpy, no post-processing) on one batch, the model in
    eval mode (its mode restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        outputs, _ = predict_batches(model, [task], [batch], device, precision, backbone_inputs)
    finally:
        model.train(was_training)
    return outputs[0]


@torch.no_grad()
def predict_tasks(model: MultiTaskModel, tasks: list[PredictTask], device: torch.device, precision: str,
                  backbone_inputs: list[str], print_steps: int = 0, spread: bool = False) -> Predictions:
    """A whole pass over every task's reader (see the module docstring); returns the results of each task.

    Args:
        model: the backbone and the heads (keyed by task name) that compute the predictions; its train/eval
            mode is restored afterwards.
        tasks: the tasks to predict.
        device, precision: where and in which precision (`model.autocast`) the model runs.
        backbone_inputs: the batch fields the backbone reads (tasks share a pass when these are equal).
        print_steps: log the speed every this many steps (0: never).
        spread: under torchrun, deal the batches out to the ranks and gather the outputs (every rank calls).
    """
    ranks, me = (distributed.world_size(), distributed.rank()) if spread else (1, 0)
    groups: dict[int, list[PredictTask]] = {}
    for t in tasks:
        t.reader.reset()  # a whole pass, whatever an earlier call consumed
        t.head.reset()
        groups.setdefault(t.reader.steps_per_epoch, []).append(t)
    was_training = model.training
    model.eval()
    passes = 0
    try:
        for steps, group in groups.items():
            mine: list[list[dict]] = []
            progress = progress_bar(steps, 0, group[0].name + " predict" if len(tasks) == 1 else "predict")
            last = time.time()
            for k, batches in enumerate(zip(*(t.reader for t in group)), 1):
                if (k - 1) % ranks == me:
                    outputs, n = predict_batches(model, group, list(batches), device, precision, backbone_inputs)
                    passes += n
                    if ranks > 1:
                        mine.append(outputs)
                    else:
                        for t, out in zip(group, outputs):
                            t.head.batch_postprocess(out)
                progress.update(1)
                if print_steps > 0 and k % print_steps == 0:
                    now = time.time()
                    logger.info("batch %d/%d, speed: %.2f steps/s", k, steps, print_steps / max(now - last, 1e-9))
                    last = now
            progress.close()
            if ranks > 1:
                for outputs in distributed.gather_in_order(mine):
                    for t, out in zip(group, outputs):
                        t.head.batch_postprocess(out)
    finally:
        model.train(was_training)
    results = {t.name: finish_prediction(t.reader, t.head, t.output_dir) for t in tasks}
    return Predictions(results, passes)
