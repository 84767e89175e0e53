"""Model specs read from files (a checkpoint, a run's config.json) import nothing unless they name a zoo architecture,
a torchvision:/timm: model looked up in that library's own registry, or the user trusts them (`trust_model_code`);
the current directory is never searched implicitly. Library level: the CLI maps `UntrustedModelCode` to exit 1."""

import json
import os
import pickle
import re
import sys
from types import SimpleNamespace

import pytest
import torch

from scs_probe.analysis.report import paper_match
from scs_probe.analysis.sources import load_models, resolve_runs
from scs_probe.checkpoint import checkpoint_variant, load_checkpoint, model_from_checkpoint, save_checkpoint
from scs_probe.errors import CheckpointError, OptionError, UntrustedModelCode
from scs_probe.rundir import RunDir
from scs_probe.training import TrainOptions
from scs_probe.training.executors import LocalExecutor, RayExecutor
from scs_probe.training.trainer import Trainer
from scs_probe.zoo import Variant, build_model, get_arch, model_code_trust, trust_model_code

GOOD = "goodfac:tiny"
FACTORY = '''
from torch import nn

def tiny(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
'''
# what a hostile folder of runs ships beside them: importing it runs code
EVIL = '''
from pathlib import Path
Path(__file__).with_name("SENTINEL").write_text("imported")

def make(num_classes=10):
    raise RuntimeError("called")
'''
HOSTILE = ("this:x", "os:getpid", "__hello__:main", "builtins:breakpoint", "evil:make", "not a spec:",
           "torchvision.models:resnet18")


@pytest.fixture
def factory_on_path(tmp_path, monkeypatch):
    """goodfac.py in an installed-like folder on sys.path (not the current directory)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "goodfac.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("goodfac", None)


@pytest.fixture
def hostile_cwd(tmp_path, monkeypatch):
    """A working directory holding evil.py, on sys.path as `python -m` and `python -c` put it ('' and its path)."""
    cwd = tmp_path / "runs"
    cwd.mkdir()
    (cwd / "evil.py").write_text(EVIL)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", ["", str(cwd), *sys.path])
    yield cwd
    sys.modules.pop("evil", None)


def _checkpoint(path, spec: str, factory_on_path) -> None:
    """A checkpoint of goodfac:tiny in the project's format, with its spec string changed to `spec`."""
    with trust_model_code(GOOD):
        v = Variant(GOOD, layer="conv")
        state = build_model(v).state_dict()
    variant = {**v.to_dict(), "arch": spec}
    save_checkpoint(path, {"variant": variant, "model": state, "epoch": 1, "status": "finished",
                           "options": {**variant, "dataset": "cifar10", "seed": 0}, "data": {"num_classes": 10}})


def _run_dir(path, spec: str, factory_on_path, config_spec: str | None = None):
    path.mkdir(parents=True)
    _checkpoint(path / "checkpoint.pt", spec, factory_on_path)
    variant = {**Variant("rohrer100k").to_dict(), "arch": config_spec or spec}
    (path / "config.json").write_text(json.dumps({"variant": variant, "variant_name": "x", "status": "finished",
                                                  "options": {"dataset": "cifar10", "seed": 0}}))
    return path


def test_specs_that_name_code_are_refused_without_importing_or_calling_anything(monkeypatch, capsys):
    called = []
    monkeypatch.setattr(os, "getpid", lambda: called.append("getpid"))
    monkeypatch.setattr(sys, "breakpointhook", lambda *a, **k: called.append("breakpoint"))
    for module in ("this", "__hello__", "evil"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    for spec in HOSTILE:
        for make in (get_arch, Variant, build_model, lambda s: Variant.from_dict({"arch": s})):
            with pytest.raises(UntrustedModelCode, match="refusing to import the model code") as e:
                make(spec)
            assert e.value.spec == spec and repr(spec) in str(e.value) and len(str(e.value).splitlines()) == 1
            assert e.value.option == "trust_model_code"
    assert called == [] and capsys.readouterr() == ("", "")  # `import this` prints the Zen of Python
    assert not {"this", "__hello__", "evil"} & set(sys.modules)


def test_zoo_and_library_models_need_no_trust():
    assert get_arch("rohrer100k").family == "rohrer" and model_code_trust().specs == frozenset()
    assert get_arch("torchvision:resnet18").family == "external"
    # looked up in torchvision's own registry, never getattr on the module
    for name in ("get_model", "resnet", "_utils", "__builtins__"):
        with pytest.raises(OptionError, match="torchvision has no classification model"):
            get_arch(f"torchvision:{name}")


def test_trust_is_per_spec_or_all_and_a_context_restores_it(factory_on_path):
    with trust_model_code(GOOD):
        assert Variant(GOOD).arch == GOOD
        with pytest.raises(UntrustedModelCode):
            Variant("goodfac:other")
        with trust_model_code():
            with pytest.raises(OptionError, match="cannot import other from goodfac"):
                Variant("goodfac:other")
        assert model_code_trust().specs == {GOOD} and not model_code_trust().all
    with pytest.raises(UntrustedModelCode):  # resolved while trusted: still refused once trust is gone
        Variant(GOOD)
    error = UntrustedModelCode("os:getpid", "run/config.json")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_a_crafted_checkpoint_is_refused_and_imports_nothing_from_the_current_directory(tmp_path, factory_on_path,
                                                                                         hostile_cwd, monkeypatch):
    for spec in ("os:getpid", "evil:make"):
        path = tmp_path / f"{spec.replace(':', '-')}.pt"
        _checkpoint(path, spec, factory_on_path)
        ckpt = load_checkpoint(path)  # reading it is fine: nothing is resolved
        for load in (checkpoint_variant, model_from_checkpoint):
            refused = re.escape(f"{path}: refusing to import the model code '{spec}'")
            with pytest.raises(UntrustedModelCode, match=refused):
                load(ckpt, path=path)
    with trust_model_code(), pytest.raises(CheckpointError, match="cannot import make from evil .*PYTHONPATH"):
        model_from_checkpoint(ckpt, path=path)  # trusted, but the current directory is not searched
    assert not (hostile_cwd / "SENTINEL").exists()
    monkeypatch.setenv("PYTHONPATH", str(hostile_cwd))  # the user's way to search it
    with trust_model_code("evil:make"), pytest.raises(CheckpointError, match="evil:make failed to build"):
        model_from_checkpoint(ckpt, path=path)
    assert (hostile_cwd / "SENTINEL").exists()


def test_a_trusted_factory_from_an_installed_package_rebuilds(tmp_path, factory_on_path, hostile_cwd):
    _checkpoint(tmp_path / "good.pt", GOOD, factory_on_path)
    ckpt = load_checkpoint(tmp_path / "good.pt")
    with pytest.raises(UntrustedModelCode):
        model_from_checkpoint(ckpt)
    with trust_model_code(GOOD):
        model = model_from_checkpoint(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ckpt["model"].values()))


def test_a_crafted_run_directory_is_refused_before_any_work(tmp_path, factory_on_path, hostile_cwd):
    runs = tmp_path / "sweep"
    hostile = _run_dir(runs / "a", "this:x", factory_on_path)
    for call in (lambda: resolve_runs([hostile]), lambda: resolve_runs(directory=runs)):
        with pytest.raises(UntrustedModelCode, match=re.escape(f"{hostile / 'config.json'}: ") + ".*'this:x'"):
            call()
    with pytest.raises(UntrustedModelCode, match="'this:x'"):  # the report's lookup of the study's row
        paper_match(RunDir(hostile).summary())
    # config.json harmless, the checkpoint not: refused when its model is built
    other = _run_dir(tmp_path / "b", "evil:make", factory_on_path, config_spec="rohrer100k")
    runs_found = resolve_runs([other])
    with pytest.raises(UntrustedModelCode, match=re.escape(f"{other / 'checkpoint.pt'}: ") + ".*'evil:make'"):
        load_models(runs_found, "cpu")
    with pytest.raises(UntrustedModelCode, match="'evil:make'"):  # resuming it
        Trainer(TrainOptions(Variant("rohrer100k"), out=str(other)), resume=True)
    assert "this" not in sys.modules and not (hostile_cwd / "SENTINEL").exists()


def _variant_name(job) -> str:
    return Variant(job.spec).name


@pytest.mark.slow
def test_workers_of_parallel_runs_get_the_drivers_trust(factory_on_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(factory_on_path), os.environ.get("PYTHONPATH", "")]))
    job = SimpleNamespace(spec=GOOD, options=SimpleNamespace(device="cpu"))
    with LocalExecutor(jobs=1) as executor:
        with pytest.raises(UntrustedModelCode, match=GOOD):
            executor.submit(job, _variant_name).result()
        with trust_model_code(GOOD):
            handle = executor.submit(job, _variant_name)
        assert handle.result() == "goodfac-tiny-scs-none-maxabs"
        with pytest.raises(UntrustedModelCode):  # a reused worker: the trust went with its job
            executor.submit(job, _variant_name).result()
    pytest.importorskip("ray")
    with RayExecutor(cpus_per_run=1) as executor:
        with trust_model_code(GOOD):
            trusted = executor.submit(GOOD, Variant)
        assert executor.result(trusted).arch == GOOD
        with pytest.raises(UntrustedModelCode):
            executor.result(executor.submit(GOOD, Variant))


def test_the_command_line_refuses_in_one_line_and_names_the_opt_in(tmp_path, factory_on_path, hostile_cwd, capsys):
    from scs_probe.cli import main
    crafted = tmp_path / "crafted.pt"
    _checkpoint(crafted, "evil:make", factory_on_path)
    for argv in (["inspect", str(crafted)], ["pgd", "--ckpt", str(crafted), "--eps", "0", "--device", "cpu"],
                 ["report", str(_run_dir(tmp_path / "sweep" / "a", "this:x", factory_on_path).parent)]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and "Traceback" not in err, err
        assert "refusing to import the model code" in err and "pass --trust-model-code if you trust it" in err
    assert "this" not in sys.modules and not (hostile_cwd / "SENTINEL").exists()
    good = tmp_path / "good.pt"
    _checkpoint(good, GOOD, factory_on_path)
    assert main(["inspect", str(good)]) == 1 and "--trust-model-code" in capsys.readouterr().err
    assert main(["inspect", str(good), "--trust-model-code"]) == 0 and GOOD in capsys.readouterr().out
    assert main(["inspect", str(good)]) == 1  # the opt-in ends with its command
