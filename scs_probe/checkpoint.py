"""Checkpoints: plain tensors and Python values only, written atomically, read with weights_only=True."""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch

from .data import normalization
from .errors import CheckpointError, OptionError
from .schema import CHECKPOINT, check
from .storage import atomic_write
from .zoo import Variant, build_model, check_trusted

FORMAT = "scs-probe/checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path) -> dict:
    """Load a checkpoint file safely: nothing in it is executed; any problem, a field of the wrong type among them
    (`schema.CHECKPOINT`), is one CheckpointError line."""
    path = Path(path)
    ckpt = _load_tensors(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an scs-probe checkpoint")
    version = ckpt.get("format_version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:  # before its fields: a newer format may change them
        raise CheckpointError(f"{path} was written by a newer scs-probe (format {version})")
    check(ckpt, CHECKPOINT, path, CheckpointError)
    for key in ("variant", "model", "epoch", "options"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is an incomplete scs-probe checkpoint (no {key!r})")
    return ckpt


def _load_tensors(path: Path):
    """torch.load(weights_only=True) of any file, every failure one CheckpointError line."""
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
    return ckpt


def checkpoint_from_state_dict(path, spec: str, dataset: str = "cifar10", activation: str = "keep",
                               pool: str = "keep") -> dict:
    """A plain state dict saved from a model of `spec` (torchvision:NAME, ...; plain or converted, which its keys
    tell: log_q is SCS's, a 1-d p without it SDP's), as an scs-probe checkpoint in memory. Activations and
    pooling are the model's own unless `activation`/`pool` say how it was converted (the weights cannot tell);
    the head size is the last 2-d weight's rows. Inputs are normalised by the data set's statistics, as
    scs-probe's models do. A state dict that does
    not fit is a CheckpointError naming the first missing and unexpected keys. `spec` is the caller's: a
    package.module:factory must be trusted (`scs_probe.zoo.trust_model_code`)."""
    path = Path(path)
    state = _load_tensors(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        raise CheckpointError(f"{path} is an scs-probe checkpoint, not a plain state dict: give it as a checkpoint, "
                              "without a model spec")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict (a dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    if not all(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}
    layer = "scs" if any(k.endswith(".log_q") for k in state) else (
        "sdp" if any(k.endswith(".p") and v.ndim == 1 for k, v in state.items()) else "conv")
    variant = Variant(spec, layer=layer, activation=activation, pool=pool)
    heads = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    num_classes = int(heads[-1].shape[0]) if heads else 10
    with torch.device("meta"):
        model = build_model(variant, num_classes=num_classes)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = " ".join(lines[1:2]).replace("net.", "")[:200]
        raise CheckpointError(f"{path} does not fit {spec}: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        def first(keys):
            return ", ".join(k.removeprefix("net.") for k in keys[:3]) + (" ..." if len(keys) > 3 else "")
        parts = ([f"missing {first(result.missing_keys)}"] if result.missing_keys else []) + \
                ([f"unexpected {first(result.unexpected_keys)}"] if result.unexpected_keys else [])
        raise CheckpointError(f"{path} does not fit {spec} ({layer}): {'; '.join(parts)}")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant.to_dict(), "model": state,
            "epoch": 0, "status": "finished", "history": [],
            "options": {**variant.to_dict(), "dataset": dataset, "seed": None},
            "data": {"num_classes": num_classes}}


def _plain_pickle_with_objects(path: Path) -> bool:
    """A whole pickle stream (read opcode by opcode, nothing executed) that builds objects from globals."""
    try:
        with open(path, "rb") as f:
            names = {op.name for op, _, _ in pickletools.genops(f)}
    except Exception:
        return False
    return bool(names & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ"})


def checkpoint_variant(ckpt: dict, path=""):
    """The checkpoint's `Variant`; an architecture or axis this scs-probe does not know is a CheckpointError, a
    model spec naming code to import that the user does not trust an UntrustedModelCode (nothing imported)."""
    try:
        check_trusted(ckpt["variant"].get("arch"), source=path or "checkpoint")
        return Variant.from_dict(ckpt["variant"])
    except (OptionError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path or 'checkpoint'} holds a variant this scs-probe cannot build ({e})") from None


def model_from_checkpoint(ckpt: dict, device="cpu", path=""):
    """Rebuild the checkpoint's variant and load its weights (eval mode). A model spec naming code to import is
    built only where trusted (`scs_probe.zoo.trust_model_code`), else UntrustedModelCode."""
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
