"""Held-out data and what a run records: the validation split (stratified, seeded apart from the run, recorded),
selection on it (best epoch, tune never reading test accuracy), class-aware chance, and what ran (backend, threads,
host, device) as the speed claim compares it."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from scs_probe.data import DataError, Split, auto_val_split, load_cifar10, validation_split
from scs_probe.rundir import RunDir, best_epoch
from scs_probe.training import Trainer, TrainOptions, train
from scs_probe.zoo import Variant

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")


def _split(labels, classes=None):
    """A split whose image i stores its own index (two pixels: i // 256, i % 256)."""
    labels = torch.as_tensor(labels)
    n = len(labels)
    idx = torch.arange(n)
    images = torch.stack([idx // 256, idx % 256], 1).view(n, 1, 1, 2).to(torch.uint8)
    return Split(images, labels, official=False, classes=classes or tuple(str(i) for i in range(10)))


def _indices(split):
    return (split.images[:, 0, 0, 0].long() * 256 + split.images[:, 0, 0, 1].long()).tolist()


def test_validation_split_is_stratified_seeded_and_recorded():
    import hashlib
    labels = np.repeat(np.arange(10), [300, 200, 100, 100, 100, 100, 50, 25, 15, 10])  # 1,000 images, unequal
    rng = np.random.default_rng(3)
    labels = labels[rng.permutation(1000)]
    split = _split(labels)
    rest, val, info = validation_split(split, 100)
    assert torch.bincount(val.labels, minlength=10).tolist() == [30, 20, 10, 10, 10, 10, 5, 3, 1, 1]  # shares
    held, kept = _indices(val), _indices(rest)
    assert len(set(held)) == 100 and sorted(held + kept) == list(range(1000))
    assert kept == sorted(kept)  # the rest keep their order: --limit-train N takes the first N of them
    assert all(labels[i] == y for i, y in zip(held, val.labels.tolist()))
    assert info == {"n": 100, "seed": 0, "classes": 10,
                    "indices_sha256": hashlib.sha256(np.array(sorted(held), dtype="<i8").tobytes()).hexdigest()}
    # the same images on every call (the split's own seed, whatever the run's); another split seed, others
    again = validation_split(split, 100)
    assert _indices(again[1]) == held and again[2] == info
    other = validation_split(split, 100, seed=1)
    assert _indices(other[1]) != held and other[2]["indices_sha256"] != info["indices_sha256"]
    for n in (995, 5):
        with pytest.raises(DataError, match="give 10 to 990"):
            validation_split(split, n)
    assert auto_val_split(50_000) == 5_000 and auto_val_split(1_500) == 150 and auto_val_split(60) == 6


def opts(fake_cifar, out, **kw):
    base = dict(epochs=2, batch_size=64, max_lr=0.01, limit_train=256, limit_test=128, data_dir=str(fake_cifar),
                out=str(out), device="cpu")
    return TrainOptions(Variant("rohrer100k", "conv", "relu", "max"), **{**base, **kw})


@pytest.mark.slow
def test_run_with_a_validation_split_records_it(fake_cifar, tmp_path):
    train(opts(fake_cifar, tmp_path / "a", val_split=200, seed=0), progress=False, log=lambda *a: None)
    train(opts(fake_cifar, tmp_path / "b", val_split=200, seed=1), progress=False, log=lambda *a: None)
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    ca, cb = a.read_config(), b.read_config()
    assert ca["options"]["val_split"] == 200 and ca["data"]["val_split"]["n"] == 200
    assert ca["data"]["val_split"] == cb["data"]["val_split"]  # another run seed, the same held-out images
    assert ca["data"]["n_train"] == 256  # --limit-train takes from the 1,300 left
    ckpt = a.load_checkpoint()
    assert ckpt["data"]["val_split"] == ca["data"]["val_split"] and ckpt["environment"]["device"] == "cpu"
    hist = a.read("history")
    assert list(hist[0])[3:5] == ["val_loss", "val_acc"]
    # the validation numbers are those of the held-out images: re-evaluate the final model on them
    full = load_cifar10(fake_cifar, train=True)
    _, val, info = validation_split(full, 200)
    assert info == ca["data"]["val_split"]
    from scs_probe.checkpoint import model_from_checkpoint
    model = model_from_checkpoint(ckpt)
    with torch.no_grad():
        pred = model(val.images.float() / 255).argmax(1)
    assert float(hist[-1]["val_acc"]) == pytest.approx((pred == val.labels).float().mean().item(), abs=1e-6)
    # the best epoch is the best on validation, and the summary gives that epoch's test accuracy
    best = best_epoch(hist)
    summary = a.summary()
    assert summary["best_epoch"] == int(best["epoch"]) and summary["test_acc_at_best"] == float(best["test_acc"])
    assert summary["n_val"] == 200 and summary["num_classes"] == 10
    # without a split there is no best epoch (none chosen on the test split) and val columns stay empty
    train(opts(fake_cifar, tmp_path / "c", epochs=1), progress=False, log=lambda *a: None)
    c = RunDir(tmp_path / "c")
    assert c.read("history")[0]["val_acc"] == "" and c.summary()["best_epoch"] == ""


def test_best_epoch_is_chosen_on_validation_not_test():
    hist = [{"epoch": "1", "val_acc": "0.5", "test_acc": "0.9"}, {"epoch": "2", "val_acc": "0.7", "test_acc": "0.4"},
            {"epoch": "3", "val_acc": "0.7", "test_acc": "0.8"}]
    assert best_epoch(hist)["epoch"] == "2"  # best validation, the first of equals; not the best test epoch (1)
    assert best_epoch([{"epoch": "1", "val_acc": "", "test_acc": "0.9"}]) is None


# ------------------------------------------------------------------------------------------ tune never reads test

def _relabel_test(src, dst):
    """A copy of a fake CIFAR-10 whose test labels are shuffled among its images (class counts stay balanced, as
    the copy's structure check wants)."""
    shutil.copytree(src, dst)
    path = dst / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(path.read_bytes())
    rng = np.random.default_rng(5)
    entry["labels"] = rng.permutation(np.asarray(entry["labels"])).tolist()
    path.write_bytes(pickle.dumps(entry))
    return dst


@pytest.mark.slow
def test_tune_never_reads_test_accuracy_to_choose(fake_cifar, tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    from scs_probe.layers import backend
    from scs_probe.training import tune as tune_module
    monkeypatch.setattr(backend, "_state", {**backend._state, "backend": "eager"})  # no compiling: not the point
    other = _relabel_test(fake_cifar, tmp_path / "relabelled")
    results = []
    for name, data in (("orig", fake_cifar), ("relabelled", other)):
        base = TrainOptions(Variant("rohrer100k"), epochs=2, batch_size=32, max_lr=0.01, limit_train=64,
                            limit_test=64, val_split=100, data_dir=str(data), device="cpu")
        config = tune_module.TuneConfig(n_trials=3, p_range=(0.5, 4.0), pruner="median")  # may prune trial 2
        study = tune_module.tune(base, tmp_path / name, config, log=lambda *a: None, progress=False)
        trials = study.get_trials(deepcopy=False)
        results.append({"values": [t.value for t in trials], "steps": [t.intermediate_values for t in trials],
                        "states": [t.state for t in trials], "params": [t.params for t in trials],
                        "best": study.best_trial.number,
                        "test": [t.user_attrs["test_acc"] for t in trials]})
    orig, relabelled = results
    assert orig["test"] != relabelled["test"]  # the test labels did change what the trials measured on test
    for key in ("values", "steps", "states", "params", "best"):  # and nothing the search decided
        assert orig[key] == relabelled[key], key
    assert optuna.trial.TrialState.COMPLETE in orig["states"]
    # the objective is the validation accuracy each trial's run recorded; trials.csv reports test apart
    rows = RunDir(tmp_path / "orig" / "trials" / "0").read("history")
    from scs_probe.storage import read_csv
    trial0 = read_csv(tmp_path / "orig" / "trials.csv")[0]
    assert float(trial0["val_acc"]) == pytest.approx(float(rows[-1]["val_acc"]))
    assert float(trial0["test_acc"]) == pytest.approx(float(rows[-1]["test_acc"])) and trial0["n_val"] == "100"


def test_tune_defaults_to_a_split_scaled_to_the_data():
    from scs_probe.training.tune import with_validation
    base = TrainOptions(Variant("rohrer100k"))
    assert with_validation(base).val_split == "auto"
    assert with_validation(TrainOptions(Variant("rohrer100k"), val_split=300)).val_split == 300


# ------------------------------------------------------------------------------------------ class-aware chance

def test_near_chance_is_relative_to_the_number_of_classes():
    from scs_probe.analysis.provenance import near_chance, near_chance_threshold
    assert near_chance_threshold(10) == pytest.approx(0.15)
    assert near_chance_threshold(100) == pytest.approx(0.015) and near_chance_threshold(3) == pytest.approx(0.5)
    assert near_chance({"test_acc": 0.12, "num_classes": 10})
    assert not near_chance({"test_acc": 0.12, "num_classes": 100})  # 12x chance on CIFAR-100
    assert near_chance({"test_acc": 0.45, "num_classes": 3})         # a 3-class run at 45 % barely beat 33 %
    assert not near_chance({"test_acc": "", "num_classes": 3})


# ------------------------------------------------------------------------------------------ what ran

def _fake(root, name, env, secs):
    from tests.test_evidence import CONV, SCS, fake_run
    rng = np.random.default_rng(0)
    runs = []
    for seed in (0, 1, 2):
        correct = rng.random(200) < 0.6
        for variant, s in ((CONV, secs[0]), (SCS, secs[1])):
            run = fake_run(root / name, variant, seed, correct, train_s=s + seed * 0.01, eval_s=s / 2)
            config = run.read_config()
            e = env(variant.layer) if callable(env) else env
            if e is not None:
                config["environment"] = e
            run.write_config(config)
            runs.append(run)
    return runs


def test_speed_claim_compares_only_runs_that_ran_alike(tmp_path):
    from scs_probe.analysis.claims import evaluate_claims
    same = {"backend": "auto", "threads": 2, "host": "h", "device": "cpu", "torch": "2.5"}
    runs = _fake(tmp_path, "same", same, (10.0, 20.0))
    speed = evaluate_claims(runs, tmp_path, tmp_path)[1]
    assert speed.verdict == "contradicted"  # SCS 2x train and 2x eval: not faster to evaluate
    assert "these two implementations on this hardware: cpu, 2 threads on h, backend auto" in speed.evidence
    fallback = {**same, "backend": "eager (fallback: RuntimeError: no compiler)"}
    runs = _fake(tmp_path, "fallback", lambda layer: fallback if layer == "scs" else same, (10.0, 20.0))
    speed = evaluate_claims(runs, tmp_path, tmp_path)[1]
    assert speed.verdict == "not tested"
    assert "backend auto vs eager (fallback: RuntimeError: no compiler)" in speed.evidence
    runs = _fake(tmp_path, "threads", lambda layer: {**same, "threads": 4 if layer == "scs" else 2}, (10.0, 20.0))
    assert "threads 2 vs 4" in evaluate_claims(runs, tmp_path, tmp_path)[1].evidence
    kept = "kept (glibc 2.36: mmap threshold 1 GiB, trim threshold 2 GiB)"  # the CPU memory policy halved conv stems
    runs = _fake(tmp_path, "memory", lambda layer: {**same, "freed_memory": kept if layer == "scs" else
                                                    "off: SCS_PROBE_KEEP_FREED_MEMORY=0"}, (10.0, 20.0))
    speed = evaluate_claims(runs, tmp_path, tmp_path)[1]
    assert speed.verdict == "not tested"
    assert f"freed_memory off: SCS_PROBE_KEEP_FREED_MEMORY=0 vs {kept}" in speed.evidence
    runs = _fake(tmp_path, "half", lambda layer: same if layer == "scs" else None, (10.0, 20.0))
    speed = evaluate_claims(runs, tmp_path, tmp_path)[1]
    assert speed.verdict == "not tested" and "older scs-probe" in speed.evidence


def test_backend_fallback_is_what_runs_record(monkeypatch):
    from scs_probe.layers import backend
    from scs_probe.training.trainer import environment, versions
    monkeypatch.setattr(backend, "_state", {**backend._state, "backend": "auto", "failed": None})
    assert environment(torch.device("cpu"))["backend"] == "auto"
    backend._state["failed"] = "RuntimeError: no C++ compiler"
    env = environment(torch.device("cpu"))
    assert env["backend"] == "eager (fallback: RuntimeError: no C++ compiler)"
    assert versions()["scs_backend"] == env["backend"]
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__ and env["host"]
    backend._state["backend"] = "eager"  # asked for eager: nothing fell back
    assert environment(torch.device("cpu"))["backend"] == "eager"


@pytest.mark.slow
def test_warm_up_runs_every_timed_path_for_conv_and_scs(fake_cifar, tmp_path, monkeypatch):
    """Before epoch 1's clock: a training step and eval-mode forwards at each batch size the loaders give (test
    and validation), for conv models too; and nothing the run draws changes."""
    for layer, activation, pool in (("conv", "relu", "max"), ("scs", "none", "maxabs")):
        seen = []
        o = TrainOptions(Variant("rohrer100k", layer, activation, pool), epochs=1, batch_size=48, max_lr=0.01,
                         limit_train=100, limit_test=70, val_split=300, data_dir=str(fake_cifar), device="cpu",
                         out=str(tmp_path / layer))
        trainer = Trainer(o, progress=False, log=lambda *a: None)
        trainer._setup()
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        rng = torch.get_rng_state()
        original = copy_deepcopy = __import__("copy").deepcopy

        def spy(obj, *a):
            clone = original(obj, *a)
            if isinstance(clone, torch.nn.Module):
                clone.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape[0],
                                                                             torch.is_grad_enabled())))
            return clone
        monkeypatch.setattr("scs_probe.training.trainer.copy.deepcopy", spy)
        trainer._warm_up_backend()
        monkeypatch.setattr("scs_probe.training.trainer.copy.deepcopy", copy_deepcopy)
        # train: 100 images in batches of 48 -> 48 and 4; eval batch 256: test 70, validation 256 and 44
        assert sorted(seen) == sorted([(True, 48, True), (True, 4, True), (False, 44, False), (False, 70, False),
                                       (False, 256, False)]), layer
        assert torch.equal(torch.get_rng_state(), rng)
        for k, v in trainer.model.state_dict().items():
            assert torch.equal(v, before[k])


def test_config_json_records_what_ran(fake_cifar, tmp_path):
    trainer = Trainer(opts(fake_cifar, tmp_path / "r", epochs=1), progress=False, log=lambda *a: None)
    trainer._setup()
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert set(config["environment"]) == {"backend", "threads", "host", "device", "torch", "thp_mem_alloc",
                                          "freed_memory"}
    assert config["environment"] == trainer.run_dir.load_checkpoint()["environment"]
