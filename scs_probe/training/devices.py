"""The device a run trains on: which one `auto` means, its autocast dtype, the CUDA numerics pinned (and
described, so that a run records what ran), and an out-of-memory error turned into a failed run."""

from __future__ import annotations

import contextlib

import torch

from ..errors import DeviceUnavailable, OutOfMemory


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, then MPS, then CPU. Plain `cuda` is the process' current GPU (a worker's, see executors)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} "
                                "CUDA device(s)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailable(f"device {name!r} asked for, but MPS is not available here")
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast where the device computes in it natively, else None (float32). A GPU that only emulates
    bfloat16 (before Ampere) would be slower than float32, so it trains in float32."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type in ("cpu", "mps") and torch.amp.autocast_mode.is_autocast_available(device.type):
        return torch.bfloat16
    return None


def pin_cuda_numerics() -> dict:
    """Fix the CUDA choices that change results or speed between machines and torch versions, and return them:
    float32 matmuls and convolutions in full float32 (no TF32: conv and SCS then compare at one precision),
    cuDNN's algorithm search off (it picks per shape and run, so two runs would not time the same kernels)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    return {"tf32": False, "cudnn_benchmark": False, "cudnn_deterministic": torch.backends.cudnn.deterministic}


def describe_device(device: torch.device) -> dict:
    """What a run records about where it ran: the device, and on CUDA the GPU's name and the CUDA/cuDNN versions
    with the pinned numerics."""
    out = {"device": str(device)}
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), **pin_cuda_numerics())
    return out


@contextlib.contextmanager
def out_of_memory_as_error(what: str, device):
    """A run that does not fit in the device's memory is a failed run (one line, naming what to lower), not a
    traceback, and not a reason to give up on anything process-wide (the compiled backend stays on)."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(f"{what} ran out of memory on {device} ({first[:160]}); lower the batch size, use "
                          "bfloat16 autocast (amp), or run fewer runs per GPU") from None
