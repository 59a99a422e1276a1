"""The model that trains and predicts: one backbone and a head per task (`MultiTaskModel`), and what running it
needs (the device, autocast, a batch on the device, the backbone told which features the heads read).

Inference code (`prediction`, `predictor`, `bundle`) and training code (`loop`, `trainer`) both build on this
module; it imports neither.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from . import distributed


def default_device() -> torch.device:
    """The GPU (under torchrun: the local rank's), else the CPU."""
    return distributed.local_device()


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast, or nothing for fp32 ('auto': bf16 on CUDA, fp32 on CPU)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


_TAKES_OUTPUTS: dict[type, bool] = {}


def backbone_features(backbone: nn.Module, heads: nn.Module | list[nn.Module], batch: dict[str, torch.Tensor]) -> dict:
    """`backbone(batch)`, told which features the head(s) will read (the union of `inputs_attrs["backbone"]`) when
    the backbone's forward takes `outputs=` (BERT and its kind then skip work no head reads: the last layer's
    non-[CLS] rows)."""
    kind = type(backbone)
    if kind not in _TAKES_OUTPUTS:
        _TAKES_OUTPUTS[kind] = "outputs" in inspect.signature(backbone.forward).parameters
    if not _TAKES_OUTPUTS[kind]:
        return backbone(batch)
    wanted: set[str] = set()
    for head in heads if isinstance(heads, list) else [heads]:
        try:
            wanted.update(head.inputs_attrs["backbone"])
        except (AttributeError, KeyError, TypeError, NotImplementedError):
            return backbone(batch)  # a head that does not say what it reads gets everything
    return backbone(batch, outputs=sorted(wanted))


def same_inputs(a: dict, b: dict, keys: list[str]) -> bool:
    """Do two batches give the backbone the same inputs (so one backbone pass serves the heads of both)? The
    same names, shapes and values: batches of the same shape but other ids do not share a pass."""
    return all(k in a and k in b and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in keys)


class MultiTaskModel(nn.Module):
    """One backbone and a head per task: `forward(task, batch)` is `heads[task](backbone(batch), batch)`.

    With a single head, `forward(batch)` works too (the model `Trainer.build_forward` returns). Training runs it
    in train mode; prediction runs the same modules in eval mode, several tasks in one call:
    `forward([task, ...], [batch, ...], read_by=[head, ...], backbone_inputs=[name, ...])` returns
    `([outputs of each task], backbone passes)`, running the backbone once for the tasks whose batches hold the
    same `backbone_inputs` (`same_inputs`) and telling it the features the `read_by` heads read
    (`backbone_features`; the predict heads' declarations). Both go through `__call__`, so module hooks (FSDP's)
    see every pass.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, task: str | dict | list[str], batch: dict[str, torch.Tensor] | list[dict] | None = None,
                read_by: list[nn.Module] | None = None, backbone_inputs: list[str] | None = None):
        if isinstance(task, list):
            return self._predict_step(task, batch, read_by, backbone_inputs)
        if batch is None and isinstance(task, dict):
            if len(self.heads) != 1:
                raise TypeError(f"this model has heads {list(self.heads)}: call model(task_name, batch)")
            task, batch = next(iter(self.heads)), task
        head = self.heads[task]
        return head(backbone_features(self.backbone, head, batch), batch)

    def _predict_step(self, tasks: list[str], batches: list[dict], read_by: list[nn.Module],
                      backbone_inputs: list[str]) -> tuple[list[dict[str, torch.Tensor]], int]:
        computed: list[tuple[dict, dict]] = []  # (batch, backbone features) of this step
        outputs = []
        for task, batch in zip(tasks, batches, strict=True):
            features = next((f for b, f in computed if same_inputs(b, batch, backbone_inputs)), None)
            if features is None:  # computed for every head of the step that may share it
                features = backbone_features(self.backbone, list(read_by), batch)
                computed.append((batch, features))
            outputs.append(self.heads[task](features, batch))
        return outputs, len(computed)


def backbone_record(backbone: nn.Module | None) -> dict:
    """The backbone's class and config, as checkpoints and bundles record them."""
    return {"class": type(backbone).__name__, "config": getattr(backbone, "config", {})}


def head_record(head: nn.Module | None) -> dict:
    """A head's class and constructor arguments, as checkpoints and bundles record them."""
    return {"class": type(head).__name__, "config": head.config() if head is not None else {}}
