"""The study's fixed-p search (its Appendix C.2) on Optuna: SCS with one p shared by every sharpened layer,
p (and optionally max LR) drawn by TPE, each trial a normal run under OUT/trials/<number>/, optimised and pruned
on its per-epoch validation accuracy (training images held out: the test split never chooses; each trial's test
accuracy is reported beside it). Storage is any Optuna URL (SQLite at OUT/study.db by default), so a study
survives the process and several processes can share one; trials whose process died are failed by Optuna's
heartbeat and re-queued with the same parameters (RetryFailedTrialCallback), never counted as results."""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

from ..errors import OptionError, ScsProbeError, ServiceUnavailable, TrainingDiverged
from ..layers import get_backend
from ..plotting import plt, save
from ..progress import progress_bar, write_line
from ..rundir import StudyDir
from .executors import checked_data_dir, is_parallel, prepare_worker, run_all
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
        if unknown or "p" not in self.search:
            raise OptionError("search", f"takes p, optionally with max_lr; got {','.join(self.search)}")
        if self.pruner not in PRUNERS:
            raise OptionError("pruner", f"unknown value {self.pruner!r}; allowed: {', '.join(PRUNERS)}")
        if self.n_trials < 1 or self.heartbeat < 1:
            raise OptionError("n_trials" if self.n_trials < 1 else "heartbeat", "must be >= 1")


def _pruner(name: str):
    import optuna
    return {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            "halving": optuna.pruners.SuccessiveHalvingPruner(),
            "none": optuna.pruners.NopPruner()}[name]


def open_study(out, config: TuneConfig, worker: int = 0):
    """Create or continue the study (Optuna's storage holds its trials, TPE's history and heartbeats)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = config.storage or StudyDir(out).default_storage
    def connect():
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8: not the user's news
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # SQLite shared by parallel workers: wait for the file lock rather than fail
            engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
            storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=config.heartbeat,
                                 grace_period=2 * config.heartbeat,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        return optuna.create_study(study_name=config.study_name, storage=storage, load_if_exists=True,
                                   direction="maximize", pruner=_pruner(config.pruner))

    try:
        for attempt in range(5):
            try:
                study = connect()
                break
            except Exception as e:  # two processes creating one database's tables at once: one wins, retry
                if attempt == 4 or "IntegrityError" not in type(e).__name__ + str(e)[:200]:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except Exception as e:
        if not isinstance(e, ImportError | ValueError) and type(e).__name__ not in ("NoSuchModuleError",
                                                                                   "ArgumentError"):
            raise ServiceUnavailable(f"cannot reach the study storage {_safe(url)} ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:200]})") from None
        # a URL SQLAlchemy cannot parse, or whose driver is not installed: the user's to fix
        raise OptionError("storage", f"cannot open {_safe(url)} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") \
            from None
    # TPE's seed differs per worker and per continuation: parallel workers and a continued study do not redraw
    # the same random start-up points
    seen = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=config.seed * 1_000_003 + worker * 10_007 + seen)
    return study


def _safe(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def tune(base: TrainOptions, out, config: TuneConfig, log=print, progress: bool = True, executor=None,
         worker: int = 0):
    """Run trials until the study holds `config.n_trials` complete or pruned ones; returns the study.

    `executor` (a `LocalExecutor(jobs=N)` or a `RayExecutor`) runs that many workers at once, each this loop in
    its own process against the shared storage (Optuna's own way to parallelise a study)."""
    import optuna
    if base.variant.layer == "conv":
        raise OptionError("layer", "the fixed-p search trains sharpened layers (scs or sdp), not conv")
    if base.tensorboard:  # before any run starts, not as each run's failure
        require_tensorboard()
    base = with_validation(base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(out, config, worker)
    if is_parallel(executor):
        _tune_parallel(study, base, out, config, executor, log, progress)
        write_trials(study, out, config.p_range)
        return study
    trials = StudyDir(out)

    def objective(trial):
        p = trial.suggest_float("p", *config.p_range, log=True)
        max_lr = trial.suggest_float("max_lr", *config.lr_range, log=True) if "max_lr" in config.search \
            else base.max_lr
        trial.set_user_attr("max_lr", max_lr)  # searched or not: trials.csv says what each trial used
        run = trials.trial(trial.number)
        options = replace(base, variant=replace(base.variant, fixed_p=p), max_lr=max_lr, out=str(run.path))
        def report(epoch, row):  # validation accuracy only: the test split never chooses
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
    if len(study.get_trials(deepcopy=False, states=finished)) < config.n_trials:
        study.optimize(objective, catch=(TrainingDiverged,), callbacks=[
            optuna.study.MaxTrialsCallback(config.n_trials, states=finished)])
    write_trials(study, out, config.p_range)
    return study


def with_validation(base: TrainOptions) -> TrainOptions:
    """The search chooses on a validation split: `base`'s, else "auto" (10 % of the training images, at most
    5,000; see data.auto_val_split)."""
    return base if base.val_split is not None else replace(base, val_split="auto")


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
