"""Fully sharded data parallelism (PyTorch's FSDP2, `torch.distributed.fsdp.fully_shard`) for backbones too
large to hold, with their gradients and Adam moments, once per GPU.

`Trainer(fsdp=True)`, `MultiHeadTrainer(fsdp=True)` or `TORCHPALM_FSDP=1` in the environment (so a PALM script
needs no change) replace DDP under torchrun: each transformer layer of the backbone is one FSDP unit, and the
root unit holds the embeddings, the pooler and every head (small; a tied MaskLM head shares the embedding table,
which must stay in one unit). Parameters, gradients and optimizer moments are sharded over the ranks; a layer's
weights are gathered for its forward and backward only. In one process the option does nothing (as DDP).

What stays the same as DDP, so the rest of torchpalm does not see the sharding:
- checkpoints hold full (unsharded) tensors, in the same files: weights, EMA and a torch optimizer state keyed
  by parameter index. Every rank takes part in gathering them; rank 0 writes. So a checkpoint written under
  FSDP resumes in one process, under DDP or under FSDP with any number of ranks, and the other way round;
- loading (`load_pretrain`, `load_ckpt`) takes full tensors from the file and keeps each rank's shard;
- prediction, evaluation and exports gather the full weights for the pass (`unsharded`, entered by
  `TrainLoop.predicting`), so a rank predicts its batches through the trained model on its own, as under DDP.
  This needs the whole model in memory on each rank during prediction. Under FSDP, `predict_one_batch`
  gathers the weights on each call, so every rank must call it the same number of times (a collective), as
  every rank of a PALM script does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

FSDP_ENV = "TORCHPALM_FSDP"


def wanted(option: bool | None) -> bool:
    """The trainer's `fsdp=` option, or TORCHPALM_FSDP=1 when the script did not say."""
    if option is not None:
        return bool(option)
    return os.environ.get(FSDP_ENV, "0").strip().lower() in ("1", "true", "yes")


def shard_model(model: nn.Module) -> None:
    """Applies FSDP2 in place: every module of an `nn.ModuleList` in the backbone (its transformer layers) is
    a unit, then the whole model (embeddings, pooler, heads) is the root unit."""
    for module in model.backbone.modules():
        if isinstance(module, nn.ModuleList):
            for layer in module:
                if any(p.requires_grad for p in layer.parameters()):
                    fully_shard(layer)
    fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank calls it in the same order); others as they are."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: full(v) for k, v in state.items()}


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`value` (a full tensor every rank holds, e.g. read from a file) cut to `like`'s sharding; each rank
    keeps its own piece, with no communication. Tensors for unsharded places come back as they are."""
    if not isinstance(like, DTensor) or isinstance(value, DTensor):
        return value
    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def full_optimizer_state(state: dict) -> dict:
    """A torch optimizer's `state_dict()` with its sharded moments gathered (same keys and layout; the states of
    "task_states", one per task with `balancing.TaskMoments`, too)."""
    def gathered(states: dict) -> dict:
        return {i: {k: full(v) for k, v in s.items()} for i, s in states.items()}

    return {**state, "state": gathered(state["state"]),
            **({"task_states": {t: gathered(s) for t, s in state["task_states"].items()}}
               if "task_states" in state else {})}


def sharded_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full optimizer `state_dict` (from a file) with each parameter's moments cut to that parameter's shard,
    ready for `optimizer.load_state_dict` (which keys parameters by their index over the groups)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def sharded(states: dict) -> dict:
        out = {}
        for i, s in states.items():
            p = params[int(i)] if int(i) < len(params) else None
            out[i] = {k: shard_like(v, p) if p is not None and isinstance(v, torch.Tensor) and v.shape == p.shape
                      else v for k, v in s.items()}
        return out

    return {**state, "state": sharded(state["state"]),
            **({"task_states": {t: sharded(s) for t, s in state["task_states"].items()}}
               if "task_states" in state else {})}


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Gathers every unit's full weights onto each rank for the block (a collective), then frees them again.
    Inside, forward passes through the model communicate nothing: the units are already whole, and the layers
    are told not to reshard after their forward (each rank may run a different number of batches)."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    layers = [unit for unit in units if unit is not model]  # the root never reshards after forward
    for unit in units:
        unit.unshard()
    for layer in layers:
        layer.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for layer in layers:
            layer.set_reshard_after_forward(True, recurse=False)
        for unit in units:
            unit.reshard()
