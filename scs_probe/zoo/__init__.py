"""Model zoo: every study architecture in every variant, built by name from one registry."""

from . import rohrer, resnet  # noqa: F401,I001  (registers the architectures, in this order)
from .registry import (ArchSpec, build_model, count_params, get_arch, init_shared_, list_archs, make_variant,
                       register, variant_grid)
from .variants import Variant

__all__ = ["ArchSpec", "Variant", "build_model", "count_params", "get_arch", "init_shared_", "list_archs",
           "make_variant", "register", "variant_grid"]
