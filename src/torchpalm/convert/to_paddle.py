"""Writing a torchpalm (or HF BERT) backbone as a PaddlePALM model folder: the way back from paddle.py.

Apart from paddle.py because it reads any source through `hf.load_backbone_weights`, which itself reads Paddle
folders through paddle.py: so the imports run one way (to_paddle -> hf -> paddle).
"""

from __future__ import annotations

import json
import logging
import os
import shutil

from .hf import load_backbone_weights
from .paddle import PaddleFormatError, paddle_to_torchpalm, torchpalm_to_paddle, write_params

logger = logging.getLogger("torchpalm")


def convert_torchpalm_to_paddle(src: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Writes a torchpalm (or HF BERT) model's backbone as a PaddlePALM model folder: `out_dir/params/` (one
    Paddle file per variable), `bert_config.json` or `ernie_config.json` (with a task embedding) and vocab.txt.

    Heads are not exported. Returns `out_dir`.
    """
    src, out_dir = os.fspath(src), os.fspath(out_dir)
    state, file = load_backbone_weights(src)
    paddle_state = torchpalm_to_paddle(state)
    lost = sorted(set(state) - set(paddle_to_torchpalm(paddle_state)[0]))
    if lost:
        raise PaddleFormatError(f"{file}: {lost} have no Paddle BERT/ERNIE counterpart (spec §7.5)")
    write_params(os.path.join(out_dir, "params"), paddle_state)
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    config = None
    if os.path.isfile(os.path.join(folder, "config.json")):
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    elif os.path.isfile(os.path.join(folder, "trainer_state.json")):  # a torchpalm checkpoint
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
            config = json.load(f).get("backbone", {}).get("config")
    if config is not None:
        name = "ernie_config.json" if "task_embedding" in paddle_state else "bert_config.json"
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
    else:
        logger.warning("%s has no config.json nor trainer_state.json: write %s/bert_config.json yourself", src,
                       out_dir)
    if os.path.isfile(os.path.join(folder, "vocab.txt")):
        shutil.copyfile(os.path.join(folder, "vocab.txt"), os.path.join(out_dir, "vocab.txt"))
    return out_dir
