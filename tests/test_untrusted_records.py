"""Hostile and careless inputs that must never give silent wrong numbers, lose records or print secrets (issue 16:
the records side). Each case: a one-line message, the exit code, no traceback, the records intact."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from scs_probe.cli import main
from scs_probe.rundir import RECORDS, RunDir
from scs_probe.storage import read_csv, read_json, write_json
from scs_probe.zoo import Variant

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")

CONV = Variant("rohrer100k", "conv", "relu", "max")
SCS = Variant("rohrer100k", "scs", "none", "maxabs")
N_TEST = 200


def fake_run(root: Path, variant: Variant, seed: int = 0, dataset: str = "cifar10", n: int = N_TEST,
             status: str = "finished") -> RunDir:
    """A run directory as training leaves it, without training."""
    run = RunDir(root / f"{variant.name}-seed{seed}")
    run.path.mkdir(parents=True)
    run.checkpoint_path.write_bytes(b"not loaded by compare")
    run.write_config({"variant": variant.to_dict(), "variant_name": variant.name, "status": status,
                      "options": {"seed": seed, "max_lr": 0.01, "batch_size": 64, "epochs": 3, "dataset": dataset},
                      "data": {"n_train": 1000, "n_test": n}, "epochs_done": 3, "updated": f"t{seed}"})
    run.start_records()
    run.append("history", [dict.fromkeys(RECORDS["history"], 1.0) | {"epoch": 3, "test_acc": 0.5}])
    labels = np.arange(n) % 10
    rng = np.random.default_rng(seed + len(variant.name))
    preds = np.where(rng.random(n) < 0.6, labels, (labels + 1) % 10)
    run.write_predictions(3, torch.tensor(labels), torch.tensor(preds))
    return run


def tree_digest(path: Path) -> dict:
    """Every file under `path` with a hash of its bytes: records intact means this is unchanged."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def one_line_error(capsys_or_fd) -> str:
    err = capsys_or_fd.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("scs-probe: error:"), err
    return err


# ------------------------------------------------------------------------------------ predictions and compare

def _cut(path: Path, keep: int | None = None, mid_line: bool = False) -> None:
    lines = path.read_text().splitlines(keepends=True)
    text = "".join(lines[:keep]) if keep is not None else "".join(lines)
    if mid_line:
        text = text[: text.rindex("\n", 0, len(text) - 1) + 4]  # the last line cut after a few characters
    path.write_text(text)


@pytest.mark.parametrize("damage, words", [
    ("short", "holds 50 predictions but the run's test set has 200"),
    ("header", "header only"),
    ("mid_line", "cut mid-line"),
    ("missing", "without predictions.csv"),
    ("foreign", "not a predictions file"),
])
def test_compare_refuses_bad_prediction_files(tmp_path, capsys, damage, words):
    runs = [fake_run(tmp_path, CONV, s) for s in (0, 1)] + [fake_run(tmp_path, SCS, s) for s in (0, 1)]
    path = runs[3].path / RunDir.PREDICTIONS
    if damage == "short":
        _cut(path, keep=51)
    elif damage == "header":
        _cut(path, keep=1)
    elif damage == "mid_line":
        _cut(path, mid_line=True)
    elif damage == "missing":
        path.unlink()
    else:
        path.write_text("a,b\n1,2\n")
    before = tree_digest(tmp_path)
    assert main(["compare", str(tmp_path), "--n-boot", "200"]) == 1
    err = one_line_error(capsys)
    assert words in err and str(runs[3].path) in err, err
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("analysis")} == before  # records intact


def test_compare_says_why_its_table_is_empty(tmp_path, capsys):
    one = tmp_path / "one"
    fake_run(one, SCS, 0)
    assert main(["compare", str(one)]) == 1
    assert "nothing to compare" in one_line_error(capsys)
    mixed = tmp_path / "mixed"
    fake_run(mixed, CONV, 0, dataset="cifar10")
    fake_run(mixed, SCS, 0, dataset="mnist")
    assert main(["compare", str(mixed)]) == 1
    err = one_line_error(capsys)
    assert "different data sets" in err and "cifar10, mnist" in err
    assert main(["compare", str(mixed), "--pair", f"{CONV.name},{SCS.name}"]) == 2  # named: a usage error
    err = one_line_error(capsys)
    assert err.startswith("scs-probe: error: --pair:") and "same test images" in err
    assert main(["compare", str(mixed), "--pair", f"{CONV.name},nope"]) == 2
    err = one_line_error(capsys)
    assert "--pair:" in err and "--pairs" not in err
    unfinished = tmp_path / "unfinished"
    fake_run(unfinished, CONV, 0)
    fake_run(unfinished, SCS, 0, status="running")
    assert main(["compare", str(unfinished), "--pair", f"{CONV.name},{SCS.name}"]) == 1
    assert f"no finished run of {SCS.name}" in one_line_error(capsys)


def test_report_refuses_a_cut_prediction_file_before_its_claims(tmp_path, capsys):
    runs = [fake_run(tmp_path, CONV, 0), fake_run(tmp_path, SCS, 0)]
    _cut(runs[1].path / RunDir.PREDICTIONS, mid_line=True)
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("scs-probe: error:") and all(line.startswith("report: ") for line in err[:-1]), err
    assert "cut mid-line" in err[-1] and str(runs[1].path) in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "report.html").exists()
    assert [p.name for p in (tmp_path / "analysis").iterdir()] == ["training_curves.png"]  # no half analysis


def test_compare_default_pair_without_a_finished_run(tmp_path, capsys):
    fake_run(tmp_path, CONV, 0)
    fake_run(tmp_path, SCS, 0, status="diverged")
    assert main(["compare", str(tmp_path)]) == 1
    assert f"no finished run of {SCS.name}" in one_line_error(capsys)


def test_compare_of_whole_files_still_works(tmp_path, capsys):
    for s in (0, 1):
        fake_run(tmp_path, CONV, s), fake_run(tmp_path, SCS, s)
    assert main(["compare", str(tmp_path), "--n-boot", "200"]) == 0
    rows = read_csv(tmp_path / "analysis" / "compare" / "comparisons.csv")
    assert [r["seed"] for r in rows] == ["0", "1", "all"] and rows[0]["n"] == str(N_TEST)


# ------------------------------------------------------------------------------------ output paths

def test_out_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fake_run(tmp_path / "runs", CONV, 0)
    cases = [["train", "--out", str(blocker / "run"), "--data-dir", str(tmp_path / "nodata")],
             ["sweep", "--out", str(blocker / "s"), "--data-dir", str(tmp_path / "nodata")],
             ["tune", "--out", str(blocker / "t"), "--data-dir", str(tmp_path / "nodata")],
             ["compare", str(tmp_path / "runs"), "--out", str(blocker / "c")],
             ["norms", "--sweep", str(tmp_path / "runs"), "--out", str(blocker / "n")],
             ["report", str(tmp_path / "runs"), "--out", str(blocker / "r.html")]]
    for args in cases:
        assert main(args) == 2, args
        err = one_line_error(capsys)
        assert "is a file" in err, err
    assert not (tmp_path / "nodata").exists() and not (tmp_path / "runs" / "analysis").exists()
    assert blocker.read_text() == "x"


# ------------------------------------------------------------------------------------ report: swap and staleness

def test_report_replaces_an_analysis_only_when_complete(tmp_path, monkeypatch):
    from scs_probe.analysis import ComparisonAnalysis, Context
    from scs_probe.analysis.report import gather
    from scs_probe.rundir import RunsDir
    for s in (0, 1):
        fake_run(tmp_path, CONV, s), fake_run(tmp_path, SCS, s)
    runs = RunsDir(tmp_path).runs()
    out = RunsDir(tmp_path).analysis_dir("compare")
    quiet = Context(log=lambda m: None)
    gather(ComparisonAnalysis, runs, out, {"n_boot": 200}, quiet)
    stored = tree_digest(out)
    assert {"analysis.json", "comparisons.csv", "comparisons.png"} <= set(stored)

    original = ComparisonAnalysis._run

    def interrupted(self, runs, out_dir, context):
        original(self, runs, out_dir, context)  # outputs half written, then Ctrl-C
        (out_dir / "comparisons.png").unlink()
        raise KeyboardInterrupt
    monkeypatch.setattr(ComparisonAnalysis, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gather(ComparisonAnalysis, runs, out, {"n_boot": 300}, quiet)  # another option: recomputed
    assert tree_digest(out) == stored  # the old analysis, whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["compare"]  # no leftovers
    monkeypatch.undo()

    # interrupted between the two renames: the old analysis lies aside and is put back
    os.replace(out, out.parent / ".compare.old-1")
    result = gather(ComparisonAnalysis, runs, out, {"n_boot": 200}, quiet)
    assert tree_digest(out) == stored and result.summary and sorted(p.name for p in out.parent.iterdir()) == ["compare"]
    gather(ComparisonAnalysis, runs, out, {"n_boot": 300}, quiet)  # a complete recomputation replaces it
    assert read_json(out / "analysis.json")["config"]["n_boot"] == 300


def test_copied_sweep_is_not_stale_but_a_retrained_run_is(tmp_path):
    from scs_probe.analysis import ComparisonAnalysis
    from scs_probe.rundir import RunsDir
    src = tmp_path / "src"
    for s in (0, 1):
        fake_run(src, CONV, s), fake_run(src, SCS, s)
    ComparisonAnalysis(n_boot=200).run(RunsDir(src).runs(), RunsDir(src).analysis_dir("compare"))
    dst = tmp_path / "dst"
    shutil.copytree(src, dst, copy_function=shutil.copy)  # cp -r: new modification times
    runs = RunsDir(dst).runs()
    out = RunsDir(dst).analysis_dir("compare")
    assert ComparisonAnalysis.staleness(out, runs, {}) == ""
    config = runs[0].read_config()
    write_json(runs[0].config_path, config | {"updated": "retrained"})
    assert ComparisonAnalysis.staleness(out, runs, {}) == "the runs or their checkpoints changed"


# ------------------------------------------------------------------------------------ sweep summary

def test_sweep_summary_lists_every_run_and_names_a_truncated_checkpoint(tmp_path, capsys):
    others = [fake_run(tmp_path, Variant("rohrer100k", "scs", "relu", "maxabs"), 0),
              fake_run(tmp_path, Variant("rohrer25k", "conv", "relu", "max"), 0)]
    bad = RunDir(tmp_path / SCS.name)
    shutil.copytree(others[0].path, bad.path)
    write_json(bad.config_path, bad.read_config() | {"variant": SCS.to_dict(), "variant_name": SCS.name})
    bad.checkpoint_path.write_bytes(b"PK\x03\x04 cut")
    before = tree_digest(tmp_path)
    assert main(["sweep", "--arch", "rohrer100k", "--only", SCS.name, "--out", str(tmp_path), "--quiet",
                 "--data-dir", str(tmp_path / "nodata")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("scs-probe: error:")
    assert "unreadable checkpoint" in err and SCS.name in err.strip().splitlines()[-1]
    rows = {r["variant"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert set(rows) == {SCS.name, *(r.name for r in others)}
    assert rows[SCS.name]["status"] == "unreadable" and rows[others[0].name]["status"] == "finished"
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if "summary" not in k} == before


def test_cap_jobs():
    from scs_probe.training.executors import LocalExecutor, cap_jobs
    ex = LocalExecutor(100)
    cap_jobs(ex, 1)
    assert ex.jobs == 1 and ex.describe() == "1 local worker process"


# ------------------------------------------------------------------------------------ tune: usage errors, storage

@pytest.mark.parametrize("args", [
    ["train", "--fixed-p", "nan"], ["train", "--fixed-p", "inf"], ["train", "--fixed-p", "1e39"],
    ["train", "--max-lr", "inf"], ["train", "--max-lr", "nan"], ["tune", "--p-range", "0.5:inf"],
    ["tune", "--p-range", "0.5:1e300"], ["tune", "--p-range", "nan:2"], ["tune", "--lr-range", "0.001:inf"],
    ["tune", "--max-lr", "inf"],
])
def test_non_finite_values_are_usage_errors(tmp_path, capsys, args):
    assert main([*args, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "nodata")]) == 2
    one_line_error(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "nodata").exists()


@pytest.mark.parametrize("args, words", [
    (["--fixed-p", "2"], "--fixed-p: the search draws p"),
    (["--search", "p,max_lr", "--max-lr", "0.01"], "--max-lr: is searched"),
    (["--storage", "sqlite://"], "in-memory"),
    (["--storage", "sqlite:///:memory:"], "in-memory"),
    (["--storage", "sqlite:///file:x?mode=memory&uri=true"], "in-memory"),
])
def test_tune_refuses_what_the_search_would_ignore_or_lose(tmp_path, capsys, args, words):
    pytest.importorskip("optuna")
    assert main(["tune", *args, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "nodata")]) == 2
    assert words in one_line_error(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "nodata").exists()


def test_unrelated_sqlite_file_is_never_written(tmp_path, capsys):
    pytest.importorskip("optuna")
    db = tmp_path / "notes.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
        con.execute("INSERT INTO notes VALUES (1, 'mine')")
    con.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(4096))
    for path, words in ((db, "database of something else (tables: notes)"), (junk, "not an SQLite database")):
        before = path.read_bytes()
        assert main(["tune", "--storage", f"sqlite:///{path}", "--out", str(tmp_path / "out"), "--data-dir",
                     str(tmp_path / "nodata")]) == 1
        assert words in one_line_error(capsys)
        assert path.read_bytes() == before


URLS = {  # url -> the secret that must never be printed
    "postgresql+psycopg://u:se/cret@127.0.0.1:1/db": "se/cret",
    "postgresql+psycopg://u@127.0.0.1:1/db?password=secret": "secret",
    "postgresql+psycopg://:secret@127.0.0.1:1/db": "secret",
    "postgresql+psycopg://u:sec@ret@127.0.0.1:1/db": "sec@ret",
    "postgresql+psycopg://u:plain@127.0.0.1:1/db?sslmode=disable&sslpassword=s3cr3t": "s3cr3t",
    "nosuchdb://u:hidden@host/db": "hidden",
}


def test_storage_passwords_are_masked():
    pytest.importorskip("optuna")
    from scs_probe.training.tune import safe_url
    for url, secret in URLS.items():
        masked = safe_url(url)
        assert "***" in masked, masked
        for part in {secret, *secret.replace("@", "/").split("/")}:
            assert part not in masked.replace("scs", ""), (url, masked)
    assert safe_url("sqlite:////tmp/a b/study.db") == "sqlite:////tmp/a b/study.db"
    assert safe_url("not a url u:pw@x") == "***@x"


@pytest.mark.slow
def test_storage_passwords_never_printed(tmp_path, capfd):
    pytest.importorskip("optuna")
    pytest.importorskip("psycopg")
    for url, secret in URLS.items():
        code = main(["tune", "--storage", url, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "d")])
        assert code in (1, 2), url
        err = one_line_error(capfd)
        assert secret not in err and "ret@" not in err, err


# ------------------------------------------------------------------------------------ training and tune runs

def _small(fake_cifar, out, *extra):
    return ["--epochs", "1", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--data-dir",
            str(fake_cifar), "--device", "cpu", "--quiet", "--out", str(out), *extra]


@pytest.mark.slow
def test_nan_test_loss_marks_the_run_diverged(fake_cifar, tmp_path, capsys, monkeypatch):
    from scs_probe.training import trainer
    original = trainer.evaluate

    def nan_loss(*a, **k):
        return original(*a, **k) | {"loss": float("nan")}
    monkeypatch.setattr(trainer, "evaluate", nan_loss)
    out = tmp_path / "run"
    assert main(["train", *_small(fake_cifar, out)]) == 1
    err = one_line_error(capsys)
    assert "diverged" in err and "non-finite test loss" in err
    run = RunDir(out)
    assert run.read_config()["status"] == "diverged" and run.status == "diverged"
    assert run.read("history") == []  # the nan epoch is no result


@pytest.mark.slow
def test_jobs_capped_at_the_runs_to_do(fake_cifar, tmp_path, capsys):
    args = ["sweep", "--only", "rohrer100k-conv-relu-max", "--jobs", "100", *_small(fake_cifar, tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 run on 1 local worker process" in out and "100 local" not in out


@pytest.mark.slow
def test_tune_study_guards(fake_cifar, tmp_path, capfd, monkeypatch):
    pytest.importorskip("optuna")
    import optuna

    from scs_probe.training import tune as tune_module
    out = tmp_path / "study"
    args = ["tune", "--n-trials", "1", "--pruner", "none", *_small(fake_cifar, out)]
    assert main(args) == 0
    capfd.readouterr()
    records = tree_digest(out)

    # a continued study with other fixed settings: refused, naming what differs
    assert main([*args, "--limit-train", "128"]) == 2
    err = one_line_error(capfd)
    assert "limit_train=64" in err and "limit_train=128" in err
    assert main([*args, "--arch", "rohrer25k", "--epochs", "2"]) == 2
    err = one_line_error(capfd)
    assert "arch=rohrer100k" in err and "epochs=1" in err

    # another study in this folder: one line, no advice to pass --resume
    assert main([*args, "--study-name", "other"]) == 2
    err = one_line_error(capfd)
    assert "study name scs-fixed-p" in err and "--resume" not in err
    assert tree_digest(out) == records
    assert optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}") == ["scs-fixed-p"]

    # a ghost: a trial left running by a process that is gone (SIGKILL), in a finished study
    gone = subprocess.Popen(["true"])
    gone.wait()
    study = tune_module.open_study(out, tune_module.TuneConfig(n_trials=1))
    ghost = study.ask({"p": optuna.distributions.FloatDistribution(0.5, 4.0, log=True)})
    ghost.set_user_attr("owner", {"host": os.uname().nodename, "pid": gone.pid})
    assert main(args) == 0
    states = {r["number"]: r["state"] for r in read_csv(out / "trials.csv")}
    assert states[str(ghost.number)] == "fail" and "running" not in states.values()

    # Ctrl-C during a trial: Optuna's traceback is not printed, the exit is 130 with one line
    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(tune_module.Trainer, "run", interrupted)
    capfd.readouterr()
    assert main(["tune", "--n-trials", "3", "--pruner", "none", *_small(fake_cifar, out)]) == 130
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "interrupted" in err
    states = [r["state"] for r in read_csv(out / "trials.csv")]
    assert "running" not in states and states[-1] == "fail"

    # the trials are here but their study is not (study.db deleted): one line, the trials untouched
    monkeypatch.undo()
    trials = tree_digest(out / "trials")
    shutil.move(out / "study.db", tmp_path / "study.db")
    assert main(args) == 2
    assert "whose study is not in" in one_line_error(capfd)
    assert tree_digest(out / "trials") == trials


# ------------------------------------------------------------------------------------ second hostile review

def test_compare_refuses_runs_of_other_test_images_and_duplicate_seeds(tmp_path, capsys):
    fake_run(tmp_path / "mix", CONV)
    other = fake_run(tmp_path / "mix", SCS)
    p = other.read_predictions()
    other.write_predictions(3, torch.tensor((p["label"] + 3) % 10), torch.tensor(p["pred"]))  # another data copy
    assert main(["compare", str(tmp_path / "mix")]) == 1
    assert "disagree on the labels of" in one_line_error(capsys)
    fake_run(tmp_path / "dup", CONV)
    fake_run(tmp_path / "dup", SCS)
    shutil.copytree(tmp_path / "dup" / f"{SCS.name}-seed0", tmp_path / "dup" / "zz-old-copy")
    assert main(["compare", str(tmp_path / "dup")]) == 1
    err = one_line_error(capsys)
    assert "zz-old-copy" in err and "both" in err and "seed 0" in err
    foreign = fake_run(tmp_path / "foreign", SCS)
    config = read_json(foreign.config_path)
    write_json(foreign.config_path, config | {"data": config["data"] | {"num_classes": 10}})
    foreign.write_predictions(3, torch.full((N_TEST,), 99), torch.full((N_TEST,), 99))
    from scs_probe.errors import RecordError
    with pytest.raises(RecordError, match="outside the run's 10 classes"):
        foreign.read_predictions()


def test_a_driver_message_that_quotes_the_password_is_withheld():
    from scs_probe.training.tune import _scrub, safe_url
    url = "postgresql://u:on@127.0.0.1:1/db"
    assert "on" not in _scrub("OperationalError: connection refused", url).replace("quotes", "").replace(
        "credentials", "").replace("message", "")  # no masked word shows where the password stands
    assert "SECRET" not in safe_url("postgresql://u@h/db?options=-c password=SECRET")


@pytest.mark.parametrize("args", [["sweep", "--only", ""], ["sweep", "--only", ","],
                                  ["train", "--seed", "99999999999999999999"], ["sweep", "--seeds", "1,99999999999"],
                                  ["tune", "--tune-seed", "-1"], ["compare", ".", "--n-boot", "99999999999"]])
def test_empty_or_huge_values_are_usage_errors(tmp_path, capsys, args):
    assert main(args) == 2
    one_line_error(capsys)
    assert not any(tmp_path.iterdir())


def test_best_epoch_ignores_a_nan_validation_accuracy():
    from scs_probe.rundir import best_epoch
    rows = [{"epoch": 1, "val_acc": "nan"}, {"epoch": 2, "val_acc": "0.4"}, {"epoch": 3, "val_acc": "0.3"}]
    assert best_epoch(rows)["epoch"] == 2


def test_an_image_folder_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    from scs_probe.training import TrainOptions
    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert TrainOptions(dataset="imagefolder:imgs").dataset == f"imagefolder:{tmp_path / 'imgs'}"


# ------------------------------------------------------------------------------------ third hostile review: records
# of the wrong type, empty values, pairs of one value

def _checkpoint_payload() -> dict:
    """A checkpoint as training leaves it, but with no weights (inspect builds no model)."""
    row = dict.fromkeys(RECORDS["history"], 0.5) | {"epoch": 3, "val_loss": "", "val_acc": "", "lr": "0.001"}
    return {"variant": SCS.to_dict(), "model": {"w": torch.zeros(2)}, "epoch": 3, "status": "finished",
            "options": {**SCS.to_dict(), "seed": 0, "epochs": 3, "dataset": "cifar10", "val_split": None},
            "history": [row], "data": {"n_train": 1000, "n_test": N_TEST, "num_classes": 10, "classes": ["a"] * 10,
                                       "val_split": None},
            "params": 5, "versions": {"torch": "2.5"}, "environment": {"threads": 2, "gpu": None}}


CHECKPOINT_DAMAGE = [
    ({"history": 5}, "history must be a list, got 5"),
    ({"variant": [1]}, "variant must be an object, got a list"),
    ({"options": {"seed": "a"}}, "options.seed must be an integer from 0 to 4294967295, got 'a'"),
    ({"options": {"epochs": "x"}}, "options.epochs must be an integer >= 1, got 'x'"),
    ({"data": {"num_classes": -3}}, "data.num_classes must be an integer >= 1, got -3"),
    ({"data": {"val_split": {"n": "x"}}}, "data.val_split.n must be an integer >= 1, got 'x'"),
    ({"history": [[1]]}, "history[0] must be an object, got a list"),
    ({"history": [{"epoch": 1, "train_acc": [1], "test_acc": 1, "train_seconds": 1, "eval_seconds": 1}]},
     "history[0].train_acc must be a number, got a list"),
    ({"history": [{"epoch": 1, "test_acc": 1}]}, "history[0].train_acc is missing"),
    ({"environment": {"gpu": {"x": 1}}}, "environment.gpu must be text, a number, true/false or null, got a dict"),
    ({"diverged": {"reason": 3}}, "diverged.reason must be text, got 3"),
    ({"epoch": "x"}, "epoch must be an integer >= 0, got 'x'"),
    ({"format_version": "x"}, "format_version must be an integer >= 0, got 'x'"),
    ({"model": {"w": 1}}, "model.w must be a tensor, got 1"),
    ({"options": {"seed": 2**64}}, "options.seed must be an integer from 0 to 4294967295, got 18446744073709551616"),
    ({"params": 2**70}, "params must be an integer >= 0, got 1180591620717411303424"),
    ({"data": {"fingerprint": 5}}, "data.fingerprint must be text, got 5"),  # resume sliced it: a TypeError
    ({"options": {"workers": 10**6}}, "options.workers must be an integer from 0 to 256, got 1000000"),  # forks
]


@pytest.mark.parametrize("damage, words", CHECKPOINT_DAMAGE)
def test_inspect_names_a_checkpoint_field_of_the_wrong_type(tmp_path, capsys, damage, words):
    from scs_probe.checkpoint import save_checkpoint
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    save_checkpoint(good, _checkpoint_payload())
    assert main(["inspect", str(good)]) == 0  # the same checkpoint, whole, is read
    assert "test 50.00%" in capsys.readouterr().out
    save_checkpoint(bad, _checkpoint_payload() | damage)
    assert main(["inspect", str(bad)]) == 1
    err = one_line_error(capsys)
    assert f"{bad}: malformed ({words})" in err, err


def test_inspect_escapes_control_characters_of_a_crafted_checkpoint(tmp_path, capsys):
    """Values a checkpoint carries (options, data, environment, versions, a diverged reason, unknown keys) are
    shown with control characters escaped: a crafted one must not clear the screen or rewrite earlier lines."""
    from scs_probe.checkpoint import save_checkpoint
    evil = "\x1b[2J\x1b]0;pwned\x07\rok"
    payload = _checkpoint_payload()
    payload["options"]["note" + evil] = evil
    payload["environment"]["host"] = evil
    payload["versions"]["torch"] = evil
    payload["data"]["source"] = evil
    save_checkpoint(tmp_path / "evil.pt", payload)
    assert main(["inspect", str(tmp_path / "evil.pt")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert out.count("\\x1b[2J") == 5  # shown, escaped: the key, and four values


def test_inspect_shows_a_data_sets_classes_and_cuts_a_long_list(tmp_path, capsys):
    """A list (data.classes) is shown by its items, as far as a line's limit reaches, escaped like any value."""
    from scs_probe.checkpoint import save_checkpoint
    from scs_probe.schema import printable
    payload = _checkpoint_payload()
    payload["data"]["classes"] = ["airplane", "auto\x1b[2Jmobile"]
    save_checkpoint(tmp_path / "c.pt", payload)
    assert main(["inspect", str(tmp_path / "c.pt")]) == 0
    out = capsys.readouterr().out
    assert "classes=['airplane', 'auto\\x1b[2Jmobile']" in out and "\x1b" not in out
    long = printable([f"class {i}" for i in range(10 ** 5)])
    assert long.startswith("['class 0', 'class 1', ") and long.endswith("...") and len(long) <= 203
    assert printable([[1, 2], {"a": 1}]) == "[a list, a dict]"


def test_a_checkpoint_nested_too_deep_is_one_line(tmp_path, capsys):
    """A field this scs-probe does not know is let through, but not one nested thousands deep: printing it
    (inspect's options line) was a RecursionError traceback."""
    import sys

    from scs_probe.checkpoint import save_checkpoint
    deep = []
    for _ in range(5000):
        deep = [deep]
    payload = _checkpoint_payload()
    payload["options"]["extra"] = deep
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # for torch.save's pickler; a crafted file needs no recursion at all
    try:
        save_checkpoint(tmp_path / "deep.pt", payload)
    finally:
        sys.setrecursionlimit(limit)
    assert main(["inspect", str(tmp_path / "deep.pt")]) == 1
    err = one_line_error(capsys)
    assert "malformed (options.extra is nested deeper than" in err, err


CONFIG_DAMAGE = [
    ({"options": {"epochs": "x", "seed": 0}}, "options.epochs must be an integer >= 1, got 'x'"),
    ({"options": {"seed": "a"}}, "options.seed must be an integer from 0 to 4294967295, got 'a'"),
    ({"options": {"seed": [1]}}, "options.seed must be an integer from 0 to 4294967295, got a list"),
    ({"options": [1]}, "options must be an object, got a list"),
    ({"variant": [1]}, "variant must be an object, got a list"),
    ({"variant_name": [1]}, "variant_name must be non-empty text, got a list"),
    ({"data": {"n_test": N_TEST, "num_classes": -3}}, "data.num_classes must be an integer >= 1, got -3"),
    ({"data": {"n_test": "x"}}, "data.n_test must be an integer >= 0, got 'x'"),
    ({"data": [1]}, "data must be an object, got a list"),
    ({"epochs_done": "x"}, "epochs_done must be an integer >= 0, got 'x'"),
    ({"status": [1]}, "status must be non-empty text, got a list"),
    ({"options": {"seed": 0, "dataset": 5}}, "options.dataset must be non-empty text, got 5"),
    ({"environment": 5}, "environment must be an object, got 5"),
    ({"node": 5}, "node must be text, got 5"),
    ({"data": {"n_test": N_TEST, "fingerprint": [1]}}, "data.fingerprint must be text, got a list"),
]


@pytest.mark.parametrize("damage, words", CONFIG_DAMAGE)
def test_compare_names_a_config_field_of_the_wrong_type(tmp_path, capsys, damage, words):
    fake_run(tmp_path, CONV)
    run = fake_run(tmp_path, SCS)
    write_json(run.config_path, read_json(run.config_path) | damage)
    before = tree_digest(tmp_path)
    assert main(["compare", str(tmp_path), "--n-boot", "200"]) == 1
    err = one_line_error(capsys)
    assert f"{run.config_path}: malformed ({words})" in err, err
    assert tree_digest(tmp_path) == before  # refused before any output


def test_config_that_is_not_an_object_or_not_json(tmp_path, capsys):
    fake_run(tmp_path, CONV)
    run = fake_run(tmp_path, SCS)
    for text, words in (("[1, 2]", "malformed (the whole file must be an object, got a list)"),
                        ('{"variant": ', "unreadable or not JSON"), ("[" * 100_000, "unreadable or not JSON")):
        run.config_path.write_text(text)
        for argv in (["compare", str(tmp_path)], ["report", str(tmp_path)]):
            assert main(argv) == 1, (text[:20], argv)
            err = one_line_error(capsys)
            assert f"{run.config_path}: {words}" in err, err


def test_malformed_history_and_norms_records_name_their_file(tmp_path, capsys):
    run = fake_run(tmp_path, SCS)
    run.append("norms", [{"epoch": 0, "batch": "", "layer": "conv1", "kind": "weight", "l2": 1.5}])
    run.append("exponents", [{"epoch": 0, "layer": "conv1", "channel": 0, "p": 1.0}])
    assert main(["norms", str(run.path), "--out", str(tmp_path / "n")]) == 0  # whole records are read
    capsys.readouterr()
    for record, text in (("norms", "epoch,batch,layer,kind,l2\nx,,conv1,weight,1\n"),
                         ("norms", "epoch,batch,layer,kind,l2\n0,x,conv1,weight,1\n"),
                         ("exponents", "epoch,layer,channel,p\n0,conv1,0\n")):
        good = run.record_path(record).read_text()
        run.record_path(record).write_text(text)
        assert main(["norms", str(run.path), "--out", str(tmp_path / "n")]) == 1
        assert f"{run.record_path(record)}: unreadable or malformed" in one_line_error(capsys)
        run.record_path(record).write_text(good)
    good = run.record_path("norms").read_text()
    run.record_path("norms").write_text("epoch,batch,layer,kind,l2\n")  # emptied: no layer to draw
    assert main(["norms", str(run.path), "--out", str(tmp_path / "n")]) == 1
    assert f"{run.record_path('norms')}: holds no norms" in one_line_error(capsys)
    run.record_path("norms").write_text(good)
    fake_run(tmp_path, CONV)
    run.record_path("history").write_text("epoch,test_acc,train_seconds,eval_seconds\n3,abc,1,1\n")
    assert main(["report", str(tmp_path)]) == 1
    assert f"{run.record_path('history')}: unreadable or malformed" in one_line_error(capsys)


def test_stored_analysis_runs_of_the_wrong_shape_are_stale_not_a_traceback(tmp_path):
    from scs_probe.analysis import ComparisonAnalysis
    out = tmp_path / "analysis"
    out.mkdir()
    for runs in ([1, 2], 5, "x"):
        write_json(out / "analysis.json", {"config": {"n_boot": 200}, "runs": runs})
        assert ComparisonAnalysis.stored_config(out) is None
    write_json(out / "analysis.json", {"config": {"n_boot": 200}, "runs": [{"name": "a"}]})
    assert ComparisonAnalysis.stored_config(out)[1] == [{"name": "a"}]


@pytest.mark.slow
def test_records_of_a_real_run_fit_their_schema(fake_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_small(fake_cifar, out, "--val-split", "16")]) == 0
    run = RunDir(out)
    assert run.read_config()["data"]["val_split"]["n"] == 16 and run.load_checkpoint()["history"]
    assert run.summary()["n_val"] == 16
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0 and "validation" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["pgd", "--ckpt", "c.pt", "--eps-range", "0:8/255:1001"], "NUM must be from 1 to 1000, got 1001"),
    (["pgd", "--ckpt", "c.pt", "--eps-range", "0:8/255:99999999999999999999"], "NUM must be from 1 to 1000"),
    (["pgd", "--ckpt", "c.pt", "--eps-range", "1/255:1/255:3"], "START and STOP are equal"),
    (["report", "runs", "--eps", "0,2"], "--eps-range/--eps: must lie in [0, 1]"),
    (["report", "runs", "--eps-range", "0:5:3"], "--eps-range/--eps: must lie in [0, 1]"),
    (["compare", "runs", "--pair", f"{CONV.name},{CONV.name}"], f"--pair: {CONV.name} paired with itself"),
    (["compare", "runs", "--pair", f"{CONV.name},{SCS.name}", "--pair", f"{CONV.name}, {SCS.name}"], "given twice"),
    (["tune", "--study-name", ""], "'--study-name': is empty"),
    (["tune", "--study-name", "  "], "'--study-name': is empty"),
    (["tune", "--search", "p,p"], "--search: takes p"),
    (["tune", "--storage", ""], "'--storage': is empty"),
    (["saliency", "--ckpt", "c.pt", "--indices", "3,1,3"], "names 3 more than once"),
    (["sweep", "--seeds", "0,0"], "names 0 more than once"),
    (["saliency", "--ckpt", "c.pt", "--seed", "-1"], "'--seed'"),
    (["pgd", "--ckpt", "c.pt", "--eps", "0", "--seed", "99999999999"], "'--seed'"),
])
def test_bad_counts_blank_names_and_pairs_of_one_value_are_usage_errors(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)  # a default output would land here
    fake_run(tmp_path / "runs", CONV), fake_run(tmp_path / "runs", SCS)
    before = tree_digest(tmp_path)
    assert main([*args, "--data-dir", "nodata"] if args[0] in ("tune", "sweep", "saliency", "pgd", "report")
                else args) == 2
    assert words in one_line_error(capsys)
    assert tree_digest(tmp_path) == before


EMPTY = ["", " "]


@pytest.mark.parametrize("empty", EMPTY)
@pytest.mark.parametrize("args", [
    ["train", "--out", "{}"], ["sweep", "--out", "{}"], ["tune", "--out", "{}"], ["compare", "runs", "--out", "{}"],
    ["norms", "--sweep", "runs", "--out", "{}"], ["saliency", "--ckpt", "c.pt", "--out", "{}"],
    ["pgd", "--ckpt", "c.pt", "--eps", "0", "--out", "{}"], ["report", "runs", "--out", "{}"],
    ["train", "--data-dir", "{}"], ["train", "--init-from", "{}"], ["train", "--model", "{}"],
    ["train", "--dataset", "{}"], ["sweep", "--executor", "ray", "--address", "{}"], ["zoo", "--model", "{}"],
    ["pgd", "--ckpt", "{}", "--eps", "0"], ["pgd", "--sweep", "{}", "--eps", "0"],
    ["saliency", "--ckpt", "c.pt", "--dataset", "{}"], ["pgd", "--ckpt", "c.pt", "--eps", "0", "--model", "{}"],
    ["inspect", "{}"], ["compare", "{}"], ["norms", "{}"], ["report", "{}"],
])
def test_an_empty_path_or_name_is_a_usage_error_not_the_default(tmp_path, capsys, monkeypatch, args, empty):
    monkeypatch.chdir(tmp_path)  # '' would mean the current folder, or the default output under it
    fake_run(tmp_path / "runs", CONV), fake_run(tmp_path / "runs", SCS)
    (tmp_path / "checkpoint.pt").write_bytes(b"x")  # what inspect '' would read
    before = tree_digest(tmp_path)
    assert main([a.format(empty) for a in args]) == 2
    err = one_line_error(capsys)
    assert "is empty" in err, err
    assert tree_digest(tmp_path) == before
