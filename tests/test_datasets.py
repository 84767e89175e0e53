"""More data sets and models from outside the zoo: fake files in torchvision's layouts (no network), trained and
analysed from the CLI."""

import re

import pytest
import torch

from scs_probe.cli import main
from scs_probe.data import as_rgb, check_dataset, load_dataset
from scs_probe.errors import DataError, OptionError
from scs_probe.rundir import RunDir
from scs_probe.storage import read_csv
from scs_probe.zoo import Variant, build_model, count_params, trust_model_code

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")


@pytest.mark.parametrize("name, classes, channels", [("cifar100", 100, 3), ("svhn", 10, 3), ("mnist", 10, 1),
                                                     ("fashion-mnist", 10, 1)])
def test_each_data_set_loads_in_torchvisions_layout(fake_datasets, name, classes, channels):
    train = load_dataset(name, fake_datasets, train=True, download=False)
    test = load_dataset(name, fake_datasets, train=False, download=False)
    assert train.images.dtype == torch.uint8 and train.images.shape[1] == channels
    assert len(train) == 400 and len(test) == 200 and len(train.classes) == classes
    assert int(train.labels.max()) < classes and train.dataset == name
    assert as_rgb(train.images[:2].float()).shape[1] == 3


def test_image_folder_and_bad_names(fake_datasets, tmp_path):
    split = load_dataset(f"imagefolder:{fake_datasets / 'folder'}", train=False, image_size=24)
    assert split.images.shape == (30, 3, 24, 24) and split.classes == ("cat", "dog", "owl")
    with pytest.raises(DataError, match="DIR/train and DIR/val"):
        load_dataset(f"imagefolder:{tmp_path}", train=True)
    with pytest.raises(DataError, match="no mnist copy"):
        load_dataset("mnist", tmp_path, download=False)
    for bad in ("imagenet", "imagefolder:", ""):
        with pytest.raises(OptionError):
            check_dataset(bad)
    assert check_dataset("CIFAR100") == "cifar100"


def test_zoo_heads_follow_the_number_of_classes():
    ten = build_model("rohrer100k", seed=0)
    hundred = build_model("rohrer100k", seed=0, num_classes=100)
    assert hundred.fc.out_features == 100 and count_params(hundred) - count_params(ten) == 90 * (ten.fc.in_features
                                                                                                 + 1)
    r18 = build_model(Variant("resnet18", layer="conv", activation="relu", pool="max", norm="bn"), num_classes=100,
                      normalization=((0.5,) * 3, (0.25,) * 3))
    assert r18(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_external_models_share_initial_kernels_and_convert():
    conv = build_model(Variant("torchvision:resnet18", layer="conv", activation="keep", pool="keep"), seed=3)
    scs = build_model(Variant("torchvision:resnet18", layer="scs"), seed=3)
    assert torch.equal(conv.net.layer1[0].conv1.weight, scs.net.layer1[0].conv1.weight)
    assert type(scs.net.maxpool).__name__ == "MaxAbsPool2d" and type(scs.net.relu).__name__ == "Identity"
    assert Variant("torchvision:resnet18").name == "torchvision-resnet18-scs-none-maxabs"
    for bad in ("torchvision:nosuchnet", "nosuchpackage.mod:make", "not a spec:"):
        with trust_model_code(bad), pytest.raises(OptionError):
            Variant(bad)


def _train(args, out, fake_datasets):
    return main(["train", *args, "--epochs", "1", "--batch-size", "32", "--limit-train", "128", "--limit-test", "64",
                 "--data-dir", str(fake_datasets), "--device", "cpu", "--quiet", "--out", str(out)])


@pytest.mark.slow
def test_converted_torchvision_model_trains_on_mnist_and_is_analysed(fake_datasets, tmp_path, capsys):
    for layer in (["--layer", "conv", "--activation", "keep", "--pool", "keep"], ["--layer", "scs"]):
        name = "conv" if "conv" in layer else "scs"
        assert _train(["--model", "torchvision:resnet18", *layer, "--dataset", "mnist"], tmp_path / "runs" / name,
                      fake_datasets) == 0
    run = RunDir(tmp_path / "runs" / "scs")
    config = run.read_config()
    assert config["variant"]["arch"] == "torchvision:resnet18" and config["options"]["dataset"] == "mnist"
    assert config["data"]["num_classes"] == 10 and config["data"]["channels"] == 1
    # the analyses rebuild the model from its spec and take MNIST test images, as the run recorded: eps 0 is the
    # accuracy the run itself recorded on those images, and PGD only lowers it
    assert main(["pgd", "--sweep", str(tmp_path / "runs"), "--eps", "0,2/255", "--n-images", "16", "--no-checks",
                 "--data-dir", str(fake_datasets), "--device", "cpu"]) == 0
    _check_against_predictions(tmp_path / "runs" / "analysis" / "pgd", {"-conv-": tmp_path / "runs" / "conv",
                                                                       "-scs-": tmp_path / "runs" / "scs"}, 16)
    assert main(["saliency", "--sweep", str(tmp_path / "runs"), "--n-images", "8", "--no-sanity", "--data-dir",
                 str(fake_datasets), "--device", "cpu"]) == 0
    assert main(["saliency", "--sweep", str(tmp_path / "runs"), "--classes", "12", "--no-sanity", "--data-dir",
                 str(fake_datasets), "--device", "cpu", "--out", str(tmp_path / "bad")]) == 2
    assert "mnist has classes 0-9" in capsys.readouterr().err
    rows = read_csv(tmp_path / "runs" / "analysis" / "saliency" / "saliency.csv")
    assert {r["label"] for r in rows} <= {"0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
                                          "6 - six", "7 - seven", "8 - eight", "9 - nine"}
    capsys.readouterr()


@pytest.mark.slow
def test_zoo_model_trains_on_cifar100_and_analyses_say_which_set(fake_datasets, tmp_path, capsys):
    assert _train(["--arch", "rohrer100k", "--dataset", "cifar100"], tmp_path / "c100", fake_datasets) == 0
    from scs_probe.checkpoint import model_from_checkpoint
    model = model_from_checkpoint(RunDir(tmp_path / "c100").load_checkpoint())
    assert model.fc.out_features == 100
    # AutoAttack targets the 9 most likely other classes of 100 (not torchattacks' default of 10 classes)
    assert main(["pgd", "--ckpt", str(tmp_path / "c100"), "--eps", "0,8/255", "--n-images", "8", "--no-checks",
                 "--attack", "autoattack", "--aa-steps", "2", "--aa-queries", "10", "--data-dir",
                 str(fake_datasets), "--device", "cpu", "--out", str(tmp_path / "a")]) == 0
    _check_against_predictions(tmp_path / "a", {"": tmp_path / "c100"}, 8)
    assert main(["train", "--dataset", "imagenet", "--out", str(tmp_path / "x")]) == 2
    assert "--dataset" in capsys.readouterr().err


def _check_against_predictions(pgd_dir, runs: dict, n: int):
    """Per model (the one whose name contains the key): at eps 0, the images it gets right are exactly those its
    run predicted right on the first n test images (predictions.csv, written by training), and pgd.csv's clean
    accuracy is their share; at every eps > 0 an image is robust only where it was right clean."""
    import numpy as np
    rows = read_csv(pgd_dir / "pgd.csv")
    per = np.load(pgd_dir / "pgd_per_image.npz")
    assert float(per["eps"][0]) == 0
    for key, run_dir in runs.items():
        preds = RunDir(run_dir).read_predictions()
        right = preds["pred"][:n] == preds["label"][:n]
        (model,) = {r["model"] for r in rows if key in r["model"]}
        found = 0
        for k, name in enumerate(per["models"]):
            if name == model:
                robust = per["robust"][k]  # [eps, image]
                assert robust[0].tolist() == right.tolist()
                assert not (robust[1:] & ~robust[:1]).any()
                found += 1
        assert found == len({r["attack"] for r in rows if r["model"] == model}) >= 1
        clean = [float(r["robust_acc"]) for r in rows if r["model"] == model and float(r["eps"]) == 0]
        assert clean == pytest.approx([right.mean()] * len(clean), abs=1e-6)


@pytest.mark.slow
def test_three_class_image_folder_trains_attacks_and_judges_chance(fake_datasets, tmp_path):
    """A 3-class set: the head has 3 outputs, AutoAttack's FAB-T targets its 2 other classes and APGD with the
    DLR loss stands in for APGD-T (whose loss needs 4 classes; torchattacks' default of 10 classes fails here),
    eps 0 is the run's own accuracy, and near chance is 1.5 / 3 = 0.5."""
    from scs_probe.analysis.provenance import near_chance
    from scs_probe.analysis.robustness import _attack, autoattack_targets
    folder = f"imagefolder:{fake_datasets / 'folder'}"
    assert main(["train", "--arch", "rohrer100k", "--dataset", folder, "--epochs", "1", "--batch-size", "16",
                 "--val-split", "6", "--limit-test", "30", "--data-dir", str(fake_datasets), "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "run")]) == 0
    run = RunDir(tmp_path / "run")
    config = run.read_config()
    assert config["data"]["num_classes"] == 3 and config["data"]["val_split"]["n"] == 6
    assert config["data"]["n_train"] == 54  # 60 training images less the 6 held out, 2 of each class
    summary = run.summary()
    assert summary["num_classes"] == 3 and near_chance(summary) == (summary["test_acc"] < 0.5)
    assert autoattack_targets(3) == 2 and autoattack_targets(100) == 9 and autoattack_targets(10) == 9
    model = torch.nn.Linear(1, 3)
    apgd, dlr, fab, _ = _attack("autoattack", model, 0.03, 0.01, 1, 0, 10, n_classes=3).attacks
    assert (type(dlr).__name__, dlr.loss, fab.n_target_classes) == ("APGD", "dlr", 2)
    apgdt, fab = _attack("autoattack", model, 0.03, 0.01, 1, 0, 10, n_classes=100).attacks[1:3]
    assert apgdt.n_target_classes == 9 and fab.n_target_classes == 9
    assert len(_attack("autoattack", model, 0.03, 0.01, 1, 0, 10, n_classes=2).attacks) == 3
    assert main(["pgd", "--ckpt", str(tmp_path / "run"), "--eps", "0,8/255", "--n-images", "30", "--no-checks",
                 "--attack", "autoattack", "--aa-steps", "2", "--aa-queries", "10", "--data-dir",
                 str(fake_datasets), "--device", "cpu", "--out", str(tmp_path / "a")]) == 0
    _check_against_predictions(tmp_path / "a", {"": tmp_path / "run"}, 30)


def test_plain_state_dicts_are_analysed_with_model_spec(fake_datasets, tmp_path, capsys):
    import torchvision

    from scs_probe import convert
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "conv.pt")
    torch.save({"state_dict": convert(net).model.state_dict()}, tmp_path / "scs.pt")
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "other.pt")
    args = ["pgd", "--model", "torchvision:resnet18", "--eps", "0", "--n-images", "8", "--no-checks", "--data-dir",
            str(fake_datasets), "--dataset", "svhn", "--device", "cpu", "--out", str(tmp_path / "a")]
    assert main([*args, "--ckpt", str(tmp_path / "conv.pt"), "--ckpt", str(tmp_path / "scs.pt")]) == 0
    rows = read_csv(tmp_path / "a" / "pgd.csv")
    assert {r["model"] for r in rows} == {"conv", "scs"}
    capsys.readouterr()
    assert main([*args, "--ckpt", str(tmp_path / "other.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "does not fit torchvision:resnet18" in err and "unexpected layer1.2" in err
    assert main([*args, "--dataset", "cifar100", "--ckpt", str(tmp_path / "conv.pt")]) == 2
    assert "has 10 outputs but cifar100 has 100 classes" in capsys.readouterr().err


FACTORIES = '''
import torch
from torch import nn

def tiny(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))

def tiny_nokw():
    return tiny()

def broken():
    raise RuntimeError("boom")

def noconv():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
'''


def test_model_specs_from_a_users_package(tmp_path, monkeypatch, capsys):
    (tmp_path / "myfac.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    with trust_model_code():  # specs named in code: the caller's own
        model = build_model(Variant("myfac:tiny_nokw", layer="conv", activation="keep", pool="keep"), num_classes=100)
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)  # no num_classes: its last Linear is resized
        scs = build_model(Variant("myfac:tiny", layer="scs", activation="none"), num_classes=10)
        assert "1 conv biases dropped" in scs.conversion.summary()
        for spec, named in (("myfac:broken", "myfac:broken failed to build (RuntimeError: boom)"),
                            ("myfac:noconv", "has no nn.Conv2d to turn into scs")):
            with pytest.raises(OptionError, match=re.escape(named)):
                build_model(Variant(spec), num_classes=10)
        for argv, named in ((["--model", "foo"], "is not a model spec"),
                            (["--model", "myfac:tiny", "--arch", "resnet20"], "not both"),
                            (["--model", "myfac:tiny", "--norm", "bn"], "--norm: does not apply")):
            assert main(["train", *argv, "--out", str(tmp_path / "x")]) == 2
            err = capsys.readouterr().err.strip()
            assert err.splitlines() == [err] and named in err, err


@pytest.mark.slow
def test_compare_and_class_names_follow_the_data_set(fake_datasets, tmp_path, capsys):
    (tmp_path / "myfac.py").write_text(FACTORIES)
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        assert _train(["--model", "myfac:tiny", "--layer", "conv", "--dataset", "svhn"], tmp_path / "mix" / "conv",
                      fake_datasets) == 0
        assert _train(["--model", "myfac:tiny", "--layer", "scs", "--activation", "none", "--pool", "maxabs",
                       "--dataset", "fashion-mnist"], tmp_path / "mix" / "scs", fake_datasets) == 0
        capsys.readouterr()
        assert main(["compare", str(tmp_path / "mix"), "--trust-model-code", "--pair",
                     "myfac-tiny-conv-keep-keep,myfac-tiny-scs-none-maxabs"]) == 2
        assert "a paired comparison needs the same test images" in capsys.readouterr().err
        # class names are the data set's: Fashion-MNIST's "Sneaker" is class 7
        assert main(["saliency", "--ckpt", str(tmp_path / "mix" / "scs"), "--trust-model-code", "--classes", "sneaker",
                     "--n-images", "4",
                     "--no-sanity", "--data-dir", str(fake_datasets), "--device", "cpu", "--out",
                     str(tmp_path / "sal")]) == 0
        assert {r["label"] for r in read_csv(tmp_path / "sal" / "saliency.csv")} == {"Sneaker"}
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.slow
def test_state_dict_of_a_converted_model_with_its_conversion(fake_datasets, tmp_path):
    assert _train(["--model", "torchvision:resnet18", "--layer", "scs", "--activation", "none", "--pool", "maxabs",
                   "--dataset", "svhn"], tmp_path / "run", fake_datasets) == 0
    state = {k.removeprefix("net."): v for k, v in RunDir(tmp_path / "run").load_checkpoint()["model"].items()}
    torch.save(state, tmp_path / "sd.pt")
    args = ["--eps", "0", "--n-images", "16", "--no-checks", "--data-dir", str(fake_datasets), "--dataset", "svhn",
            "--device", "cpu"]
    assert main(["pgd", "--ckpt", str(tmp_path / "run"), *args, "--out", str(tmp_path / "a")]) == 0
    assert main(["pgd", "--model", "torchvision:resnet18", "--activation", "none", "--pool", "maxabs", "--ckpt",
                 str(tmp_path / "sd.pt"), *args, "--out", str(tmp_path / "b")]) == 0
    clean = [{k: r[k] for k in ("eps", "robust_acc")} for r in read_csv(tmp_path / "a" / "pgd.csv")]
    assert clean == [{k: r[k] for k in ("eps", "robust_acc")} for r in read_csv(tmp_path / "b" / "pgd.csv")]
