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
tune_module = pytest.importorskip("scs_probe.tune")
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
    assert float(rows[0]["final_test_acc"]) == float(done.read("history")[-1]["test_acc"])
    assert (tmp_path / "tune.png").stat().st_size > 1000

    # a process dies mid-trial: its trial stays RUNNING with a stale heartbeat
    study = tune_module.open_study(tmp_path, config)
    dead = study.ask({"p": optuna.distributions.FloatDistribution(0.5, 4.0, log=True)})
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
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
    rows = read_csv(tmp_path / "trials.csv")
    assert len(rows) == 2 and all(0.001 <= float(r["max_lr"]) <= 0.1 for r in rows)
    for bad in (["--p-range", "3:1"], ["--p-range", "x"], ["--search", "q"], ["--layer", "conv"],
                ["--p-range", "0.01:1"]):
        assert main(["tune", *bad, "--out", str(tmp_path / "bad")]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("scs-probe: error:"), err
    with pytest.raises(OptionError):
        tune_module.TuneConfig(pruner="random")
