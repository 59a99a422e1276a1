"""The names a model's tensors have in checkpoints and bundles: the one place that spells them.

    backbone.<name>    the backbone's parameters and buffers
    <task>.<name>      each head's (a head shared through `reuse_head_with` once, under the task that owns it)
    ema.<one of those> the exponential moving average of a weight (training checkpoints with EMA)

Written by `TrainLoop.state`, `Checkpointer` and `bundle`; read by `load_model_state`, `Checkpointer`,
`Predictor.load` and `convert.hf.load_backbone_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONE = "backbone"
EMA = "ema"


def prefixed(state: dict[str, torch.Tensor], scope: str) -> dict[str, torch.Tensor]:
    """`state` under `<scope>.<name>` ('backbone', a task name or 'ema')."""
    return {f"{scope}.{k}": v for k, v in state.items()}


def scoped(state: dict[str, torch.Tensor], scope: str) -> dict[str, torch.Tensor]:
    """The tensors of `state` under `<scope>.`, with that prefix removed (the inverse of `prefixed`)."""
    prefix = scope + "."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def model_state(backbone: nn.Module, heads: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The tensors of a backbone and of {task: head} under checkpoint names (give a shared head once)."""
    state = prefixed(backbone.state_dict(), BACKBONE)
    for task, head in heads.items():
        state.update(prefixed(head.state_dict(), task))
    return state


def head_scopes(state: dict[str, torch.Tensor]) -> list[str]:
    """The task names whose heads `state` holds (sorted)."""
    return sorted({k.split(".", 1)[0] for k in state if not k.startswith((BACKBONE + ".", EMA + "."))})
