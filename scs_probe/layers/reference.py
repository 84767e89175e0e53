"""Slow, obviously-right versions of the layers (explicit patches via unfold), for tests and benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .functional import EPS, to_pair
from .sharpened import SharpenedCosineSimilarity2d


def _patches(x, kernel_size, stride, padding, dilation, groups):
    """[B, groups, C/groups * kh * kw, L] patches and the output size."""
    b, c, h, w = x.shape
    kh, kw = to_pair(kernel_size)
    cols = F.unfold(x, (kh, kw), dilation=to_pair(dilation), padding=to_pair(padding), stride=to_pair(stride))
    (ph, pw), (sh, sw), (dh, dw) = to_pair(padding), to_pair(stride), to_pair(dilation)
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return cols.view(b, groups, (c // groups) * kh * kw, -1), (oh, ow)


def _dots(x, weight, stride, padding, dilation, groups):
    cols, size = _patches(x, weight.shape[-2:], stride, padding, dilation, groups)
    k = weight.view(groups, weight.shape[0] // groups, -1)          # [G, O/G, D]
    dots = torch.einsum("god,bgdl->bgol", k, cols)                   # [B, G, O/G, L]
    return cols, k, dots, size


def _sharpen(y, p, eps):
    return torch.sign(y) * (y.abs() + eps) ** p.view(1, -1, 1)


def scs_reference(x, weight, p, q, stride=1, padding=0, dilation=1, groups=1, eps=EPS):
    cols, k, dots, (oh, ow) = _dots(x, weight, stride, padding, dilation, groups)
    patch_norm = torch.sqrt(cols.square().sum(dim=2, keepdim=True) + eps) + q       # [B, G, 1, L]
    kernel_norm = torch.sqrt(k.square().sum(dim=-1) + eps)[None, :, :, None]        # [1, G, O/G, 1]
    y = (dots / (patch_norm * kernel_norm)).flatten(1, 2)
    return _sharpen(y, p, eps).view(x.shape[0], -1, oh, ow)


def sdp_reference(x, weight, p, stride=1, padding=0, dilation=1, groups=1, eps=EPS):
    _, _, dots, (oh, ow) = _dots(x, weight, stride, padding, dilation, groups)
    return _sharpen(dots.flatten(1, 2), p, eps).view(x.shape[0], -1, oh, ow)


def max_abs_pool_reference(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """The reference's definition: maxpool(x) vs maxpool(-x), keep the positive one on ties."""
    stride = kernel_size if stride is None else stride
    pos = F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
    neg = F.max_pool2d(-x, kernel_size, stride, padding, ceil_mode=ceil_mode)
    return torch.where(pos >= neg, pos, -neg)


def scs_naive_autograd(x, weight, p, q, stride=1, padding=0, dilation=1, groups=1, eps=EPS):
    """The straightforward fast-ish formulation (two convolutions + elementwise autograd): the baseline that
    benchmarks compare the fused function with."""
    w_hat = weight / weight.square().sum(dim=(1, 2, 3), keepdim=True).add(eps).sqrt()
    c = F.conv2d(x, w_hat, None, stride, padding, dilation, groups)
    sq = x.square()
    if groups == 1:
        sq = sq.sum(dim=1, keepdim=True)
        ones = torch.ones((1, 1, *weight.shape[-2:]), device=x.device, dtype=x.dtype)
        s = F.conv2d(sq, ones, None, stride, padding, dilation)
    else:
        b, ch, h, w = sq.shape
        sq = sq.view(b, groups, ch // groups, h, w).sum(2)
        ones = torch.ones((groups, 1, *weight.shape[-2:]), device=x.device, dtype=x.dtype)
        s = F.conv2d(sq, ones, None, stride, padding, dilation, groups)
        s = s.repeat_interleave(weight.shape[0] // groups, dim=1)
    y = c / (torch.sqrt(s + eps) + q)
    return torch.sign(y) * (y.abs() + eps) ** p.view(1, -1, 1, 1)


def layer_reference(layer, x: torch.Tensor, pool=None) -> torch.Tensor:
    """What a SharpenedCosineSimilarity2d or SharpenedSDP2d module (CosineSimilarity2d: p = 1) computes for x, in
    float64 from its parameters, then pooled where `pool` is (absolute, kernel, stride, padding, ceil_mode): max-abs
    pooling when absolute, else max pooling. The yardstick of the fast paths' tests, eager, compiled or on CUDA."""
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    xd, wd, pd = x.double(), layer.weight.double(), layer.effective_p().double()
    if isinstance(layer, SharpenedCosineSimilarity2d):
        out = scs_reference(xd, wd, pd, layer.effective_q().double(), *args)
    else:
        out = sdp_reference(xd, wd, pd, *args)
    if pool is None:
        return out
    absolute, k, s, pad, ceil = pool
    if absolute:
        return max_abs_pool_reference(out, k, s, pad, ceil_mode=ceil)
    return F.max_pool2d(out, k, s, pad, ceil_mode=ceil)
