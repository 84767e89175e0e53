"""Training runs, their checkpoints and records, and sweeps over variants."""

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .sweep import select_variants, sweep
from .trainer import TrainingDiverged, TrainingError, TrainOptions, evaluate, resolve_device, train

__all__ = ["CheckpointError", "TrainOptions", "TrainingDiverged", "TrainingError", "evaluate", "load_checkpoint",
           "model_from_checkpoint", "resolve_device", "save_checkpoint", "select_variants", "sweep", "train"]
