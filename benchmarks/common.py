"""Shared helpers of the benchmarks: device choice, interleaved timing, activation-memory accounting."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as `scs-probe` sets it: see scs_probe/cli/app.py
import torch

from scs_probe.cpu_memory import configure
from scs_probe.layers import BACKENDS, get_backend, set_backend

MEMORY = configure()  # freed memory kept, as `scs-probe` does (scs_probe/cpu_memory.py)


def parse_args(description: str, extra=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    ap.add_argument("--backend", default="auto", choices=BACKENDS, help="how SCS runs its elementwise work")
    if extra:
        extra(ap)
    args = ap.parse_args()
    set_backend(args.backend)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"{torch.backends.cpu.get_cpu_capability()} (torch {torch.__version__}), "
            f"backend {get_backend()}, THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}, freed memory "
            f"{MEMORY}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_times(fns: dict, device: str, repeats: int, warmup: int = 2) -> dict:
    """Seconds of each call of each function, `repeats` rounds timed round-robin so that drift (other processes on
    a shared machine) affects all alike; round i of every function ran back to back."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def interleaved_medians(fns: dict, device: str, repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each function, timed round-robin so that drift affects all alike."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, device, repeats, warmup).items()}


def ratio_spread(num: list, den: list) -> tuple:
    """(median, min, max) of the per-round ratios num[i] / den[i] (rounds timed back to back)."""
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def saved_tensor_bytes(step) -> int:
    """Bytes of the distinct storages autograd saves for backward during `step()` (activation memory)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return total


def peak_cuda_bytes(step, device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
