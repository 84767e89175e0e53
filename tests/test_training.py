"""Training end to end on fake CIFAR files: records, accuracy rises, resume, divergence, init-from, sweep, CLI."""

import csv
import json
import pickle

import pytest
import torch

from scs_probe.cli import main
from scs_probe.errors import ResumeConflict, RunExistsError
from scs_probe.rundir import RunDir
from scs_probe.training import Trainer, TrainOptions, train
from scs_probe.zoo import Variant


def load_checkpoint(path):
    return RunDir.of(path).load_checkpoint()

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")


def opts(fake_cifar, out, arch="rohrer100k", layer="scs", activation="none", pool="maxabs", **kw):
    base = dict(epochs=2, batch_size=64, max_lr=0.01, limit_train=512, limit_test=256, data_dir=str(fake_cifar),
                out=str(out), device="cpu")
    return TrainOptions(variant=Variant(arch, layer, activation, pool), **{**base, **kw})


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without_time(history):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in history]


@pytest.mark.slow
def test_train_writes_records_and_learns(fake_cifar, tmp_path):
    out = tmp_path / "run"
    train(opts(fake_cifar, out, epochs=4, norms_every_batch=True), progress=False, log=lambda *a: None)
    hist = rows(out / "history.csv")
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3, 4]
    assert list(hist[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                             "train_seconds", "eval_seconds", "lr"]
    assert hist[0]["val_acc"] == ""  # no validation split asked
    assert float(hist[-1]["test_acc"]) > 0.5  # chance is 0.1 on the fake classes
    assert float(hist[-1]["train_loss"]) < float(hist[0]["train_loss"])
    norms = rows(out / "norms.csv")
    layers = {"conv1", "conv2", "conv3", "fc"}
    assert {r["layer"] for r in norms} == layers and {r["kind"] for r in norms} == {"weight", "grad"}
    per_batch = [r for r in norms if r["batch"] != "" and r["epoch"] == "1"]
    assert len(per_batch) == 8 * len(layers) * 2  # 512 / 64 batches
    assert all(float(r["l2"]) > 0 for r in norms)
    exps = rows(out / "exponents.csv")
    assert {r["layer"] for r in exps} == {"conv1", "conv2", "conv3"}
    assert len([r for r in exps if r["epoch"] == "4" and r["layer"] == "conv1"]) == 32
    ckpt = load_checkpoint(out / "checkpoint.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 4 and ckpt["status"] == "finished" and ckpt["variant"]["layer"] == "scs"
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "finished" and config["params"] == 113_741


def _interrupt_at(monkeypatch, method, epoch_to_stop):
    original = getattr(Trainer, method)

    def patched(self, epoch, *a, **k):
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt
        return original(self, epoch, *a, **k)
    monkeypatch.setattr(Trainer, method, patched)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["_train_epoch", "_save"])
def test_resume_continues_without_lost_or_repeated_records(fake_cifar, tmp_path, monkeypatch, where):
    quiet = dict(progress=False, log=lambda *a: None)
    train(opts(fake_cifar, tmp_path / "straight", epochs=3), **quiet)
    with monkeypatch.context() as m:
        # _save at epoch 2: records for epoch 2 are written but the checkpoint is not
        _interrupt_at(m, where, 2)
        with pytest.raises(KeyboardInterrupt):
            train(opts(fake_cifar, tmp_path / "cut", epochs=3), **quiet)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    with pytest.raises(RunExistsError):
        train(opts(fake_cifar, tmp_path / "cut", epochs=3), **quiet)
    with pytest.raises(ResumeConflict, match="epochs=3"):  # what the run computes cannot change on resume
        train(opts(fake_cifar, tmp_path / "cut", epochs=4), resume=True, explicit={"epochs"}, **quiet)
    train(opts(fake_cifar, tmp_path / "cut", epochs=3), resume=True, **quiet)
    for name in ("history.csv", "exponents.csv"):
        a, b = rows(tmp_path / "straight" / name), rows(tmp_path / "cut" / name)
        assert without_time(a) == without_time(b), name
    na = [(r["epoch"], r["batch"], r["layer"], r["kind"]) for r in rows(tmp_path / "straight" / "norms.csv")]
    nb = [(r["epoch"], r["batch"], r["layer"], r["kind"]) for r in rows(tmp_path / "cut" / "norms.csv")]
    assert na == nb
    wa = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    wb = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])


def test_divergence_stops_marks_and_exits_nonzero(fake_cifar, tmp_path, capsys, monkeypatch):
    import scs_probe.layers.functional as fn
    original = fn.sharpened_cosine_similarity2d

    def poisoned(x, *a, **k):
        return original(x, *a, **k) * float("nan")
    monkeypatch.setattr("scs_probe.layers.sharpened.sharpened_cosine_similarity2d", poisoned)
    out = tmp_path / "nan"
    code = main(["train", "--epochs", "2", "--limit-train", "128", "--limit-test", "64", "--data-dir",
                 str(fake_cifar), "--out", str(out), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "diverged" in err and "Traceback" not in err
    assert json.loads((out / "config.json").read_text())["status"] == "diverged"
    assert load_checkpoint(out)["status"] == "diverged"


def test_init_from_conv_checkpoint(fake_cifar, tmp_path):
    quiet = dict(progress=False, log=lambda *a: None)
    train(opts(fake_cifar, tmp_path / "conv", layer="conv", activation="relu", pool="max", epochs=1, seed=1),
          **quiet)
    conv = load_checkpoint(tmp_path / "conv")["model"]
    t = Trainer(opts(fake_cifar, tmp_path / "scs", init_from=str(tmp_path / "conv" / "checkpoint.pt"), epochs=1),
                progress=False, log=lambda *a: None)
    t._setup()
    init = load_checkpoint(tmp_path / "scs")["model"]  # the epoch-0 checkpoint
    assert torch.equal(init["conv2.weight"], conv["conv2.weight"]) and torch.equal(init["fc.bias"], conv["fc.bias"])
    code = main(["train", "--arch", "rohrer47k", "--init-from", str(tmp_path / "conv"), "--data-dir", str(fake_cifar),
                 "--out", str(tmp_path / "other"), "--epochs", "1"])
    assert code == 1


def test_sweep_skips_finished_and_resumes(fake_cifar, tmp_path, capsys):
    args = ["sweep", "--arch", "rohrer100k", "--only", "rohrer100k-conv-relu-max,rohrer100k-scs-none-maxabs",
            "--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--max-lr", "0.01",
            "--data-dir", str(fake_cifar), "--out", str(tmp_path), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    summary = rows(tmp_path / "summary.csv")
    assert [r["variant"] for r in summary] == ["rohrer100k-conv-relu-max", "rohrer100k-scs-none-maxabs"]
    assert all(r["status"] == "finished" and float(r["test_acc"]) >= 0 for r in summary)
    assert summary[1]["params"] == "113741" and float(summary[0]["train_seconds_mean"]) > 0
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 2


def test_inspect_and_bad_checkpoints(fake_cifar, tmp_path, capsys):
    train(opts(fake_cifar, tmp_path / "run", epochs=1), progress=False, log=lambda *a: None)
    assert main(["inspect", str(tmp_path / "run" / "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert "rohrer100k-scs-none-maxabs" in out and "epoch 1 of 1" in out
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "scs-probe/checkpoint", "x": Evil()}))
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "short.txt").write_text("hello world\n")
    torch.save({"format": "scs-probe/checkpoint", "x": Evil()}, tmp_path / "evil2.pt")
    marker.unlink(missing_ok=True)
    for name, needle in [("missing.pt", "no checkpoint"), ("truncated.pt", "truncated"),
                         ("foreign.pt", "not an scs-probe checkpoint"), ("evil.pt", "refusing"),
                         ("evil2.pt", "refusing"), ("passwd", "not a PyTorch checkpoint"),
                         ("short.txt", "not a PyTorch checkpoint")]:
        code = main(["inspect", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 1, name
        assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, (name, err)
    assert not marker.exists()


def test_cli_usage_errors_are_one_line(capsys):
    for argv in (["train", "--arch", "vgg"], ["train", "--epochs", "zero"], ["train", "--arch", "rohrer100k",
                                                                              "--norm", "bn", "--epochs", "1"],
                 ["train", "--workers", "1000000"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("scs-probe: error:"), err


def test_zoo_command_lists_counts(capsys):
    assert main(["zoo", "--arch", "rohrer25k"]) == 0
    out = capsys.readouterr().out
    assert "rohrer25k-scs-none-maxabs" in out and "24,974" in out and "25,214" in out


@pytest.mark.slow
def test_backend_warm_up_leaves_the_run_unchanged(fake_cifar, tmp_path, monkeypatch):
    """The compile warm-up steps a throwaway copy: weights, data order and RNG of the run stay as without it."""
    from scs_probe.layers import backend
    calls = []
    original = Trainer._warm_up_backend
    monkeypatch.setattr(Trainer, "_warm_up_backend", lambda self: (calls.append(1), original(self)))
    monkeypatch.setattr(backend, "AUTO_MIN_NUMEL", 1)  # compile even these small batches
    warm = train(opts(fake_cifar, tmp_path / "warm", epochs=1), progress=False, log=lambda *a: None)
    monkeypatch.setattr(Trainer, "_warm_up_backend", lambda self: None)
    train(opts(fake_cifar, tmp_path / "cold", epochs=1), progress=False, log=lambda *a: None)
    assert calls == [1]
    a = load_checkpoint(tmp_path / "warm" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cold" / "checkpoint.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert warm["versions"]["scs_backend"] == "auto"


def test_random_bytes_are_not_a_checkpoint(tmp_path, capsys):
    import random
    for seed in range(20):  # random bytes end in different unpickler errors: none may read as "unsafe"
        (tmp_path / "random.pt").write_bytes(random.Random(seed).randbytes(300))
        assert main(["inspect", str(tmp_path / "random.pt")]) == 1
        err = capsys.readouterr().err
        assert "not a PyTorch checkpoint" in err and "refusing" not in err and len(err.splitlines()) == 1, err
    assert main(["inspect", str(tmp_path / "nope.pt")]) == 1  # a missing file, not a missing folder
    assert f"no checkpoint at {tmp_path / 'nope.pt'}\n" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_over_seeds_summarises_each_variant(fake_cifar, tmp_path, capsys):
    args = ["sweep", "--only", "rohrer100k-conv-relu-max", "--seeds", "0,1", "--epochs", "1", "--limit-train",
            "128", "--limit-test", "64", "--batch-size", "64", "--max-lr", "0.01", "--data-dir", str(fake_cifar),
            "--out", str(tmp_path), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["rohrer100k-conv-relu-max-seed0",
                                                                        "rohrer100k-conv-relu-max-seed1"]
    summary = rows(tmp_path / "summary.csv")
    assert [r["seed"] for r in summary] == ["0", "1"] and all(r["max_lr"] == "0.01" for r in summary)
    (variant,) = rows(tmp_path / "variant_summary.csv")
    accs = [float(r["test_acc"]) for r in summary]
    assert variant["finished"] == "2" and variant["seeds"] == "0 1"
    assert float(variant["test_acc_mean"]) == pytest.approx(sum(accs) / 2, abs=1e-6)
    assert float(variant["test_acc_ci_lo"]) <= float(variant["test_acc_mean"]) <= float(variant["test_acc_ci_hi"])
    preds = rows(tmp_path / "rohrer100k-conv-relu-max-seed0" / "predictions.csv")
    assert len(preds) == 64 and sum(r["pred"] == r["label"] for r in preds) / 64 == pytest.approx(accs[0])
    # seeds give different initial weights, so different runs
    a = load_checkpoint(tmp_path / "rohrer100k-conv-relu-max-seed0")["model"]["conv1.weight"]
    b = load_checkpoint(tmp_path / "rohrer100k-conv-relu-max-seed1")["model"]["conv1.weight"]
    assert not torch.equal(a, b)


def test_variant_summary_says_where_its_interval_was_clipped():
    """Test accuracies 0.10 and 0.30 over 2 seeds: the t interval (12.7 x the standard error) reaches far below
    0 and above 1; it is cut to [0, 1], and the row names what was cut instead of cutting silently."""
    from scs_probe.training.sweep import summarize_variants
    axes = dict(arch="rohrer25k", layer="scs", activation="none", pool="maxabs", norm="none", image_size=32,
                dataset="cifar10", status="finished")
    runs = [dict(axes, variant="v", seed=s, test_acc=acc, val_acc="", test_acc_at_best="", train_seconds_mean=t,
                 eval_seconds_mean=1.0) for s, acc, t in ((0, 0.1, 5.0), (1, 0.3, 50.0))]
    (row,) = summarize_variants(runs)
    assert (row["test_acc_ci_lo"], row["test_acc_ci_hi"]) == (0.0, 1.0)
    assert row["clipped"].split() == ["test_acc", "train_seconds_mean"]   # eval seconds agree: not cut
    assert "clipped to the feasible range" in row["interval"] and "test_acc" in row["interval"]
    runs[1]["test_acc"] = 0.11
    (row,) = summarize_variants(runs)
    assert row["clipped"] == "train_seconds_mean" and 0 < row["test_acc_ci_lo"] < row["test_acc_ci_hi"] < 1
