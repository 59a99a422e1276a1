"""torchpalm: PaddlePALM's NLP fine-tuning, pretraining and multi-task learning framework on PyTorch.

`import torchpalm as palm` gives PALM's public surface: `palm.reader`, `palm.backbone`, `palm.head`,
`palm.optimizer`, `palm.lr_sched`, `palm.Trainer`, `palm.MultiHeadTrainer`, `palm.downloader`, `palm.convert`;
and, for inference without the training script, `palm.export(trainer, dir)` and `palm.Predictor.load(dir)`.
Importing has no side effects.
"""

from . import (
    backbone,
    checkpoint,
    convert,
    distributed,
    downloader,
    head,
    loop,
    lr_sched,
    metrics,
    optimizer,
    reader,
    sampling,
)
from .bundle import export
from .multihead_trainer import MultiHeadTrainer
from .predictor import Predictor
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = ["MultiHeadTrainer", "Predictor", "Trainer", "backbone", "checkpoint", "convert", "distributed",
           "downloader", "export", "head", "loop", "lr_sched", "metrics", "optimizer", "reader", "sampling"]
