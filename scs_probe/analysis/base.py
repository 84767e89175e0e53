"""The shape every analysis shares (as Captum's one class per attribution method): options in a small frozen
config, one `run` call over runs, outputs written beside `analysis.json`, which records the options and the
runs that produced them, so that `report` can tell whether stored outputs answer what is asked now."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

from .. import __version__
from ..errors import CheckpointError, OptionError, RecordError
from ..progress import print_escaped
from ..rundir import RunDir
from ..serialization import DictSerializable
from ..storage import read_csv, read_json, write_json

OPTIONS_FILE = "analysis.json"


@dataclass(frozen=True)
class AnalysisConfig(DictSerializable):
    """Options that decide an analysis' results (not where or how fast it runs). Lists become tuples, so a
    config read back from JSON equals the one that was written."""

    def __post_init__(self):
        for f in fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Raise OptionError for a value out of range."""

    @staticmethod
    def require(option: str, ok: bool, message: str) -> None:
        if not ok:
            raise OptionError(option, message)


@dataclass
class Context:
    """Where and how an analysis runs: none of it changes the numbers it writes."""
    data_dir: str | None = None
    dataset: str | None = None        # test images from this data set (None: the one the runs were trained on)
    device: object = "cpu"
    progress: bool = True
    log: Callable[[str], None] = print_escaped


@dataclass
class AnalysisResult:
    analysis: str
    out: Path
    summary: list[dict]
    figures: dict[str, Path] = field(default_factory=dict)


def run_fingerprint(runs: Sequence[RunDir]) -> list[dict]:
    """Which runs, at which epoch, with which weights and test predictions: an analysis of the same runs gives the
    same numbers. Told by content, never by file times (a copied sweep is the same sweep): the checkpoint's size
    and the run's own record of when it last saved (config.json's `updated`), or, for a bare checkpoint, a hash
    of the file; a hash of predictions.csv (None where there is none); the data fingerprint it recorded."""
    out = []
    for run in runs:
        try:
            config = run.read_config()
        except RecordError:
            config = {}
        epoch = config.get("epochs_done")
        if epoch is None:
            try:
                epoch = run.load_checkpoint()["epoch"]
            except CheckpointError:
                epoch = None
        size = run.checkpoint_path.stat().st_size if run.has_checkpoint() else None
        saved = config.get("updated") or (_file_hash(run.checkpoint_path) if size is not None else None)
        predictions = run.path / RunDir.PREDICTIONS
        out.append({"name": run.name, "checkpoint": str(run.checkpoint_path), "epoch": epoch, "size": size,
                    "saved": saved, "predictions": _file_hash(predictions) if predictions.is_file() else None,
                    "data": (config.get("data") or {}).get("fingerprint")})
    return out


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _same_runs(a: list[dict], b: list[dict], predictions: bool = False, data: bool = True) -> bool:
    """Same runs, epochs and checkpoints (size and the run's own save record: a run retrained in place differs,
    a copied one does not), trained on the same copy of the data, and with `predictions` the same predictions.csv
    contents (without `data`, whatever data they were trained on). Rows stored before the data was counted (no
    "data") still answer for runs of one copy: a run's data changes only with its save record; runs that span two
    copies may have been compared across them."""
    data = data and (all("data" in r for r in a + b) or len({r.get("data") for r in a + b if r.get("data")}) > 1)

    def key(rows):
        return [(r.get("name"), r.get("epoch"), r.get("size"), r.get("saved"), r.get("data") if data else None,
                 r.get("predictions") if predictions else None) for r in rows]
    return key(a) == key(b)


class Analysis(ABC):
    """`Analysis(config).run(runs, out, context)` -> AnalysisResult; outputs in `out`."""

    name: ClassVar[str]                  # the output folder's name under DIR/analysis/
    Config: ClassVar[type[AnalysisConfig]]
    summary_file: ClassVar[str]          # CSV with one row per model (and attack, layer, ...)
    figure_stems: ClassVar[tuple[str, ...]]
    reads_predictions: ClassVar[bool] = False  # its numbers come from the runs' predictions.csv
    uses_test_images: ClassVar[bool] = False   # its numbers come from test images (of the data set the context names)
    # columns the current outputs hold and older ones lack (file -> columns): stored outputs without them are stale
    stored_columns: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, config: AnalysisConfig | None = None, **options):
        if config is not None and options:
            raise TypeError("pass a config or options, not both")
        self.config = config if config is not None else self.Config(**options)

    def run(self, runs: Sequence[RunDir], out, context: Context | None = None) -> AnalysisResult:
        out = Path(out)
        (out / OPTIONS_FILE).unlink(missing_ok=True)  # outputs half rewritten never pass for the stored ones
        for stem in self.figure_stems:  # nor does a figure this run may not draw
            for suffix in (".png", ".svg"):
                (out / f"{stem}{suffix}").unlink(missing_ok=True)
        context = context or Context()
        result = self._run(list(runs), out, context)
        dataset = {"dataset": self.test_dataset(runs, context)} if self.uses_test_images else {}
        write_json(out / OPTIONS_FILE, {"analysis": self.name, "config": self.config.to_dict(),
                                        "runs": run_fingerprint(runs), **dataset, "scs_probe": __version__})
        return result

    @classmethod
    def test_dataset(cls, runs: Sequence[RunDir], context: Context | None = None) -> str | None:
        """The data set its test images come from: the context's, else the runs' own; None where the runs were
        trained on several and the context names none (running the analysis says so)."""
        from .sources import runs_dataset
        try:
            return runs_dataset(runs, (context or Context()).dataset)
        except OptionError:
            return None

    @abstractmethod
    def _run(self, runs: list[RunDir], out: Path, context: Context) -> AnalysisResult:
        ...

    # ------------------------------------------------------------------------------------ stored outputs
    @classmethod
    def stored_config(cls, out) -> tuple[AnalysisConfig, list[dict]] | None:
        """The config and runs recorded with outputs in `out`; None where there are none or they cannot be
        read (outputs of an older scs-probe without analysis.json, a config that no longer validates, runs that
        are not a list of records)."""
        path = Path(out) / OPTIONS_FILE
        try:
            stored = read_json(path)
            runs = stored["runs"]
            if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
                return None
            return cls.Config.from_dict(stored["config"]), runs
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None

    @classmethod
    def load(cls, out) -> AnalysisResult:
        out = Path(out)
        figures = {stem: out / f"{stem}.png" for stem in cls.figure_stems if (out / f"{stem}.png").is_file()}
        return AnalysisResult(cls.name, out, read_csv(out / cls.summary_file), figures)

    @classmethod
    def staleness(cls, out, runs: Sequence[RunDir], asked: dict, context: Context | None = None) -> str:
        """Why the outputs in `out` do not answer `asked` for these runs, with test images from the data set
        `context` names ('' where they do)."""
        stored = cls.stored_config(out)
        if not (Path(out) / OPTIONS_FILE).is_file():
            return "none stored"
        if stored is None:
            return "stored options unreadable"
        if not (Path(out) / cls.summary_file).is_file():
            return "stored outputs incomplete"
        for name, columns in cls.stored_columns.items():
            if not (Path(out) / name).is_file():
                return "stored outputs incomplete"
            with open(Path(out) / name, newline="") as f:
                header = f.readline().strip().split(",")
            missing = [c for c in columns if c not in header]
            if missing:
                return f"stored by an older scs-probe ({name} has no {missing[0]})"
        config, stored_runs = stored
        now = run_fingerprint(runs)
        if not _same_runs(stored_runs, now, data=False):
            return "the runs or their checkpoints changed"
        if not _same_runs(stored_runs, now):
            return "the data fingerprints the runs recorded changed"
        if cls.reads_predictions and not _same_runs(stored_runs, now, predictions=True):
            return "the runs' predictions changed"
        if cls.uses_test_images:
            asked_set = cls.test_dataset(runs, context)
            # stored before the data set was recorded: the runs' own (what a report without --dataset took)
            stored_set = read_json(Path(out) / OPTIONS_FILE).get("dataset") or cls.test_dataset(runs)
            if asked_set is not None and stored_set is not None and asked_set != stored_set:
                return f"test images of {asked_set} asked, stored ones are of {stored_set}"
        changed = [k for k, v in asked.items() if getattr(replace(config, **{k: v}), k) != getattr(config, k)]
        return f"options changed: {', '.join(changed)}" if changed else ""
