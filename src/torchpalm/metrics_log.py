"""`<save_path>/metrics.jsonl`: the training log as data, one JSON object per line.

Written by the training loop at every log line (`{"step", "task", "task_step", "epoch", "loss", "lr",
"steps_per_second", "time"}`, `lr` being the rate that step used) and by evaluation during training (`{"step",
"eval": {task: {metric: value}}, "aggregate"?}`), so a run can be plotted or compared without parsing its console
output. A resumed run drops the lines past the step it resumes from, so the file never holds two histories.
"""

from __future__ import annotations

import json
import os

FILE_NAME = "metrics.jsonl"


class MetricsLog:
    def __init__(self, directory: str):
        self.path = os.path.join(os.fspath(directory), FILE_NAME)

    def write(self, record: dict) -> None:
        # opened per record: a few lines per hundred steps, and every line is on disk when a run is killed
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def drop_after(self, step: int) -> None:
        """Keeps only the records of steps <= `step` (the lines a killed run wrote after its last checkpoint)."""
        if not os.path.isfile(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if _step_of(line) <= step]
        if len(kept) == len(lines):
            return
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):  # a line cut by a kill mid-write: not a record
        return 1 << 62


def read_metrics(path: str) -> list[dict]:
    """The records of a `metrics.jsonl` file (or of `<path>/metrics.jsonl` for a save directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, FILE_NAME)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
