"""Evaluation during training: each task's dev set scored with its own metric, best checkpoints, early stopping.

    trainer.build_predict_forward(pred_backbone, pred_head)
    trainer.set_dev(dev_reader)                   # a predict-phase reader over a labelled file
    trainer.set_evaluation(every_steps=200, patience=3)
    # or, for several tasks:  mh.set_evaluation(every_steps=200, weights={"slot": 1, "intent": 1}, patience=3)

Every `every_steps` global steps (and at the end) each task with a dev set is predicted and scored; the line
`[eval] step 200: slot f1 0.9312, intent accuracy 0.9640, aggregate 0.9476 (best 0.9476 at step 200)` is
logged; the best checkpoint of every task (and of the weighted aggregate) is kept as `<dir>/best.<task>`
(`best.aggregate`); and with `patience` training stops once the monitored value has not improved by more than
`min_delta` for that many evaluations. PaddlePALM had no evaluation hook (spec §17.23), MT-DNN none either.

Default metrics by head: Classify and Match -> accuracy; SequenceLabel -> entity F1 (seqeval's default mode, in
the scheme the tags are written in: IOB2, IOBES, BMES or BILOU); MRC -> SQuAD F1 (CMRC2018's for Chinese readers).
Any `metric(results, reader) -> {name: value}` works (the first key is the one compared).

A trivial result is said next to its metric (the `note` of the `Scores` the default metrics return, shown by the
`[eval]` line and `torchpalm evaluate`): a classifier whose predictions are all one class (with the rate of the
majority class among the gold labels, the accuracy that alone gives), a tagger that predicts one tag (only `O`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable

from . import checkpoint, distributed
from .metrics import accuracy, chunk_f1, cmrc_em_f1, infer_scheme, squad_em_f1

logger = logging.getLogger("torchpalm")

Metric = Callable[[object, object], dict]


class Scores(dict):
    """A metric's `{name: value}`, with a `note` saying why the values may mean less than they seem ('' if
    nothing to say): a trivial predictor."""

    def __init__(self, values: dict, note: str = ""):
        super().__init__(values)
        self.note = note


def with_note(scores: dict) -> str:
    """`scores` as `name value, ...`, followed by its note in parentheses when it has one."""
    text = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    note = getattr(scores, "note", "")
    return f"{text} ({note})" if note else text


def one_class_note(predicted: list[int], gold: list[int], id2label: dict) -> str:
    """'' unless every prediction is one class; then that, with the majority class's share of the gold labels."""
    if len(predicted) < 2 or len(set(predicted)) > 1:
        return ""
    majority, count = Counter(gold).most_common(1)[0]
    return (f"trivial: every prediction is class {id2label.get(predicted[0], predicted[0])}; the majority class "
            f"{id2label.get(majority, majority)} is {count / len(gold):.1%} of the gold labels")


def accuracy_metric(results: list[dict], reader) -> Scores:
    predicted, gold = [r["label"] for r in results], reader.gold_labels()
    return Scores({"accuracy": accuracy(predicted, gold)},
                  one_class_note(predicted, gold, getattr(reader, "id2label", {})))


def entity_f1_metric(results: list[list[int]], reader, scheme: str | None = None, mode: str = "default") -> dict:
    """Entity F1 of tag-id predictions against the reader's gold tags. Without a `scheme` it is read off the
    tags (`infer_scheme`), so a BMES task is scored as BMES with no configuration (an M- tag used to crash)."""
    id2label, gold = reader.id2label, reader.gold_tags()
    predicted = [[id2label[int(i)] for i in row] for row in results]
    scheme = scheme or infer_scheme([*id2label.values(), *(t for tags in gold for t in tags)])
    scores = chunk_f1(gold, predicted, scheme=scheme, mode=mode)
    tags = {t for row in predicted for t in row}
    note = f"trivial: every predicted tag is {next(iter(tags))!r}" if len(tags) == 1 and len(predicted) > 1 else ""
    return Scores({"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"]}, note)


def answer_f1_metric(results: dict[str, str], reader) -> dict:
    if getattr(reader, "for_cn", False):
        scores = cmrc_em_f1(reader.examples_json, results)
        return {"f1": scores["f1"], "exact_match": scores["exact_match"]}
    data = reader.examples_json
    impossible = any(qa.get("is_impossible") for article in data["data"] for paragraph in article["paragraphs"]
                     for qa in paragraph["qas"])
    scores = squad_em_f1(data, results, version="2.0" if impossible else "1.1")
    return {"f1": scores["f1"] / 100, "exact_match": scores["exact_match"] / 100}


DEFAULT_METRICS = {"Classify": accuracy_metric, "Match": accuracy_metric, "SequenceLabel": entity_f1_metric,
                   "MRC": answer_f1_metric}


def default_metric(head) -> Metric:
    for cls in type(head).__mro__:
        if cls.__name__ in DEFAULT_METRICS:
            return DEFAULT_METRICS[cls.__name__]
    raise ValueError(f"no default metric for the head {type(head).__name__}: pass set_dev(reader, "
                     f"metric=fn) with fn(results, reader) -> {{name: value}}")


def best_checkpoint_dir(save_best: bool, save_dir: str | None, saver_args: tuple | None) -> str | None:
    """Where `set_evaluation` keeps best checkpoints: `save_dir`, else the `set_saver` path; None when not kept."""
    save_dir = save_dir or (saver_args[0] if saver_args else None)
    if save_best and save_dir is None:
        raise ValueError("save_best needs save_dir (or set_saver first), or pass save_best=False")
    return save_dir if save_best else None


class Evaluator:
    """Scores the dev sets of some tasks during training and keeps the best (see the module docstring).

    Args:
        trainers: the `Trainer`s that have a dev set (`set_dev`).
        every_steps: evaluate every this many global steps (and at the end of training).
        weights: {task: weight} of the aggregate (default 1 each); tasks with weight 0 are reported only.
        monitor: 'aggregate' or a task name: what best checkpoints and early stopping follow.
        save_dir: where `best.<task>` / `best.aggregate` go (None: keep no checkpoints).
        patience: stop after this many evaluations without improvement (None: never stop early).
        min_delta: the least increase that counts as an improvement.
        save: `save(directory)` writes a checkpoint of the model at this moment.
        on_record: called with `{"step", "eval": {task: scores}, "aggregate"?}` after each evaluation (the
            loop's `metrics.jsonl`).
    """

    def __init__(self, trainers: list, every_steps: int, weights: dict[str, float] | None, monitor: str,
                 save_dir: str | None, patience: int | None, min_delta: float, save: Callable[[str], str],
                 on_record: Callable[[dict], None] | None = None):
        names = [t.name for t in trainers]
        if not trainers:
            raise ValueError("no task has a dev set: call trainer.set_dev(dev_reader) first")
        if every_steps is None or int(every_steps) < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps!r}")
        weights = dict.fromkeys(names, 1.0) if weights is None else {k: float(v) for k, v in weights.items()}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"weights name tasks without a dev set: {unknown} (tasks with dev sets: {names})")
        if sum(weights.values()) <= 0:
            raise ValueError(f"the aggregate weights must have a positive sum, got {weights}")
        if monitor != "aggregate" and monitor not in names:
            raise ValueError(f"monitor must be 'aggregate' or a task with a dev set {names}, got {monitor!r}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        self.trainers, self.every_steps, self.weights = trainers, int(every_steps), weights
        self.monitor, self.save_dir, self.patience, self.min_delta = monitor, save_dir, patience, float(min_delta)
        self._save, self._on_record = save, on_record
        self._folder_lock = None
        if save_dir is not None and distributed.is_main() and os.path.isdir(save_dir):
            # clean-up only with the folder locked: another live run's best.<task> save looks like a killed one
            self._folder_lock = checkpoint.SaveFolderLock(save_dir)
            checkpoint.remove_stale(save_dir)  # a best.<task> save killed in an earlier run
        self.history: list[dict] = []
        self.best: dict[str, dict] = {}  # key ('aggregate' or task) -> {"value", "step"}
        self.evals_without_improvement = 0
        self.stopped_early = False

    def maybe_evaluate(self, step: int, final: bool = False) -> bool:
        """Evaluates when `step` is due (or at the end, once); returns True when training should stop early."""
        if self.stopped_early or (self.history and self.history[-1]["step"] == step):
            return False
        if final or step % self.every_steps == 0:
            return self.evaluate(step)
        return False

    def evaluate(self, step: int) -> bool:
        """Scores every dev set now; returns True when training should stop early."""
        record: dict = {"step": step, "tasks": {}}
        main_values = {}
        for t in self.trainers:
            scores = t.evaluate()
            record["tasks"][t.name] = scores
            main_values[t.name] = next(iter(scores.values()))
        weighted = {n: w for n, w in self.weights.items() if w > 0}
        if weighted:
            record["aggregate"] = sum(main_values[n] * w for n, w in weighted.items()) / sum(weighted.values())
        self.history.append(record)
        if self._on_record is not None:
            self._on_record({"step": step, "eval": record["tasks"],
                             **({"aggregate": record["aggregate"]} if "aggregate" in record else {})})
        improved = {key: self._update_best(key, value, step)
                    for key, value in [*main_values.items(), ("aggregate", record.get("aggregate"))]
                    if value is not None}
        if improved.get(self.monitor):
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        parts = []
        for n, s in record["tasks"].items():
            name, value = next(iter(s.items()))  # the compared metric, and a note on a trivial result
            parts.append(f"{n} {with_note(Scores({name: value}, getattr(s, 'note', '')))}")
        if len(self.trainers) > 1 and "aggregate" in record:
            parts.append(f"aggregate {record['aggregate']:.4f}")
        best = self.best.get(self.monitor)
        logger.info("[eval] step %d: %s (best %s %.4f at step %d)", step, ", ".join(parts), self.monitor,
                    best["value"], best["step"])
        if self.save_dir is not None:
            for key, better in improved.items():
                if better and (key != "aggregate" or len(self.trainers) > 1):
                    path = self._save(os.path.join(self.save_dir, f"best.{key}"))
                    logger.info("best %s checkpoint saved at %s", key, path)
        if self.patience is not None and self.evals_without_improvement >= self.patience:
            self.stopped_early = True
            logger.info("early stopping at step %d: %s has not improved for %d evaluations (best %.4f at step %d)",
                        step, self.monitor, self.patience, best["value"], best["step"])
            return True
        return False

    def _update_best(self, key: str, value: float, step: int) -> bool:
        best = self.best.get(key)
        if best is None or value > best["value"] + self.min_delta:
            self.best[key] = {"value": value, "step": step}
            return True
        return False

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "evals_without_improvement":
                self.evals_without_improvement, "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.best = dict(state.get("best", {}))
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.stopped_early = bool(state.get("stopped_early", False))
