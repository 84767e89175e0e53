"""The on-disk layout of runs and of directories of runs. Only this module spells a file name.

A run directory holds `checkpoint.pt`, `config.json` and the per-epoch records `history.csv`, `norms.csv`,
`exponents.csv` (with the tensorboard option, also TensorBoard's event files under `tensorboard/`), and
`train.lock`, locked by the process that trains it. A directory of runs (a sweep, or runs trained one by one into
one folder) holds runs as subdirectories, `summary.csv`, analyses under `analysis/<name>/`, `report.html` and
`.report.lock`, locked by the report writing them; it may also hold fixed-p searches (`StudyDir`: `study.db`,
`trials.csv`, `tune.png`, a run per trial under `trials/<number>/`).
"""

from __future__ import annotations

import csv
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import NoRunsError, RecordError
from .locks import FileLock, holder
from .schema import CONFIG, check
from .storage import csv_text, read_csv, read_json, write_csv, write_json

RECORDS = {
    # val_loss and val_acc: on the validation split (empty without one); eval_seconds: the test pass only
    "history": ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "train_seconds",
                "eval_seconds", "lr"),
    "norms": ("epoch", "batch", "layer", "kind", "l2"),
    "exponents": ("epoch", "layer", "channel", "p"),
}


class RunDir:
    """One training run's folder: paths, reading, atomic writing of each record, and its status."""

    CHECKPOINT, CONFIG, PREDICTIONS = "checkpoint.pt", "config.json", "predictions.csv"
    TENSORBOARD = "tensorboard"  # event files of the tensorboard option
    LOCK = "train.lock"  # held by the process training the run (see `training_lock`)

    def __init__(self, path, checkpoint=None):
        self.path = Path(path)
        self.checkpoint_path = Path(checkpoint) if checkpoint else self.path / self.CHECKPOINT
        self.config_path = self.path / self.CONFIG

    @classmethod
    def of(cls, path) -> RunDir:
        """A run directory, or a checkpoint file (whose folder then holds the records, if any). A path that does
        not exist is a file where its name has a suffix (model.pt), else a directory."""
        path = Path(path)
        is_file = path.is_file() or (not path.exists() and bool(path.suffix))
        return cls(path.parent, checkpoint=path) if is_file else cls(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    # ------------------------------------------------------------------------------------------- checkpoint
    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def load_checkpoint(self) -> dict:
        return load_checkpoint(self.checkpoint_path)

    def save_checkpoint(self, payload: dict) -> None:
        save_checkpoint(self.checkpoint_path, payload)

    # ------------------------------------------------------------------------------------------- config
    def read_config(self) -> dict:
        """config.json, or {} where there is none (a bare checkpoint). One that cannot be read, is not JSON or holds
        a field of the wrong type is a RecordError naming it (`schema.CONFIG`): its readers take it as it is."""
        if not self.config_path.is_file():
            return {}
        try:
            config = read_json(self.config_path)
        except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError: ValueError
            raise RecordError(f"{self.config_path}: unreadable or not JSON ({type(e).__name__})") from None
        check(config, CONFIG, self.config_path, RecordError)
        return config

    def write_config(self, config: dict) -> None:
        write_json(self.config_path, config)

    @property
    def name(self) -> str:
        """The variant's name as config.json records it, else the folder's name."""
        try:
            return self.read_config().get("variant_name") or self.path.name
        except RecordError:
            return self.path.name

    @property
    def tensorboard_path(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def status(self) -> str | None:
        """running, finished or diverged (from the checkpoint); None where there is no checkpoint."""
        return self.load_checkpoint().get("status") if self.has_checkpoint() else None

    # ------------------------------------------------------------------------------------------- lock
    def training_lock(self) -> FileLock:
        """The lock a process holds while it trains this run (the folder must exist): a second process, or an
        orphaned worker of a killed sweep, never trains the same run at the same time."""
        return FileLock(self.path / self.LOCK)

    def trainer(self) -> dict | None:
        """The process training this run now ({'pid', 'host', 'since'} as it recorded them, or {}); None where
        none is."""
        return holder(self.path / self.LOCK)

    def shown_status(self, status: str | None) -> str | None:
        """`status` as a reader should take it: a "running" run that no process trains is "interrupted" (killed
        or stopped; it resumes from its checkpoint)."""
        return "interrupted" if status == "running" and self.trainer() is None else status

    def sync_config(self, ckpt: dict | None = None) -> bool:
        """Make config.json say what the checkpoint says (status, epochs done, divergence), where a process was
        killed between writing the one and the other; True where it was rewritten. The checkpoint is the record
        a run resumes from; a bare checkpoint (no config.json) is left as it is."""
        if not self.config_path.is_file():
            return False
        ckpt = ckpt if ckpt is not None else self.load_checkpoint()
        try:
            config = self.read_config()
        except (OSError, ValueError):  # written atomically, so only a foreign hand leaves it unreadable
            return False
        status, done = ckpt.get("status"), int(ckpt["epoch"])
        if config.get("status") == status and config.get("epochs_done") == done:
            return False
        extra = {k: ckpt[k] for k in ("diverged",) if k in ckpt}
        self.write_config(config | {"status": status, "epochs_done": done,
                                    "updated": datetime.now(UTC).isoformat()} | extra)
        return True

    # ------------------------------------------------------------------------------------------- records
    def record_path(self, record: str) -> Path:
        if record not in RECORDS:
            raise KeyError(f"unknown record {record!r}; known: {', '.join(RECORDS)}")
        return self.path / f"{record}.csv"

    def has_record(self, record: str) -> bool:
        return self.record_path(record).is_file()

    def read(self, record: str) -> list[dict]:
        """A record's rows as dicts of strings ([] where the file does not exist)."""
        path = self.record_path(record)
        return read_csv(path) if path.is_file() else []

    def start_records(self) -> None:
        """Every record with its header and no rows."""
        for record, fields in RECORDS.items():
            write_csv(self.record_path(record), [], fields)

    def truncate_records(self, last_epoch: int) -> None:
        """Drop rows newer than `last_epoch` (the checkpoint's), so that a run interrupted between writing its
        records and its checkpoint resumes with no row lost or repeated."""
        for record, fields in RECORDS.items():
            keep = [r for r in self.read(record) if int(r["epoch"]) <= last_epoch]
            write_csv(self.record_path(record), keep, fields)

    def append(self, record: str, rows: list[dict]) -> None:
        """Append rows (the file stays whole-line; `truncate_records` repairs an interrupted epoch)."""
        if not rows:
            return
        text = csv_text(RECORDS[record], rows).split("\n", 1)[1]
        with open(self.record_path(record), "a", newline="") as f:
            f.write(text)

    def write_predictions(self, epoch: int, labels, preds) -> None:
        """The latest evaluation's predicted class of every test image (index in the test split as used), so that
        two runs can be compared image by image."""
        rows = [{"index": i, "label": int(y), "pred": int(p), "epoch": epoch}
                for i, (y, p) in enumerate(zip(labels.tolist(), preds.tolist()))]
        write_csv(self.path / self.PREDICTIONS, rows, ("index", "label", "pred", "epoch"))

    def read_predictions(self) -> dict | None:
        """{'index', 'label', 'pred'} as integer arrays and the 'epoch' they are from; None where the run has
        none (trained before scs-probe recorded them). A file that is empty (header only), cut mid-line,
        malformed, shorter or longer than the test set the run records, or older than a finished run's last
        epoch is a RecordError naming it: a comparison on it would be silently wrong."""
        path = self.path / self.PREDICTIONS
        if not path.is_file():
            return None
        fields = ("index", "label", "pred", "epoch")
        try:
            rows = read_csv(path)
            with open(path, newline="") as f:
                header = f.readline().strip().split(",")
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise RecordError(f"{path}: unreadable ({e})") from None
        if tuple(header) != fields:
            raise RecordError(f"{path}: not a predictions file (header {','.join(header)[:80]!r}, expected "
                              f"{','.join(fields)})")
        if not rows:
            raise RecordError(f"{path}: holds no predictions (header only)")
        try:
            cols = {k: np.array([int(r[k]) for r in rows], dtype=np.int64) for k in fields}
        except (TypeError, ValueError):
            bad = next(i for i, r in enumerate(rows, 2) if not all(str(r.get(k) or "").lstrip("-").isdigit()
                                                                   for k in fields))
            raise RecordError(f"{path}: malformed at line {bad} (cut mid-line or not integers)") from None
        if any(None in r for r in rows):  # more fields than the header: not one of ours
            raise RecordError(f"{path}: malformed (a line with more than {len(fields)} fields)")
        config = self.read_config()
        n_test = config.get("data", {}).get("n_test")
        if n_test is not None and len(rows) != int(n_test):
            raise RecordError(f"{path}: holds {len(rows)} predictions but the run's test set has {n_test} images "
                              "(a cut or foreign file)")
        if not np.array_equal(cols["index"], np.arange(len(rows))):
            raise RecordError(f"{path}: malformed (indices are not 0..{len(rows) - 1} in order)")
        classes = config.get("data", {}).get("num_classes")
        if classes is not None:
            wrong = [k for k in ("label", "pred") if ((cols[k] < 0) | (cols[k] >= int(classes))).any()]
            if wrong:
                raise RecordError(f"{path}: malformed ({' and '.join(wrong)}s outside the run's {classes} classes)")
        epochs = set(cols["epoch"].tolist())
        done = config.get("epochs_done")
        if len(epochs) > 1:
            raise RecordError(f"{path}: malformed (predictions from epochs {','.join(map(str, sorted(epochs)))})")
        if config.get("status") == "finished" and done is not None and epochs != {int(done)}:
            raise RecordError(f"{path}: predictions from epoch {','.join(map(str, sorted(epochs)))}, but the run "
                              f"finished at epoch {done}")
        return {k: cols[k] for k in ("index", "label", "pred")} | {"epoch": int(cols["epoch"][0])}

    @property
    def seed(self) -> int | None:
        return self.read_config().get("options", {}).get("seed")

    def summary(self) -> dict:
        """One summary row from config.json and history.csv (no checkpoint needs loading). The best epoch is the
        one of highest validation accuracy (the first of equals), and `test_acc_at_best` that epoch's test
        accuracy; without a validation split both are empty (a best chosen on the test split would overstate
        it). A history.csv cut mid-line or holding other than numbers is a RecordError naming it."""
        config = self.read_config()
        try:
            return self._summary(config, self.read("history"))
        except (OSError, csv.Error, KeyError, TypeError, ValueError) as e:
            raise RecordError(f"{self.record_path('history')}: unreadable or malformed (a row cut or not numbers: "
                              f"{type(e).__name__})") from None

    def _summary(self, config: dict, history: list[dict]) -> dict:
        from .zoo import AXES
        variant = config.get("variant", {})

        def mean(key):
            vals = [float(r[key]) for r in history]
            return round(sum(vals) / len(vals), 4) if vals else ""

        options = config.get("options", {})
        data = config.get("data", {})
        best = best_epoch(history)
        return {"variant": config.get("variant_name", self.path.name), "arch": variant.get("arch", ""),
                **{axis: variant.get(axis, "") for axis in AXES}, "seed": options.get("seed", ""),
                "epochs": len(history), "test_acc": float(history[-1]["test_acc"]) if history else "",
                "val_acc": float(history[-1]["val_acc"]) if history and history[-1].get("val_acc") else "",
                "best_epoch": int(best["epoch"]) if best else "",
                "best_val_acc": float(best["val_acc"]) if best else "",
                "test_acc_at_best": float(best["test_acc"]) if best else "",
                "train_seconds_mean": mean("train_seconds"), "eval_seconds_mean": mean("eval_seconds"),
                "params": config.get("params", ""), "max_lr": options.get("max_lr", ""),
                "batch_size": options.get("batch_size", ""), "n_train": data.get("n_train", ""),
                "n_val": (data.get("val_split") or {}).get("n", ""), "n_test": data.get("n_test", ""),
                "num_classes": data.get("num_classes", ""),
                "backend": (config.get("environment") or {}).get("backend", ""),
                "dataset": options.get("dataset", "cifar10"),
                "status": self.shown_status(config.get("status", "unknown"))}


def best_epoch(history: list[dict]) -> dict | None:
    """The history row of highest validation accuracy (the first of equals); None without validation rows."""
    def value(r) -> float:
        try:
            return float(r.get("val_acc"))
        except (TypeError, ValueError):
            return math.nan
    rows = [r for r in history if math.isfinite(value(r))]  # a nan would win every max
    return max(rows, key=value) if rows else None


def summary_fields() -> tuple[str, ...]:
    from .zoo import AXES
    return ("variant", "arch", *AXES, "seed", "epochs", "test_acc", "val_acc", "best_epoch", "best_val_acc",
            "test_acc_at_best", "train_seconds_mean", "eval_seconds_mean", "params", "max_lr", "batch_size", "n_train",
            "n_val", "n_test", "num_classes", "backend", "dataset", "status")


class RunsDir:
    """A directory whose subdirectories are runs: a sweep's, or runs trained one by one into one folder."""

    SUMMARY, VARIANT_SUMMARY, ANALYSIS, REPORT = "summary.csv", "variant_summary.csv", "analysis", "report.html"
    REPORT_LOCK = ".report.lock"  # held by the report (re)writing the analyses

    def __init__(self, path):
        self.path = Path(path)

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def runs(self) -> list[RunDir]:
        """Subdirectories that hold a checkpoint, sorted by name; none is a NoRunsError."""
        if not self.path.is_dir():
            raise NoRunsError(f"{self.path} is not a directory")
        runs = [RunDir(p) for p in sorted(self.path.iterdir()) if RunDir(p).has_checkpoint()]
        if not runs:
            raise NoRunsError(f"{self.path} holds no runs (no subdirectory with a {RunDir.CHECKPOINT})")
        return runs

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    def write_summary(self, rows: list[dict]) -> None:
        write_csv(self.summary_path, rows, summary_fields())

    def write_variant_summary(self, rows: list[dict]) -> None:
        write_csv(self.path / self.VARIANT_SUMMARY, rows, list(rows[0]) if rows else ["variant"])

    def analysis_dir(self, analysis: str | None = None) -> Path:
        """DIR/analysis/<analysis>/, or DIR/analysis/ itself (figures of the whole directory)."""
        return self.path / self.ANALYSIS / (analysis or "")

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    def report_lock(self) -> FileLock:
        """The lock a report holds while it (re)writes the analyses: two reports on one folder would otherwise
        swap in, and clear away, each other's half-written analyses."""
        return FileLock(self.path / self.REPORT_LOCK)

    def report_writer(self) -> dict | None:
        """The process writing this folder's report now (as `RunDir.trainer`); None where none is."""
        return holder(self.path / self.REPORT_LOCK)

    def studies(self) -> list[StudyDir]:
        """Fixed-p searches kept in this directory (itself, or subdirectories holding a trials.csv)."""
        if not self.path.is_dir():
            return []
        return [StudyDir(p) for p in [self.path, *sorted(self.path.iterdir())] if StudyDir(p).trials_path.is_file()]


class StudyDir:
    """A fixed-p search's folder (`scs-probe tune`): the default Optuna database, the trials table and figure, and
    one run directory per trial under trials/<number>/."""

    DATABASE, TRIALS, FIGURE, RUNS = "study.db", "trials.csv", "tune", "trials"

    def __init__(self, path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{(self.path / self.DATABASE).resolve()}"

    @property
    def trials_path(self) -> Path:
        return self.path / self.TRIALS

    @property
    def figure_path(self) -> Path:
        return self.path / f"{self.FIGURE}.png"

    def trial(self, number: int) -> RunDir:
        return RunDir(self.path / self.RUNS / str(number))

    def write_trials(self, rows: list[dict], fields) -> None:
        write_csv(self.trials_path, rows, fields, float_format=".6g")

    def read_trials(self) -> list[dict]:
        return read_csv(self.trials_path) if self.trials_path.is_file() else []
