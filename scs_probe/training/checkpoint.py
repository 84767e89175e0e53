"""Checkpoints: plain tensors and Python values only, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

FORMAT = "scs-probe/checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, unsafe or not one of ours."""


def atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder and rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, payload: dict) -> None:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, f))


def resolve_checkpoint_path(path) -> Path:
    """A checkpoint file, or a run directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def load_checkpoint(path) -> dict:
    """Load safely: nothing in the file is executed; any problem is one CheckpointError line."""
    path = resolve_checkpoint_path(path)
    try:
        with warnings.catch_warnings():  # torch warns about plain pickles before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln]
        detail = f" ({lines[0].split(' was not an allowed')[0][:160]})" if lines else ""
        raise CheckpointError(f"refusing to load {path}: it needs unpickling of arbitrary objects{detail}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an scs-probe checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer scs-probe (format {ckpt['format_version']})")
    for key in ("variant", "model", "epoch", "options"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is an incomplete scs-probe checkpoint (no {key!r})")
    return ckpt


def model_from_checkpoint(ckpt_or_path, device="cpu"):
    """Rebuild the checkpoint's variant and load its weights (eval mode). Returns (model, checkpoint)."""
    from ..zoo import Variant, build_model
    ckpt = ckpt_or_path if isinstance(ckpt_or_path, dict) else load_checkpoint(ckpt_or_path)
    try:
        variant = Variant.from_dict(ckpt["variant"])
        model = build_model(variant, init=False)
        model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        msg = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"checkpoint does not match its architecture {ckpt['variant'].get('arch')!r}: "
                              f"{msg}") from None
    return model.to(device).eval(), ckpt
