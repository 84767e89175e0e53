"""Fused forward/backward of the sharpened layers.

Autograd through the textbook formula keeps ~8 intermediate tensors per layer and runs a dozen elementwise
passes. This module computes SCS and SharpenedSDP in one custom autograd function that saves only the layer's
input (which the convolution needs anyway), its output (which the next layer saves anyway) and the one-channel
patch norm, and recovers everything else in the backward pass:

    y = c / n,   a = |y| + eps,   out = sign(y) * a**p      (c: convolution, n: patch norm, 1 for SDP)
    a = |out| ** (1/p),   d out / d y = p * |out| / a,   d out / d p = out * log(a)

Convolutions run in the autocast dtype when autocast is on; the sharpening itself runs in float32 and lives in
`kernels` (eager or fused by TorchInductor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernels

EPS = 1e-6
_aten = torch.ops.aten


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.is_floating_point():
        return torch.get_autocast_dtype(dev)
    return x.dtype


def patch_sq_norm(x: torch.Tensor, kernel_size, stride, padding, dilation, groups: int) -> torch.Tensor:
    """Sum of x**2 over every patch (and over the channels of each group): shape [B, groups, H', W']."""
    sq = x.square()
    b, c, h, w = sq.shape
    if groups > 1:
        sq = sq.view(b, groups, c // groups, h, w)
    sq = sq.sum(dim=-3) if groups > 1 else sq.sum(dim=1, keepdim=True)
    return _box_sum(sq, kernel_size, stride, padding, dilation, groups)


def _box_sum(t, kernel_size, stride, padding, dilation, groups):
    """Sum over every window: a box filter. avg_pool2d with divisor 1 is several times cheaper than a
    one-channel convolution with a ones kernel (which it equals), forward and backward."""
    if tuple(dilation) == (1, 1) and all(2 * p <= k for p, k in zip(padding, kernel_size)):
        return F.avg_pool2d(t, kernel_size, stride, padding, count_include_pad=True, divisor_override=1)
    ones = torch.ones((groups, 1, *kernel_size), device=t.device, dtype=t.dtype)
    return F.conv2d(t, ones, None, stride, padding, dilation, groups)


def _box_sum_backward(grad, input_shape, kernel_size, stride, padding, dilation, groups, dtype):
    """Gradient of `_box_sum` with respect to its input."""
    if tuple(dilation) == (1, 1) and all(2 * p <= k for p, k in zip(padding, kernel_size)):
        return torch.ops.aten.avg_pool2d_backward(grad, grad.new_empty(input_shape), list(kernel_size),
                                                  list(stride), list(padding), False, True, 1)
    ones = torch.ones((groups, 1, *kernel_size), device=grad.device, dtype=dtype)
    return torch.nn.grad.conv2d_input(input_shape, ones, grad, stride, padding, dilation, groups)


def _expand_groups(t: torch.Tensor, out_channels: int) -> torch.Tensor:
    """[B, groups, H, W] -> broadcastable against [B, out_channels, H, W]."""
    g = t.shape[1]
    if g == 1:
        return t
    b, _, h, w = t.shape
    return t.view(b, g, 1, h, w).expand(b, g, out_channels // g, h, w).reshape(b, out_channels, h, w)


class _Sharpened2d(torch.autograd.Function):
    """out = sign(y) * (|y| + eps)**p with y = conv(x, w) / n (n = patch norm + q, or 1 without `normalize`)."""

    @staticmethod
    def forward(ctx, x, weight, p, q, stride, padding, dilation, groups, normalize, eps):
        dev = x.device.type
        dtype = _compute_dtype(x)
        with torch.autocast(dev, enabled=False):
            xc, wc = x.to(dtype), weight.to(dtype)
            c = F.conv2d(xc, wc, None, stride, padding, dilation, groups)
            root = n = None
            if normalize:
                sdt = torch.promote_types(dtype, torch.float32)
                s = patch_sq_norm(xc, weight.shape[-2:], stride, padding, dilation, groups).to(sdt)
                root = (s + eps).sqrt_()
                n = root + q.to(sdt)
            out = kernels.sharpen(c, n, p, eps)
        ctx.conf = (stride, padding, dilation, groups, normalize, eps, dtype, x.dtype, weight.dtype, q.dtype)
        ctx.save_for_backward(xc, wc, p, out, root, n)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        stride, padding, dilation, groups, normalize, eps, dtype, x_dtype, w_dtype, q_dtype = ctx.conf
        xc, wc, p, out, root, n = ctx.saved_tensors
        need_x, need_w, need_p, need_q = ctx.needs_input_grad[:4]
        with torch.autocast(xc.device.type, enabled=False):
            gc, gn, gp = kernels.sharpen_backward(grad_out, out, n, p, eps)
            grad_p = gp.to(p.dtype) if need_p else None
            grad_q = gn.sum().reshape(()).to(q_dtype) if normalize and need_q else None
            grad_x = grad_w = None
            if need_x or need_w:
                gx, gw, _ = _aten.convolution_backward(
                    gc.to(dtype), xc, wc, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
                    [need_x, need_w, False])
                if need_x:
                    grad_x = gx.to(gn.dtype if normalize else gx.dtype)
                    if normalize:
                        gs = gn.div_(root).mul_(0.5)  # d root / d s = 1 / (2 root)
                        gsq = _box_sum_backward(gs, (xc.shape[0], groups, *xc.shape[-2:]), wc.shape[-2:], stride,
                                                padding, dilation, groups, gs.dtype)
                        grad_x += 2.0 * xc.to(gs.dtype) * _expand_groups(gsq, xc.shape[1])
                    grad_x = grad_x.to(x_dtype)
                if need_w:
                    grad_w = gw.to(w_dtype)
        return grad_x, grad_w, grad_p, grad_q, None, None, None, None, None, None


def sharpened_cosine_similarity2d(x, weight, p, q, stride=1, padding=0, dilation=1, groups=1, eps=EPS):
    """SCS: sign(s.k) * (|s.k| / ((||s|| + q) ||k||) + eps) ** p for every patch s and kernel k.

    `p` has one value per output channel, `q` is a scalar tensor; the kernel is normalised here (through autograd,
    it is small) and the rest runs in the fused function.
    """
    w_hat = weight / weight.square().sum(dim=(1, 2, 3), keepdim=True).add(eps).sqrt()
    q = q.reshape(())
    return _Sharpened2d.apply(x, w_hat, p, q, _pair(stride), _pair(padding), _pair(dilation), groups, True, eps)


def sharpened_sdp2d(x, weight, p, stride=1, padding=0, dilation=1, groups=1, eps=EPS):
    """SharpenedSDP: sign(s.k) * (|s.k| + eps) ** p, no normalisation."""
    q = weight.new_zeros(())
    return _Sharpened2d.apply(x, weight, p, q, _pair(stride), _pair(padding), _pair(dilation), groups, False, eps)


class _MaxAbsPool2d(torch.autograd.Function):
    """Max-abs pooling that saves only the chosen indices (int64, output-sized), as MaxPool2d does: autograd
    through max_pool2d(x), max_pool2d(-x) and where would also keep -x and a second index tensor."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        pos, ipos = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        neg, ineg = F.max_pool2d(x.neg(), kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        take_pos = pos >= neg  # ties go to the positive value, as in the reference
        ctx.save_for_backward(torch.where(take_pos, ipos, ineg))
        ctx.input_shape = x.shape
        return torch.where(take_pos, pos, neg.neg_())

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        b, c, h, w = ctx.input_shape
        gx = grad.new_zeros((b, c, h * w)).scatter_add_(2, idx.flatten(2), grad.flatten(2))
        return gx.view(b, c, h, w), None, None, None, None, None


def max_abs_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Per window, the element of largest magnitude with its sign; ties go to the positive value."""
    stride = kernel_size if stride is None or stride == [] else stride
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxAbsPool2d.apply(x, kernel_size, stride, padding, dilation, ceil_mode)
    # inference: no indices to keep, and max_pool2d without them takes a faster path
    pos = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    neg = F.max_pool2d(x.neg(), kernel_size, stride, padding, dilation, ceil_mode)
    return torch.where(pos >= neg, pos, neg.neg_())
