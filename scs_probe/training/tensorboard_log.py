"""Live curves for TensorBoard (option `tensorboard`; the optional `tensorboard` extra): each run writes event
files into its own `RUN_DIR/tensorboard/`, so TensorBoard pointed at a sweep's folder shows its runs (or a study's
trials) side by side. Per epoch, the rows the run records: every numeric column of its history row (train_loss ->
loss/train, test_acc -> acc/test, eval_seconds -> seconds/eval, lr), each layer's weight and gradient norm
(weight_norm/LAYER, grad_norm/LAYER) and each sharpened layer's exponents p as a histogram (p/LAYER); epoch 0 is
the initial weights. When the run ends (finished, pruned, diverged) its options and final metrics go to
TensorBoard's HParams dashboard. torch.utils.tensorboard is imported only when a log is opened."""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import OptionError

INSTALL_HINT = "pip install 'scs-probe[tensorboard]'"


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def require() -> None:
    """An OptionError for the tensorboard option where the tensorboard package is missing."""
    if not available():
        raise OptionError("tensorboard", f"needs the tensorboard package ({INSTALL_HINT})")


def scalar_tag(column: str) -> str:
    """A history column as a tag, grouped by what it measures: train_loss -> loss/train, val_acc -> acc/val."""
    split, _, metric = column.rpartition("_")
    return f"{metric}/{split}" if split else column


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class TensorBoardLog:
    """One run's event files. Rows are those the run writes to its CSV records (values as numbers or strings),
    so a log can be filled from the records of epochs trained without it (`backfill`)."""

    def __init__(self, folder, first_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # optional extra: only when asked for
        self.folder = Path(folder)
        self.fresh = not any(self.folder.glob("events.out.tfevents.*"))  # nothing logged here yet
        # a resumed run: drop what an interrupted process logged past its last checkpoint
        self.writer = SummaryWriter(str(self.folder), purge_step=first_epoch or None)

    def history(self, row: dict) -> None:
        epoch = int(row["epoch"])
        for column, value in row.items():
            number = _number(value)
            if column != "epoch" and number is not None:
                self.writer.add_scalar(scalar_tag(column), number, epoch)

    def norms(self, rows: list[dict]) -> None:
        """Per-epoch rows (empty batch) only: weight norm at the end of the epoch, mean gradient norm."""
        for r in rows:
            if r.get("batch", "") in ("", None):
                self.writer.add_scalar(f"{r['kind']}_norm/{r['layer']}", float(r["l2"]), int(r["epoch"]))

    def exponents(self, rows: list[dict]) -> None:
        by_layer = defaultdict(list)
        for r in rows:
            by_layer[(int(r["epoch"]), r["layer"])].append(float(r["p"]))
        for (epoch, layer), ps in by_layer.items():
            self.writer.add_histogram(f"p/{layer}", np.asarray(ps), epoch)

    def epoch(self, row: dict | None, norm_rows: list[dict], exponent_rows: list[dict]) -> None:
        if row is not None:
            self.history(row)
        self.norms(norm_rows)
        self.exponents(exponent_rows)
        self.writer.flush()  # what TensorBoard shows while the run trains

    def backfill(self, history: list[dict], norm_rows: list[dict], exponent_rows: list[dict]) -> None:
        """The epochs a resumed run trained before it was logged (from its records)."""
        for row in history:
            self.history(row)
        self.epoch(None, norm_rows, exponent_rows)

    def finish(self, hparams: dict, metrics: dict) -> None:
        """The run's options and final metrics for the HParams dashboard (one session per run), then close."""
        hparams = {k: v for k, v in hparams.items() if isinstance(v, bool | int | float | str)}
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        self.close()

    def close(self) -> None:
        self.writer.close()


HPARAMS = ("arch", "layer", "activation", "pool", "norm", "image_size", "fixed_p", "seed", "epochs", "batch_size",
           "max_lr", "dataset", "limit_train", "val_split", "amp")


def run_hparams(options: dict) -> dict:
    """What a run computes, from its options (TrainOptions.to_dict()), for the HParams dashboard."""
    return {k: options[k] for k in HPARAMS if options.get(k) is not None}


def final_metrics(history: list[dict]) -> dict:
    """The last epoch's losses and accuracies (whatever splits the history has) and, with a validation split, the
    epoch of best validation accuracy: its validation and test accuracy. Never the best test accuracy, which
    would choose on the test images."""
    if not history:
        return {}
    last = {k: _number(v) for k, v in history[-1].items() if k.endswith(("_loss", "_acc"))}
    metrics = {k: v for k, v in last.items() if v is not None}
    val = [(_number(r.get("val_acc")), r) for r in history if _number(r.get("val_acc")) is not None]
    if val:
        best_val, best = max(val, key=lambda t: t[0])  # the first of equal bests, as the run summary picks
        metrics["best_val_acc"] = best_val
        if _number(best.get("test_acc")) is not None:
            metrics["test_acc_at_best_val"] = _number(best["test_acc"])
    return metrics
