"""The training log as data: `<save_path>/metrics.jsonl`, TensorBoard scalars and a curve plot.

Written by the training loop at every log line (`{"step", "task", "task_step", "epoch", "loss", "lr",
"steps_per_second", "time"}`, `lr` being the rate that step used, plus `task_weights` {task: factor} when a
multi-task balancer is on, and `balance_stats` {statistic: {task: value}} when it reports more) and by evaluation
during training (`{"step", "eval": {task: {metric: value}}, "aggregate"?}`), so a run can be plotted or compared
without parsing its console output. A resumed run drops the lines past the step it resumes from, so the file never
holds two histories.

Every record goes through `MetricsLog.write`, the one place that also writes TensorBoard (optional, `pip install
tensorboard`): `loss/<task>`, `lr`, `steps_per_second/<task>`, `task_weight/<task>` and
`balance/<statistic>/<task>` (multi-task balancing), `eval/<task>/<metric>` and (several tasks) `eval/aggregate`,
at the global step; a resumed run purges the events past its step as it does the lines. At the end of training
`<save_path>/metrics.png` shows the curves (optional, matplotlib); `plot_metrics(save_path)` or
`torchpalm plot <save_path>` redraws them from a finished run.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections.abc import Iterable

logger = logging.getLogger("torchpalm")

FILE_NAME = "metrics.jsonl"
PLOT_NAME = "metrics.png"
EXTRAS_HINT = "pip install 'torchpalm[logging]'"


def check_extras(tensorboard: bool, plot: bool | None) -> None:
    """Raises ImportError now, naming the package, when what was asked for is not installed."""
    if tensorboard:
        _summary_writer_class()
    if plot:
        _matplotlib_figure()


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(f"TensorBoard logging needs the tensorboard package ({EXTRAS_HINT}, or pip install "
                          f"tensorboard): {e}") from None
    return SummaryWriter


class MetricsLog:
    """Appends records to `<directory>/metrics.jsonl` (and TensorBoard event files in `tensorboard_dir`).

    Args:
        directory: the saver's path.
        tensorboard_dir: where TensorBoard event files go (None: no TensorBoard).
        plot: draw `<directory>/metrics.png` in `finish()`: True (matplotlib required), False (never), None
            (when matplotlib is installed).
    """

    def __init__(self, directory: str, tensorboard_dir: str | None = None, plot: bool | None = None):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, FILE_NAME)
        self.tensorboard_dir = os.fspath(tensorboard_dir) if tensorboard_dir is not None else None
        self.plot = plot
        check_extras(tensorboard_dir is not None, plot)  # asked for and missing: an error now, not after training
        self._writer_class = _summary_writer_class() if tensorboard_dir is not None else None
        self._writer = None
        self._purge_step: int | None = None

    def write(self, record: dict) -> None:
        # opened per record: a few lines per hundred steps, and every line is on disk when a run is killed
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer_class is not None:
            writer = self._tensorboard()
            walltime = record.get("time")
            for tag, value in tensorboard_scalars(record):
                writer.add_scalar(tag, value, record["step"], walltime=walltime)

    def _tensorboard(self):
        if self._writer is None:
            # purge_step: TensorBoard drops the events of earlier runs in this folder from that step on
            self._writer = self._writer_class(self.tensorboard_dir, purge_step=self._purge_step, flush_secs=10)
            # a script's own train_one_step loop never reaches finish(): flush at exit all the same
            weakref.finalize(self, self._writer.close)
        return self._writer

    def drop_after(self, step: int) -> None:
        """Keeps only the records of steps <= `step` (the lines a killed run wrote after its last checkpoint)."""
        if self._writer is None:
            self._purge_step = step + 1
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

    def finish(self) -> None:
        """End of training: flushes TensorBoard and draws `metrics.png` (see `plot`)."""
        if self._writer is not None:
            self._writer.flush()
        if self.plot is False or not os.path.isfile(self.path):
            return
        if self.plot is None:
            try:
                _matplotlib_figure()
            except ImportError:
                logger.debug("matplotlib is not installed: no %s", PLOT_NAME)
                return
        try:
            path = plot_metrics(self.path)
        except Exception as e:  # noqa: BLE001 - a drawing that was not asked for never fails a finished run
            if self.plot:
                raise
            logger.warning("could not draw %s: %s", PLOT_NAME, e)
            return
        logger.info("training curves drawn in %s", path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tensorboard_scalars(record: dict) -> list[tuple[str, float]]:
    """The (tag, value) pairs of one metrics record (a log line or an evaluation)."""
    if "eval" in record:
        scalars = [(f"eval/{task}/{name}", value) for task, scores in record["eval"].items()
                   for name, value in scores.items()]
        if "aggregate" in record and len(record["eval"]) > 1:  # with one task it is that task's metric
            scalars.append(("eval/aggregate", record["aggregate"]))
        return scalars
    task = record["task"]
    return [(f"loss/{task}", record["loss"]), ("lr", record["lr"]),
            (f"steps_per_second/{task}", record["steps_per_second"]),
            *((f"task_weight/{t}", w) for t, w in record.get("task_weights", {}).items()),
            *((f"balance/{name}/{t}", v) for name, values in record.get("balance_stats", {}).items()
              for t, v in values.items())]


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):  # a line cut by a kill mid-write: not a record
        return 1 << 62


def read_metrics(path: str) -> list[dict]:
    """The records of a `metrics.jsonl` file (or of `<path>/metrics.jsonl` for a save directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, FILE_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics file: {path} (written by training with a saver set)")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not a JSON record ({e.msg})") from None
    return records


# ---- curves ----
Series = tuple[list[int], list[float]]


def curve_series(records: Iterable[dict]) -> dict[str, dict[str, Series]]:
    """The curves of a run, by panel: `{"loss": {task: (steps, losses)}, "learning rate": {"lr": ...},
    "<task> (dev)": {metric: (steps, values)}, ..., "aggregate (dev)": {"aggregate": ...}}`, steps being
    global steps. Panels without points are left out."""
    panels: dict[str, dict[str, Series]] = {"loss": {}, "learning rate": {}}

    def add(panel: str, label: str, step: int, value: float) -> None:
        steps, values = panels.setdefault(panel, {}).setdefault(label, ([], []))
        steps.append(int(step))
        values.append(float(value))

    for r in records:
        if "eval" in r:
            for task, scores in r["eval"].items():
                for name, value in scores.items():
                    add(f"{task} (dev)", name, r["step"], value)
            if "aggregate" in r and len(r["eval"]) > 1:
                add("aggregate (dev)", "aggregate", r["step"], r["aggregate"])
        elif "loss" in r:
            add("loss", r["task"], r["step"], r["loss"])
            add("learning rate", "lr", r["step"], r["lr"])
            for t, w in r.get("task_weights", {}).items():
                add("task weights (balancing)", t, r["step"], w)
            for name, values in r.get("balance_stats", {}).items():  # e.g. projected_share
                for t, v in values.items():
                    add(f"{name.replace('_', ' ')} (balancing)", t, r["step"], v)
    return {title: series for title, series in panels.items() if series}


def _matplotlib_figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plotting the training curves needs matplotlib ({EXTRAS_HINT}, or pip install "
                          f"matplotlib): {e}") from None
    return Figure, FigureCanvasAgg


def draw_panels(panels: dict[str, dict[str, Series]], path: str) -> str:
    """Draws one stacked panel per entry of `panels` (see `curve_series`) into the PNG `path`."""
    # the Agg canvas on a bare Figure: no pyplot, so no GUI backend and no global figure state
    Figure, FigureCanvasAgg = _matplotlib_figure()
    fig = Figure(figsize=(7, 2.4 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (title, series) in zip(axes, panels.items()):
        for label, (steps, values) in series.items():
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("global step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def plot_metrics(source: str, path: str | None = None) -> str:
    """Draws the loss, learning-rate and evaluation curves of a run into a PNG; returns its path.

    Args:
        source: a save directory or its `metrics.jsonl`.
        path: the PNG to write (default: `metrics.png` beside `metrics.jsonl`).
    """
    source = os.fspath(source)
    file = os.path.join(source, FILE_NAME) if os.path.isdir(source) else source
    panels = curve_series(read_metrics(file))
    if not panels:
        raise ValueError(f"{file}: no log lines or evaluations to plot")
    return draw_panels(panels, path or os.path.join(os.path.dirname(file), PLOT_NAME))
