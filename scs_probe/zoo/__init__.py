"""Model zoo: every study architecture in every variant, built by name from one registry.

Importing it imports no torch: names, axes, presets and `Variant`s come from the registry, whose built-in
architectures are declared in a torch-free table (`builtin`). `build_model`, `count_params` and `init_shared_`
(and with them torch and the models) are imported on first use.
"""

import importlib

from .axes import AXES, GRIDS
from .registry import (
    ANY_MODULE,
    ArchSpec,
    ModelCodeTrust,
    axis_choices,
    check_trusted,
    get_arch,
    list_archs,
    model_code_trust,
    needs_trust,
    register_model,
    register_resolver,
    trust_model_code,
)
from .variants import Variant, variant_grid

_NEED_TORCH = {"build_model": "factory", "count_params": "factory", "init_shared_": "factory"}

__all__ = ["ANY_MODULE", "AXES", "ArchSpec", "GRIDS", "ModelCodeTrust", "Variant", "axis_choices", "build_model",
           "check_trusted", "count_params", "get_arch", "init_shared_", "list_archs", "model_code_trust",
           "needs_trust", "register_model", "register_resolver", "trust_model_code", "variant_grid"]


def __getattr__(name: str):
    """The names that need torch, imported on first use (PEP 562): listing architectures and axes does not."""
    if name in _NEED_TORCH:
        return getattr(importlib.import_module(f"{__name__}.{_NEED_TORCH[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NEED_TORCH))
