"""Run directories under concurrent or careless use (third hostile review): one process trains a run at a time
(its lock, which dies with its process), a kill between checkpoint and config.json is repaired, a run resumes and
a study continues only on the data they were trained on, two reports on one folder do not undo each other, and a
stored analysis is stale when the predictions or the data set asked for change."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from scs_probe.cli import main
from scs_probe.rundir import RunDir, RunsDir
from scs_probe.storage import read_csv, read_json, write_json
from scs_probe.training import Trainer
from tests.conftest import write_fake_cifar
from tests.test_untrusted_records import CONV, SCS, fake_run, one_line_error

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")
ROOT = Path(__file__).resolve().parents[1]

# another process holding a lock on a file, as scs-probe's trainer or report would: flock, its pid and host written
HOLDER = """
import fcntl, json, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
if len(sys.argv) > 2:
    os.makedirs(sys.argv[2])  # its work in progress
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_by_another_process(lock: Path, work: Path | None = None):
    """A process that holds `lock` (and has made the folder `work`) until the block ends."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), *([str(work)] if work else [])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
        proc.wait(timeout=30)


def small(data, out, *extra, epochs: int = 1):
    return ["--epochs", str(epochs), "--limit-train", "64", "--limit-test", "32", "--batch-size", "32",
            "--data-dir", str(data), "--device", "cpu", "--quiet", "--out", str(out), *extra]


def interrupted_after_epoch_1(data, out, monkeypatch) -> RunDir:
    """A run of 2 epochs stopped (Ctrl-C) in its second: checkpoint and config.json say running, epoch 1."""
    original = Trainer._train_epoch

    def stop(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_train_epoch", stop)
        assert main(["train", *small(data, out, epochs=2)]) == 130
    run = RunDir(out)
    assert run.status == "running" and run.read_config()["status"] == "running"
    return run


# ------------------------------------------------------------------------------------ 1. one trainer per run

@pytest.mark.slow
def test_a_run_another_process_trains_is_refused_and_freed_when_it_dies(fake_cifar, tmp_path, capsys):
    run = tmp_path / "run"
    with held_by_another_process(run / RunDir.LOCK) as holder:
        assert main(["train", *small(fake_cifar, run)]) == 1
        err = one_line_error(capsys)
        assert str(run) in err and "being trained by another process" in err, err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err
        assert not RunDir(run).has_checkpoint() and not (run / "config.json").exists()  # nothing written
        holder.send_signal(signal.SIGKILL)  # kill -9: the operating system lets the lock go
        holder.wait(timeout=30)
        assert main(["train", *small(fake_cifar, run)]) == 0
    assert RunDir(run).status == "finished"


@pytest.mark.slow
def test_a_sweep_fails_only_the_run_another_process_trains(fake_cifar, tmp_path, capsys):
    from scs_probe.training.executors import RunJob, run_job
    from scs_probe.training.options import TrainOptions
    out = tmp_path / "sweep"
    busy, free = CONV.name, SCS.name
    args = ["sweep", "--only", f"{busy},{free}", *small(fake_cifar, out)]
    with held_by_another_process(out / busy / RunDir.LOCK) as holder:
        assert main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("scs-probe: error: 1 of 2 runs failed") and busy in err, err
        assert "being trained by another process" in err and f"pid {holder.pid}" in err
        assert RunDir(out / free).status == "finished" and not RunDir(out / busy).has_checkpoint()
        # a worker of a parallel sweep says so in its outcome, and the sweep goes on
        options = TrainOptions(CONV, epochs=1, limit_train=64, limit_test=32, batch_size=32, device="cpu",
                               data_dir=str(fake_cifar), out=str(out / busy))
        outcome = run_job(RunJob(busy, options))
        assert outcome["status"] == "failed" and "being trained by another process" in outcome["message"]
    assert main(args) == 0  # the holder has ended: the run trains now
    assert RunDir(out / busy).status == "finished"


def test_a_lock_file_that_is_a_symlink_or_a_fifo_is_never_followed_or_waited_on(tmp_path):
    """A crafted train.lock: a symlink is not followed (its target is not truncated and written), a FIFO does not
    make `holder` (inspect, summaries) wait forever for a writer."""
    from scs_probe.locks import FileLock, holder
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "link.lock"
    link.symlink_to(victim)
    lock = FileLock(link)
    with pytest.raises(OSError):  # the trainer warns and trains unprotected
        lock.acquire()
    assert victim.read_text() == "precious" and holder(link) is None
    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    code = (f"from scs_probe.locks import holder; print(holder({str(fifo)!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr


def test_what_a_crafted_lock_file_says_of_its_holder_is_shown_only_where_plain(tmp_path, capsys):
    """A lock's pid and host reach messages (Busy, inspect): a held lock whose file holds terminal escapes, a
    huge or non-integer pid or a non-text host names its holder no further than is plain."""
    from scs_probe.errors import Busy
    from scs_probe.locks import holder
    lock = tmp_path / "train.lock"
    for record, shown in (({"pid": "\x1b]0;owned\x07", "host": "h"}, {"host": "h"}),
                          ({"pid": 7, "host": "a\x1b[31mb"}, {"pid": 7}),
                          ({"pid": 2**80, "host": ["x"]}, {}),
                          ({"pid": True, "host": "h"}, {"host": "h"}),
                          ({"pid": 12, "host": "node-1", "since": "2026-01-01T00:00:00"},
                           {"pid": 12, "host": "node-1", "since": "2026-01-01T00:00:00"})):
        with held_by_another_process(lock) as proc:
            lock.write_text(json.dumps(record))
            found = holder(lock)
            assert found == shown, (record, found)
            assert "\x1b" not in str(Busy(tmp_path, "being trained", found))
        assert proc.returncode == 0


# ------------------------------------------------------------------------------------ 2. killed between writes

@pytest.mark.slow
def test_a_running_run_nobody_trains_is_interrupted_and_its_config_repaired(fake_cifar, tmp_path, capsys,
                                                                            monkeypatch):
    run = interrupted_after_epoch_1(fake_cifar, tmp_path / "cut", monkeypatch)
    capsys.readouterr()
    assert main(["inspect", str(run.path)]) == 0
    assert "status:    interrupted, epoch 1 of 2 (resumes" in capsys.readouterr().out
    assert run.summary()["status"] == "interrupted"
    with held_by_another_process(run.path / RunDir.LOCK) as holder:  # one that a process does train
        assert main(["inspect", str(run.path)]) == 0
        assert f"status:    running, epoch 1 of 2 (trained now by pid {holder.pid}" in capsys.readouterr().out
        assert run.summary()["status"] == "running"

    # killed after the last checkpoint (finished) and before its config.json: the config still says running
    done = tmp_path / "done"
    assert main(["train", *small(fake_cifar, done, epochs=2)]) == 0
    config = read_json(RunDir(done).config_path)
    write_json(RunDir(done).config_path, config | {"status": "running", "epochs_done": 1})
    assert RunDir(done).summary()["status"] == "interrupted"
    assert main(["train", *small(fake_cifar, done, "--resume", epochs=2)]) == 0
    repaired = read_json(RunDir(done).config_path)
    assert repaired["status"] == "finished" and repaired["epochs_done"] == 2
    assert RunDir(done).summary()["status"] == "finished"

    # the same state in a sweep: skipped as finished, and its config.json and summary say so
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--only", SCS.name, *small(fake_cifar, sweep)]) == 0
    path = RunDir(sweep / SCS.name).config_path
    write_json(path, read_json(path) | {"status": "running", "epochs_done": 0})
    assert main(["sweep", "--only", SCS.name, *small(fake_cifar, sweep)]) == 0
    assert read_json(path)["status"] == "finished" and read_json(path)["epochs_done"] == 1
    assert [r["status"] for r in read_csv(sweep / "summary.csv")] == ["finished"]


HISTORY_ROW = {"epoch": 1, "train_acc": 0.1, "test_acc": 0.1, "train_seconds": 1.0, "eval_seconds": 1.0}
RESUME_DAMAGE = [  # a checkpoint whose training state does not fit the run it names (crafted, or another run's)
    ({"optimizer": {}}, "its optimizer state does not fit the model"),
    ({"optimizer": {"state": {}, "param_groups": [{"params": [0]}]}}, "its optimizer state does not fit the model"),
    ({"scheduler": {"total_steps": 1}}, "its learning-rate schedule does not fit"),
    ({"scheduler": {"_step_count": "x"}}, "its learning-rate schedule does not fit"),
    ({"epoch": 0, "history": []}, "its learning-rate schedule does not fit"),  # the schedule is one epoch further
    ({"epoch": 0}, "its history holds 1 epoch, and it says epoch 0"),
    ({"epoch": 7}, "it is at epoch 7, outside this run's 0-2"),  # not "already finished" with 7 epochs
    ({"history": [HISTORY_ROW | {"epoch": 5}]}, "its history holds epochs 5, and it says epoch 1"),  # right length
    ({"status": "finished"}, "it says finished at epoch 1 of 2"),  # not "already finished" after 1 epoch of 2
    ({"model": {"net.0.weight": torch.zeros(1)}}, "its weights do not fit the model"),
]


@pytest.mark.parametrize("damage, words", RESUME_DAMAGE)
def test_resuming_from_a_training_state_that_does_not_fit_is_one_line(fake_cifar, tmp_path, capsys, monkeypatch,
                                                                       damage, words):
    """Optimizer, schedule and weights are checked when loaded, not found out by a traceback epochs later."""
    from scs_probe.checkpoint import save_checkpoint
    run = interrupted_after_epoch_1(fake_cifar, tmp_path / "cut", monkeypatch)
    ckpt = run.load_checkpoint()
    if "optimizer" in damage and damage["optimizer"]:  # a state of the right structure for another model
        damage = {"optimizer": ckpt["optimizer"] | damage["optimizer"]}
    save_checkpoint(run.checkpoint_path, {k: v for k, v in ckpt.items() if k not in ("format", "format_version")}
                    | damage)
    before = run.checkpoint_path.read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run.path), "--data-dir", str(fake_cifar), "--quiet"]) == 1
    err = one_line_error(capsys)
    assert str(run.checkpoint_path) in err and words in err, err
    assert run.checkpoint_path.read_bytes() == before  # a refused resume writes nothing


def test_a_checkpoint_still_running_at_its_last_epoch_is_refused(fake_cifar, tmp_path, capsys):
    """Training saves the last epoch as finished: a checkpoint that says running there (crafted) would 'resume'
    with nothing to train, say done and stay running; it is one line instead, the checkpoint untouched."""
    from scs_probe.checkpoint import save_checkpoint
    assert main(["train", *small(fake_cifar, tmp_path / "run")]) == 0
    run = RunDir(tmp_path / "run")
    save_checkpoint(run.checkpoint_path, {k: v for k, v in run.load_checkpoint().items()
                                          if k not in ("format", "format_version")} | {"status": "running"})
    before = run.checkpoint_path.read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run.path), "--data-dir", str(fake_cifar), "--quiet"]) == 1
    assert "it says running at epoch 1 of 1" in one_line_error(capsys)
    assert run.checkpoint_path.read_bytes() == before


def test_a_run_directory_that_cannot_be_written_is_one_line(fake_cifar, tmp_path, capsys, monkeypatch):
    """A read-only (or full) run directory: resuming it says which file could not be written and why, in one
    line, and the checkpoint stays as it was (as root, chmod would not stop the test: the OS error is made)."""
    import errno
    import tempfile

    from scs_probe import storage
    run = interrupted_after_epoch_1(fake_cifar, tmp_path / "cut", monkeypatch)
    before = run.checkpoint_path.read_bytes()
    mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if Path(dir) == run.path:
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(Path(dir) / ".x.tmp"))
        return mkstemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(storage.tempfile, "mkstemp", read_only)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run.path), "--data-dir", str(fake_cifar), "--quiet"]) == 1
    err = one_line_error(capsys)
    assert str(run.path) in err and "Read-only file system" in err, err
    assert run.checkpoint_path.read_bytes() == before
    from scs_probe.locks import FileLock
    real_open = os.open

    def no_create(path, flags, *args):  # the lock file in a folder that cannot be written: why, not ENOENT
        if flags & os.O_CREAT:
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", no_create)
    with pytest.raises(PermissionError, match="Read-only file system"):
        FileLock(tmp_path / "new.lock").acquire()


# ------------------------------------------------------------------------------------ 4. the data it was trained on

@pytest.mark.slow
def test_resuming_on_another_copy_of_the_data_is_refused(fake_cifar, tmp_path, capsys, monkeypatch):
    other = write_fake_cifar(tmp_path / "other", seed=1)  # same structure and sizes, other images and labels
    run = interrupted_after_epoch_1(fake_cifar, tmp_path / "run", monkeypatch)
    recorded = run.read_config()["data"]["fingerprint"]
    assert recorded.startswith("sha256:") and run.load_checkpoint()["data"]["fingerprint"] == recorded
    capsys.readouterr()
    assert main(["train", *small(other, run.path, "--resume", epochs=2)]) == 1
    err = one_line_error(capsys)
    assert str(run.path) in err and "another copy of cifar10" in err and str(other) in err, err
    assert run.load_checkpoint()["epoch"] == 1  # untouched

    # a run from before fingerprints: resumes with a warning, and records the data from then on
    ckpt = run.load_checkpoint()
    ckpt["data"].pop("fingerprint")
    run.save_checkpoint({k: v for k, v in ckpt.items() if k != "format"})
    assert main(["train", *small(fake_cifar, run.path, "--resume", epochs=2)]) == 0
    out = capsys.readouterr().out
    assert "records no fingerprint of the data" in out
    assert run.status == "finished" and run.read_config()["data"]["fingerprint"] == recorded


def test_the_fingerprint_tells_copies_apart_and_image_folders_by_their_files(fake_cifar, fake_datasets, tmp_path):
    from scs_probe.data import dataset_fingerprint, fingerprint, load_dataset
    same = write_fake_cifar(tmp_path / "same")  # the same images and labels, another folder
    other = write_fake_cifar(tmp_path / "other", seed=1)
    assert dataset_fingerprint("cifar10", same) == dataset_fingerprint("cifar10", fake_cifar)
    assert dataset_fingerprint("cifar10", other) != dataset_fingerprint("cifar10", fake_cifar)
    copy = tmp_path / "folder"
    shutil.copytree(fake_datasets / "folder", copy)
    folder = f"imagefolder:{copy}"
    loaded = fingerprint(load_dataset(folder, train=True, image_size=16), load_dataset(folder, train=False,
                                                                                      image_size=16))
    assert dataset_fingerprint(folder) == loaded  # the driver's, from the file list, is the trainer's
    image = sorted((copy / "val").rglob("*.png"))[0]
    image.write_bytes(image.read_bytes() + b"\0")  # one file changed
    assert dataset_fingerprint(folder) != loaded


@pytest.mark.slow
def test_a_study_continues_only_on_the_data_of_its_trials(fake_cifar, tmp_path, capsys):
    pytest.importorskip("optuna")
    other = write_fake_cifar(tmp_path / "other", seed=1)
    out = tmp_path / "study"
    args = ["tune", "--pruner", "none"]
    assert main([*args, "--n-trials", "1", *small(fake_cifar, out)]) == 0
    capsys.readouterr()
    assert main([*args, "--n-trials", "2", *small(other, out)]) == 1
    err = one_line_error(capsys)
    assert f"study in {out}" in err and "another copy of cifar10" in err, err
    assert [r["state"] for r in read_csv(out / "trials.csv")] == ["complete"]  # no trial ran on the other copy
    assert main([*args, "--n-trials", "2", *small(fake_cifar, out)]) == 0


# ------------------------------------------------------------------------------------ 3. two reports at once

def test_a_second_report_leaves_the_first_ones_work_alone(tmp_path, capsys):
    for s in (0, 1):
        fake_run(tmp_path, CONV, s), fake_run(tmp_path, SCS, s)
    work = RunsDir(tmp_path).analysis_dir() / ".compare.new-first"  # the first report's analysis in progress
    with held_by_another_process(tmp_path / RunsDir.REPORT_LOCK, work) as holder:
        assert main(["report", str(tmp_path)]) == 1
        err = one_line_error(capsys)
        assert str(tmp_path) in err and "by another process" in err and f"pid {holder.pid}" in err, err
        assert work.is_dir()  # not cleared away as a leftover
        assert not (tmp_path / "report.html").exists()


def test_recomputed_analyses_are_written_under_a_name_of_their_own(tmp_path, monkeypatch):
    from scs_probe.analysis import ComparisonAnalysis, Context
    from scs_probe.analysis.report import gather
    for s in (0, 1):
        fake_run(tmp_path, CONV, s), fake_run(tmp_path, SCS, s)
    runs = RunsDir(tmp_path).runs()
    out = RunsDir(tmp_path).analysis_dir("compare")
    seen = []
    original = ComparisonAnalysis._run

    def spy(self, runs, out_dir, context):
        seen.append(out_dir.name)
        return original(self, runs, out_dir, context)
    monkeypatch.setattr(ComparisonAnalysis, "_run", spy)
    gather(ComparisonAnalysis, runs, out, {"n_boot": 200}, Context(log=lambda m: None))
    gather(ComparisonAnalysis, runs, out, {"n_boot": 300}, Context(log=lambda m: None))
    assert len(set(seen)) == 2 and all(name.startswith(".compare.new-") for name in seen)
    assert not any(str(os.getpid()) == name.rsplit("-", 1)[1] for name in seen)  # not a pid another host shares
    assert sorted(p.name for p in out.parent.iterdir()) == ["compare"]


# ------------------------------------------------------------------------------------ 5. what makes an analysis stale

def test_changed_predictions_make_the_comparison_stale(tmp_path):
    from scs_probe.analysis import ComparisonAnalysis
    runs = [fake_run(tmp_path, CONV, s) for s in (0, 1)] + [fake_run(tmp_path, SCS, s) for s in (0, 1)]
    out = RunsDir(tmp_path).analysis_dir("compare")
    ComparisonAnalysis(n_boot=200).run(RunsDir(tmp_path).runs(), out)
    assert ComparisonAnalysis.staleness(out, RunsDir(tmp_path).runs(), {}) == ""
    path = runs[3].path / RunDir.PREDICTIONS
    rows = read_csv(path)
    rows[0]["pred"] = str((int(rows[0]["pred"]) + 1) % 10)  # another file with the same run record
    from scs_probe.storage import write_csv
    write_csv(path, rows, ("index", "label", "pred", "epoch"))
    assert "predictions changed" in ComparisonAnalysis.staleness(out, RunsDir(tmp_path).runs(), {})


def test_the_data_the_runs_were_trained_on_makes_an_analysis_stale(tmp_path):
    """A run's data fingerprint counts; analyses stored before it was counted are reused while the runs were
    trained on one copy of the data (no recomputation after an upgrade), not once they span two."""
    from scs_probe.analysis import ComparisonAnalysis
    from scs_probe.analysis.base import OPTIONS_FILE
    runs = [fake_run(tmp_path, CONV, s) for s in (0, 1)] + [fake_run(tmp_path, SCS, s) for s in (0, 1)]

    def set_data(run, fingerprint):  # the run's save record ("updated") unchanged
        config = run.read_config()
        write_json(run.config_path, config | {"data": config["data"] | {"fingerprint": fingerprint}})
    for run in runs:
        set_data(run, "sha256:" + "a" * 64)
    out = RunsDir(tmp_path).analysis_dir("compare")
    ComparisonAnalysis(n_boot=200).run(RunsDir(tmp_path).runs(), out)
    stored = read_json(out / OPTIONS_FILE)
    assert ComparisonAnalysis.staleness(out, RunsDir(tmp_path).runs(), {}) == ""
    older = stored | {"runs": [{k: v for k, v in r.items() if k != "data"} for r in stored["runs"]]}
    write_json(out / OPTIONS_FILE, older)  # stored before the data was counted
    assert ComparisonAnalysis.staleness(out, RunsDir(tmp_path).runs(), {}) == ""
    set_data(runs[3], "sha256:" + "b" * 64)
    changed = "the data fingerprints the runs recorded changed"
    assert ComparisonAnalysis.staleness(out, RunsDir(tmp_path).runs(), {}) == changed
    write_json(out / OPTIONS_FILE, stored)
    assert ComparisonAnalysis.staleness(out, RunsDir(tmp_path).runs(), {}) == changed


@pytest.mark.parametrize("analysis", ["saliency", "pgd"])
def test_test_images_of_another_data_set_make_an_analysis_stale(tmp_path, analysis):
    from scs_probe.analysis import Context, RobustnessAnalysis, SaliencyAnalysis
    from scs_probe.analysis.base import OPTIONS_FILE, run_fingerprint
    cls = {"saliency": SaliencyAnalysis, "pgd": RobustnessAnalysis}[analysis]
    for s in (0, 1):
        fake_run(tmp_path, CONV, s), fake_run(tmp_path, SCS, s)
    runs = RunsDir(tmp_path).runs()
    out = RunsDir(tmp_path).analysis_dir(analysis)
    out.mkdir(parents=True)
    for name, columns in {cls.summary_file: ("model",), **cls.stored_columns}.items():  # outputs as stored
        (out / name).write_text(",".join(columns) + "\n")
    stored = {"analysis": cls.name, "config": cls.Config().to_dict(), "runs": run_fingerprint(runs)}
    write_json(out / OPTIONS_FILE, stored | {"dataset": "cifar10"})
    assert cls.staleness(out, runs, {}, Context()) == ""
    assert cls.staleness(out, runs, {}, Context(dataset="cifar10")) == ""
    why = cls.staleness(out, runs, {}, Context(dataset="cifar100"))
    assert "cifar100" in why and "cifar10" in why
    write_json(out / OPTIONS_FILE, stored)  # stored before the data set was recorded: the runs' own
    assert cls.staleness(out, runs, {}, Context()) == ""
    assert cls.staleness(out, runs, {}, Context(dataset="mnist")) != ""
    assert json.loads((out / OPTIONS_FILE).read_text())["analysis"] == cls.name
