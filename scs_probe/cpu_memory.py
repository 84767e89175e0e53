"""How this process gets CPU memory for tensors: freed activations reused rather than handed back to the kernel.

CPU PyTorch allocates every activation, gradient and temporary afresh each step. glibc hands large freed blocks
back to the kernel (those it mmapped, and the heap's top beyond its trim threshold), so the next step's tensor of
the same size faults its pages in again, each one zeroed by the kernel. On this project's VM that cost about a
tenth of a resnet18 training step (weight-sized buffers: the gradients, and then SCS's normalised kernels), for
conv and SCS alike. Two settings, made once per process before training:

- `THP_MEM_ALLOC_ENABLE=1`: PyTorch backs large tensors with 2 MiB transparent huge pages (fewer faults).
- glibc's `M_MMAP_THRESHOLD` (1 GiB) and `M_TRIM_THRESHOLD` (2 GiB - 1): blocks under 1 GiB come from the heap and
  freed memory stays there for the next step. The process keeps its peak memory until it exits, as PyTorch's
  CUDA caching allocator does on a GPU.

Both apply to every model the process trains or evaluates, conv and SCS alike: timings compare like with like.
Opt out with THP_MEM_ALLOC_ENABLE=0 and SCS_PROBE_KEEP_FREED_MEMORY=0 (or false, no, off); glibc's own
MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES, when set, are left to rule.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT = "SCS_PROBE_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int
_OFF = ("0", "false", "no", "off")  # SCS_PROBE_KEEP_FREED_MEMORY=false opts out as =0 does, not the opposite
_GLIBC_OWN = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_state = {"policy": None}


def keep_freed_memory() -> str:
    """Set glibc's thresholds (see the module docstring) once per process; returns what holds now, as recorded
    with a run's timings: "kept (glibc 2.36: mmap threshold 1 GiB, trim threshold 2 GiB)", or why not
    ("off: SCS_PROBE_KEEP_FREED_MEMORY=0", ...)."""
    if _state["policy"] is not None:
        return _state["policy"]
    if (value := os.environ.get(OPT_OUT, "").strip().lower()) in _OFF:
        policy = f"off: {OPT_OUT}={value}"
    elif any(k in os.environ for k in _GLIBC_OWN):
        policy = "off: glibc's own settings in the environment"
    elif not sys.platform.startswith("linux"):
        policy = f"off: not glibc ({sys.platform})"
    else:
        policy = _set_glibc_thresholds()
    _state["policy"] = policy
    return policy


def _set_glibc_thresholds() -> str:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version  # both glibc-only names together
    except (OSError, AttributeError):
        return "off: not glibc"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    version.restype = ctypes.c_char_p
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "off: glibc refused the thresholds"
    return f"kept (glibc {version().decode()}: mmap threshold 1 GiB, trim threshold 2 GiB)"


def configure() -> str:
    """Both settings for this process (THP_MEM_ALLOC_ENABLE only where unset); returns `keep_freed_memory()`."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return keep_freed_memory()


def describe() -> dict:
    """What a run's environment records: both settings as they hold."""
    return {"thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"),
            "freed_memory": _state["policy"] or "not set by scs-probe"}
