"""Training runs of zoo variants, with their records, and sweeps over variants."""

from .options import TrainOptions
from .sweep import select_variants, sweep
from .trainer import Trainer, evaluate, resolve_device, train

__all__ = ["TrainOptions", "Trainer", "evaluate", "resolve_device", "select_variants", "sweep", "train"]
