"""Scores MRC predictions (`{qid: answer}`) against a SQuAD-style gold file.

`--metric squad`: the official SQuAD exact match and F1 (percent), v1.1 or `--version 2.0` (unanswerable
questions score 1 for the answer ''). `--metric cmrc`: the CMRC 2018
evaluation v5 that PALM's mrc/evaluate.py used (spec §15.2), printed in PALM's format (fractions).
Usage: python evaluate.py outputs/predict/predictions.json gold.json [--metric squad|cmrc] [--version 1.1|2.0]
"""

import argparse
import json

from torchpalm.metrics import cmrc_em_f1, squad_em_f1
from torchpalm.reader.mrc import read_squad_json


def evaluate(predictions_path: str, gold_path: str, metric: str = "squad", version: str = "1.1") -> dict:
    """`version`: the SQuAD definitions, '1.1', or '2.0' (unanswerable questions score 1 for the answer '')."""
    with open(predictions_path, encoding="utf-8") as f:
        predictions = json.load(f)
    gold = read_squad_json(gold_path)
    if metric == "cmrc":
        scores = cmrc_em_f1(gold, predictions)
        print(f"data_num: {scores['total']}")
        print(f"em_sroce: {scores['exact_match']:.4f}, f1: {scores['f1']:.4f}")
    elif metric == "squad":
        scores = squad_em_f1(gold, predictions, version=version)
        print(f"data_num: {scores['total']}")
        print(f"exact_match: {scores['exact_match']:.2f}, f1: {scores['f1']:.2f}")
    else:
        raise ValueError(f"metric must be 'squad' or 'cmrc', got {metric!r}")
    if scores["unanswered"]:
        print(f"unanswered: {scores['unanswered']}")
    return scores


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions")
    p.add_argument("gold")
    p.add_argument("--metric", default="squad", choices=["squad", "cmrc"])
    p.add_argument("--version", default="1.1", choices=["1.1", "2.0"])
    a = p.parse_args()
    evaluate(a.predictions, a.gold, a.metric, a.version)
