"""The shape every analysis shares (as Captum's one class per attribution method): options in a small frozen
config, one `run` call over runs, outputs written beside `analysis.json`, which records the options and the
runs that produced them, so that `report` can tell whether stored outputs answer what is asked now."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

from .. import __version__
from ..errors import CheckpointError, OptionError
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
    device: object = "cpu"
    progress: bool = True
    log: Callable[[str], None] = print


@dataclass
class AnalysisResult:
    analysis: str
    out: Path
    summary: list[dict]
    figures: dict[str, Path] = field(default_factory=dict)


def run_fingerprint(runs: Sequence[RunDir]) -> list[dict]:
    """Which runs, at which epoch: an analysis of the same runs at the same epochs gives the same numbers."""
    out = []
    for run in runs:
        epoch = run.read_config().get("epochs_done")
        if epoch is None:
            try:
                epoch = run.load_checkpoint()["epoch"]
            except CheckpointError:
                epoch = None
        out.append({"name": run.name, "checkpoint": str(run.checkpoint_path), "epoch": epoch})
    return out


def _same_runs(a: list[dict], b: list[dict]) -> bool:
    return [(r["name"], r["epoch"]) for r in a] == [(r["name"], r["epoch"]) for r in b]


class Analysis(ABC):
    """`Analysis(config).run(runs, out, context)` -> AnalysisResult; outputs in `out`."""

    name: ClassVar[str]                  # the output folder's name under DIR/analysis/
    Config: ClassVar[type[AnalysisConfig]]
    summary_file: ClassVar[str]          # CSV with one row per model (and attack, layer, ...)
    figure_stems: ClassVar[tuple[str, ...]]

    def __init__(self, config: AnalysisConfig | None = None, **options):
        if config is not None and options:
            raise TypeError("pass a config or options, not both")
        self.config = config if config is not None else self.Config(**options)

    def run(self, runs: Sequence[RunDir], out, context: Context | None = None) -> AnalysisResult:
        out = Path(out)
        result = self._run(list(runs), out, context or Context())
        write_json(out / OPTIONS_FILE, {"analysis": self.name, "config": self.config.to_dict(),
                                        "runs": run_fingerprint(runs), "scs_probe": __version__})
        return result

    @abstractmethod
    def _run(self, runs: list[RunDir], out: Path, context: Context) -> AnalysisResult:
        ...

    # ------------------------------------------------------------------------------------ stored outputs
    @classmethod
    def stored_config(cls, out) -> tuple[AnalysisConfig, list[dict]] | None:
        """The config and runs recorded with outputs in `out`; None where there are none or they cannot be
        read (outputs of an older scs-probe without analysis.json, a config that no longer validates)."""
        path = Path(out) / OPTIONS_FILE
        try:
            stored = read_json(path)
            return cls.Config.from_dict(stored["config"]), stored["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def load(cls, out) -> AnalysisResult:
        out = Path(out)
        figures = {stem: out / f"{stem}.png" for stem in cls.figure_stems if (out / f"{stem}.png").is_file()}
        return AnalysisResult(cls.name, out, read_csv(out / cls.summary_file), figures)

    @classmethod
    def up_to_date(cls, out, runs: Sequence[RunDir], asked: dict) -> AnalysisConfig | None:
        """The stored config when `out` holds this analysis of these runs (same names and epochs) with every
        option in `asked` as asked; else None."""
        stored = cls.stored_config(out)
        if stored is None or not (Path(out) / cls.summary_file).is_file():
            return None
        config, stored_runs = stored
        if not _same_runs(stored_runs, run_fingerprint(runs)):
            return None
        if replace(config, **asked) != config:
            return None
        return config
