"""CIFAR-10 loading: local copies with md5 mismatch, structure errors, no-network failure, augmentation."""

import pickle
import warnings

import pytest
import torch

from scs_probe.data import (
    BatchLoader,
    DataError,
    UnverifiedDataWarning,
    load_cifar10,
    random_affine_flip,
    random_crop_flip,
    resolve_data_dir,
)
from tests.conftest import write_fake_cifar


def test_local_copy_with_other_md5_is_used_with_a_warning(fake_cifar, monkeypatch):
    import scs_probe.data
    monkeypatch.setattr(scs_probe.data, "_WARNED", set())  # other tests may have loaded this copy already
    with pytest.warns(UnverifiedDataWarning, match="md5"):
        train = load_cifar10(fake_cifar, train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per copy, not once per split
        load_cifar10(fake_cifar, train=False)
    assert train.images.shape == (1_500, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [150] * 10 and not train.official
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = load_cifar10(fake_cifar, train=False)
    assert len(test) == 300 and len(test.limit(100)) == 100


def test_wrong_structure_is_a_clear_error(tmp_path):
    write_fake_cifar(tmp_path, per_batch=100, meta_per_batch=10_000)  # batches of another size than stated
    with pytest.raises(DataError, match="structure"):
        load_cifar10(tmp_path, train=False)
    base = write_fake_cifar(tmp_path / "unbalanced", per_batch=100) / "cifar-10-batches-py"
    with open(base / "test_batch", "rb") as f:
        entry = pickle.load(f)
    entry["labels"] = [0] * len(entry["labels"])  # right size, one class only
    with open(base / "test_batch", "wb") as f:
        pickle.dump(entry, f)
    with pytest.raises(DataError, match=r"class counts \[100, 0"):
        load_cifar10(tmp_path / "unbalanced", train=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 batch file"):
        load_cifar10(tmp_path, train=False)


def test_missing_copy_without_network_names_the_option(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(tvu, "download_url", offline)
    with pytest.raises(DataError, match="SCS_PROBE_DATA") as e:
        load_cifar10(tmp_path / "nothing", train=False, download=True)
    assert e.value.missing and "--" not in str(e.value)  # the library names no flag; the CLI adds it
    with pytest.raises(DataError, match="SCS_PROBE_DATA"):
        load_cifar10(tmp_path / "nothing", train=False, download=False)


def test_data_dir_resolution(monkeypatch, tmp_path):
    assert str(resolve_data_dir(None)) == "data"
    monkeypatch.setenv("SCS_PROBE_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert str(resolve_data_dir("elsewhere")) == "elsewhere"


def test_augmentations_keep_shape_and_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    for fn in (random_crop_flip, random_affine_flip):
        y = fn(x, gen)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert not torch.equal(x, y)
    # a crop is a shifted copy: most pixels of an image reappear unchanged
    one = torch.arange(3 * 32 * 32, dtype=torch.float32).view(1, 3, 32, 32)
    out = random_crop_flip(one, torch.Generator().manual_seed(1))
    assert torch.isin(out[out > 0], one).all()


def test_batch_loader_is_reproducible_per_epoch_and_resizes(fake_cifar):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = load_cifar10(fake_cifar, train=False).limit(100)
    loader = BatchLoader(split, 32, "cpu", train=True, seed=5)
    loader.set_epoch(2)
    a = [x for x, _ in loader]
    b = [x for x, _ in loader]
    assert len(a) == len(loader) == 4 and all(torch.equal(p, q) for p, q in zip(a, b))
    loader.set_epoch(3)
    assert not torch.equal(a[0], next(iter(loader))[0])
    big = BatchLoader(split, 50, "cpu", train=False, image_size=224)
    x, y = next(iter(big))
    assert x.shape == (50, 3, 224, 224) and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
