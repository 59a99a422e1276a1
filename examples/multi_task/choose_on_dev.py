"""Chooses a joint-run setting on ATIS dev and reports its test scores against the single-task references.

Each run is a `run.py` results.json (it scores dev and test from the same final checkpoint). Runs are grouped by
their `--loss_weight` (the setting being chosen); every group must hold the same seeds. The criterion, fixed
before any dev score was seen: the highest mean over seeds of (dev intent accuracy + dev slot entity F1) / 2.
Test scores of the chosen group are then reported, paired by seed with the single-task references of
`benchmarks/atis_vs_hf.py` (its `palm_intent`, `palm_slot`, `hf_intent`, `hf_slot` sides), and checked against the
multi-task issue's targets: intent >= 0.96, slot F1 >= 0.94, and neither more than 0.3 points below HF or our
model of that task alone (on the mean over seeds).

    python examples/multi_task/choose_on_dev.py \\
        --runs examples/multi_task/results/loss_weight_slot*.seed*.json \\
        --references benchmarks/results/atis_vs_hf.B.seed*.json benchmarks/results/atis_vs_hf.lr3e-4.{intent,slot}.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

METRICS = {"intent": "intent_acc", "slot": "slot_f1"}
TARGETS = {"intent": 0.96, "slot": 0.94}  # absolute test targets of the multi-task issue
MAX_GAP_POINTS = 0.3  # allowed mean shortfall against each single-task reference


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def setting(run: dict) -> str:
    """The group a run belongs to: its per-task loss weights ('slot=0.2'; '-' when none)."""
    weights = run["args"].get("loss_weight") or {}
    return ",".join(f"{t}={w:g}" for t, w in sorted(weights.items())) or "-"


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_runs(paths: list[str]) -> dict[str, dict[int, dict]]:
    """{setting: {seed: run}}; every run must have dev and test scores of both tasks."""
    groups: dict[str, dict[int, dict]] = {}
    for path in paths:
        run = load(path)
        for split in ("dev", "test"):
            missing = [t for t in METRICS if t not in run.get(split, {})]
            if missing:
                raise SystemExit(f"{path}: no {split} scores of {missing} (a joint run of run.py that scores dev)")
        seed = run["args"]["seed"]
        group = groups.setdefault(setting(run), {})
        if seed in group:
            raise SystemExit(f"{path}: a second run of {setting(run)} with seed {seed}")
        group[seed] = run
    seed_sets = {name: sorted(g) for name, g in groups.items()}
    if len({tuple(s) for s in seed_sets.values()}) > 1:
        raise SystemExit(f"the settings were not run on the same seeds: {seed_sets}")
    return groups


def references(paths: list[str]) -> dict[str, dict[int, float]]:
    """{'palm_intent'|'palm_slot'|'hf_intent'|'hf_slot': {seed: test score}} from atis_vs_hf.py outputs."""
    refs: dict[str, dict[int, float]] = {}
    for path in paths:
        result = load(path)
        seed = result["args"]["seed"]
        for side in ("palm_intent", "palm_slot", "hf_intent", "hf_slot"):
            if side in result:
                refs.setdefault(side, {})[seed] = result[side][METRICS[side.split("_")[1]]]
    return refs


def choose(groups: dict[str, dict[int, dict]]) -> tuple[str, dict[str, dict]]:
    """The chosen setting and, per setting, dev and test means/sds and the dev criterion."""
    summary = {}
    for name, runs in groups.items():
        seeds = sorted(runs)
        row = {"seeds": seeds}
        for split in ("dev", "test"):
            for task, metric in METRICS.items():
                values = [runs[s][split][task][metric] for s in seeds]
                row[f"{split}_{task}"] = {"per_seed": values, **dict(zip(("mean", "sd"), mean_sd(values)))}
        row["dev_criterion"] = statistics.fmean(
            (runs[s]["dev"]["intent"]["intent_acc"] + runs[s]["dev"]["slot"]["slot_f1"]) / 2 for s in seeds)
        summary[name] = row
    chosen = max(summary, key=lambda name: summary[name]["dev_criterion"])
    return chosen, summary


def paired(runs: dict[int, dict], refs: dict[str, dict[int, float]]) -> dict[str, dict]:
    """Test score differences in points (joint − reference), paired by seed, for each reference present."""
    out = {}
    for side, by_seed in refs.items():
        task = side.split("_")[1]
        seeds = sorted(runs)
        if not set(seeds) <= set(by_seed):
            raise SystemExit(f"reference {side} lacks seeds {sorted(set(seeds) - set(by_seed))}")
        diffs = [100 * (runs[s]["test"][task][METRICS[task]] - by_seed[s]) for s in seeds]
        m, sd = mean_sd(diffs)
        ref_m, ref_sd = mean_sd([by_seed[s] for s in seeds])
        out[f"{task} - {side}"] = {"per_seed_points": diffs, "mean_points": m, "sd_points": sd,
                                   "reference_mean": ref_m, "reference_sd": ref_sd}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="results.json files of joint run.py runs")
    p.add_argument("--references", nargs="*", default=[], help="atis_vs_hf.py result files (single-task sides)")
    p.add_argument("--out", default=None, help="also write the summary here (JSON)")
    args = p.parse_args(argv)

    groups = group_runs(args.runs)
    chosen, summary = choose(groups)
    refs = references(args.references)
    print("| setting | dev intent | dev slot F1 | dev criterion | test intent | test slot F1 |")
    print("|---|---|---|---|---|---|")
    for name, row in sorted(summary.items()):
        cells = [f"{row[k]['mean']:.4f} ± {row[k]['sd']:.4f}" for k in ("dev_intent", "dev_slot")]
        cells.append(f"{row['dev_criterion']:.4f}")
        cells += [f"{row[k]['mean']:.4f} ± {row[k]['sd']:.4f}" for k in ("test_intent", "test_slot")]
        print(f"| {name}{' (chosen)' if name == chosen else ''} | " + " | ".join(cells) + " |")

    result = {"command": "python examples/multi_task/choose_on_dev.py " + " ".join(sys.argv[1:] if argv is None
                                                                                   else argv),
              "criterion": "max over settings of the seed-mean of (dev intent_acc + dev slot_f1) / 2",
              "chosen": chosen, "settings": summary}
    if refs:
        # every setting's differences are reported (the chosen one decides the targets)
        all_diffs = {name: paired(groups[name], refs) for name in sorted(groups)}
        result["paired_test_differences"] = all_diffs
        for name in [chosen] + [n for n in sorted(groups) if n != chosen]:
            print(f"\n{name}{' (chosen on dev)' if name == chosen else ''}: test scores, joint − single-task "
                  f"reference (points, paired by seed):")
            for ref, d in all_diffs[name].items():
                print(f"  {ref}: {d['mean_points']:+.2f} ± {d['sd_points']:.2f}  "
                      f"(per seed {', '.join(f'{x:+.2f}' for x in d['per_seed_points'])}; "
                      f"reference {d['reference_mean']:.4f} ± {d['reference_sd']:.4f})")
        diffs = all_diffs[chosen]
        checks = {f"test {t} mean >= {TARGETS[t]}": summary[chosen][f"test_{t}"]["mean"] >= TARGETS[t]
                  for t in METRICS}
        checks.update({f"{name} >= -{MAX_GAP_POINTS} points": d["mean_points"] >= -MAX_GAP_POINTS
                       for name, d in diffs.items()})
        result["targets"] = checks
        print(f"\ntargets ({chosen}): " + "; ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in checks.items()))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
