"""The study's fixed-p search (its Appendix C.2) on Optuna: SCS with one p shared by every sharpened layer,
p (and optionally max LR) drawn by TPE, each trial a normal run under OUT/trials/<number>/, optimised and pruned
on its per-epoch validation accuracy (training images held out: the test split never chooses; each trial's test
accuracy is reported beside it). Storage is any Optuna URL (SQLite at OUT/study.db by default), so a study
survives the process and several processes can share one; trials whose process died are failed by Optuna's
heartbeat and re-queued with the same parameters (RetryFailedTrialCallback), never counted as results."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

from ..data import dataset_fingerprint
from ..errors import (
    DataMismatch,
    OptionError,
    RecordError,
    ScsProbeError,
    ServiceUnavailable,
    StudyConflict,
    TrainingDiverged,
)
from ..layers import get_backend
from ..plotting import plt, save
from ..progress import print_escaped, progress_bar, write_line
from ..rundir import StudyDir
from ..schema import STUDY, check
from .executors import cap_jobs, checked_data_dir, is_parallel, prepare_worker, run_all
from .options import TrainOptions
from .tensorboard_log import require as require_tensorboard
from .trainer import Trainer

SEARCHABLE = ("p", "max_lr")
PRUNERS = ("median", "halving", "none")


@dataclass(frozen=True)
class TuneConfig:
    n_trials: int = 20                 # finished (complete or pruned) trials the study should hold
    p_range: tuple = (0.5, 4.0)        # sampled on a log scale
    lr_range: tuple = (1e-3, 0.1)      # max LR, log scale, where "max_lr" is searched
    search: tuple = ("p",)
    pruner: str = "median"             # median (MedianPruner) or halving (SuccessiveHalvingPruner) or none
    storage: str | None = None         # None: sqlite:///OUT/study.db
    study_name: str = "scs-fixed-p"
    seed: int = 0                      # TPE's
    heartbeat: int = 60                # seconds; a trial silent for 2 heartbeats is failed and re-queued

    def __post_init__(self):
        for key in ("p_range", "lr_range"):
            lo, hi = (float(v) for v in getattr(self, key))
            if not 0 < lo < hi:
                raise OptionError(key, f"must be LOW:HIGH with 0 < LOW < HIGH, got {lo:g}:{hi:g}")
            object.__setattr__(self, key, (lo, hi))
        if self.p_range[0] < 0.1:
            raise OptionError("p_range", "p below 0.1 is clamped by the layers; start the range at 0.1 or above")
        unknown = [s for s in self.search if s not in SEARCHABLE]
        if unknown or "p" not in self.search or len(set(self.search)) < len(self.search):  # p,p: another study
            raise OptionError("search", f"takes p, optionally with max_lr; got {','.join(self.search)}")
        if self.pruner not in PRUNERS:
            raise OptionError("pruner", f"unknown value {self.pruner!r}; allowed: {', '.join(PRUNERS)}")
        if not isinstance(self.study_name, str) or not self.study_name.strip():
            raise OptionError("study_name", f"must name the study, got {self.study_name!r}")
        if self.n_trials < 1 or self.heartbeat < 1:
            raise OptionError("n_trials" if self.n_trials < 1 else "heartbeat", "must be >= 1")
        if self.storage is not None and in_memory(self.storage):
            raise OptionError("storage", f"{safe_url(self.storage)} is an in-memory database: each worker would "
                                         "get its own study and every trial would be lost with its process; give "
                                         "a file (sqlite:///PATH) or a server URL")


SECRET_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:pass|pwd|secret|token)[^=&#]*=)[^&#]*")
# a query value that carries a secret under another key (?options=-c password=...): the whole value is masked
SECRET_VALUE = re.compile(r"(?i)([?&][^=&#]*=)([^&#]*(?:pass|pwd|secret|token)[^&#]*)")


def safe_url(url: str) -> str:
    """A storage URL as it may be printed: its password masked (also one holding '/' or an unescaped '@', or
    given with an empty user), and query parameters that carry secrets (?password=...) masked."""
    from sqlalchemy.engine import make_url
    try:
        u = make_url(url)
        if u.host and "@" in u.host:  # an unescaped '@' in the password: SQLAlchemy cut the password at the first
            u = u.set(host=u.host.rsplit("@", 1)[1], password=u.password or "")
        text = u.render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: mask everything up to the last '@' (too much is safe)
        text = re.sub(r"://.*@", "://***@", url) if "://" in url else re.sub(r"^.*@", "***@", url)
    return SECRET_VALUE.sub(r"\1***", SECRET_QUERY.sub(r"\1***", text))


def in_memory(url: str) -> bool:
    """Whether an SQLite URL names an in-memory database (sqlite://, sqlite:///:memory:, mode=memory)."""
    from sqlalchemy.engine import make_url
    try:
        u = make_url(url)
    except Exception:
        return False  # malformed: open_study says so
    if u.get_backend_name() != "sqlite":
        return False
    db = u.database or ""
    return db in ("", ":memory:") or u.query.get("mode") == "memory" or "mode=memory" in db


def _check_sqlite_file(url: str) -> None:
    """An SQLite file given as storage must be new, empty or an Optuna database: never write Optuna's tables into
    somebody's unrelated database (or fail halfway through a file that is no database at all)."""
    import sqlite3

    from sqlalchemy.engine import make_url
    try:
        u = make_url(url)
    except Exception:
        return
    if u.get_backend_name() != "sqlite" or in_memory(url):
        return
    path = Path(u.database)
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise ServiceUnavailable(f"study storage {path} is not an SQLite database ({e}); give a new file or a "
                                 "study database") from None
    if tables and not {"studies", "trials", "version_info"} <= tables:
        raise ServiceUnavailable(f"study storage {path} is an SQLite database of something else (tables: "
                                 f"{', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''}); scs-probe "
                                 "writes Optuna's tables only into a new file or a study database: give another "
                                 "storage")


def _pruner(name: str):
    import optuna
    return {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            "halving": optuna.pruners.SuccessiveHalvingPruner(),
            "none": optuna.pruners.NopPruner()}[name]


def _creation_race(e: Exception) -> bool:
    """Whether `e` is another process creating the same tables first: PostgreSQL reports it as a unique
    violation (IntegrityError) or as a table or type that already exists (ProgrammingError: DuplicateTable)."""
    text = f"{type(e).__name__} {str(e)[:300]}"
    if "IntegrityError" in text:
        return True
    return "ProgrammingError" in text and ("already exists" in text or "duplicate" in text.lower())


def open_study(out, config: TuneConfig, worker: int = 0):
    """Create or continue the study (Optuna's storage holds its trials, TPE's history and heartbeats)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = config.storage or StudyDir(out).default_storage
    _check_sqlite_file(url)

    def connect():
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8: not the user's news
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # SQLite shared by parallel workers: wait for the file lock rather than fail
            engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
            storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=config.heartbeat,
                                 grace_period=2 * config.heartbeat,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        _check_folder(storage, out, config.study_name)
        return optuna.create_study(study_name=config.study_name, storage=storage, load_if_exists=True,
                                   direction="maximize", pruner=_pruner(config.pruner))

    try:
        for attempt in range(5):
            try:
                study = connect()
                break
            except ScsProbeError:
                raise
            except Exception as e:  # two processes creating one database's tables at once: one wins, retry
                if attempt == 4 or not _creation_race(e):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ScsProbeError:
        raise
    except Exception as e:
        detail = _scrub(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", url)
        if not isinstance(e, ImportError | ValueError) and type(e).__name__ not in ("NoSuchModuleError",
                                                                                   "ArgumentError"):
            raise ServiceUnavailable(f"cannot reach the study storage {safe_url(url)} ({detail[:200]})") from None
        # a URL SQLAlchemy cannot parse, or whose driver is not installed: the user's to fix
        raise OptionError("storage", f"cannot open {safe_url(url)} ({detail[:160]})") from None
    check(study.user_attrs, STUDY, f"study {config.study_name!r} in {safe_url(url)}", RecordError)
    # TPE's seed differs per worker and per continuation: parallel workers and a continued study do not redraw
    # the same random start-up points
    seen = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=config.seed * 1_000_003 + worker * 10_007 + seen)
    return study


def _scrub(text: str, url: str) -> str:
    """A driver's message without the URL's secrets, should it quote them (psycopg names the host it could not
    resolve, which holds the rest of a password with an unescaped '@')."""
    from sqlalchemy.engine import make_url
    secrets = []
    try:
        u = make_url(url)
        secrets = [u.password or "", *(v for k, v in u.query.items() if SECRET_QUERY.search(f"?{k}=")
                                       or SECRET_VALUE.search(f"?{k}={v}"))]
        if u.host and "@" in u.host:
            secrets += [u.host.rsplit("@", 1)[0] + "@"]
    except Exception:
        pass
    text = text.replace(url, safe_url(url))
    if any(isinstance(s, str) and s and s in text for s in secrets):
        # masking each occurrence would show where the password stands in ordinary words ("c***necti***"):
        # the driver's message is withheld instead
        return "the database driver's message is withheld: it quotes part of the URL's credentials"
    return text


def _check_folder(storage, out: Path, name: str) -> None:
    """A study folder holds one study's trials (trials/<number>/): a new study in a folder that holds another's
    would train into (or collide with) those run directories."""
    studies = [s.study_name for s in storage.get_all_studies()]
    trials = StudyDir(out).path / StudyDir.RUNS
    if name in studies or not (trials.is_dir() and any(trials.iterdir())):
        return
    if not studies:  # the trials are here, their study is not (study.db deleted, another storage)
        raise StudyConflict(f"{out} holds trials whose study is not in {safe_url(storage.url)}: give the storage "
                            "that holds it, or start the study in another folder")
    if len(studies) == 1:
        hint = f"holds the trials of study {studies[0]!r}: continue it with the study name {studies[0]}"
    else:
        hint = "holds the trials of another study: continue it with its study name"
    raise StudyConflict(f"{out} {hint}, or start {name!r} in another folder")


def study_settings(options: dict, search) -> dict:
    """What makes trials of one study comparable: every training option that changes the numbers (the model,
    epochs, batch size, max LR where not searched, seed, data set and its limits), not where or how fast trials
    run, nor the searched p."""
    skip = {*TrainOptions.RESUMABLE, "fixed_p", "norms_every_batch", *(("max_lr",) if "max_lr" in search else ())}
    return json.loads(json.dumps({k: v for k, v in options.items() if k not in skip}, default=str))


def _check_settings(study, out: Path, base: TrainOptions, config: TuneConfig) -> None:
    """A continued study runs with the settings of its trials, or not at all: stored in the study (user attrs),
    else read from its first trial's run (a study from before scs-probe stored them)."""
    mine = study_settings(base.resolved().to_dict(), config.search) | {"search": ",".join(config.search)}
    stored = study.user_attrs.get("settings")
    if stored is None:
        for t in study.get_trials(deepcopy=False):
            options = StudyDir(out).trial(t.number).read_config().get("options")
            if options:
                stored = study_settings(options, config.search)
                break
    if stored is not None:
        differ = [k for k in mine if k in stored and stored[k] != mine[k]]
        if differ:
            raise StudyConflict(
                f"study {config.study_name!r} in {out} was run with "
                + ", ".join(f"{k}={stored[k]}" for k in differ) + " (asked: "
                + ", ".join(f"{k}={mine[k]}" for k in differ) + "): its trials would not compare; continue it "
                "with its settings, or start another study in another folder")
    if study.user_attrs.get("settings") is None:
        study.set_user_attr("settings", mine)


def _stored_fingerprint(study, out: Path) -> str | None:
    """The fingerprint of the data the study's trials were trained on: stored in the study, else recorded by one
    of its trials' runs (the first trial records it in the study)."""
    stored = study.user_attrs.get("data_fingerprint")
    for t in [] if stored else study.get_trials(deepcopy=False):
        try:
            stored = (StudyDir(out).trial(t.number).read_config().get("data") or {}).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            continue
        if stored:
            break
    return stored


def _check_data(study, out: Path, base: TrainOptions, log) -> None:
    """A continued study trains its new trials on the copy of the data its trials were trained on, or not at all
    (DataMismatch): trials on other images or labels would not compare. A study from before fingerprints were
    recorded continues with a warning."""
    if not study.get_trials(deepcopy=False):
        return  # a new study: its first trial records the data
    stored = _stored_fingerprint(study, out)
    if stored is None:
        log(f"warning: study in {out} records no fingerprint of the data its trials were trained on (an older "
            "scs-probe, or no trial trained an epoch): continuing it unchecked")
        return
    now = dataset_fingerprint(base.dataset, base.data_dir)
    if now != stored:
        raise DataMismatch(f"the trials of the study in {out} were trained on another copy of {base.dataset} than "
                           f"the one given now (other images or labels: data fingerprint {now[7:19]}, recorded "
                           f"{stored[7:19]}); continue it on the data its trials were trained on")
    if study.user_attrs.get("data_fingerprint") is None:
        study.set_user_attr("data_fingerprint", stored)


def _record_data(study, trainer: Trainer) -> None:
    """The study's data fingerprint, from its first trial to train an epoch."""
    now = trainer.data_info.get("fingerprint")
    if now and study.user_attrs.get("data_fingerprint") is None:
        study.set_user_attr("data_fingerprint", now)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_ghost_trials(study, requeue: bool = True) -> list[int]:
    """Fail the trials left "running" by a process that is gone: those whose heartbeat is stale (Optuna's own
    check, which re-queues them with the same parameters) and, at once, those whose process on this machine has
    ended (after SIGKILL or Ctrl-C of a parallel tune; re-queued where `requeue`). Returns their numbers."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("owner")
            owner = owner if isinstance(owner, dict) else {}  # written by another hand: nobody's
            if owner.get("host") == host and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL) and requeue:
                    retry(study, study._storage.get_trial(t._trial_id))
    still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(running - still)


class _QuietFailedTrials(logging.Filter):
    """Optuna logs a failed trial with its whole traceback (about 50 lines for a Ctrl-C): scs-probe says what
    happened in one line (a divergence, the interrupt) itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Trial ") and " failed with " in message)


_QUIET = _QuietFailedTrials()


def tune(base: TrainOptions, out, config: TuneConfig, log=print_escaped, progress: bool = True, executor=None,
         worker: int = 0):
    """Run trials until the study holds `config.n_trials` complete or pruned ones; returns the study.

    `executor` (a `LocalExecutor(jobs=N)` or a `RayExecutor`) runs that many workers at once, each this loop in
    its own process against the shared storage (Optuna's own way to parallelise a study)."""
    import optuna
    if base.variant.layer == "conv":
        raise OptionError("layer", "the fixed-p search trains sharpened layers (scs or sdp), not conv")
    if base.variant.fixed_p is not None:
        raise OptionError("fixed_p", "the search draws p for every trial: leave it out (the p range sets where p "
                                     "is drawn)")
    if "max_lr" in config.search and base.max_lr is not None:
        raise OptionError("max_lr", "is searched (search p,max_lr): set where it is drawn with the LR range, or "
                                    "search p only")
    if base.tensorboard:  # before any run starts, not as each run's failure
        require_tensorboard()
    base = with_validation(base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna.study._optimize").addFilter(_QUIET)
    study = open_study(out, config, worker)
    out = Path(out)
    if worker == 0:  # the driver (a parallel tune's workers find both done)
        _check_settings(study, out, base, config)
        _check_data(study, out, base, log)
        ghosts = fail_ghost_trials(study, requeue=not _finished(study, config))
        if ghosts:
            log(f"failed trial{'s' if len(ghosts) > 1 else ''} {', '.join(map(str, ghosts))}: left running by a "
                "process that is gone")
    if is_parallel(executor):
        try:
            _tune_parallel(study, base, out, config, executor, log, progress)
        except KeyboardInterrupt:
            fail_ghost_trials(study, requeue=False)  # the workers just stopped: none of theirs stays "running"
            _write_trials_safely(study, out, config)
            raise
        write_trials(study, out, config.p_range)
        return study
    trials = StudyDir(out)

    def objective(trial):
        p = trial.suggest_float("p", *config.p_range, log=True)
        max_lr = trial.suggest_float("max_lr", *config.lr_range, log=True) if "max_lr" in config.search \
            else base.max_lr
        trial.set_user_attr("max_lr", max_lr)  # searched or not: trials.csv says what each trial used
        trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})  # see fail_ghost_trials
        run = trials.trial(trial.number)
        options = replace(base, variant=replace(base.variant, fixed_p=p), max_lr=max_lr, out=str(run.path))
        def report(epoch, row):  # validation accuracy only: the test split never chooses
            if epoch == 1:
                _record_data(study, trainer)
            trial.report(float(row["val_acc"]), epoch)
            trial.set_user_attr("test_acc", float(row["test_acc"]))  # reported beside it, read by no decision
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {row['val_acc']} at epoch {epoch}")

        trainer = Trainer(options, progress=progress, log=log, on_epoch=report)
        try:
            trainer.run()
        except optuna.TrialPruned:
            trainer.mark("pruned")
            log(f"trial {trial.number} (p={p:.3g}): pruned")
            raise
        except TrainingDiverged as e:
            log(f"trial {trial.number} (p={p:.3g}): {e}")
            raise
        trial.set_user_attr("n_val", trainer.options.val_split)
        return float(trainer.history[-1]["val_acc"])

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if not _finished(study, config):
        try:
            study.optimize(objective, catch=(TrainingDiverged,), callbacks=[
                optuna.study.MaxTrialsCallback(config.n_trials, states=finished)])
        except KeyboardInterrupt:  # Optuna failed the trial in flight; trials.csv says so
            _write_trials_safely(study, out, config)
            raise
    write_trials(study, out, config.p_range)
    return study


def with_validation(base: TrainOptions) -> TrainOptions:
    """The search chooses on a validation split: `base`'s, else "auto" (10 % of the training images, at most
    5,000; see data.auto_val_split)."""
    return base if base.val_split is not None else replace(base, val_split="auto")


def _finished(study, config: TuneConfig) -> bool:
    """Whether the study holds its n_trials complete or pruned trials."""
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) >= config.n_trials


def _write_trials_safely(study, out, config: TuneConfig) -> None:
    """trials.csv as the study now stands, on the way out of an interrupt (which must not turn into another
    error)."""
    try:
        write_trials(study, out, config.p_range)
    except Exception:
        pass


@dataclass(frozen=True)
class TuneJob:
    """One tune worker: the study's loop in a process of its own (see `tune`)."""

    options: TrainOptions
    out: str
    config: TuneConfig
    worker: int
    threads: int | None = None
    backend: str | None = None


def tune_worker(job: TuneJob) -> dict:
    """Run `tune` in this process until the shared study holds its trials. Errors are outcomes."""
    prepare_worker(job)
    try:
        tune(job.options, job.out, job.config, log=lambda *a, **k: None, progress=False, worker=job.worker)
        return {"status": "finished", "message": ""}
    except ScsProbeError as e:
        return {"status": "failed", "message": str(e)}


def _tune_parallel(study, base: TrainOptions, out, config: TuneConfig, executor, log, progress: bool) -> None:
    data_dir = checked_data_dir(base)
    base = replace(base, data_dir=str(data_dir))
    out = str(Path(out).resolve())

    def counts():
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        return {s: states.count(s) for s in ("COMPLETE", "PRUNED", "RUNNING", "FAIL")}

    with executor:
        executor.check_storage(out, base.dataset, data_dir)  # every node sees OUT (and study.db) and the data
        n = counts()
        left = config.n_trials - n["COMPLETE"] - n["PRUNED"]
        if left <= 0:
            return
        workers = min(left, executor.jobs or executor.capacity())
        cap_jobs(executor, workers)  # --jobs 100 for one trial left: one worker, and the message says one
        log(f"{workers} tune worker{'s' if workers > 1 else ''} on {executor.describe()}")
        jobs = [TuneJob(base, out, config, worker, executor.threads_per_run(), get_backend())
                for worker in range(1, workers + 1)]
        bar = progress_bar(total=config.n_trials, initial=n["COMPLETE"] + n["PRUNED"], enabled=progress,
                           desc="trials", unit="trial")

        def tick(_):
            n = counts()
            bar.n = n["COMPLETE"] + n["PRUNED"]
            bar.set_postfix_str(f"running {n['RUNNING']}, pruned {n['PRUNED']}, failed {n['FAIL']}", refresh=True)

        def done(job, outcome):
            if outcome["status"] == "failed":
                write_line(f"tune worker {job.worker}: failed: {outcome['message']}", log)

        try:
            run_all(executor, jobs, tune_worker, on_done=done, on_tick=tick)
        finally:
            bar.close()


TRIAL_FIELDS = ("number", "p", "max_lr", "state", "val_acc", "best_val_acc", "last_val_acc", "test_acc", "n_val",
                "epochs", "seconds", "retry_of")


def trial_rows(study) -> list[dict]:
    """One row per trial. val_acc: the objective (final validation accuracy; complete trials), best_val_acc and
    last_val_acc: over the epochs it ran (pruned: when stopped); test_acc: its last epoch's test accuracy,
    reported and never used to choose; n_val: the validation images."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        rows.append({"number": t.number, "p": t.params.get("p", ""),
                     "max_lr": t.params.get("max_lr", t.user_attrs.get("max_lr", "")),
                     "state": t.state.name.lower(),
                     "val_acc": t.value if t.value is not None else "",
                     "best_val_acc": max(t.intermediate_values.values()) if steps else "",
                     "last_val_acc": t.intermediate_values[steps[-1]] if steps else "",
                     "test_acc": t.user_attrs.get("test_acc", ""), "n_val": t.user_attrs.get("n_val", ""),
                     "epochs": len(steps),
                     "seconds": round(t.duration.total_seconds(), 2) if t.duration else "",
                     "retry_of": _retried(t)})
    return rows


def near_chance_warning(rows: list[dict], out=None) -> str:
    """'' unless every trial that reported a validation accuracy stayed near chance (its best epoch below
    1.5 / classes, the rule `analysis.provenance` applies to runs): then the best trial is the least bad of runs
    that did not train, its p means nothing, and the warning says so. The classes come from a trial's run (else
    CIFAR-10's 10)."""
    from ..data import near_chance_threshold
    seen = [r for r in rows if r.get("best_val_acc", "") not in ("", None)]
    if not seen:
        return ""
    classes = None
    if out is not None:
        for r in seen:
            classes = StudyDir(out).trial(int(r["number"])).read_config().get("data", {}).get("num_classes")
            if classes:
                break
    limit = near_chance_threshold(classes)
    best = max(float(r["best_val_acc"]) for r in seen)
    if best >= limit:
        return ""
    return (f"warning: all {len(seen)} trial{'s' if len(seen) > 1 else ''} stayed near chance (best validation "
            f"accuracy {best:.3f} < {limit:.3f}, 1.5 / {classes or 10} classes): none trained, so the best p "
            "says nothing; give the trials more epochs, training images or another max LR (--search p,max_lr)")


def _retried(trial):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        number = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return "" if number is None else number


def write_trials(study, out, p_range: tuple | None = None) -> Path:
    """trials.csv and tune.png (validation accuracy against p over the searched range, pruned trials hollow)."""
    folder = StudyDir(out)
    rows = trial_rows(study)
    folder.write_trials(rows, TRIAL_FIELDS)
    fig, ax = plt.subplots(figsize=(6, 4))
    for state, style in (("complete", dict(color="tab:blue")), ("pruned", dict(facecolors="none",
                                                                               edgecolors="tab:gray"))):
        sel = [r for r in rows if r["state"] == state and r["last_val_acc"] != ""]
        ax.scatter([r["p"] for r in sel], [r["last_val_acc"] for r in sel], label=f"{state} ({len(sel)})", **style)
    if p_range:
        ax.set_xlim(p_range[0] / 1.05, p_range[1] * 1.05)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set(xlabel="fixed p (log scale; the searched range)", ylabel="validation accuracy (final; pruned: when stopped)",
           title="Fixed-p search")
    ax.legend(fontsize=8)
    return save(fig, folder.path, folder.FIGURE, svg=False)
