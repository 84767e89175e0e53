"""Sweeps: every variant of a grid (per seed) into DIR/<variant>/, with DIR/summary.csv, in this process one run
after another, or in parallel on an executor (`executors`)."""

from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import Busy, CheckpointError, OptionError, RecordError, TrainingDiverged, TrainingError
from ..progress import interactive, print_escaped, progress_bar, write_line
from ..rundir import RunsDir
from ..stats import t_interval
from ..zoo import Variant, variant_grid
from .executors import RunJob, cap_jobs, checked_data_dir, is_parallel, run_all
from .options import TrainOptions
from .tensorboard_log import require as require_tensorboard
from .trainer import train


def select_variants(arch: str, grid: str, only: list[str] | None = None) -> list[Variant]:
    """The grid's variants, restricted to names matching any of the `only` globs."""
    variants = variant_grid(arch, grid)
    if only:
        variants = [v for v in variants if any(fnmatch.fnmatchcase(v.name, pat) for pat in only)]
        if not variants:
            raise OptionError("only", f"{','.join(only)} matches no variant of the {arch} {grid} grid")
    return variants


def run_name(variant: Variant, seed: int | None) -> str:
    """<variant>, or <variant>-seed<N> when the sweep runs several seeds (`seeds` given)."""
    return variant.name if seed is None else f"{variant.name}-seed{seed}"


SUMMARIZED = ("test_acc", "val_acc", "test_acc_at_best", "train_seconds_mean", "eval_seconds_mean")


def summarize_variants(rows: list[dict]) -> list[dict]:
    """Per variant, over its finished runs (one per seed): mean, standard deviation and a 95 % Student-t
    interval of final test and validation accuracy, of the test accuracy at the best validation epoch (empty
    without a validation split) and of seconds per epoch. Runs still training or diverged are
    counted apart and left out of the statistics. An interval reaching beyond what the quantity can be
    (accuracies [0, 1], seconds above 0; a t interval over 2 or 3 spread seeds easily does) is cut to it, and
    never silently: `clipped` names the quantities cut, `interval` says so."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        done = [r for r in mine if r["status"] == "finished" and r["test_acc"] != ""]
        row = {"variant": variant, **{k: mine[0][k] for k in ("arch", "layer", "activation", "pool", "norm",
                                                             "image_size", "dataset")},
               "runs": len(mine), "finished": len(done), "seeds": " ".join(str(r["seed"]) for r in done)}
        clipped = []
        for key in SUMMARIZED:
            values = [float(r[key]) for r in done if r.get(key, "") != ""]
            raw = t_interval(values)
            ci = raw.clipped(0.0, 1.0 if "acc" in key else math.inf)  # accuracies live in [0, 1], seconds above 0
            if ci is not raw:
                clipped.append(key)
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else ""
            row |= {f"{key}_mean": round(ci.estimate, 6) if values else "",
                    f"{key}_sd": round(sd, 6) if sd != "" else "",
                    f"{key}_ci_lo": round(ci.lo, 6) if ci.defined else "",
                    f"{key}_ci_hi": round(ci.hi, 6) if ci.defined else ""}
        row["clipped"] = " ".join(clipped)
        row["interval"] = "95% Student t over seeds" + (
            f"; clipped to the feasible range (accuracies [0, 1], seconds >= 0): {', '.join(clipped)}" if clipped
            else "")
        out.append(row)
    return out


def sweep(variants: list[Variant], out, base: TrainOptions, log=print_escaped, progress: bool = True,
          seeds: list[int] | None = None, explicit: set[str] | None = None, executor=None) -> list[dict]:
    """Train each variant (once per seed of `seeds`, else once with base.seed): skip finished and diverged runs,
    resume unfinished ones, keep going past a run that diverges or that another process is training (an orphaned
    worker of a killed sweep: that run fails, the sweep exits 1 naming it). Returns the summary rows (also written to
    out/summary.csv, with per-variant statistics in out/variant_summary.csv, after every run).

    `executor`: None (or a one-job LocalExecutor) trains in this process, one run after another; a
    `LocalExecutor(jobs=N)` or a `RayExecutor` runs them in parallel (see `executors`). The summary is the same.
    """
    if base.tensorboard:  # before any run starts, not as each run's failure
        require_tensorboard()
    runs = RunsDir(out)
    plan = [(run_name(v, s), replace(base, variant=v, out=str(runs.run(run_name(v, s)).path),
                                     seed=base.seed if s is None else s))
            for s in (list(dict.fromkeys(seeds)) if seeds else [None]) for v in variants]
    if is_parallel(executor):
        return _sweep_parallel(plan, runs, base, executor, log, progress, explicit)
    return _sweep_here(plan, runs, log, progress, explicit)


def _skip_note(run, options: TrainOptions) -> str:
    """Why a finished run may not be what this sweep asks for: its data set, epochs, max LR, batch size or
    training images differ."""
    stored = run.read_config().get("options", {})
    asked = options.resolved()
    stored.setdefault("dataset", "cifar10")  # runs from before data sets were recorded
    differ = [f"{k} {stored.get(k)} (asked {getattr(asked, k)})"
              for k in ("dataset", "epochs", "max_lr", "batch_size", "val_split", "limit_train")
              if k in stored and stored.get(k) != getattr(asked, k)]
    return f"; trained with {', '.join(differ)}: train it again into another directory" if differ else ""


def _status(run, label: str, log, unreadable: dict) -> str | None:
    """The run's status, or "unreadable" (logged, and noted in `unreadable`) where its checkpoint cannot be
    read: the sweep goes on, keeps the run's row, and exits 1 naming it."""
    try:
        return run.status
    except CheckpointError as e:
        log(f"{label}: unreadable checkpoint, not trained ({e})")
        unreadable[run.path.name] = str(e)
        return "unreadable"


def folder_rows(runs: RunsDir, rows: list[dict], names, unreadable: dict | None = None) -> list[dict]:
    """`rows` (of the runs `names`, this sweep's) and a row for every other run in the folder (an earlier sweep
    of other variants, architecture or seeds): summary.csv lists every run the folder holds, never only this
    sweep's."""
    unreadable = unreadable or {}
    out = [r | {"status": "unreadable"} if n in unreadable else r for n, r in zip(names, rows)]
    if not runs.path.is_dir():
        return out
    for path in sorted(runs.path.iterdir()):
        run = runs.run(path.name)
        if path.name in names or not path.is_dir() or not (run.config_path.is_file() or run.has_checkpoint()):
            continue
        try:
            row = run.summary()
        except RecordError:  # a config.json or history.csv cut, not JSON or malformed: the run is still listed
            row = {"variant": path.name, "status": "unreadable"}
        out.append(row | {"status": "unreadable"} if path.name in unreadable else row)
    return out


def _write_summaries(runs: RunsDir, rows: list[dict], names, unreadable: dict | None = None) -> None:
    rows = folder_rows(runs, rows, names, unreadable)
    runs.write_summary(rows)
    runs.write_variant_summary(summarize_variants([r for r in rows if "arch" in r]))


def _raise_problems(unreadable: dict, failed: list[dict], n: int) -> None:
    """Exit 1 after the sweep: runs that failed, and checkpoints that could not be read (rows kept)."""
    parts = [f"{o['name']}: {o['message']}" for o in failed] + [f"{name}: {e}" for name, e in unreadable.items()]
    if failed:
        raise TrainingError(f"{len(failed)} of {n} runs failed"
                            + (f" and {len(unreadable)} checkpoints are unreadable" if unreadable else "")
                            + ": " + "; ".join(parts))
    if unreadable:
        raise CheckpointError(f"{len(unreadable)} unreadable checkpoint{'s' if len(unreadable) > 1 else ''} "
                              "(not trained; their rows are kept in the summary): " + "; ".join(parts))


def _skip_finished(run, label: str, status: str, options: TrainOptions, log) -> None:
    """Say why a finished or diverged run is skipped; a config.json that a kill left behind its checkpoint (still
    "running") is brought in line with it."""
    log(f"{label}: {status}, skipped{_skip_note(run, options)}")
    try:
        if run.read_config().get("status") != status:  # the checkpoint is loaded again only then
            run.sync_config()
    except (CheckpointError, OSError, ValueError):
        pass


def _sweep_here(plan, runs: RunsDir, log, progress, explicit) -> list[dict]:
    rows, names, unreadable, failed = [], [], {}, []
    for i, (name, options) in enumerate(plan, 1):
        run = runs.run(name)
        label = f"[{i}/{len(plan)}] {name}"
        status = _status(run, label, log, unreadable)
        if status == "unreadable":
            continue
        if status in ("finished", "diverged"):
            _skip_finished(run, label, status, options, log)
        else:
            log(label + (": resuming" if status else ""))
            try:
                train(options, resume=status is not None, progress=progress, log=log, explicit=explicit)
            except TrainingDiverged as e:
                log(f"warning: {e}")
            except Busy as e:  # not this sweep's to train now; the others go on
                log(f"{label}: failed: {e}")
                failed.append({"name": name, "message": str(e)})
        rows.append(run.summary())
        names.append(name)
        _write_summaries(runs, rows, names, unreadable)
    _write_summaries(runs, rows, names, unreadable)
    _raise_problems(unreadable, failed, len(plan))
    return rows


def _sweep_parallel(plan, runs: RunsDir, base: TrainOptions, executor, log, progress, explicit) -> list[dict]:
    """Hand the unfinished runs to `executor`; the driver only watches, and writes the summaries."""
    from ..layers import get_backend
    data_dir = checked_data_dir(base)
    todo, unreadable = [], {}
    for i, (name, options) in enumerate(plan, 1):
        run, label = runs.run(name), f"[{i}/{len(plan)}] {name}"
        status = _status(run, label, log, unreadable)
        if status == "unreadable":
            continue
        if status in ("finished", "diverged"):
            _skip_finished(run, label, status, options, log)
            continue
        todo.append((name, replace(options, out=str(Path(options.out).resolve()), data_dir=str(data_dir))))
    cap_jobs(executor, len(todo))  # threads per run and the display follow the workers actually started
    todo = [RunJob(name, options, None if explicit is None else frozenset(explicit),
                   threads=executor.threads_per_run(), backend=get_backend()) for name, options in todo]
    outcomes = {}

    def summary_rows():
        names = [name for name, _ in plan if name not in unreadable and runs.run(name).config_path.is_file()]
        return [runs.run(name).summary() for name in names], names

    if todo:
        started = time.time()
        with executor:
            executor.check_storage(runs.path, base.dataset, data_dir)  # every node sees OUT and the data
            log(f"{len(todo)} run{'s' if len(todo) > 1 else ''} on {executor.describe()}")
            display = SweepProgress([j.name for j in todo], runs, {j.name: j.options.resolved().epochs for j in todo},
                                    started, log, progress)

            def on_done(job, outcome):
                outcomes[job.name] = outcome = {**outcome, "name": job.name}
                display.finished(outcome)
                _write_summaries(runs, *summary_rows(), unreadable)

            try:
                run_all(executor, todo, on_done=on_done, on_tick=lambda jobs: display.poll([j.name for j in jobs]))
            finally:
                display.close()
    rows, names = summary_rows()
    _write_summaries(runs, rows, names, unreadable)
    _raise_problems(unreadable, [o for o in outcomes.values() if o["status"] == "failed"], len(plan))
    return rows


class SweepProgress:
    """One display for a sweep in parallel: a bar of runs done, the failed count and each running run's epoch,
    read from its config.json (rewritten every epoch, wherever the run trains). Off a terminal: one line per run
    started and per run ended."""

    def __init__(self, names, runs: RunsDir, epochs: dict, started: float, log, enabled: bool):
        self.runs, self.epochs, self.started, self.log = runs, epochs, started, log
        self.bar = progress_bar(total=len(names), enabled=enabled, desc="runs", unit="run")
        self.seen: set[str] = set()
        self.failed = 0

    def poll(self, pending: list[str]) -> None:
        running = []
        for name in pending:
            path = self.runs.run(name).config_path
            try:
                if path.stat().st_mtime < self.started - 1:
                    continue  # still queued: untouched since the sweep started
                config = self.runs.run(name).read_config()
            except (OSError, RecordError):  # being written, or not one of ours
                continue
            if name not in self.seen:
                self.seen.add(name)
                if not interactive():
                    node = f"Ray node {config['node'][:8]}, " if config.get("node") else ""
                    self.log(f"{name}: started on {config.get('host', '?')} ({node}{config.get('device', '?')})")
            running.append(f"{name} {config.get('epochs_done', 0)}/{self.epochs[name]}")
        self.bar.set_postfix_str(f"failed {self.failed}; running " + (", ".join(running) or "-"), refresh=True)

    def finished(self, outcome: dict) -> None:
        if outcome["name"] not in self.seen:  # started and ended between two polls: say it started all the same
            self.poll([outcome["name"]])
        self.failed += outcome["status"] == "failed"
        note = f" (resumed after epoch {outcome['resumed']})" if outcome.get("resumed") else ""
        detail = f": {outcome['message']}" if outcome["message"] else ""
        self.bar.update(1)
        write_line(f"{outcome['name']}: {outcome['status']}{note}{detail}", self.log)

    def close(self) -> None:
        self.bar.close()
