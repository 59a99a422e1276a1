"""Issue 25's diagnosis: how large are the intent task's updates in a joint run, next to intent alone?

Builds run.py's set-up (same data, heads, optimizer and schedule; pass its options, e.g. PALM's settings
`--intent_examples 320 --slot_examples 320 --lr 2e-5 --batch_size 16 --num_epochs 20`) three ways: intent alone
(a MultiHeadTrainer of one task, so the step is the same code), slot + intent with `balance=None` (PALM's plain
sum) and slot + intent with balancing methods (`--arms`). It trains the first `--steps` global steps of each and
records, for every intent step, the size of the update it made to the shared backbone and to the intent head
(L2 norm of the parameter change) and the factor balancing put on intent's loss. The intent head has Adam moments
of its own (only intent steps give it gradients), so its updates should be alike in all three arms whatever the
loss scales; the backbone's moments are shared, so the CRF's larger gradients shrink intent's backbone updates
under the plain sum.

Usage: python examples/multi_task/update_sizes.py --steps 40 --threads 1 [run.py options]
Writes `<work_dir>/update_sizes.json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

import torchpalm as palm  # noqa: E402


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])


def measure(setup: run.Setup, args, tasks: list[str], balance, steps: int) -> list[dict]:
    torch.manual_seed(args.seed)
    readers = {}
    backbone = setup.backbone()
    for task in tasks:
        readers[task] = setup.reader(task)
        readers[task].load_data(setup.train_files[task], args.batch_size, num_epochs=None)
        readers[task].register_with(backbone)
    trainers = []
    for task in tasks:
        trainer = palm.Trainer(task, device="cpu")
        trainer.build_forward(backbone, setup.head(task))
        trainers.append(trainer)
    mh = palm.MultiHeadTrainer(trainers, balance=balance)
    loss = mh.build_forward()
    mh.build_backward(palm.optimizer.Adam(loss, args.lr, setup.schedule()), weight_decay=args.weight_decay)
    mh.fit_readers_with_mixratio([readers[t] for t in tasks], tasks[0], args.num_epochs)
    mh.load_pretrain(setup.pretrain)
    head = mh.model.heads["intent"]
    rows = []
    for _ in range(steps):
        batch = mh.get_one_batch()
        before_bb, before_head = flat(mh.model.backbone), flat(head)
        outputs, task_id = mh.train_one_step(batch)
        if tasks[task_id] != "intent":
            continue
        rows.append({"global_step": mh.cur_train_step, "intent_step": trainers[task_id].cur_train_step,
                     "backbone_update": float((flat(mh.model.backbone) - before_bb).norm()),
                     "head_update": float((flat(head) - before_head).norm()),
                     "weight": (mh.task_weights or {}).get("intent")})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="global steps of each arm")
    p.add_argument("--arms", default="alone,none,grad_scale,task_moments",
                   help="comma-separated: alone (intent alone), and the joint runs' balance= (none: the plain sum)")
    own, rest = p.parse_known_args()
    args = run.parse_args(rest)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = run.Setup(args)
    arms = {}
    for arm in own.arms.split(","):
        if arm == "alone":
            arms["intent alone"] = (["intent"], None)
        else:
            arms[f"joint, balance={arm!r}" if arm != "none" else "joint, balance=None"] = (
                ["slot", "intent"], None if arm == "none" else arm)
    result = {"command": " ".join(sys.argv), "steps": own.steps, "arms": {}}
    for name, (tasks, balance) in arms.items():
        steps = own.steps // 2 if len(tasks) == 1 else own.steps  # about the same number of intent steps
        result["arms"][name] = rows = measure(setup, args, tasks, balance, steps)
        print(f"{name}: {len(rows)} intent steps", flush=True)
    print(f"{'arm':<32} {'1st backbone upd':>16} {'1st head upd':>13} {'median backbone upd (from 5th)':>31} "
          f"{'median head upd':>16}")
    for name, rows in result["arms"].items():
        later = rows[4:] or rows
        print(f"{name:<32} {rows[0]['backbone_update']:16.3e} {rows[0]['head_update']:13.3e} "
              f"{statistics.median(r['backbone_update'] for r in later):31.3e} "
              f"{statistics.median(r['head_update'] for r in later):16.3e}")
    out = os.path.join(args.work_dir, "update_sizes.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"written {out}")


if __name__ == "__main__":
    main()
