"""Does an auxiliary task help a low-resource main task? ATIS intent (few utterances) with slot filling as an
auxiliary task, against intent alone, over several seeds.

Arms (each one `run.main([...])`, in this process, one after the other):

  single      the main task alone (`--tasks intent`) on its first `--main_examples` training utterances,
              `--num_epochs` E epochs: palm.Trainer, E * (main_examples // batch) steps
  aux_slot    MultiHeadTrainer([slot, intent]) with slot `set_as_aux()` on its first `--aux_examples` utterances
              (0: all 4,478), mix ratios intent=1 and slot=`--aux_ratio`, sampling reference intent, the same E:
              intent trains exactly as many steps as in `single` (its budget), slot is drawn alongside
              (about as many steps again with ratio 1) and never decides the end

Both arms start from the same pretrained backbone (MiniLM by default), use the same seed for the intent reader,
head initialisation and dropout, and are scored on the full ATIS test split (893 utterances): intent accuracy
(the main metric); the slot entity F1 of the auxiliary arm is reported for information.

Writes `<out>/aux_experiment.json` (updated after every run): per arm and seed the main-task metric, steps,
train seconds and the run's results.json path; per arm the mean and the sample standard deviation (n-1); the
paired per-seed differences against `single`. Prints a table.

Usage:
  python examples/multi_task/aux_experiment.py --threads 1                       # the default design
  python examples/multi_task/aux_experiment.py --main_examples 32 --aux_examples 32 --num_epochs 1 --seeds 1
                                                                                # a quick check of the code path
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_run():
    """This folder's run.py by path (other examples also have a run.py; a plain `import run` may find theirs)."""
    spec = importlib.util.spec_from_file_location("multi_task_run", os.path.join(HERE, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load_run()


def seed_list(value: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {value!r}")
    return seeds


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="./outputs/aux_experiment", help="one folder per arm and seed, and "
                   "aux_experiment.json")
    p.add_argument("--main_task", default="intent", choices=run.TASKS)
    p.add_argument("--aux_task", default=None, choices=run.TASKS, help="default: the other task")
    p.add_argument("--arms", default=None, help="comma-separated subset of single,aux_<aux_task> (default both)")
    p.add_argument("--main_examples", type=int, default=400, help="first N training utterances of the main task "
                   "(0: all)")
    p.add_argument("--aux_examples", type=int, default=0, help="first N training utterances of the auxiliary "
                   "task (0: all 4,478)")
    p.add_argument("--aux_ratio", type=float, default=1.0, help="mix ratio of the auxiliary task (main: 1.0)")
    p.add_argument("--sampling", default="ratio", choices=run.SAMPLING)
    p.add_argument("--num_epochs", type=int, default=10, help="epochs of the main task in every arm")
    p.add_argument("--seeds", type=seed_list, default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--print_steps", type=int, default=50)
    p.add_argument("--keep_ckpt", type=int, default=0, help="1: keep every run's checkpoint (~270 MB with MiniLM)")
    p.add_argument("--skip_done", type=int, default=0, help="1: reuse a run whose results.json exists and was "
                   "made by the same command")
    p.add_argument("--run_args", default="", help="more run.py options for every arm, e.g. \"--lr 5e-5 "
                   "--slot_head softmax\" or \"--pretrain none --config C --vocab V\"")
    args = p.parse_args(argv)
    if args.aux_task is None:
        args.aux_task = next(t for t in run.TASKS if t != args.main_task)
    if args.aux_task == args.main_task:
        p.error("--aux_task must differ from --main_task")
    known = ["single", f"aux_{args.aux_task}"]
    args.arms = known if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    if not args.arms or [a for a in args.arms if a not in known]:
        p.error(f"--arms: choose from {known}")
    return args


def arm_argv(args, arm: str, seed: int, work_dir: str) -> list[str]:
    """run.py's command line for one arm and seed."""
    main, aux = args.main_task, args.aux_task
    common = ["--work_dir", work_dir, "--seed", str(seed), "--num_epochs", str(args.num_epochs),
              f"--{main}_examples", str(args.main_examples), "--print_steps", str(args.print_steps),
              "--keep_ckpt", str(args.keep_ckpt)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if arm == "single":
        argv = ["--tasks", main] + common
    else:  # PALM's trainer order [slot, intent]; the main task is the sampling reference
        order = [t for t in run.TASKS if t in (main, aux)]
        argv = (["--tasks", ",".join(order), "--aux", aux, "--reference", main, "--sampling", args.sampling,
                 "--mix_ratio", f"{main}=1.0,{aux}={args.aux_ratio}", f"--{aux}_examples", str(args.aux_examples)]
                + common)
    return argv + shlex.split(args.run_args)


def summarise(values: list[float]) -> dict:
    return {"n": len(values), "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    main_metric, aux_metric = run.METRIC[args.main_task], run.METRIC[args.aux_task]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python examples/multi_task/aux_experiment.py "
                         + shlex.join(sys.argv[1:] if argv is None else [str(a) for a in argv]),
              "args": vars(args), "main_metric": main_metric, "aux_metric": aux_metric, "runs": {}, "summary": {}}
    path = os.path.join(args.out, "aux_experiment.json")
    for seed in args.seeds:
        for arm in args.arms:
            work_dir = os.path.join(args.out, arm, f"seed{seed}")
            argv_run = arm_argv(args, arm, seed, work_dir)
            command = "python examples/multi_task/run.py " + shlex.join(argv_run)
            done = os.path.join(work_dir, "results.json")
            result = None
            if args.skip_done and os.path.isfile(done):
                with open(done, encoding="utf-8") as f:
                    previous = json.load(f)
                if previous.get("command") == command:
                    print(f"=== {arm}, seed {seed}: reusing {done}", flush=True)
                    result = previous
            if result is None:
                print(f"=== {arm}, seed {seed}: {command}", flush=True)
                result = run.main(argv_run)
            train = result["train"]
            entry = {main_metric: result[main_metric], "command": command, "results": done,
                     "main_steps": train["steps"][args.main_task], "global_steps": train["global_steps"],
                     "steps": train["steps"], "train_seconds": train["train_seconds"]}
            if aux_metric in result:
                entry[aux_metric] = result[aux_metric]
            report["runs"].setdefault(arm, {})[str(seed)] = entry
            report["summary"] = summary(report["runs"], args, main_metric, aux_metric)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
                f.write("\n")
    print_table(report, args, main_metric, aux_metric)
    print(f"written to {path}", flush=True)
    return report


def summary(runs: dict, args, main_metric: str, aux_metric: str) -> dict:
    out = {}
    for arm, by_seed in runs.items():
        out[arm] = {main_metric: summarise([r[main_metric] for r in by_seed.values()])}
        aux_values = [r[aux_metric] for r in by_seed.values() if aux_metric in r]
        if arm != "single" and aux_values:
            out[arm][aux_metric] = summarise(aux_values)
        if arm != "single" and "single" in runs:  # paired by seed
            paired = [by_seed[s][main_metric] - runs["single"][s][main_metric] for s in by_seed if s in runs["single"]]
            out[arm][f"{main_metric}_minus_single"] = {**summarise(paired), "per_seed": paired}
    return out


def print_table(report: dict, args, main_metric: str, aux_metric: str) -> None:
    seeds = [str(s) for s in args.seeds]

    def fmt(x):
        return f"{x:.4f}" if x is not None else "-"

    print(f"\n{args.main_task} on its first {args.main_examples or 'all'} training utterances, {args.num_epochs} "
          f"epochs; test {main_metric} (mean and sample std over seeds)")
    header = f"{'arm':<12} " + " ".join(f"{'seed ' + s:>9}" for s in seeds) + f" {'mean':>8} {'std':>8}"
    print(header)
    rows = [(arm, main_metric) for arm in args.arms]
    rows += [(arm, aux_metric) for arm in args.arms if arm != "single"]
    for arm, metric in rows:
        by_seed = report["runs"].get(arm, {})
        s = report["summary"].get(arm, {}).get(metric)
        if s is None:
            continue
        label = arm if metric == main_metric else f"({metric})"
        cells = " ".join(f"{fmt(by_seed[x].get(metric)) if x in by_seed else '-':>9}" for x in seeds)
        print(f"{label:<12} {cells} {fmt(s['mean']):>8} {fmt(s['std']):>8}")
    for arm in args.arms:
        d = report["summary"].get(arm, {}).get(f"{main_metric}_minus_single")
        if d is not None and d["n"]:
            print(f"{arm} - single: {d['mean']:+.4f} (sample std {fmt(d['std'])}, {d['n']} paired seeds)")


if __name__ == "__main__":
    main()
