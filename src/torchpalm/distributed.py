"""Data-parallel training on torch.distributed, started by `torchrun` (or any launcher that sets the
`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` environment variables).

A PALM script needs no change: the first `Trainer` built in a process started that way joins the process group
(NCCL on GPU, gloo on CPU) and uses the GPU of its local rank. Without those variables (a plain `python
run.py`) nothing here does anything and training is exactly the one-process path.

The rules (PALM's, spec §12, and what a data-parallel run must keep):
- the batch size a reader is loaded with is the *global* batch, split evenly over the ranks (an error at
  `load_data`/`fit_reader` when it does not divide);
- every rank walks the same shuffled order (a reader with `seed=None` takes rank 0's seed) and takes its own
  slice of each global batch, so no example is seen twice in a step;
- gradients are averaged by `DistributedDataParallel`, so every rank applies the same update;
- only rank 0 writes checkpoints, the metrics log and the console log; the others wait for its saves.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when a launcher started this process as one of several (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Joins the process group the launcher described (once per process); a no-op for a single process."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.init_process_group("gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Ranks in the process group (1 without one). Before `init()`, what the launcher announced."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and logs."""
    return rank() == 0


def local_device() -> torch.device:
    """This process's device: its local rank's GPU under a launcher, else the first GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0)
    return torch.device("cpu")


def broadcast_object(value):
    """Rank 0's `value` on every rank (the value itself without a process group)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(value) -> list:
    """Every rank's `value`, in rank order (`[value]` without a process group)."""
    if not active():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The average of `tensor` over the ranks (a copy; `tensor` itself without a process group)."""
    if not active():
        return tensor
    out = tensor.detach().float().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def barrier() -> None:
    if active():
        dist.barrier()


def check_batch_size(batch_size: int, what: str) -> None:
    """The global batch must split evenly over the ranks (PALM's rule)."""
    n = world_size()
    if batch_size % n:
        raise ValueError(f"{what}: batch_size {batch_size} is the global batch and must be divisible by the "
                         f"number of processes ({n}); use a multiple of {n}")
