"""ONNX export of a backbone with one or several heads (`Predictor.to_onnx`, `palm.export(..., onnx=True)`).

One graph: the backbone runs once and every head reads its features; one output per task, named after the
task (`Head.export_output`). Inputs are the int64 tensors the readers yield, named as in a batch; the batch
axis and the sequence axes are dynamic. Exported with `torch.onnx.export(dynamo=True)` (torch.export).
"""

from __future__ import annotations

import torch
from torch import nn

# a sample that every built-in reader accepts, to trace the graph with real batches (values do not matter)
SAMPLE_TEXTS = ["the first sample sentence to trace", "a second one"]
SAMPLE_PAIRS = [("the first sample question", "a context to trace the graph with"), ("a second", "one")]


class ExportedModel(nn.Module):
    """backbone + heads as positional tensors -> one tensor per task (for tracing)."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], input_names: list[str]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = dict(zip(self.input_names, tensors, strict=True))
        features = self.backbone(batch)
        return tuple(head.export_output(features, batch) for head in self.heads.values())


def sample_batch(predictor, tasks: list[str]) -> dict[str, torch.Tensor]:
    """Real batches of the tasks' readers on a two-example sample, merged (the backbone's inputs from the first)."""
    batch: dict[str, torch.Tensor] = {}
    for name in tasks:
        reader = predictor.reader_for(name, SAMPLE_TEXTS, 2)
        try:
            one = next(iter(reader))
        except (TypeError, ValueError):  # readers of pairs
            one = next(iter(predictor.reader_for(name, SAMPLE_PAIRS, 2)))
        for key, value in one.items():
            batch.setdefault(key, value)
    return batch


def export_onnx(predictor, tasks: list[str], path: str) -> str:
    """Writes `path` (see the module docstring); returns it."""
    from torch.export import Dim

    backbone = predictor.backbone
    heads = {n: predictor.heads[n] for n in tasks}
    wanted = list(backbone.inputs_attr)
    for head in heads.values():
        wanted += [k for k in head.inputs_attrs["reader"] if k not in wanted and k != "unique_ids"]
    sample = sample_batch(predictor, tasks)
    missing = [k for k in wanted if k not in sample]
    if missing:
        raise ValueError(f"cannot export tasks {tasks}: their readers do not yield {missing}")
    batch_dim, seq_dim, words_dim = Dim("batch"), Dim("sequence"), Dim("words")
    dynamic = []
    for name in wanted:
        rank = sample[name].dim()
        second = words_dim if name == "word_starts" else seq_dim
        dynamic.append({0: batch_dim, 1: second} if rank == 2 else {0: batch_dim})
    model = ExportedModel(backbone, heads, wanted).eval()
    args = tuple(sample[k].to(predictor.device) for k in wanted)
    # one self-contained file, unless the weights pass protobuf's 2 GB limit (then `<path>.data` beside it)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        torch.onnx.export(model, args, path, input_names=wanted, output_names=list(heads), dynamo=True,
                          dynamic_shapes=(tuple(dynamic),), optimize=True, verbose=False,
                          external_data=weight_bytes > 1.8e9)
    return path
