"""The library's typed errors. They speak of values, files and runs, never of command-line flags: the CLI maps
each to a flag, a one-line message and an exit code (`OptionError` -> 2, the others -> 1)."""

from __future__ import annotations


class ScsProbeError(Exception):
    """Base of every error scs-probe raises on purpose."""


class OptionError(ScsProbeError, ValueError):
    """An option value that is unknown, out of range or impossible for the variant. `option` names the field
    (e.g. 'max_lr', 'eps'); the message does not repeat it."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message


class DataError(ScsProbeError):
    """The data set is malformed, or (`missing`) absent and not downloadable."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


class CheckpointError(ScsProbeError):
    """A checkpoint that is missing, unreadable, unsafe, not one of ours or not of the expected model."""


class UntrustedModelCode(ScsProbeError):
    """A model spec that names code to import (package.module:factory, or anything that is not a zoo architecture
    nor a torchvision:/timm: model), read from a file or otherwise not trusted: nothing was imported. The opt-in
    is `scs_probe.zoo.trust_model_code` (the CLI's flag for it: `option`). Exit code 1, as for a checkpoint that
    would need unpickling of arbitrary objects."""

    option = "trust_model_code"

    def __init__(self, spec: str, source=None):
        where = f"{source}: " if source else ""
        super().__init__(f"{where}refusing to import the model code {spec!r} (not a zoo architecture nor a "
                         "torchvision:/timm: model) unless it is trusted")
        self.spec, self.source = spec, source

    def __reduce__(self):  # raised in a worker process, it reaches the driver whole
        return type(self), (self.spec, self.source)


class NoRunsError(ScsProbeError):
    """A directory that holds no runs, or a path that is not a run directory."""


class TrainingError(ScsProbeError):
    """A run that cannot start or continue."""


class RunExistsError(TrainingError):
    """The run directory already holds a run and resuming was not asked for."""

    def __init__(self, run_dir):
        super().__init__(f"{run_dir} already holds a run")
        self.run_dir = run_dir


class ResumeConflict(TrainingError):
    """Resuming with an option that differs from the one the run was trained with."""

    def __init__(self, run_dir, option: str, stored, given):
        super().__init__(f"{run_dir} was trained with {option}={stored!r}; resuming keeps the stored options "
                         f"(got {given!r})")
        self.option, self.stored, self.given = option, stored, given


class DeviceUnavailable(TrainingError):
    """The device asked for does not exist on this machine."""


class OutOfMemory(TrainingError):
    """The run did not fit in its device's memory: a failed run, which other runs of a sweep survive."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite; the run's records are marked diverged."""


class ServiceUnavailable(ScsProbeError):
    """A service the work needs (a Ray cluster, a study's database) cannot be reached or is not installed."""


class StorageNotShared(ScsProbeError):
    """A cluster node does not see the run directories or the data folder as the driver does."""


class Busy(ScsProbeError):
    """A folder that another process is writing, as its lock says: a run it trains, the analyses of a report.
    `holder`: what the lock file records of that process (pid, host), where it does."""

    def __init__(self, path, doing: str, holder: dict | None = None):
        holder = holder or {}
        who = f" (pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else "") + ")" \
            if holder.get("pid") else ""
        super().__init__(f"{path} is {doing} by another process{who}")
        self.path, self.doing, self.holder = path, doing, holder

    def __reduce__(self):  # raised in a worker process, it reaches the driver whole
        return type(self), (self.path, self.doing, self.holder)


class DataMismatch(TrainingError):
    """Resuming a run, or continuing a study, on data other than it was trained on (its recorded fingerprint
    differs from the data's now)."""


class RecordError(ScsProbeError):
    """A run's record (predictions.csv, history.csv, ...) that is missing, empty, short or malformed: numbers read
    from it would be wrong without a word."""


class StudyConflict(TrainingError):
    """Continuing a fixed-p search with settings other than the ones its trials were run with, or in a folder
    that holds another study's trials."""
