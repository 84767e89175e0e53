"""CIFAR-10: torchvision's download and files, a checked fallback for local copies, batched augmentation.

Data folders are untrusted input (copies somebody else prepared): files that fail the md5 check are read with an
unpickler that builds only containers, strings, numbers and numpy arrays, never a callable the file names, and
image folders are checked (same classes in train and val, every image readable) before anything trains on them.

Images stay uint8 in memory and become float [0, 1] batches on the training device; augmentation (the study's
RandomCrop(32, padding=4) + horizontal flip, or RandomAffine + flip for the 25K gallery model) and the resize to
224 px run batched on that device, which keeps two CPU cores from being the bottleneck of a GPU run.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .choices import DATA_ENV
from .errors import DataError

DEFAULT_DATA_DIR = "./data"
FOLDER = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
N_TRAIN_BATCHES = 5
NEAR_CHANCE_FACTOR = 1.5  # final accuracy below 1.5 x chance (1 / classes): the run did not train


def near_chance_threshold(num_classes) -> float:
    """1.5 / classes: 0.15 for 10 classes, 0.015 for 100, 0.5 for 3 (unknown: CIFAR-10's 10). Here, beside the
    data sets, so that training (the tune summary) and the analyses use one rule."""
    try:
        k = int(num_classes)
    except (TypeError, ValueError):
        k = 10
    return NEAR_CHANCE_FACTOR / max(k, 2)


_WARNED: set[Path] = set()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """`data_dir`, else $SCS_PROBE_DATA (read here only), else ./data."""
    return Path(data_dir or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()


@dataclass
class Split:
    images: torch.Tensor   # uint8 [N, C, H, W] (C = 1 for MNIST-like sets)
    labels: torch.Tensor   # int64 [N]
    official: bool         # files passed torchvision's md5 check (or came from torchvision's own checks)
    classes: tuple = CLASSES
    dataset: str = "cifar10"
    files: tuple = ()      # imagefolder:DIR: (path under the split's folder, bytes) per image, in label order

    def __len__(self) -> int:
        return len(self.labels)

    def limit(self, n: int | None) -> Split:
        return self if not n or n >= len(self) else replace(self, images=self.images[:n], labels=self.labels[:n],
                                                            files=self.files[:n])


class _Refused(pickle.UnpicklingError):
    """A pickle that names a global outside the allow-list (os.system, builtins.exec, ...): refused unrun."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles of protocol 2 and below call (_codecs.encode) to rebuild bytes, for latin-1 only:
    any other codec name would have the file pick which codec module to import."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"it names the codec {encoding!r}, which data files never use")
    return text.encode("latin1")


def _allowed_globals() -> dict:
    """(module, name) -> object for everything a CIFAR pickle may call: numpy's array, dtype and scalar
    reconstruction under both spellings (numpy.core in numpy 1 and in CIFAR's own Python 2 files, numpy._core in
    numpy 2), the builtin containers that have no opcode of their own, and bytes. The objects are taken from
    numpy's own reductions, so no module is imported by name."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 (Python 3.14's default) pickles arrays with it
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_bytes}
    for core in ("numpy.core", "numpy._core"):
        allowed |= {(f"{core}.multiarray", "_reconstruct"): reconstruct, (f"{core}.multiarray", "scalar"): scalar,
                    (f"{core}.numeric", "_frombuffer"): frombuffer}
    for container in (set, frozenset, bytearray, list, dict, tuple):
        allowed[("builtins", container.__name__)] = container
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """Unpickles data, never code: every global a pickle refers to (the only way a pickle calls anything) must
    be in the allow-list. pickle.load on an unverified file would call whatever the file names (os.system, a
    reduce writing files) while it is read; md5-verified official files are still read by torchvision."""

    ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            named = " ".join(f"{module}.{name}".split())[:100]  # the file's own text: one line, bounded
            raise _Refused(f"it names {named}, which data files never hold") from None


def _read_pickle(path: Path, what: str):
    """The object pickled in `path`, read by _DataUnpickler (latin-1 strings: CIFAR's files come from Python 2);
    a DataError naming the file when it is unreadable, not a pickle or refers to anything but data."""
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise DataError(f"{path} is not {what}: {e}; refused without running anything") from None
    except Exception as e:  # truncated pickle, random bytes, unreadable file
        raise DataError(f"{path} is not {what} ({type(e).__name__}: {e})") from None


def _cases_per_batch(base: Path) -> int:
    """Images per batch file as batches.meta states it (10,000 in CIFAR-10; small in fake test copies)."""
    path = base / "batches.meta"
    if not path.is_file():
        return 10_000
    meta = _read_pickle(path, "CIFAR-10's metadata file")
    try:
        return int(meta["num_cases_per_batch"])
    except Exception as e:  # wrong keys or types
        raise DataError(f"{path} is not CIFAR-10's metadata file ({type(e).__name__}: {e})") from None


def _read_unverified(base: Path, train: bool) -> Split:
    """Read batch files that fail the md5 check, accepting them only with CIFAR-10's structure: 5 train batch
    files and one test batch, each of batches.meta's size, 32x32 RGB images, 10 classes of equal size."""
    per_batch = _cases_per_batch(base)
    names = [f"data_batch_{i}" for i in range(1, N_TRAIN_BATCHES + 1)] if train else ["test_batch"]
    per_class = per_batch * len(names) // len(CLASSES)
    data, labels = [], []
    for name in names:
        path = base / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 copy in {base} is incomplete: {name} is missing")
        entry = _read_pickle(path, "a CIFAR-10 batch file")
        try:
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry.get("labels", entry.get("fine_labels", [])))
        except Exception as e:  # wrong keys, wrong sizes
            raise DataError(f"{path} is not a CIFAR-10 batch file ({type(e).__name__}: {e})") from None
    images, labels = np.concatenate(data), np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=10) if len(labels) and labels.min() >= 0 else np.array([-1])
    if (len(labels) != len(images) or len(images) != per_batch * len(names) or len(counts) != 10
            or not (counts == per_class).all()):
        raise DataError(f"{base} does not have CIFAR-10's structure: expected {per_class:,} images of each of 10 "
                        f"classes in the {'train' if train else 'test'} split, found {len(images):,} images and "
                        f"class counts {counts.tolist()}")
    return Split(torch.from_numpy(images), torch.from_numpy(labels), official=False)


def _warn_unverified(base: Path, message: str) -> None:
    """An UnverifiedDataWarning once per copy and process, not once per split."""
    if base.resolve() not in _WARNED:
        _WARNED.add(base.resolve())
        warnings.warn(message, UnverifiedDataWarning, stacklevel=4)


def load_cifar10(data_dir=None, train: bool = True, download: bool = True) -> Split:
    """Load one split. Official files go through torchvision (md5-checked, downloaded when missing); a local
    copy whose files differ from the official ones is used after a structure check, with a warning."""
    from torchvision.datasets import CIFAR10

    root = resolve_data_dir(data_dir)
    base = root / FOLDER
    if base.is_dir():
        try:
            ds = CIFAR10(str(root), train=train, download=False)
        except RuntimeError:
            split = _read_unverified(base, train)
            _warn_unverified(base, f"CIFAR-10 files in {base} do not match the official md5 checksums; using them "
                                   "after a structure check (shapes, batch sizes, 10 classes of equal size)")
            return split
    elif download:
        try:
            ds = CIFAR10(str(root), train=train, download=True)
        except Exception as e:
            raise DataError(f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); name a local "
                            f"copy (a folder holding {FOLDER}/) or set ${DATA_ENV}", missing=True) from None
    else:
        raise DataError(f"no CIFAR-10 copy in {root} (expected {base}/); name one or set ${DATA_ENV}",
                        missing=True)
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return Split(images, torch.as_tensor(ds.targets, dtype=torch.int64), official=True)


# ---------------------------------------------------------------------------------------------------- data sets

# name -> (torchvision class, its folder under the data directory, how a split is asked for, normalisation)
DATASETS = ("cifar10", "cifar100", "svhn", "mnist", "fashion-mnist", "imagefolder:DIR")
MEAN_STD = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
            "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
            "mnist": ((0.1307,) * 3, (0.3081,) * 3),
            "fashion-mnist": ((0.2860,) * 3, (0.3530,) * 3),
            "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}  # ImageNet's


def check_dataset(name: str) -> str:
    """The canonical name of a data set option (cifar10, ..., imagefolder:DIR), or an OptionError."""
    from .errors import OptionError
    name = str(name).strip()
    key = name.lower()
    if key.startswith("imagefolder:") and len(name) > len("imagefolder:"):
        return "imagefolder:" + name.split(":", 1)[1]
    if key in DATASETS[:-1]:
        return key
    raise OptionError("dataset", f"unknown value {name!r}; allowed: {', '.join(DATASETS)}")


def dataset_family(name: str) -> str:
    return "imagefolder" if name.startswith("imagefolder:") else name


def load_dataset(name: str = "cifar10", data_dir=None, train: bool = True, download: bool = True,
                 image_size: int = 32) -> Split:
    """One split of a data set as uint8 tensors, through torchvision's classes (their download and checks). The
    same data directory holds every set in torchvision's layout (cifar-10-batches-py/, cifar-100-python/,
    train_32x32.mat, MNIST/raw/, FashionMNIST/raw/). imagefolder:DIR reads DIR/train and DIR/val with
    torchvision's ImageFolder, resized to `image_size`."""
    name = check_dataset(name)
    if name == "cifar10":
        return load_cifar10(data_dir, train, download)
    root = resolve_data_dir(data_dir)
    if name.startswith("imagefolder:"):
        return _load_image_folder(Path(name.split(":", 1)[1]).expanduser(), train, image_size)
    import torchvision.datasets as tvd
    maker = {"cifar100": lambda d: tvd.CIFAR100(str(root), train=train, download=d),
             "svhn": lambda d: tvd.SVHN(str(root), split="train" if train else "test", download=d),
             "mnist": lambda d: tvd.MNIST(str(root), train=train, download=d),
             "fashion-mnist": lambda d: tvd.FashionMNIST(str(root), train=train, download=d)}[name]
    try:
        ds = maker(False)
    except RuntimeError:  # not there, or (CIFAR-100, SVHN) not the official files: torchvision checks md5
        local = _read_unverified_copy(name, root, train)
        if local is not None:
            return local
        if not download:
            raise DataError(f"no {name} copy in {root}; name one or set ${DATA_ENV}", missing=True) from None
        try:
            ds = maker(True)
        except Exception as e:
            raise DataError(f"could not download {name} into {root} ({type(e).__name__}: {e}); name a local "
                            f"copy (torchvision's layout) or set ${DATA_ENV}", missing=True) from None
    data = torch.as_tensor(np.asarray(ds.data))
    if data.ndim == 3:                           # MNIST-like: [N, H, W]
        data = data[:, None]
    elif data.shape[-1] == 3:                    # CIFAR-100: [N, H, W, C]
        data = data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.labels if name == "svhn" else ds.targets), dtype=torch.int64)
    classes = tuple(str(c) for c in ds.classes) if getattr(ds, "classes", None) else tuple(str(i) for i in range(10))
    return Split(data.contiguous().to(torch.uint8), labels, official=True, classes=classes, dataset=name)


def _read_unverified_copy(name: str, root: Path, train: bool) -> Split | None:
    """A local CIFAR-100 or SVHN copy whose files fail torchvision's md5 check, read after a structure check and
    with a warning (as CIFAR-10's); None where there is no such copy."""
    if name == "cifar100":
        base = root / "cifar-100-python"
        path = base / ("train" if train else "test")
        if not path.is_file():
            return None
        entry = _read_pickle(path, "a CIFAR-100 file")
        meta = _read_pickle(base / "meta", "CIFAR-100's metadata file")
        try:
            classes = tuple(meta["fine_label_names"])
            images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(entry["fine_labels"], dtype=np.int64)
        except Exception as e:
            raise DataError(f"{path} is not a CIFAR-100 file ({type(e).__name__}: {e})") from None
        if (len(classes) != 100 or not len(labels) or len(labels) != len(images) or labels.min() < 0
                or labels.max() > 99):
            raise DataError(f"{base} does not have CIFAR-100's structure (100 classes, one label per image)")
    elif name == "svhn":
        path = root / ("train_32x32.mat" if train else "test_32x32.mat")
        if not path.is_file():
            return None
        try:
            from scipy.io import loadmat
            mat = loadmat(str(path))
            images = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1))
            labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
        except Exception as e:
            raise DataError(f"{path} is not an SVHN file ({type(e).__name__}: {e})") from None
        if images.shape[1:] != (3, 32, 32) or len(labels) != len(images):
            raise DataError(f"{path} does not have SVHN's structure (32x32 RGB images, one label each)")
        classes = tuple(str(i) for i in range(10))
        base = path
    else:
        return None
    _warn_unverified(base, f"{name} files in {base} do not match the official md5 checksums; using them after a "
                           "structure check")
    return Split(torch.from_numpy(images), torch.from_numpy(labels), official=False, classes=classes, dataset=name)


def _names(names, limit: int = 5) -> str:
    """Sorted names, the first `limit` of them and how many more: a thousand differing classes stay one line."""
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_image_folder(folder: Path) -> None:
    """Check in imagefolder:DIR what ImageFolder would not: train/ and val/ both exist and hold the same class
    folders (ImageFolder numbers each split's own sorted folders, so a val/ holding only `dog` of train's `cat, dog`
    would label its images `cat` and score 100 %), and at least two of them (one class trains to loss 0 and
    100 %). The errors name the folder given as imagefolder:DIR, not a data directory (no `missing`: the CLI
    would advise a data directory)."""
    classes = {}
    for part in ("train", "val"):
        if not (folder / part).is_dir():
            raise DataError(f"{folder / part} is not a folder: imagefolder:DIR needs DIR/train and DIR/val, one "
                            "subfolder of images per class")
        classes[part] = sorted(e.name for e in os.scandir(folder / part) if e.is_dir())  # as ImageFolder finds them
    only_train, only_val = set(classes["train"]) - set(classes["val"]), set(classes["val"]) - set(classes["train"])
    if only_train or only_val:
        differ = [f"only in train/: {_names(only_train)}"] * bool(only_train) + \
                 [f"only in val/: {_names(only_val)}"] * bool(only_val)
        raise DataError(f"imagefolder:{folder}: train/ and val/ must hold the same class folders ({'; '.join(differ)})")
    if len(classes["train"]) < 2:
        found = _names(classes["train"]) or "none"
        raise DataError(f"imagefolder:{folder}: a classifier needs at least two class folders in train/ and val/, "
                        f"found {len(classes['train'])} ({found})")


def _load_image_folder(folder: Path, train: bool, image_size: int) -> Split:
    """One split of imagefolder:DIR decoded into memory, all of it now: a file that is not a readable image (random
    bytes named x.png, a truncated JPEG) is a DataError naming it before any training starts, not a PIL
    traceback in the middle of an epoch."""
    from torchvision import transforms
    _check_image_folder(folder)
    part = folder / ("train" if train else "val")
    ds = _image_folder_index(part)
    resize = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.PILToTensor()])
    images = []
    for path, _ in ds.samples:
        try:
            images.append(resize(ds.loader(path)))  # the loader opens the file and converts it to RGB
        except Exception as e:  # not an image, truncated, a decompression bomb
            detail = type(e).__name__ if str(path) in str(e) else f"{type(e).__name__}: {e}"
            raise DataError(f"{path} is not a readable image ({' '.join(detail.split())})") from None
    return Split(torch.stack(images), torch.as_tensor(ds.targets, dtype=torch.int64), official=True,
                 classes=tuple(ds.classes), dataset=f"imagefolder:{folder}", files=_file_sizes(part, ds))


def _image_folder_index(part: Path):
    """torchvision's ImageFolder of one split's folder (the files and labels; nothing decoded yet)."""
    from torchvision.datasets import ImageFolder
    try:
        ds = ImageFolder(str(part))
    except (FileNotFoundError, OSError) as e:  # a class folder without images, an unreadable folder
        raise DataError(f"cannot read images in {part} ({e})") from None
    if not len(ds):
        raise DataError(f"{part} holds no images")
    return ds


def _file_sizes(part: Path, ds) -> tuple:
    try:
        return tuple((os.path.relpath(path, part), os.path.getsize(path)) for path, _ in ds.samples)
    except OSError as e:
        raise DataError(f"cannot read images in {part} ({e})") from None


def normalization(name: str) -> tuple[tuple, tuple]:
    """Per-channel mean and std of a data set's images (three channels: grayscale sets are repeated)."""
    return MEAN_STD[dataset_family(check_dataset(name))]


# ---------------------------------------------------------------------------------------------------- fingerprint

FINGERPRINT_SAMPLE = 64      # images per split whose bytes the fingerprint reads


def fingerprint(train: Split, test: Split) -> str:
    """A cheap SHA-256 that tells one copy of a data set from another: per split (whole, before any validation
    split or limit) its size, every label, and the bytes of FINGERPRINT_SAMPLE images spread over it; for
    imagefolder:DIR, every file's path and size instead of image bytes (decoded and resized images depend on the
    image size and on PIL). A run records it, and resuming on a copy that differs is refused."""
    import hashlib
    digest = hashlib.sha256()
    for split in (train, test):
        digest.update(f"{len(split)};{len(split.classes)};".encode())
        digest.update(split.labels.numpy().astype("<i8").tobytes())
        if split.files:
            digest.update("\n".join(f"{path}\t{size}" for path, size in split.files).encode())
        elif len(split):
            pick = torch.from_numpy(np.unique(np.linspace(0, len(split) - 1, FINGERPRINT_SAMPLE).round().astype(int)))
            digest.update(str(tuple(split.images.shape[1:])).encode())
            digest.update(split.images[pick].contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def dataset_fingerprint(name: str, data_dir=None) -> str:
    """`fingerprint` of a data set as it is now in `data_dir` (imagefolder:DIR: from its file list, nothing
    decoded)."""
    name = check_dataset(name)
    if name.startswith("imagefolder:"):
        folder = Path(name.split(":", 1)[1]).expanduser()
        _check_image_folder(folder)
        splits = []
        for part in (folder / "train", folder / "val"):
            ds = _image_folder_index(part)
            splits.append(Split(torch.zeros(0, dtype=torch.uint8), torch.as_tensor(ds.targets, dtype=torch.int64),
                                official=True, classes=tuple(ds.classes), dataset=name, files=_file_sizes(part, ds)))
        return fingerprint(*splits)
    return fingerprint(load_dataset(name, data_dir, train=True), load_dataset(name, data_dir, train=False))


# ---------------------------------------------------------------------------------------------------- validation split

VAL_SPLIT_SEED = 0           # the split's own seed: the same held-out images for every variant and run seed
AUTO_VAL_FRACTION, AUTO_VAL_MAX = 0.1, 5_000


def auto_val_split(n_train: int) -> int:
    """`tune`'s default validation split: 10 % of the training images, at most 5,000 (5,000 for CIFAR-10/100,
    SVHN, MNIST and Fashion-MNIST)."""
    return min(AUTO_VAL_MAX, int(n_train * AUTO_VAL_FRACTION))


def validation_split(split: Split, n: int, seed: int = VAL_SPLIT_SEED) -> tuple[Split, Split, dict]:
    """Hold `n` images of a training split out for validation, stratified by class (each class gives its share
    of n, rounded by largest remainder) and drawn with `seed` alone, so every variant and run seed of a sweep
    holds out the same images. Returns (the remaining training images in their original order, the held-out
    images, a record: n, seed, the number of classes and a SHA-256 of the held-out indices).

    n must be at least the number of classes, and each class keeps at least one training image; otherwise a
    DataError says what would fit."""
    import hashlib
    labels = split.labels.numpy()
    k = len(split.classes)
    counts = np.bincount(labels, minlength=k)
    present = int((counts > 0).sum())
    if not present <= n <= len(split) - present:
        raise DataError(f"a validation split of {n:,} images does not fit {split.dataset}'s {len(split):,} "
                        f"training images of {present} classes: give {present} to {len(split) - present:,} (at least "
                        "one image per class, and at least one per class left to train on)")
    share = counts * n / len(split)
    take = np.floor(share).astype(int)
    order = np.argsort(-(share - take), kind="stable")
    take[order[: n - take.sum()]] += 1
    take = np.minimum(take, np.maximum(counts - 1, 0))       # leave each class one training image
    for c in order:                                          # the rounding's leftovers where there is room
        if take.sum() == n:
            break
        room = min(counts[c] - 1 - take[c], n - take.sum())
        take[c] += max(room, 0)
    rng = np.random.default_rng(seed)
    held = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: take[c]] for c in range(k)]))
    keep = np.ones(len(split), dtype=bool)
    keep[held] = False
    held_t, keep_t = torch.from_numpy(held), torch.from_numpy(np.flatnonzero(keep))
    record = {"n": int(n), "seed": int(seed), "classes": present,
              "indices_sha256": hashlib.sha256(held.astype("<i8").tobytes()).hexdigest()}

    def files(idx):
        return tuple(split.files[i] for i in idx.tolist()) if split.files else ()
    return (replace(split, images=split.images[keep_t], labels=split.labels[keep_t], files=files(keep_t)),
            replace(split, images=split.images[held_t], labels=split.labels[held_t], files=files(held_t)), record)


class UnverifiedDataWarning(UserWarning):
    """A local CIFAR-10 copy that is not bit-identical to the official files."""


# ---------------------------------------------------------------------------------------------------- batches

def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The augmentation's random draws (made on the CPU generator, so a run is the same on every device) in one
    copy that does not stall the host: pinned and non-blocking on CUDA."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = 4) -> torch.Tensor:
    """RandomCrop(size, padding, fill 0) + RandomHorizontalFlip, per image, batched."""
    b, c, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    dy, dx, flip = _to_device(torch.stack([dy, dx, flip.long()]), x.device).unbind(0)
    flip = flip.bool()
    xp = F.pad(x, (padding,) * 4)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * padding)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    out = xp.gather(2, rows).gather(3, cols)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def random_affine_flip(x: torch.Tensor, gen: torch.Generator, degrees: float = 10.0,
                       translate: float = 0.1) -> torch.Tensor:
    """RandomAffine(degrees, translate=(t, t)) with zero fill + RandomHorizontalFlip, per image, batched."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(degrees)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * translate * 2  # grid units: [-1, 1] spans the image
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    theta = _to_device(theta, x.device).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


AUGMENTATIONS = {"crop": random_crop_flip, "affine": random_affine_flip, "none": None}


class _Indexable(torch.utils.data.Dataset):
    """Serves whole batches of uint8 images (DataLoader calls __getitems__ with a batch of indices)."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split.images[i], self.split.labels[i]

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        return self.split.images[idx], self.split.labels[idx]


def _as_batch(batch):
    return batch


class BatchLoader:
    """Iterates (images float [0, 1] on `device`, labels) in batches; reshuffled and re-augmented per epoch
    from a generator seeded by (seed, epoch), so a resumed run sees the same batches it would have seen."""

    def __init__(self, split: Split, batch_size: int, device: torch.device, train: bool, augment: str = "crop",
                 image_size: int = 32, seed: int = 0, workers: int = 0):
        self.split, self.batch_size, self.device, self.train = split, batch_size, torch.device(device), train
        self.augment = AUGMENTATIONS[augment] if train else None
        self.image_size, self.seed, self.workers, self.epoch = image_size, seed, workers, 0

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        sampler = (torch.utils.data.RandomSampler(self.split.labels, generator=gen) if self.train
                   else torch.utils.data.SequentialSampler(self.split.labels))
        loader = torch.utils.data.DataLoader(
            _Indexable(self.split), batch_size=self.batch_size, sampler=sampler, collate_fn=_as_batch,
            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for images, labels in loader:
            x = as_rgb(images.to(self.device, non_blocking=True).float().div_(255))
            if self.augment is not None:
                x = self.augment(x, gen)
            if self.image_size != x.shape[-1]:
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False).clamp_(0, 1)
            yield x, labels.to(self.device, non_blocking=True)


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """Grayscale batches [B, 1, H, W] as three equal channels: every model takes RGB, so MNIST-like sets train
    the same architectures (and shared initial weights) as CIFAR."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def describe(split_train: Split, split_test: Split, root: Path) -> dict:
    name = split_train.dataset
    return {"dataset": "CIFAR-10" if name == "cifar10" else name, "name": name, "root": str(root.resolve()),
            "official_files": split_train.official and split_test.official, "n_train": len(split_train),
            "n_test": len(split_test), "num_classes": len(split_train.classes), "classes": list(split_train.classes),
            "channels": int(split_train.images.shape[1])}


# ---------------------------------------------------------------------------------------------------- shared storage

def dataset_files(name: str, data_dir=None) -> list[Path]:
    """The files a data set is read from (sorted), as this machine sees them: what a cluster's nodes must all see
    the same way (`training.executors` compares them across nodes). CIFAR-10/100: their batch folders; SVHN: the
    two .mat files; MNIST-like sets: their raw/ folders; imagefolder:DIR: every file under DIR/train and DIR/val."""
    name = check_dataset(name)
    root = resolve_data_dir(data_dir)
    if name.startswith("imagefolder:"):
        folder = Path(name.split(":", 1)[1]).expanduser()
        places = [folder / "train", folder / "val"]
    else:
        places = {"cifar10": [root / FOLDER], "cifar100": [root / "cifar-100-python"],
                  "svhn": [root / "train_32x32.mat", root / "test_32x32.mat"], "mnist": [root / "MNIST" / "raw"],
                  "fashion-mnist": [root / "FashionMNIST" / "raw"]}[name]
    files = []
    for place in places:
        if place.is_file():
            files.append(place)
        elif place.is_dir():
            files += [Path(d) / f for d, _, names in os.walk(place) for f in names]
    return sorted(files)
