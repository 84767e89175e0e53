"""The carriers everything else stands on: atomic writes, the run layout, options, typed errors and how the CLI
maps them, progress output in logs."""

import ast
import os
import stat
from pathlib import Path

import pytest

import scs_probe
from scs_probe.cli import main
from scs_probe.errors import NoRunsError, OptionError
from scs_probe.progress import progress_bar
from scs_probe.rundir import RECORDS, RunDir, RunsDir
from scs_probe.storage import atomic_write, read_csv, write_csv
from scs_probe.training import TrainOptions
from scs_probe.zoo import Variant


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_permissions_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o666 & ~umask


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.csv"
    write_csv(path, [{"a": 1}])

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert read_csv(path) == [{"a": "1"}] and [p.name for p in tmp_path.iterdir()] == ["f.csv"]


def test_run_dir_owns_the_records(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start_records()
    assert {p.name for p in run.path.iterdir()} == {f"{r}.csv" for r in RECORDS}
    run.append("history", [dict.fromkeys(RECORDS["history"], 1.0) | {"epoch": e, "test_acc": e / 10}
                           for e in (1, 2, 3)])
    run.append("norms", [{"epoch": 2, "batch": "", "layer": "conv1", "kind": "weight", "l2": 1.5}])
    run.truncate_records(1)  # an epoch interrupted after its records, before its checkpoint
    assert [r["epoch"] for r in run.read("history")] == ["1"] and run.read("norms") == []
    assert list(run.read("history")[0]) == list(RECORDS["history"])
    with pytest.raises(KeyError, match="unknown record"):
        run.read("history.csv")
    assert run.status is None and run.name == "run" and run.summary()["test_acc"] == 0.1
    with pytest.raises(NoRunsError, match="holds no runs"):
        RunsDir(tmp_path).runs()
    ckpt = tmp_path / "elsewhere" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    assert RunDir.of(ckpt).checkpoint_path == ckpt and RunDir.of(ckpt).path == ckpt.parent


def test_train_options_reject_zero_instead_of_taking_the_preset():
    for key, value in (("epochs", 0), ("batch_size", 0), ("max_lr", 0), ("max_lr", -1.0), ("limit_train", 0)):
        with pytest.raises(OptionError) as e:
            TrainOptions(**{key: value})
        assert e.value.option == key
    o = TrainOptions(Variant("resnet20", "conv", "relu", norm="bn"), epochs=3).resolved()
    assert (o.epochs, o.batch_size, o.max_lr) == (3, 128, 0.01)


def test_train_options_keep_the_flat_checkpoint_layout():
    o = TrainOptions(Variant("rohrer47k", "sdp", "relu", "max", fixed_p=2), epochs=5, seed=3)
    d = o.to_dict()
    assert d["arch"] == "rohrer47k" and d["layer"] == "sdp" and d["fixed_p"] == 2.0 and "variant" not in d
    assert TrainOptions.from_dict(d) == o
    # a checkpoint written before Variant existed stores the same flat keys
    old = {"arch": "rohrer25k", "layer": "conv", "activation": "relu", "pool": "max", "norm": "none",
           "image_size": 32, "fixed_p": None, "epochs": 2, "batch_size": None, "max_lr": 0.01, "seed": 0}
    assert TrainOptions.from_dict(old).variant == Variant("rohrer25k", "conv", "relu", "max")


def _library_strings():
    """Every string literal in the library outside the CLI modules."""
    root = Path(scs_probe.__file__).parent
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield path.name, node.value


def test_the_library_names_no_command_line_flags():
    import re
    flags = [(name, s) for name, s in _library_strings() if re.search(r"(^|\s)--[a-z]", s)]
    assert flags == []


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("scs-probe: error:") and "Traceback" not in err, err
    return err


def test_backend_setting_has_one_rule(monkeypatch, capsys):
    from scs_probe.layers import backend
    monkeypatch.setattr(backend, "_state", {"backend": None, "failed": None, "fns": {}})
    monkeypatch.setenv("SCS_PROBE_BACKEND", "Eager")
    assert main(["zoo", "--arch", "rohrer25k"]) == 0 and backend.get_backend() == "eager"
    monkeypatch.setattr(backend, "_state", {"backend": None, "failed": None, "fns": {}})
    monkeypatch.setenv("SCS_PROBE_BACKEND", "fast")
    assert main(["zoo", "--arch", "rohrer25k"]) == 2
    assert "SCS_PROBE_BACKEND='fast'" in _one_error_line(capsys)
    assert main(["--backend", "Compiled", "zoo", "--arch", "rohrer25k"]) == 0 and backend.get_backend() == "compiled"


def test_cli_maps_library_errors_to_flags(fake_cifar, tmp_path, capsys):
    common = ["--epochs", "1", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--quiet",
              "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(["train", "--data-dir", str(tmp_path / "no-data"), *common]) == 1
    err = _one_error_line(capsys)
    assert "no-data" in err and "--data-dir" in err
    assert main(["train", "--data-dir", str(fake_cifar), *common]) == 0
    capsys.readouterr()
    assert main(["train", "--data-dir", str(fake_cifar), *common]) == 1
    assert "--resume" in _one_error_line(capsys)
    assert main(["train", "--data-dir", str(fake_cifar), *common, "--resume", "--layer", "conv"]) == 2  # a usage error
    assert "layer='scs'" in (err := _one_error_line(capsys)) and "(--layer)" in err
    assert main(["sweep", "--only", "nothing-*", "--epochs", "1"]) == 2
    assert "--only:" in _one_error_line(capsys)
    assert main(["train", "--arch", "resnet20", "--image-size", "224"]) == 2
    assert "--image-size: resnet20 has no image_size 224" in _one_error_line(capsys)


def test_progress_is_silent_in_logs(fake_cifar, tmp_path, capfd):
    assert progress_bar(range(3)).disable  # stderr is not a terminal under pytest
    assert main(["train", "--epochs", "2", "--limit-train", "64", "--limit-test", "32", "--batch-size", "16",
                 "--device", "cpu", "--data-dir", str(fake_cifar), "--out", str(tmp_path / "run")]) == 0
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "batch/s" not in err
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("epoch")] == [["epoch", "1/2"],
                                                                                          ["epoch", "2/2"]]


# README's Layout: each row imports only from rows above it.
LAYOUT = [{"__init__", "layers"},
          {"choices", "errors", "schema", "storage", "locks", "progress", "serialization", "stats", "plotting",
           "cpu_memory"},
          {"paper"},
          {"conversion"}, {"zoo"},
          {"data"}, {"checkpoint"}, {"rundir"}, {"training"}, {"analysis"},
          {"cli", "__main__"}]


def _rank(top: str) -> int:
    return next((i for i, row in enumerate(LAYOUT) if top in row), len(LAYOUT))  # unknown: fails below


def test_imports_follow_the_layout():
    root = Path(scs_probe.__file__).parent
    wrong = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        package, own = parts[:-1], _rank(parts[0])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = (*base, *(node.module.split(".") if node.module else ()))
                top = target[0] if target else node.names[0].name  # from . import x / from .. import x
                top = "__init__" if top == "__version__" else top
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scs_probe."):
                top = node.module.split(".")[1]
            else:
                continue
            if _rank(top) > own:
                wrong.append(f"{'/'.join(parts)} imports {top}")
    assert wrong == []
