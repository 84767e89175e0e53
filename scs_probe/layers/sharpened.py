"""Sharpened layers as drop-in replacements for nn.Conv2d (same constructor arguments, no bias)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .functional import EPS, conv_padding, max_abs_pool2d, sharpened_cosine_similarity2d, sharpened_sdp2d, to_pair

P_MIN = 0.1  # the reference clamps p here: p -> 0 flattens every response to +-1 and its gradient explodes


class _Sharpened2d(nn.Module):
    """Shared parameters of SCS and SharpenedSDP: a kernel bank and one exponent p per output channel.

    As with Conv2d, in-place ops on the output (`nn.ReLU(inplace=True)`, a residual `+=`) are safe: the backward
    pass keeps the value before sharpening, not the output.

    p is learned (initialised uniform in `p_init`), or fixed to one value with `fixed_p` (a buffer, not a
    parameter: the fixed-p and unsharpened p = 1 variants of the study).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, p_init=(1.0, 3.0), fixed_p: float | None = None, eps: float = EPS,
                 device=None, dtype=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        if fixed_p is not None and fixed_p < P_MIN:
            raise ValueError(f"fixed_p must be >= {P_MIN}, got {fixed_p}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = to_pair(kernel_size), to_pair(stride)
        self.dilation = to_pair(dilation)
        self.padding = conv_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.p_init, self.fixed_p, self.eps = tuple(p_init), fixed_p, eps
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        if fixed_p is None:
            self.p = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_buffer("p", torch.full((out_channels,), float(fixed_p), **factory))
        self.reset_parameters()

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Conv2d's default kernel init (uniform, bound 1/sqrt(fan_in)), so that SCS and conv variants can
        start from the same kernels; the forward of SCS does not depend on the kernel's scale."""
        bound = 1.0 / math.sqrt(self.fan_in)
        with torch.no_grad():
            nn.init.uniform_(self.weight, -bound, bound, generator=generator)
            if self.fixed_p is None:
                nn.init.uniform_(self.p, *self.p_init, generator=generator)

    def effective_p(self) -> torch.Tensor:
        """The exponents the forward pass uses, shape [out_channels]."""
        return self.p.clamp(min=P_MIN) if self.fixed_p is None else self.p

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (f", fixed_p={self.fixed_p}" if self.fixed_p is not None else "")


class SharpenedCosineSimilarity2d(_Sharpened2d):
    """Sharpened cosine similarity per patch s and kernel k:

        y = s.k / ((sqrt(|s|^2 + eps) + q) * sqrt(|k|^2 + eps)),   out = sign(y) * (|y| + eps) ** p

    q = exp(log_q) is a learnable positive scalar (init 1e-3) that keeps near-zero patches from being
    amplified into full-strength responses.
    """

    def __init__(self, *args, q_init: float = 1e-3, **kwargs):
        self.q_init = q_init
        super().__init__(*args, **kwargs)
        self.log_q = nn.Parameter(torch.empty((), device=self.weight.device, dtype=self.weight.dtype))
        self.reset_q()

    def reset_q(self) -> None:
        with torch.no_grad():
            self.log_q.fill_(math.log(self.q_init))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        if hasattr(self, "log_q"):
            self.reset_q()

    def effective_q(self) -> torch.Tensor:
        """The q the forward pass uses (a scalar tensor)."""
        return self.log_q.exp()

    def forward(self, x: torch.Tensor, pool: tuple | None = None) -> torch.Tensor:
        """`pool` (see `functional.pool_spec`): the output max- or max-abs-pooled, for `PoolFusedSequential`."""
        return sharpened_cosine_similarity2d(x, self.weight, self.effective_p(), self.effective_q(),
                                             self.stride, self.padding, self.dilation, self.groups, self.eps, pool)


class SharpenedSDP2d(_Sharpened2d):
    """Sharpened strided dot product: sign(s.k) * |s.k| ** p (SCS without the two norms)."""

    def forward(self, x: torch.Tensor, pool: tuple | None = None) -> torch.Tensor:
        return sharpened_sdp2d(x, self.weight, self.effective_p(), self.stride, self.padding, self.dilation,
                               self.groups, self.eps, pool)


def CosineSimilarity2d(*args, **kwargs) -> SharpenedCosineSimilarity2d:
    """Unsharpened cosine similarity: SCS with p fixed at 1."""
    return SharpenedCosineSimilarity2d(*args, fixed_p=1.0, **kwargs)


class MaxAbsPool2d(nn.MaxPool2d):
    """MaxPool2d that keeps, per window, the element of largest magnitude with its sign (ties: positive)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        if return_indices:
            raise ValueError("MaxAbsPool2d does not support return_indices")
        super().__init__(kernel_size, stride, padding, dilation, False, ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_abs_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
