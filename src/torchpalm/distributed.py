"""Data-parallel training on torch.distributed, started by `torchrun` (or any launcher that sets the
`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` environment variables).

A PALM script needs no change: in a process started that way, the first `build_backward`, `fit_reader` or
`train` of a Trainer joins the process group (NCCL on GPU, gloo on CPU; `process.prepare_process`; constructors
change nothing outside the object) and the Trainer uses the GPU of its local rank. Without those variables (a plain `python
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

import atexit
import datetime
import gc
import logging
import os
import sys

import torch
import torch.distributed as dist

logger = logging.getLogger("torchpalm")

# How many processes a plain `python run.py` starts by itself (default: one per visible GPU); "1" turns it off.
NPROC_ENV = "TORCHPALM_NPROC"


def launched() -> bool:
    """True when a launcher started this process as one of several (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def wanted_processes(device: torch.device | None = None) -> int:
    """Processes a plain `python script.py` should run as: TORCHPALM_NPROC if set, else one per visible GPU
    (one when the script asked for the CPU, or runs under pytest, whose whole session would be re-run)."""
    value = os.environ.get(NPROC_ENV)
    if value is not None:
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{NPROC_ENV} must be a positive integer (1: one process), got {value!r}")
        return int(value)
    if (device is not None and device.type != "cuda") or "PYTEST_CURRENT_TEST" in os.environ:
        return 1
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def relaunch_command(nproc: int) -> list[str] | None:
    """torchrun's arguments that re-run this very script (or `python -m module`) as `nproc` processes; None
    when there is no script to re-run (an interactive session, `python -c`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    args = ["--standalone", f"--nproc_per_node={nproc}"]
    if spec is not None and spec.name:
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [*args, "--module", name, *sys.argv[1:]]
    script = getattr(main, "__file__", None)
    if not script or not os.path.isfile(script):
        return None
    return [*args, script, *sys.argv[1:]]


def launch_if_wanted(device: torch.device | None = None) -> None:
    """PALM used every visible GPU from a plain `python run.py`. Here, when several are visible (or
    TORCHPALM_NPROC=N asks for N processes, also on CPU), the script is re-run under torch.distributed's elastic
    launcher (torchrun) as that many processes, and this process exits with their status once they finish
    (Lightning's "ddp" strategy does the same). Under torchrun, or with TORCHPALM_NPROC=1, nothing happens."""
    if launched() or dist.is_initialized():
        return
    nproc = wanted_processes(device)
    if nproc <= 1:
        return
    command = relaunch_command(nproc)
    if command is None:
        logger.warning("%d processes wanted, but there is no script file to re-run (interactive session?): "
                       "training in this one process; start it with torchrun to use them all", nproc)
        return
    from torch.distributed.run import main as torchrun

    logger.info("starting %d processes (one per %s) with torchrun; %s=1 keeps one process", nproc,
                "GPU" if torch.cuda.is_available() else "process asked for", NPROC_ENV)
    try:
        torchrun(command)
    except Exception as e:  # torchrun reports which rank failed and how; exit like a failed script
        logger.error("%s", e)
        sys.exit(1)
    sys.exit(0)


def init(device: torch.device | None = None) -> None:
    """Joins the process group a launcher described (once per process); a no-op for a single process.
    Without a launcher but with several GPUs (or TORCHPALM_NPROC > 1), re-runs the script as several
    processes first (`launch_if_wanted`); `device` is what the script asked for (None: the default)."""
    launch_if_wanted(device)
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.init_process_group("gloo")
    # A process group still alive when the interpreter exits leaves the backend's threads running while the
    # runtime tears down, which can abort the process ("terminate called without an active exception") after
    # the script finished: close it first.
    atexit.register(shutdown)
    if sys.excepthook is not _note_uncaught:
        global _previous_excepthook
        _previous_excepthook = sys.excepthook
        sys.excepthook = _note_uncaught


def shutdown() -> None:
    """Closes the process group this module opened (at exit; harmless when there is none).

    After a normal end, gloo ranks first meet at a barrier, so that none tears its connections down while
    another still has collectives in flight (gloo aborted a rank at exit now and then when its peer had already
    gone), and the objects holding communication buffers (DDP's reducer, FSDP's buffers) are collected while
    the interpreter is still whole. After an uncaught exception there is no barrier: the other ranks may never
    reach it, and the launcher stops them when this one exits."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if not _failed and dist.get_backend() == "gloo":
        try:  # bounded: a peer that stopped early (sys.exit on one rank) makes it time out, not hang
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        except Exception:  # noqa: BLE001 (a peer already gone: nothing to wait for)
            pass
    gc.collect()
    dist.destroy_process_group()


_failed = False


def _note_uncaught(kind, value, tb) -> None:
    global _failed
    _failed = True
    _previous_excepthook(kind, value, tb)


_previous_excepthook = sys.excepthook


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


def interleave(per_rank: list[list]) -> list:
    """Batches dealt round-robin to the ranks (batch k to rank k % n), back in their original order."""
    longest = max((len(items) for items in per_rank), default=0)
    return [items[i] for i in range(longest) for items in per_rank if i < len(items)]


def gather_in_order(mine: list) -> list:
    """Every rank's outputs of the batches dealt to it round-robin (`predict`), on every rank, in batch order."""
    return interleave(all_gather_objects(mine))


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The average of `tensor` over the ranks (a copy; `tensor` itself without a process group)."""
    if not active():
        return tensor
    out = tensor.detach().float().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def loss_share(count: torch.Tensor | None) -> torch.Tensor | None:
    """`count * world_size / (count summed over the ranks)`: the factor that turns this rank's mean loss into
    its part of the global batch's mean once DDP/FSDP average the gradients over the ranks. None without a
    process group or a count (the ranks' means are then averaged as they are)."""
    if count is None or not active():
        return None
    count = count.detach().float()
    total = count.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return count * dist.get_world_size() / total.clamp_min(1.0)  # (no rank counted anything: every loss is 0)


def barrier() -> None:
    if active():
        dist.barrier()


def check_batch_size(batch_size: int, what: str) -> None:
    """The global batch must split evenly over the ranks (PALM's rule)."""
    n = world_size()
    if batch_size % n:
        raise ValueError(f"{what}: batch_size {batch_size} is the global batch and must be divisible by the "
                         f"number of processes ({n}); use a multiple of {n}")
