"""Model zoo: every study architecture in every variant, built by name from one registry."""

from . import rohrer, resnet  # noqa: F401,I001  (registers the architectures, in this order)
from .factory import build_model, count_params, init_shared_
from .registry import ArchSpec, axis_choices, get_arch, list_archs, register_model
from .variants import AXES, GRIDS, Variant, variant_grid

__all__ = ["AXES", "ArchSpec", "GRIDS", "Variant", "axis_choices", "build_model", "count_params", "get_arch",
           "init_shared_", "list_archs", "register_model", "variant_grid"]
