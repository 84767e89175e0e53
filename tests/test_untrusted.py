"""Hostile and careless inputs (issue 16): data folders, run directories and checkpoints somebody else made.

Every case asserts what the issue asks of all of them, through `assert_refused` (the command line) or
`no_code_ran` (the library): no code named by the input ran (a sentinel file it would create is absent), a
one-line message and no traceback, the exit code, and the records (the input, earlier results) left as they were.
`payload_pickles` gives pickles whose loading would create the sentinel. Add a section per kind of input.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from scs_probe.cli import main
from scs_probe.data import load_cifar10, load_dataset
from scs_probe.errors import DataError
from tests.conftest import write_fake_cifar, write_fake_datasets

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")


# ---------------------------------------------------------------------------------------------------- helpers

@pytest.fixture
def sentinel(tmp_path) -> Path:
    """A file that only code smuggled in by the input would create."""
    return tmp_path / "sentinel-code-ran"


class Payload:
    """Pickles as a call of `fn(*args)`: what a crafted file uses to run code while it is unpickled."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payload_pickles(sentinel: Path, wrap=lambda obj: obj) -> dict[str, bytes]:
    """Pickles (id -> bytes) that create `sentinel` when loaded with pickle.load, each through another door;
    `wrap` puts the payload where the reader expects data (a dict key's value, say)."""
    s = str(sentinel)
    calls = {"os.system": Payload(os.system, f"touch '{s}'"),
             "builtins.exec": Payload(builtins.exec, f"open({s!r}, 'w').close()"),
             "builtins.open": Payload(builtins.open, s, "w"),
             "object-array": np.array([Payload(os.system, f"touch '{s}'")], dtype=object)}
    found = {name: pickle.dumps(wrap(obj), protocol=4) for name, obj in calls.items()}
    # protocol 0 written by hand, as old tools do: GLOBAL 'os system', then REDUCE
    found["protocol-0-global"] = f"cos\nsystem\n(V touch '{s}'\ntR.".encode()
    return found


def snapshot(*paths: Path) -> dict[str, bytes]:
    """Every file under `paths` (files or folders; absent ones hold nothing) with its bytes."""
    files = {}
    for path in map(Path, paths):
        for f in [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []:
            if f.is_file():
                files[str(f)] = f.read_bytes()
    return files


def assert_refused(argv: list[str], capsys, *, code: int = 1, match: str | None = None,
                   sentinel: Path | None = None, intact=()) -> str:
    """Run the CLI on hostile input and assert the issue's four promises: exit `code`; the sentinel absent (no
    code ran); one line `scs-probe: error: ...` (containing `match`) as the last line of stderr, with only
    `warning:` lines before it and no traceback anywhere; every file under `intact` unchanged. The message."""
    before = snapshot(*intact)
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert sentinel is None or not sentinel.exists(), f"code from the input ran: {err}"
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("scs-probe: error: "), err
    assert all(line.startswith("warning: ") for line in lines[:-1]), err
    assert rc == code, err
    if match is not None:
        assert match in lines[-1], lines[-1]
    assert snapshot(*intact) == before, "records changed"
    return lines[-1]


@contextlib.contextmanager
def no_code_ran(sentinel: Path, error=DataError, match: str | None = None):
    """The library raises `error` (its message containing `match`, on one line) and the sentinel is absent."""
    with pytest.raises(error) as e:
        yield e
    assert not sentinel.exists(), "code from the input ran"
    assert "\n" not in str(e.value) and (match is None or match in str(e.value)), str(e.value)


# ---------------------------------------------------------------------------------- data: CIFAR pickles

def _cifar10(root: Path) -> Path:
    """A small fake CIFAR-10 copy (md5 sums differ: read by the unverified fallback); its batch folder."""
    return write_fake_cifar(root, per_batch=20) / "cifar-10-batches-py"


def _meta(payload):
    return {"num_cases_per_batch": payload, "label_names": ["x"] * 10}


def _batch(payload):
    return {"data": payload, "labels": [0] * 20}


@pytest.mark.parametrize("file, wrap", [("batches.meta", _meta), ("test_batch", _batch)])
def test_crafted_cifar10_pickles_are_refused_unrun(tmp_path, sentinel, file, wrap):
    base = _cifar10(tmp_path / "data")
    for name, crafted in payload_pickles(sentinel, wrap).items():
        (base / file).write_bytes(crafted)
        with no_code_ran(sentinel, match=f"{base / file} is not ") as e:
            load_cifar10(tmp_path / "data", train=False, download=False)
        assert "it names " in str(e.value) and "refused without running anything" in str(e.value), name


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "protocol-0-global"])
def test_crafted_batches_meta_through_train_exits_1(tmp_path, sentinel, capsys, payload):
    base = _cifar10(tmp_path / "data")
    (base / "batches.meta").write_bytes(payload_pickles(sentinel, _meta)[payload])
    out = tmp_path / "run"
    message = assert_refused(["train", "--data-dir", tmp_path / "data", "--epochs", "1", "--device", "cpu",
                              "--quiet", "--out", out], capsys, code=1, match="batches.meta", sentinel=sentinel,
                             intact=[tmp_path / "data", out])
    assert "refused without running anything" in message and not out.exists()


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of a tiny run trained on a clean fake copy."""
    from scs_probe.training import TrainOptions, train
    from scs_probe.zoo import Variant
    root = tmp_path_factory.mktemp("untrusted-run")
    train(TrainOptions(Variant("rohrer100k"), epochs=1, batch_size=32, limit_train=64, limit_test=32,
                       data_dir=str(write_fake_cifar(root / "data", per_batch=20)), out=str(root / "run"),
                       device="cpu"), progress=False, log=lambda *a: None)
    return root / "run" / "checkpoint.pt"


def test_crafted_batches_meta_through_pgd_exits_1(tmp_path, sentinel, capsys, trained_ckpt):
    base = _cifar10(tmp_path / "data")
    (base / "batches.meta").write_bytes(payload_pickles(sentinel, _meta)["os.system"])
    assert_refused(["pgd", "--ckpt", trained_ckpt, "--data-dir", tmp_path / "data", "--eps", "0", "--n-images", "8",
                    "--device", "cpu", "--out", tmp_path / "pgd"], capsys, code=1, match="batches.meta",
                   sentinel=sentinel, intact=[tmp_path / "data", trained_ckpt.parent, tmp_path / "pgd"])


@pytest.fixture(scope="module")
def cifar100_copy(tmp_path_factory) -> Path:
    """A fake CIFAR-100 folder (cifar-100-python/) to copy and tamper with."""
    return write_fake_datasets(tmp_path_factory.mktemp("cifar100"), n_train=100, n_test=100) / "cifar-100-python"


@pytest.mark.parametrize("file", ["meta", "train"])
def test_crafted_cifar100_pickles_are_refused_unrun(tmp_path, sentinel, capsys, cifar100_copy, file):
    data = tmp_path / "data"
    shutil.copytree(cifar100_copy, data / "cifar-100-python")
    wrap = (lambda p: {"fine_label_names": p}) if file == "meta" else (lambda p: {"data": p, "fine_labels": [0]})
    crafted = payload_pickles(sentinel, wrap)
    for name in ("os.system", "builtins.open", "object-array"):
        (data / "cifar-100-python" / file).write_bytes(crafted[name])
        with no_code_ran(sentinel, match="refused without running anything"):
            load_dataset("cifar100", data, train=True, download=False)
    assert_refused(["train", "--dataset", "cifar100", "--data-dir", data, "--epochs", "1", "--device", "cpu",
                    "--quiet", "--out", tmp_path / "run"], capsys, code=1, match=f"cifar-100-python/{file}",
                   sentinel=sentinel, intact=[data, tmp_path / "run"])


def test_real_cifar_pickle_formats_still_load(tmp_path):
    """What real copies hold reads through the restricted unpickler: Python 2's files (numpy.core names, latin-1
    strings; the official batches.meta where the shared copy is on this machine), protocols 2 to 5 (numpy 2
    names, protocol 5's _frombuffer) and numpy scalars in the metadata."""
    from scs_probe.data import _read_pickle
    official_meta = Path("/work/shared/datasets/cifar10/batches.meta")
    if official_meta.is_file():
        assert _read_pickle(official_meta, "meta")["num_cases_per_batch"] == 10_000
    base = _cifar10(tmp_path / "data")
    with open(base / "test_batch", "rb") as f:
        entry = pickle.load(f)
    for protocol in (2, 3, 5):
        raw = pickle.dumps({**entry, "batch_label": b"testing batch 1 of 1"}, protocol=protocol)
        if protocol == 2:  # as numpy 1 and CIFAR's own Python 2 files spell it
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            assert b"numpy.core.multiarray\n_reconstruct" in raw
        (base / "test_batch").write_bytes(raw)
        (base / "batches.meta").write_bytes(pickle.dumps(_meta(np.int64(20)), protocol=protocol))
        split = load_cifar10(tmp_path / "data", train=False, download=False)
        assert len(split) == 20 and not split.official and split.images.shape == (20, 3, 32, 32)


def test_md5_verified_copy_is_still_read_by_torchvision(tmp_path, monkeypatch):
    """Files that pass the md5 check go through torchvision's own reader, as before (official)."""
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    _cifar10(tmp_path / "data")
    split = load_cifar10(tmp_path / "data", train=False, download=False)
    assert split.official and len(split) == 20


# ---------------------------------------------------------------------------------- data: image folders

def _image_folder(root: Path, train=("cat", "dog"), val=("cat", "dog"), n: int = 4) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png, `n` tiny images per class."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for part, classes in (("train", train), ("val", val)):
        for c in classes:
            (root / part / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / part / c / f"{i}.png")
    return root


def _train_on(folder: Path, out: Path) -> list[str]:
    return ["train", "--dataset", f"imagefolder:{folder}", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--quiet", "--out", out]


@pytest.mark.parametrize("train, val, match", [
    (("cat", "dog"), ("dog",), "only in train/: cat"),
    (("cat", "dog"), ("cat", "dog", "owl"), "only in val/: owl"),
    (("cat",), ("dog",), "only in train/: cat; only in val/: dog"),
    (("dog",), ("dog",), "at least two class folders"),
])
def test_image_folder_classes_must_match_and_be_two(tmp_path, capsys, train, val, match):
    folder = _image_folder(tmp_path / "images", train, val)
    for split in (True, False):
        with pytest.raises(DataError, match=match):
            load_dataset(f"imagefolder:{folder}", train=split)
    message = assert_refused(_train_on(folder, tmp_path / "run"), capsys, code=1, match=match,
                             intact=[folder, tmp_path / "run"])
    assert f"imagefolder:{folder}" in message and "--data-dir" not in message


@pytest.mark.parametrize("part", ["train", "val"])
@pytest.mark.parametrize("content", [b"\x89PNG not really" + bytes(range(256)), b""])
def test_unreadable_image_names_the_file(tmp_path, capsys, part, content):
    folder = _image_folder(tmp_path / "images")
    bad = folder / part / "dog" / "x.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="x.png is not a readable image"):
        load_dataset(f"imagefolder:{folder}", train=part == "train")
    message = assert_refused(_train_on(folder, tmp_path / "run"), capsys, code=1, match=f"{bad} is not a readable "
                             "image", intact=[folder, tmp_path / "run"])
    assert "--data-dir" not in message


def test_truncated_image_names_the_file(tmp_path):
    folder = _image_folder(tmp_path / "images")
    bad = folder / "val" / "cat" / "0.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError, match=f"{bad} is not a readable image"):
        load_dataset(f"imagefolder:{folder}", train=False)


@pytest.mark.parametrize("missing", ["train", "val", "."])
def test_missing_image_folder_does_not_advise_data_dir(tmp_path, capsys, missing):
    folder = _image_folder(tmp_path / "images")
    shutil.rmtree(folder / missing)
    message = assert_refused(_train_on(folder, tmp_path / "run"), capsys, code=1, match="imagefolder:DIR needs "
                             "DIR/train and DIR/val", intact=[tmp_path])
    assert "--data-dir" not in message


def test_good_image_folder_still_trains(tmp_path, capsys):
    folder = _image_folder(tmp_path / "images", ("cat", "dog", "owl"), ("cat", "dog", "owl"))
    assert main([str(a) for a in _train_on(folder, tmp_path / "run")] + ["--arch", "rohrer25k"]) == 0, \
        capsys.readouterr().err
    split = load_dataset(f"imagefolder:{folder}", train=False, image_size=16)
    assert split.classes == ("cat", "dog", "owl") and split.images.shape == (12, 3, 16, 16)
