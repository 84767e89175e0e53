"""The fixed-p search on Optuna: trials are real runs, pruning marks runs, a study continues, a trial whose
process died is re-queued, never counted."""

import time

import pytest

from scs_probe.cli import main
from scs_probe.errors import OptionError
from scs_probe.rundir import RunDir
from scs_probe.storage import read_csv
from scs_probe.training import TrainOptions
from scs_probe.zoo import Variant

optuna = pytest.importorskip("optuna")
tune_module = pytest.importorskip("scs_probe.training.tune")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")]


class PruneTrial2(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number == 2


def base(fake_cifar):
    return TrainOptions(Variant("rohrer100k"), epochs=2, batch_size=64, max_lr=0.01, limit_train=128, limit_test=64,
                        data_dir=str(fake_cifar), device="cpu")


def test_study_prunes_continues_and_requeues(fake_cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(tune_module, "_pruner", lambda name: PruneTrial2())
    quiet = dict(log=lambda *a: None, progress=False)
    config = tune_module.TuneConfig(n_trials=4, p_range=(0.5, 4.0), heartbeat=1)
    tune_module.tune(base(fake_cifar), tmp_path, config, **quiet)
    rows = read_csv(tmp_path / "trials.csv")
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned", "complete"]
    assert all(0.5 <= float(r["p"]) <= 4.0 for r in rows)
    pruned = RunDir(tmp_path / "trials" / "2")
    assert pruned.read_config()["status"] == "pruned" and len(pruned.read("history")) == 1
    done = RunDir(tmp_path / "trials" / "0")
    assert done.read_config()["variant"]["fixed_p"] == pytest.approx(float(rows[0]["p"]))
    last = done.read("history")[-1]
    assert float(rows[0]["val_acc"]) == float(last["val_acc"]) and float(rows[0]["test_acc"]) == float(last["test_acc"])
    assert done.read_config()["data"]["val_split"]["n"] == 150  # tune's default: 10 % of the 1,500 images
    assert (tmp_path / "tune.png").stat().st_size > 1000

    # a process dies mid-trial: its trial stays RUNNING with a stale heartbeat
    study = tune_module.open_study(tmp_path, config)
    dead = study.ask({"p": optuna.distributions.FloatDistribution(0.5, 4.0, log=True)})
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(3.5)  # > grace period 2 s, at the one-second resolution of SQLite's clock
    tune_module.tune(base(fake_cifar), tmp_path, replace_n(config, 6), **quiet)
    rows = read_csv(tmp_path / "trials.csv")
    states = {int(r["number"]): r["state"] for r in rows}
    assert states[dead.number] == "fail"  # never counted as a result
    retry = [r for r in rows if r["retry_of"] == str(dead.number)]
    assert len(retry) == 1 and retry[0]["state"] == "complete"
    assert float(retry[0]["p"]) == pytest.approx(dead.params["p"])
    assert sum(r["state"] in ("complete", "pruned") for r in rows) == 6


def replace_n(config, n):
    from dataclasses import replace
    return replace(config, n_trials=n)


def test_tune_command_and_bad_options(fake_cifar, tmp_path, capsys):
    args = ["tune", "--n-trials", "2", "--p-range", "1:3", "--search", "p,max_lr", "--epochs", "1",
            "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--data-dir", str(fake_cifar),
            "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best: trial" in out and (tmp_path / "study.db").is_file()
    best = next(line for line in out.splitlines() if line.startswith("best: trial"))
    assert "validation accuracy" in best and "on 150 held-out training images (chosen on it)" in best
    assert "test accuracy" in best and "(reported, not used to choose)" in best
    rows = read_csv(tmp_path / "trials.csv")
    assert len(rows) == 2 and all(0.001 <= float(r["max_lr"]) <= 0.1 for r in rows)
    for bad in (["--p-range", "3:1"], ["--p-range", "x"], ["--search", "q"], ["--layer", "conv"],
                ["--p-range", "0.01:1"]):
        assert main(["tune", *bad, "--out", str(tmp_path / "bad")]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("scs-probe: error:"), err
    with pytest.raises(OptionError):
        tune_module.TuneConfig(pruner="random")


def _tune_args(fake_cifar, out, *extra):
    return ["tune", "--n-trials", "4", "--epochs", "2", "--limit-train", "128", "--limit-test", "64", "--batch-size",
            "64", "--data-dir", str(fake_cifar), "--device", "cpu", "--quiet", "--out", str(out), *extra]


def test_two_tune_processes_share_one_postgresql_study(fake_cifar, tmp_path, postgres_url):
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = _tune_args(fake_cifar, tmp_path, "--storage", postgres_url, "--pruner", "none")
    procs = [subprocess.Popen([sys.executable, "-m", "scs_probe", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="scs-fixed-p", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert 4 <= len(trials) <= 5  # each process stops once 4 are done; one may be finishing its own
    for t in trials:  # every trial trained its own run, whole
        run = RunDir(tmp_path / "trials" / str(t.number))
        assert run.read_config()["variant"]["fixed_p"] == pytest.approx(t.params["p"])
        assert [int(r["epoch"]) for r in run.read("history")] == [1, 2]
        assert float(run.read("history")[-1]["val_acc"]) == pytest.approx(t.value)
    assert {p.name for p in (tmp_path / "trials").iterdir()} == {str(n) for n in numbers}


def test_study_storage_errors_are_one_line(fake_cifar, tmp_path, capsys):
    cases = {"postgresql+psycopg://scs@127.0.0.1:1/none": 1, "nosuchdb://x": 2}
    for url, code in cases.items():
        assert main(_tune_args(fake_cifar, tmp_path, "--storage", url)) == code, url
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("scs-probe: error:"), err


def test_tune_workers_on_ray_fill_one_study(fake_cifar, tmp_path, capsys):
    pytest.importorskip("ray")
    assert main(_tune_args(fake_cifar, tmp_path, "--executor", "ray", "--jobs", "2", "--pruner", "none")) == 0
    rows = read_csv(tmp_path / "trials.csv")
    assert 4 <= len(rows) <= 5 and all(r["state"] == "complete" for r in rows)
    assert len({r["p"] for r in rows}) == len(rows)  # workers draw different points
    assert "best: trial" in capsys.readouterr().out


def test_tune_warns_when_every_trial_stayed_near_chance(tmp_path, capsys, monkeypatch):
    """Trials whose best validation accuracy stayed below 1.5 / classes did not train: the summary says so rather
    than present the least bad of them as the best p."""
    from optuna.distributions import FloatDistribution

    def study_of(*accs):
        study = optuna.create_study(direction="maximize")
        for acc in accs:
            study.add_trial(optuna.trial.create_trial(
                params={"p": 1.5}, distributions={"p": FloatDistribution(0.5, 4.0, log=True)}, value=acc,
                intermediate_values={0: acc}, user_attrs={"test_acc": acc, "n_val": 150}))
        return study

    low = study_of(0.11, 0.14)
    warning = tune_module.near_chance_warning(tune_module.trial_rows(low), tmp_path)
    assert warning.startswith("warning: all 2 trials stayed near chance") and "0.140 < 0.150" in warning
    assert tune_module.near_chance_warning(tune_module.trial_rows(study_of(0.11, 0.4)), tmp_path) == ""
    assert tune_module.near_chance_warning([], tmp_path) == ""
    monkeypatch.setattr(tune_module, "tune", lambda *a, **k: low)
    assert main(["tune", "--n-trials", "2", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "best: trial 1" in out and "warning: all 2 trials stayed near chance" in out, out


def test_only_a_table_creation_race_is_retried():
    from scs_probe.training.tune import _creation_race

    def error(name, message):
        return type(name, (Exception,), {})(message)
    assert _creation_race(error("IntegrityError", 'duplicate key value violates unique constraint "pg_type"'))
    assert _creation_race(error("ProgrammingError", '(psycopg.errors.DuplicateTable) relation "studies" exists'))
    assert not _creation_race(error("ProgrammingError", "permission denied for schema public"))
    assert not _creation_race(error("OperationalError", "connection refused"))


@pytest.mark.parametrize("attrs, words", [({"data_fingerprint": 5}, "data_fingerprint must be text, got 5"),
                                          ({"settings": [1]}, "settings must be an object, got a list")])
def test_a_study_whose_stored_attributes_are_crafted_is_one_line(fake_cifar, tmp_path, capsys, attrs, words):
    """A study's attributes (in study.db, or on a shared PostgreSQL server) are records like config.json: a
    crafted one is one line naming it, not a TypeError when the data or settings are compared."""
    from tests.test_untrusted_records import one_line_error
    study = tune_module.open_study(tmp_path, tune_module.TuneConfig())
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    study.enqueue_trial({"p": 1.0})
    assert main(["tune", "--out", str(tmp_path), "--epochs", "1", "--n-trials", "2", "--device", "cpu",
                 "--data-dir", str(fake_cifar), "--limit-train", "64", "--quiet"]) == 1
    err = one_line_error(capsys)
    assert f"malformed ({words})" in err and "scs-fixed-p" in err, err
