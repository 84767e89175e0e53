"""Training runs of zoo variants, with their records, and sweeps over variants (in turn, or in parallel on an
executor)."""

from .executors import LocalExecutor, RayExecutor, make_executor
from .options import TrainOptions
from .sweep import select_variants, sweep
from .trainer import Trainer, evaluate, resolve_device, train

__all__ = ["LocalExecutor", "RayExecutor", "TrainOptions", "Trainer", "evaluate", "make_executor", "resolve_device",
           "select_variants", "sweep", "train"]
