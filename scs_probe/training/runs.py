"""Finding and summarising run directories (a sweep's, or runs trained one by one into one folder)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME

SUMMARY_FIELDS = ("variant", "arch", "layer", "activation", "pool", "norm", "image_size", "epochs", "test_acc",
                  "best_test_acc", "train_seconds_mean", "eval_seconds_mean", "params", "status")


class NoRunsError(Exception):
    """A directory that holds no runs."""


def find_runs(directory) -> list[Path]:
    """Subdirectories of `directory` that hold a checkpoint, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NoRunsError(f"{directory} is not a directory")
    runs = sorted(p for p in directory.iterdir() if (p / CHECKPOINT_NAME).is_file())
    if not runs:
        raise NoRunsError(f"{directory} holds no runs (no subdirectory with a {CHECKPOINT_NAME})")
    return runs


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summarize_run(run_dir: Path) -> dict:
    """One summary row from config.json and history.csv (no checkpoint needs loading)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    history = read_history(run_dir)
    v = config["variant"]

    def mean(key):
        vals = [float(r[key]) for r in history]
        return round(sum(vals) / len(vals), 4) if vals else ""

    return {"variant": config.get("variant_name", run_dir.name), **{k: v[k] for k in
            ("arch", "layer", "activation", "pool", "norm", "image_size")},
            "epochs": len(history), "test_acc": float(history[-1]["test_acc"]) if history else "",
            "best_test_acc": max(float(r["test_acc"]) for r in history) if history else "",
            "train_seconds_mean": mean("train_seconds"), "eval_seconds_mean": mean("eval_seconds"),
            "params": config.get("params", ""), "status": config.get("status", "unknown")}
