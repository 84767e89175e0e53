"""Checkpoints: plain tensors and Python values only, written atomically, read with weights_only=True."""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError, OptionError
from .storage import atomic_write

FORMAT = "scs-probe/checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path) -> dict:
    """Load a checkpoint file safely: nothing in it is executed; any problem is one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about plain pickles before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        if lines:
            detail = f" ({lines[0].split(' was not an allowed')[0][:160]})"
        elif _plain_pickle_with_objects(path):
            detail = ""
        else:  # not a pickle at all: a text file, random bytes
            raise CheckpointError(f"{path} is not a PyTorch checkpoint") from None
        raise CheckpointError(f"refusing to load {path}: it needs unpickling of arbitrary objects{detail}") \
            from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, UnicodeDecodeError,
            IndexError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an scs-probe checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer scs-probe (format {ckpt['format_version']})")
    for key in ("variant", "model", "epoch", "options"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is an incomplete scs-probe checkpoint (no {key!r})")
    return ckpt


def _plain_pickle_with_objects(path: Path) -> bool:
    """A whole pickle stream (read opcode by opcode, nothing executed) that builds objects from globals."""
    try:
        with open(path, "rb") as f:
            names = {op.name for op, _, _ in pickletools.genops(f)}
    except Exception:
        return False
    return bool(names & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ"})


def checkpoint_variant(ckpt: dict, path=""):
    """The checkpoint's `Variant`; an architecture or axis this scs-probe does not know is a CheckpointError."""
    from .errors import OptionError
    from .zoo import Variant
    try:
        return Variant.from_dict(ckpt["variant"])
    except (OptionError, TypeError) as e:
        raise CheckpointError(f"{path or 'checkpoint'} holds a variant this scs-probe cannot build ({e})") from None


def model_from_checkpoint(ckpt: dict, device="cpu", path=""):
    """Rebuild the checkpoint's variant and load its weights (eval mode)."""
    from .data import normalization
    from .zoo import build_model
    variant = checkpoint_variant(ckpt, path)
    dataset = ckpt.get("options", {}).get("dataset", "cifar10")
    try:
        model = build_model(variant, init=False, num_classes=int(ckpt.get("data", {}).get("num_classes", 10)),
                            normalization=normalization(dataset))
    except OptionError as e:
        raise CheckpointError(f"{path or 'checkpoint'}: cannot rebuild its model ({e})") from None
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        msg = " ".join(lines[:2])[:240]  # the first line only names the module; the second says what differs
        raise CheckpointError(f"{path or 'checkpoint'} does not match its architecture {variant.arch!r}: "
                              f"{msg}") from None
    return model.to(device).eval()
