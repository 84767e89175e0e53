"""A Sequential that runs each sharpened layer directly followed by max or max-abs pooling as one fused op.

Sharpening, sign(y) * (|y| + eps) ** p, is odd and strictly increasing in y, so pooling its output picks the same
element as pooling y: the fused op pools y first and sharpens only the pooled values, a quarter of them behind a
2x2 pool, in the forward and the backward pass. Same modules, same state_dict as nn.Sequential; the values are
the same up to float rounding (where rounding makes two outputs of a window equal, the gradient may go to the
other one). A pair with hooks on either module runs unfused, so hooks see what they expect.

The fused op saves its output for the backward pass, so an in-place module may not follow it: an in-place ReLU
runs out of place there (the same values), and a pair followed by any other in-place module runs unfused.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

from .functional import pool_spec
from .sharpened import MaxAbsPool2d, SharpenedCosineSimilarity2d, SharpenedSDP2d


def fusable_pool(layer: nn.Module, pool: nn.Module) -> tuple | None:
    """The `pool` argument that fuses `pool` into `layer`, or None where the pair must run unfused."""
    if type(layer) not in (SharpenedCosineSimilarity2d, SharpenedSDP2d) or type(pool) not in (MaxAbsPool2d,
                                                                                                 nn.MaxPool2d):
        return None
    if pool.return_indices or _has_hooks(layer) or _has_hooks(pool):
        return None
    return pool_spec(isinstance(pool, MaxAbsPool2d), pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                     pool.ceil_mode)


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or _module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or _module._global_backward_pre_hooks)


class PoolFusedSequential(nn.Sequential):
    """nn.Sequential, but a sharpened layer followed by MaxPool2d or MaxAbsPool2d runs as one fused op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = list(self._modules.values())
        i = 0
        while i < len(mods):
            pool = fusable_pool(mods[i], mods[i + 1]) if i + 1 < len(mods) else None
            after = mods[i + 2] if i + 2 < len(mods) else None
            in_place_next = getattr(after, "inplace", False)
            if pool is not None and (not in_place_next or _out_of_place_relu(after)):
                x = mods[i](x, pool=pool)
                i += 2
                if in_place_next:
                    x = torch.relu(x)
                    i += 1
            else:
                x = mods[i](x)
                i += 1
        return x


def _out_of_place_relu(m: nn.Module) -> bool:
    return type(m) is nn.ReLU and not _has_hooks(m)
