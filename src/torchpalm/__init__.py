"""torchpalm: PaddlePALM's NLP fine-tuning, pretraining and multi-task learning framework on PyTorch.

`import torchpalm as palm` gives PALM's public surface: `palm.reader`, `palm.backbone`, `palm.head`,
`palm.optimizer`, `palm.lr_sched`, `palm.Trainer`, `palm.MultiHeadTrainer`. Importing has no side effects.
"""

from . import backbone, checkpoint, distributed, head, loop, lr_sched, metrics, optimizer, reader, sampling
from .multihead_trainer import MultiHeadTrainer
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = ["MultiHeadTrainer", "Trainer", "backbone", "checkpoint", "distributed", "head", "loop", "lr_sched", "metrics", "optimizer",
           "reader", "sampling"]
