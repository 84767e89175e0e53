"""Fake CIFAR-10 files in torchvision's layout (as torchvision's own dataset tests do): no network."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from scs_probe import cpu_memory

# The test process keeps freed memory from the start, as every `scs-probe` command does: runs trained through the
# Python API and through `main` then record the same policy, whatever order the tests run in (the speed claim
# compares it).
cpu_memory.configure()


def write_fake_cifar(root: Path, per_batch: int = 300, seed: int = 0, signal: float = 0.6,
                     meta_per_batch: int | None = None) -> Path:
    """CIFAR-10's structure (5 train batches + test batch of `per_batch` images each, 10 balanced classes,
    batches.meta stating the batch size as torchvision's dataset tests inject it) with learnable images: each
    class is a fixed smooth random template plus noise. The md5 sums differ from the official files.
    `meta_per_batch` makes batches.meta state another size (a copy whose structure is wrong)."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    # smooth class templates (4x4 blocks of colour, 8 px each) survive random crops and flips
    coarse = rng.integers(0, 256, size=(10, 3, 4, 4)).astype(np.float32)
    templates = np.kron(coarse, np.ones((8, 8), dtype=np.float32)).reshape(10, 3072)

    def batch(n_files):
        labels = np.repeat(np.arange(10), per_batch * n_files // 10)
        rng.shuffle(labels)
        noise = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8).astype(np.float32)
        data = (signal * templates[labels] + (1 - signal) * noise).astype(np.uint8)
        return np.array_split(data, n_files), np.array_split(labels, n_files)

    for names, (data, labels) in (([f"data_batch_{i}" for i in range(1, 6)], batch(5)),
                                  (["test_batch"], batch(1))):
        for name, d, lab in zip(names, data, labels):
            with open(base / name, "wb") as f:
                pickle.dump({"batch_label": name, "labels": lab.tolist(), "data": d,
                             "filenames": [f"{i}.png" for i in range(len(lab))]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"],
                     "num_cases_per_batch": meta_per_batch or per_batch, "num_vis": 3072}, f)
    return root


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    monkeypatch.delenv("SCS_PROBE_DATA", raising=False)


@pytest.fixture(autouse=True)
def _backend_choice_per_test():
    """A test's `--backend` (the choice is process-wide, as in a command's process) ends with the test."""
    from scs_probe.layers import backend
    before = backend._state["backend"]
    yield
    backend._state["backend"] = before


@pytest.fixture
def backend():
    """`set_backend` for one test; the previous backend restored and compilation failures forgotten after it."""
    from scs_probe.layers import backend as backend_module
    from scs_probe.layers import get_backend, set_backend
    before = get_backend()
    yield set_backend
    set_backend(before)
    backend_module._state["failed"] = None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server (Debian's `postgresql` package; `.ci/run` installs it) in a temp dir, started
    with initdb/pg_ctl on a free loopback port; its SQLAlchemy URL. Skipped where PostgreSQL or psycopg is
    missing. As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root)."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    bindir = found[-1].parent if found else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user = []
    root = Path(tempfile.mkdtemp(prefix="scs-probe-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*args):
        subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True, cwd=root)

    run(bindir / "initdb", "-D", root / "data", "-A", "trust", "-U", "scs", "--no-sync")
    run(bindir / "pg_ctl", "-D", root / "data", "-l", root / "server.log", "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "scs", "study")
        yield f"postgresql+psycopg://scs@127.0.0.1:{port}/study"
    finally:
        run(bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _class_images(rng, n: int, n_classes: int, shape, signal: float = 0.6):
    """n learnable uint8 images of `shape` (C, H, W): a smooth random template per class plus noise."""
    c, h, w = shape
    coarse = rng.integers(0, 256, size=(n_classes, c, 4, 4)).astype(np.float32)
    templates = np.kron(coarse, np.ones((h // 4, w // 4), dtype=np.float32))
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    noise = rng.integers(0, 256, size=(n, c, h, w)).astype(np.float32)
    return (signal * templates[labels] + (1 - signal) * noise).astype(np.uint8), labels


def write_fake_datasets(root: Path, n_train: int = 400, n_test: int = 200, seed: int = 1) -> Path:
    """CIFAR-100, SVHN, MNIST and Fashion-MNIST in torchvision's layouts (md5 sums differ from the official
    files), and an image folder (root/folder/train, root/folder/val) of PNGs: no network."""
    from PIL import Image
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        x, y = _class_images(rng, n, 100, (3, 32, 32))
        with open(base / name, "wb") as f:
            pickle.dump({"data": x.reshape(n, -1), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                         "filenames": [f"{i}.png" for i in range(n)]}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i:02d}" for i in range(100)],
                     "coarse_label_names": [f"super{i:02d}" for i in range(20)]}, f)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x, y = _class_images(rng, n, 10, (3, 32, 32))
        savemat(str(root / name), {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None]})
    for folder in ("MNIST", "FashionMNIST"):
        raw = root / folder / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for prefix, n in (("train", n_train), ("t10k", n_test)):
            x, y = _class_images(rng, n, 10, (1, 28, 28))
            (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
                np.array([2051, n, 28, 28], dtype=">i4").tobytes() + x.reshape(n, -1).tobytes())
            (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
                np.array([2049, n], dtype=">i4").tobytes() + y.astype(np.uint8).tobytes())
    for part, n in (("train", 60), ("val", 30)):
        x, y = _class_images(rng, n, 3, (3, 48, 40))
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / "folder" / part / ("cat", "dog", "owl")[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def fake_datasets(tmp_path_factory) -> Path:
    return write_fake_datasets(tmp_path_factory.mktemp("datasets"))
