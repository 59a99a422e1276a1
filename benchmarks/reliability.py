"""Fault trials: a training run killed at a random moment and restarted must end exactly where an uninterrupted
run ends.

Each trial starts a small training script (a tiny random BERT, dropout on, a checkpoint every few steps) as a
separate process, kills it at a random moment of its training (after a random step, plus a random fraction of
a step) (SIGKILL: no chance to clean up; SIGTERM: the
loop's handler saves and exits), checks what is on disk (`palm.checkpoint.latest` finds a complete checkpoint,
never a leftover of a killed save), restarts the same script (which calls `trainer.resume()`) and compares the
finished run with an uninterrupted reference run: every logged loss and every final weight bit-identical.

    python benchmarks/reliability.py                  # all kinds, 20 trials each (about 15 minutes on 2 cores)
    python benchmarks/reliability.py --trials 3       # a quick check
    python benchmarks/reliability.py --kinds sigkill_multi --trials 5

Kinds: sigkill (single task, a checkpoint every 5 steps), sigkill_multi (MultiHeadTrainer, two tasks),
kill_during_save (a checkpoint every step, so most kills land in a save), sigterm (single task; the run must
exit with status 143 after saving the step it was on). Writes benchmarks/results/reliability.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "vocab_size": 30522, "max_position_embeddings": 128, "type_vocab_size": 2, "hidden_act": "gelu",
          "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
WORDS = "good bad great awful fine terrible nice poor movie film plot acting story".split()
KINDS = {  # kind -> (multi-task, save every N steps, signal)
    "sigkill": (False, 5, signal.SIGKILL),
    "sigkill_multi": (True, 5, signal.SIGKILL),
    "kill_during_save": (False, 1, signal.SIGKILL),
    "sigterm": (False, 5, signal.SIGTERM),
}


def write_data(work: str) -> None:
    rng = random.Random(0)
    for name, n, labels in (("a.tsv", 160, 2), ("b.tsv", 96, 3)):
        rows = [f"{rng.randrange(labels)}\t{' '.join(rng.choices(WORDS, k=rng.randint(2, 12)))}" for _ in range(n)]
        with open(os.path.join(work, name), "w", encoding="utf-8") as f:
            f.write("label\ttext_a\n" + "\n".join(rows) + "\n")


def worker(work: str, vocab: str, multi: bool, save_steps: int) -> None:
    """The training script under test: a PALM script with `resume()`; prints TRAINING when the loop starts."""
    import torch

    import torchpalm as palm

    torch.manual_seed(0)
    out = os.path.join(work, "out")

    def reader(file, seed):
        r = palm.reader.ClassifyReader(vocab, 32, seed=seed, do_lower_case=True)
        r.load_data(os.path.join(work, file), 8, num_epochs=None if multi else 4)
        return r

    backbone = palm.backbone.BERT.from_config(CONFIG)
    adam = palm.optimizer.Adam(None, 3e-3, palm.lr_sched.TriangularSchedualer(0.1, None))
    if multi:
        readers = [reader("a.tsv", 1), reader("b.tsv", 2)]
        trainers = [palm.Trainer("a", device="cpu"), palm.Trainer("b", device="cpu")]
        for r, t, n in zip(readers, trainers, (2, 3)):
            r.register_with(backbone)
            t.build_forward(backbone, palm.head.Classify(n, 32, 0.1))
        run = palm.MultiHeadTrainer(trainers)
        run.build_forward()
        run.build_backward(adam, weight_decay=0.01)
        run.fit_readers_with_mixratio(readers, "a", num_epochs=4)
    else:
        r = reader("a.tsv", 1)
        r.register_with(backbone)
        run = palm.Trainer("a", device="cpu")
        run.build_forward(backbone, palm.head.Classify(2, 32, 0.1))
        run.build_backward(adam, weight_decay=0.01)
        run.fit_reader(r)
    run.set_saver(out, save_steps=save_steps)
    run.resume()
    print("TRAINING", flush=True)
    run.train(print_steps=1)
    print("TRAINED", flush=True)
    run.save(os.path.join(out, "final"))


def start(work: str, vocab: str, multi: bool, save_steps: int) -> subprocess.Popen:
    """The worker, its output going to <work>/worker.log (a file: a pipe nobody reads could fill and block it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(os.path.join(work, "worker.log"), "w")
    proc = subprocess.Popen([sys.executable, __file__, "--worker", work, "--vocab", vocab,
                             "--multi", str(int(multi)), "--save_steps", str(save_steps)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()
    return proc


def output(work: str) -> str:
    with open(os.path.join(work, "worker.log")) as f:
        return f.read()


def finish(proc: subprocess.Popen, work: str) -> str:
    proc.wait(timeout=600)
    out = output(work)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{out[-3000:]}")
    return out


def outcome(work: str) -> tuple[list, dict]:
    from safetensors.torch import load_file

    with open(os.path.join(work, "out", "metrics.jsonl")) as f:
        losses = [(r["step"], r["task"], r["loss"]) for r in map(json.loads, f) if "loss" in r]
    return losses, load_file(os.path.join(work, "out", "final", "model.safetensors"))


def logged_steps(work: str) -> int:
    path = os.path.join(work, "out", "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return sum('"loss"' in line for line in f)


def trial(kind: str, work: str, vocab: str, steps: int, rng: random.Random) -> dict:
    import torchpalm as palm

    multi, save_steps, sig = KINDS[kind]
    proc = start(work, vocab, multi, save_steps)
    # kill after a random step of the run has been logged, a random fraction of a step later (so some kills
    # land in a checkpoint save, most of all with a save every step)
    target = rng.randint(1, steps - 1)
    while proc.poll() is None and logged_steps(work) < target:
        time.sleep(0.002)
    delay = rng.uniform(0.0, 0.05)
    time.sleep(delay)
    proc.send_signal(sig)
    proc.wait(timeout=600)
    tail = output(work)
    record = {"kind": kind, "target_step": target, "delay_s": round(delay, 3), "exit": proc.returncode,
              "at_step": logged_steps(work),
              "during_training": "TRAINED" not in tail}
    leftovers = sorted(n for n in os.listdir(os.path.join(work, "out")) if ".tmp-" in n or n.endswith(".old"))
    latest = palm.checkpoint.latest(os.path.join(work, "out"))
    record.update(leftovers=leftovers, latest=os.path.basename(latest) if latest else None)
    if latest is not None:  # what resume() will pick must load
        palm.checkpoint.load_checkpoint_dir(latest)
    if sig == signal.SIGTERM and record["during_training"]:  # saved the step it was on, exited with 128 + 15
        record["sigterm_clean"] = (proc.returncode == 143 and "training stopped by SIGTERM" in tail
                                   and record["latest"] == f"ckpt.step{record['at_step']}")
    finish(start(work, vocab, multi, save_steps), work)
    record["leftovers_after_restart"] = sorted(n for n in os.listdir(os.path.join(work, "out"))
                                               if ".tmp-" in n or n.endswith(".old"))
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None)
    p.add_argument("--multi", type=int, default=0)
    p.add_argument("--save_steps", type=int, default=5)
    p.add_argument("--vocab", default=os.path.join(HERE, "..", "..", "shared", "data", "vocab",
                                                   "bert-base-uncased-vocab.txt"))
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "reliability.json"))
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.vocab, bool(args.multi), args.save_steps)
        return
    import torch

    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="palm_reliability_")
    summary, records = {}, []
    try:
        for kind in args.kinds.split(","):
            multi, save_steps, _ = KINDS[kind]
            ref = os.path.join(root, f"{kind}_reference")
            os.makedirs(ref)
            write_data(ref)
            finish(start(ref, args.vocab, multi, save_steps), ref)
            ref_losses, ref_weights = outcome(ref)
            exact = 0
            for i in range(args.trials):
                work = os.path.join(root, f"{kind}_{i}")
                os.makedirs(work)
                write_data(work)
                record = trial(kind, work, args.vocab, len(ref_losses), rng)
                losses, weights = outcome(work)
                record["bit_exact"] = losses == ref_losses and all(torch.equal(weights[k], ref_weights[k])
                                                                   for k in ref_weights)
                exact += record["bit_exact"]
                records.append(record)
                print(json.dumps(record), flush=True)
                shutil.rmtree(work)
            kind_records = [r for r in records if r["kind"] == kind]
            summary[kind] = {
                "trials": args.trials, "bit_exact": exact, "steps": len(ref_losses),
                "killed_during_training": sum(r["during_training"] for r in kind_records),
                "leftovers_seen_after_kill": sum(bool(r["leftovers"]) for r in kind_records),
                "latest_loadable": sum(r["latest"] is not None for r in kind_records),
                "leftovers_after_restart": sum(bool(r["leftovers_after_restart"]) for r in kind_records),
                **({"sigterm_saved_and_exited_143": sum(r.get("sigterm_clean", False) for r in kind_records)}
                   if kind == "sigterm" else {}),
            }
            print(f"{kind}: {exact}/{args.trials} bit-exact after the restart; {summary[kind]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                   "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
                   "summary": summary, "trials": records}, f, indent=1)


if __name__ == "__main__":
    main()
