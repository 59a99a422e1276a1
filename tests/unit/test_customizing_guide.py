"""docs/customizing.md runs: every python block of the guide, in order, in one namespace (so the guide cannot
drift from the code), then checks that what it built did what the guide says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "customizing.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text,
                                                                                     re.S)]


def test_every_code_block_of_the_customizing_guide_runs(tmp_path, monkeypatch):
    blocks = python_blocks(GUIDE.read_text(encoding="utf-8"))
    assert len(blocks) == 8
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "customizing_guide"}
    for first_line, code in blocks:
        # padded so a traceback names the guide's own line numbers
        exec(compile("\n" * (first_line - 1) + code, str(GUIDE), "exec"), ns)

    # the user's reader and head trained beside the built-in task, as much as it did, and learned
    mh, score_task, sentiment_task = ns["mh"], ns["score_task"], ns["sentiment_task"]
    assert score_task.cur_train_step >= 96 and sentiment_task.cur_train_step >= 96
    assert mh.model.heads["score"] is score_task._head
    assert ns["metrics"]["neg_mse"] > 0.5 * ns["baseline"]  # well under the error of predicting the mean
    assert len(ns["dev_reader"].examples) == 64
    # the HF encoder trained under torch's SGD and cosine schedule over the run length the trainer computed
    sgd, cosine = ns["sgd"], ns["cosine"]
    assert cosine.num_train_steps == 6 * 64 // 8
    assert sgd.lr_at(0) == 0.1 and sgd.lr_at(cosine.num_train_steps - 1) < 1e-3
    records = [line for line in open(tmp_path / "custom_demo" / "hf_sgd" / "metrics.jsonl")]
    assert len(records) == 4 and (tmp_path / "custom_demo" / "hf_sgd" / "ckpt.step48").is_dir()
    # the custom schedule and optimizer were the ones used
    trainer = ns["trainer"]
    assert trainer.cur_train_step == 16 and type(trainer.torch_optimizer).__name__ == "SGD"
    assert trainer.torch_optimizer.param_groups[0]["nesterov"] is True
    assert trainer.torch_optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * (4 / 16) ** 0.5)

    # and the guide's reader reports a bad row the way built-in readers do
    (tmp_path / "bad.tsv").write_text("score\ttext_a\n1\tgood movie\nmany\tbad plot\n")
    with pytest.raises(ns["DataError"], match=r"bad.tsv:3: score 'many' is not a number"):
        ns["ScoreReader"](ns["VOCAB"], 16).load_data(str(tmp_path / "bad.tsv"), 2)
    assert np.isfinite(ns["baseline"])
