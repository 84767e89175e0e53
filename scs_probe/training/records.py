"""Per-run records: history.csv, norms.csv, exponents.csv and config.json, kept consistent with the checkpoint."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch
from torch import nn

from ..layers import SHARPENED_LAYERS
from .checkpoint import atomic_write

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "train_seconds", "eval_seconds", "lr")
NORM_FIELDS = ("epoch", "batch", "layer", "kind", "l2")
EXPONENT_FIELDS = ("epoch", "layer", "channel", "p")
FILES = {"history.csv": HISTORY_FIELDS, "norms.csv": NORM_FIELDS, "exponents.csv": EXPONENT_FIELDS}


def tracked_layers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(layer name, kernel/matrix weight) for every layer with a weight of 2 or more dimensions."""
    return [(name, m.weight) for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2]


def sharpened_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SHARPENED_LAYERS)]


class RunRecords:
    """Appends CSV rows epoch by epoch. `truncate(epoch)` drops rows newer than the checkpoint, so a run that
    was interrupted between writing records and its checkpoint resumes with no row lost or repeated."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def start(self) -> None:
        for name, fields in FILES.items():
            atomic_write(self.path(name), lambda f, fields=fields: f.write((",".join(fields) + "\n").encode()))

    def truncate(self, last_epoch: int) -> None:
        for name, fields in FILES.items():
            rows = self.read(name) if self.path(name).exists() else []
            keep = [r for r in rows if int(r["epoch"]) <= last_epoch]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(keep)
            atomic_write(self.path(name), lambda f: f.write(buf.getvalue().encode()))

    def read(self, name: str) -> list[dict]:
        with open(self.path(name), newline="") as f:
            return list(csv.DictReader(f))

    def append(self, name: str, rows: list[dict]) -> None:
        if not rows:
            return
        with open(self.path(name), "a", newline="") as f:
            csv.DictWriter(f, fieldnames=FILES[name], lineterminator="\n").writerows(rows)
            f.flush()


def weight_norm_rows(epoch: int, layers, batch="") -> list[dict]:
    norms = torch.stack(torch._foreach_norm([w.detach().float() for _, w in layers])).tolist() if layers else []
    return [{"epoch": epoch, "batch": batch, "layer": name, "kind": "weight", "l2": f"{v:.6g}"}
            for (name, _), v in zip(layers, norms)]


def exponent_rows(epoch: int, model: nn.Module) -> list[dict]:
    rows = []
    for name, m in sharpened_layers(model):
        for ch, p in enumerate(m.effective_p().detach().float().cpu().tolist()):
            rows.append({"epoch": epoch, "layer": name, "channel": ch, "p": f"{p:.6g}"})
    return rows


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2, default=str) + "\n").encode()))
