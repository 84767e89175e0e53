"""--tensorboard: event files per run, read back as TensorBoard reads them (EventAccumulator): a 2-seed sweep's
curves, norms and p histograms side by side, a resumed run's earlier epochs, a study's trials with their hparams."""

import importlib.util
from dataclasses import replace

import pytest

from scs_probe.cli import main
from scs_probe.errors import OptionError
from scs_probe.rundir import RunDir
from scs_probe.training import Trainer, TrainOptions, train
from scs_probe.training.tensorboard_log import final_metrics, run_hparams, scalar_tag
from scs_probe.zoo import Variant

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")
SMALL = ["--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--max-lr", "0.01", "--device", "cpu",
         "--quiet"]


def events(folder):
    """Scalars {tag: [(step, value)]}, histogram tags {tag: [steps]} and the hparams of a run's log folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    histograms = {t: [e.step for e in acc.Histograms(t)] for t in acc.Tags()["histograms"]}
    hparams = {}
    try:
        content = acc.PluginTagToContent("hparams")
    except KeyError:  # none written
        content = {}
    for raw in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            for k, v in data.session_start_info.hparams.items():
                hparams[k] = v.string_value if v.HasField("string_value") else v.number_value
    return scalars, histograms, hparams


def test_tags_and_metrics_follow_the_history_columns():
    assert [scalar_tag(c) for c in ("train_loss", "test_acc", "val_acc", "eval_seconds", "lr")] == \
        ["loss/train", "acc/test", "acc/val", "seconds/eval", "lr"]
    history = [{"epoch": 1, "train_loss": 2.0, "test_acc": 0.5, "val_loss": "1.5", "lr": "0.01"},
               {"epoch": 2, "train_loss": 1.0, "test_acc": 0.4, "val_loss": "1.2", "lr": "0.001"}]
    assert final_metrics(history) == {"train_loss": 1.0, "test_acc": 0.4, "val_loss": 1.2}  # no best chosen on test
    history = [{**history[0], "val_acc": "0.3"}, {**history[1], "val_acc": "0.6"}]
    assert final_metrics(history) == {"train_loss": 1.0, "test_acc": 0.4, "val_loss": 1.2, "val_acc": 0.6,
                                      "best_val_acc": 0.6, "test_acc_at_best_val": 0.4}
    assert final_metrics([]) == {}
    options = TrainOptions(Variant("rohrer100k"), max_lr=0.01).to_dict()
    assert run_hparams(options)["layer"] == "scs" and "fixed_p" not in run_hparams(options)
    assert "data_dir" not in run_hparams(options)


def test_missing_tensorboard_is_a_one_line_usage_error(monkeypatch, capsys, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard"
                        else find_spec(name, *a))
    for command in ("train", "sweep", "tune"):
        assert main([command, "--tensorboard", "--out", str(tmp_path / command)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "scs-probe: error: --tensorboard needs the tensorboard package: pip install " \
                      "'scs-probe[tensorboard]'", err
    with pytest.raises(OptionError, match="tensorboard"):  # from the library too
        train(TrainOptions(Variant("rohrer100k"), out=str(tmp_path / "lib"), tensorboard=True))
    assert not (tmp_path / "lib").exists()


@pytest.mark.slow
def test_sweep_over_two_seeds_logs_each_run(fake_cifar, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    args = ["--backend", "eager", "sweep", "--only", "rohrer100k-scs-none-maxabs", "--seeds", "0,1", "--epochs", "2",
            "--data-dir", str(fake_cifar), "--out", str(tmp_path), "--tensorboard", *SMALL]
    assert main(args) == 0
    curves = {}
    for seed in (0, 1):
        run = RunDir(tmp_path / f"rohrer100k-scs-none-maxabs-seed{seed}")
        scalars, histograms, hparams = events(run.tensorboard_path)
        history = run.read("history")
        for column in ("train_loss", "train_acc", "test_loss", "test_acc", "train_seconds", "eval_seconds", "lr"):
            tag = scalar_tag(column)
            assert [s for s, _ in scalars[tag]] == [1, 2], tag
            assert [v for _, v in scalars[tag]] == pytest.approx([float(r[column]) for r in history], rel=1e-5)
        layers = {r["layer"] for r in run.read("norms")}
        for layer in layers:  # epoch 0: the initial weights
            assert [s for s, _ in scalars[f"weight_norm/{layer}"]] == [0, 1, 2]
            assert [s for s, _ in scalars[f"grad_norm/{layer}"]] == [1, 2]
        sharpened = {r["layer"] for r in run.read("exponents")}
        assert sharpened and {f"p/{layer}" for layer in sharpened} == set(histograms)
        assert all(steps == [0, 1, 2] for steps in histograms.values())
        assert hparams["seed"] == seed and hparams["layer"] == "scs" and hparams["status"] == "finished"
        assert scalars["hparam/test_acc"][-1][1] == pytest.approx(float(history[-1]["test_acc"]))
        curves[seed] = scalars["loss/train"]
    assert curves[0] != curves[1]  # two runs side by side, not one run logged twice

    # a run interrupted without the log, resumed with it: the earlier epochs come from its records
    out = tmp_path / "later"
    quiet = dict(progress=False, log=lambda *a: None)
    options = TrainOptions(Variant("rohrer100k"), epochs=2, batch_size=64, max_lr=0.01, limit_train=128,
                           limit_test=64, data_dir=str(fake_cifar), out=str(out), device="cpu")

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(options, on_epoch=stop, **quiet).run()
    assert not RunDir(out).tensorboard_path.exists()
    train(replace(options, tensorboard=True), resume=True, explicit={"tensorboard"}, **quiet)
    scalars, histograms, _ = events(RunDir(out).tensorboard_path)
    assert [s for s, _ in scalars["loss/train"]] == [1, 2]
    assert all(steps == [0, 1, 2] for steps in histograms.values()) and histograms


@pytest.mark.slow
def test_study_trials_are_runs_with_their_hparams(fake_cifar, tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("tensorboard")
    from scs_probe.training import tune as tune_module

    class PruneTrial1(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number == 1

    monkeypatch.setattr(tune_module, "_pruner", lambda name: PruneTrial1())
    base = TrainOptions(Variant("rohrer100k"), epochs=2, batch_size=64, max_lr=0.01, limit_train=128, limit_test=64,
                        data_dir=str(fake_cifar), device="cpu", tensorboard=True)
    study = tune_module.tune(base, tmp_path, tune_module.TuneConfig(n_trials=2, p_range=(0.5, 4.0)),
                             log=lambda *a: None, progress=False)
    for trial in study.get_trials():
        scalars, _, hparams = events(RunDir(tmp_path / "trials" / str(trial.number)).tensorboard_path)
        assert hparams["fixed_p"] == pytest.approx(trial.params["p"], rel=1e-6)
        assert hparams["max_lr"] == pytest.approx(0.01)
        assert hparams["status"] == ("pruned" if trial.number == 1 else "finished")
        assert len(scalars["acc/test"]) == (1 if trial.number == 1 else 2)
