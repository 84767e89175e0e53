"""Fused forward/backward of the sharpened layers.

Autograd through the textbook formula keeps ~8 intermediate tensors per layer and runs a dozen elementwise
passes. This module computes SCS and SharpenedSDP in one custom autograd function that saves the layer's input
and kernels (which the convolution needs anyway), the kernels' inverse norms s (SCS), the convolution's output c
and the one-channel patch norm, and recovers everything else in the backward pass:

    y = c s / n,   a = |y| + eps,   out = sign(y) * a**p    (c: convolution with the raw kernels, n: patch norm;
    d out / d y = p * |out| / a,   d out / d p = out * log(a)  SDP: s = n = 1)

The kernels are not normalised in memory (but in float16: `_kernels`): s applies to c in the sharpening, and the
weight gradient takes the norm's term from the raw kernels' gradient. The backward adds both norms' terms (and
q's gradient) to the convolution's gradients in one call (`backend.norms_backward`).

Convolutions run in the autocast dtype when autocast is on; the sharpening itself runs in float32 and lives in
`backend` (eager or fused by TorchInductor). Without autograd (evaluation, `torch.no_grad`) a layer that runs
compiled is one graph, convolution included (`backend.layer_inference`): per-call dispatch, not arithmetic, is
what small layers spend their time on. A max or max-abs pooling right after the layer can be fused into it
(`pool`), and MaxAbsPool2d itself is one pooling pass over an order-preserving key.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from . import backend

EPS = 1e-6
_aten = torch.ops.aten


def to_pair(v):
    """An int or a pair -> a pair (Conv2d's convention for kernel size, stride, padding, dilation)."""
    return (v, v) if isinstance(v, int) else tuple(v)


def _is_index(v) -> bool:
    """An int (or an int-like: numpy's, a one-element integer tensor), never a bool."""
    if isinstance(v, bool):
        return False
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def conv_padding(padding, kernel_size, stride, dilation) -> tuple:
    """Conv2d's padding argument as a pair of ints: numbers, "valid" (none) or "same" (stride 1, with an odd
    dilated kernel: Conv2d pads an even one more on one side, which the patch norm's box sum does not do)."""
    if not isinstance(padding, str):  # an int, or one or two of them (F.conv2d's forms), else a TypeError as there
        pair = (padding,) if not isinstance(padding, tuple | list) else tuple(padding)
        if len(pair) not in (1, 2) or not all(_is_index(v) for v in pair):
            raise TypeError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
        return tuple(int(v) for v in pair * (3 - len(pair)))
    if padding == "valid":
        return (0, 0)
    if padding != "same":
        raise ValueError(f"padding must be numbers, 'valid' or 'same', got {padding!r}")
    if stride != (1, 1):
        raise ValueError("padding='same' needs stride 1 (as in Conv2d)")
    span = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
    if any(t % 2 for t in span):
        raise ValueError(f"padding='same' with kernel_size {kernel_size} and dilation {dilation} would pad one side "
                         "more than the other, which the sharpened layers do not support: pad the input with F.pad")
    return tuple(t // 2 for t in span)


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


def _scatter(t: torch.Tensor, idx: torch.Tensor, groups: int, size) -> torch.Tensor:
    """t [B, C, H', W'] added at the flat positions idx of each channel (or, with fewer groups than channels,
    summed over the channels of each group): [B, groups, H, W]."""
    b = t.shape[0]
    out = t.new_zeros((b, groups, size[0] * size[1]))
    # unflatten, not reshape(b, groups, -1): a batch of 0 leaves reshape's -1 undetermined
    return out.scatter_add_(2, idx.flatten(1).unflatten(1, (groups, -1)),
                            t.flatten(1).unflatten(1, (groups, -1))).view(b, groups, *size)


class _SharpenedFunction(torch.autograd.Function):
    """out = sign(y) * (|y| + eps)**p with y = conv(x, w) s / n; with `normalize` (SCS) n = patch norm + q and
    s the kernels' inverse norms (`inverse_kernel_norms`): the convolution runs with the raw kernels, so no
    unit-kernel copy is written, saved or differentiated; without it (SDP) s = n = 1.

    With `pool` (absolute, kernel_size, stride, padding, dilation, ceil_mode), the output is max-pooled (max-abs
    pooled when absolute) out, computed as the sharpening of the pooled y: sharpening is odd and increasing, so
    both pick the same element, and the elementwise work shrinks by the pooling factor, forward and backward.
    """

    @staticmethod
    def forward(ctx, x, weight, p, q, stride, padding, dilation, groups, normalize, eps, pool):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc, c, root, n, norms = _convolve_and_norm(x, weight, q, stride, padding, dilation, groups, normalize,
                                                       eps, dtype)
            scale = _output_scale(norms, dtype)
            size = c.shape[-2:]
            idx = None
            if pool is None:
                out = backend.sharpen(c, n, p, eps, scale)
            else:  # sharpen (and, in backward, differentiate) at the pooled positions only
                out, idx, c, n = backend.pool_sharpen_train(c, n, p, eps, pool, scale)
        ctx.conf = (stride, padding, dilation, groups, normalize, eps, dtype, x.dtype, weight.dtype, q.dtype, size,
                    pool)
        # c, not the output: an in-place op on the output (ReLU, a residual +=) must not spoil the backward.
        # Pooled: c and n (per channel) at the winners, and their indices. SCS: the kernels' inverse norms.
        ctx.save_for_backward(xc, weight, norms, p, c, root, n, idx)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        stride, padding, dilation, groups, normalize, eps, dtype, x_dtype, w_dtype, q_dtype, size, pool = ctx.conf
        xc, weight, norms, p, c, root, n, idx = ctx.saved_tensors
        scale = _output_scale(norms, dtype)
        need_x, need_w, need_p, need_q = ctx.needs_input_grad[:4]
        with torch.autocast(xc.device.type, enabled=False):
            nt = n if idx is None else None  # unpooled: gn is sharpen_backward's t, reduced by norms_backward
            if idx is None:
                gc, gn, gp = backend.sharpen_backward(grad_out, c, n, p, eps, scale)
            else:  # the gradients at the pooled positions, scattered back to the convolution's grid
                gc, gn, gp = backend.pool_sharpen_backward(grad_out, c, n, p, idx, size, groups, eps, pool, scale)
            grad_p = gp.to(p.dtype) if need_p else None
            gx = gw = gq = None
            if need_x or need_w:
                wc = _kernels(weight, norms, dtype)
                gx, gw, _ = _aten.convolution_backward(
                    gc.to(dtype), xc, wc, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
                    [need_x, need_w, False])
            if normalize and (need_x or need_w or need_q):  # plus the patch norm's term on gx, the kernel
                # norms' on gw, and q's gradient
                gx, gw, gq = backend.norms_backward(gx, gn, root, xc, gw, weight.detach(), norms,
                                                    (tuple(weight.shape[-2:]), stride, padding, dilation, groups),
                                                    unit=scale is None, n=nt)
            grad_x = gx.to(x_dtype) if need_x else None
            grad_w = gw.to(w_dtype) if need_w else None
            grad_q = gq.reshape(()).to(q_dtype) if normalize and need_q else None
        return grad_x, grad_w, grad_p, grad_q, None, None, None, None, None, None, None


def inverse_kernel_norms(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(|k|^2 + eps) per output channel, float32 at least: [C], on their own: float16's unit kernels
    (`_kernels`) need them before the convolution; other dtypes get them from the patch norm's graph
    (`backend.patch_norm`). One reduction, nothing weight-sized written (resnet18's normalised kernels, written
    out, cost 4 ms of a 60 ms evaluation batch; these norms 0.9 ms)."""
    return backend.kernel_inverse_norms_eager(weight.detach(), eps)


def _convolve_and_norm(x, weight, q, stride, padding, dilation, groups, normalize, eps, dtype):
    """The convolution c of x (in the compute dtype) with the raw kernels (`_kernels`), and for SCS the kernels'
    inverse norms [C] (applied to c by the sharpening, `_output_scale`), the patch norm's root
    sqrt(|patch|^2 + eps) and n = root + q ([B, groups, H', W'], float32 at least). The norms come out of the
    patch norm's graph, but in float16, whose convolution needs them first. (Nothing is cached across calls: a
    change through `.data` bumps no version a cache could see.)"""
    xc = x.to(dtype)
    norms = inverse_kernel_norms(weight, eps) if normalize and dtype == torch.float16 else None
    c = F.conv2d(xc, _kernels(weight, norms, dtype), None, stride, padding, dilation, groups)
    if not normalize:
        return xc, c, None, None, None
    # squares summed in float32 at least: in float16 a patch of 64 channels at std 12 overflows to inf, which
    # would zero the output and its gradients without a nan for GradScaler to see
    root, n, s = backend.patch_norm(xc, c, q, eps, (tuple(weight.shape[-2:]), stride, padding, dilation, groups),
                                    None if norms is not None else weight.detach())
    return xc, c, root, n, norms if norms is not None else s


def _kernels(weight, norms, dtype):
    """The kernels the convolution runs with, in the compute dtype: the raw ones, or in float16 (whose largest value
    is 65504) the unit ones, w s. SCS's output does not depend on the kernels' scale, so nothing stops training
    from growing it, and the raw kernels' convolution would then overflow float16 with no sign in the loss but an
    inf (bfloat16 has float32's range)."""
    if norms is None or dtype != torch.float16:
        return weight.to(dtype)
    return (weight.detach().to(norms.dtype) * norms.view(-1, 1, 1, 1)).to(dtype)


def _output_scale(norms, dtype):
    """The inverse norms the sharpening applies to c: None where `_kernels` applied them already (float16)."""
    return None if dtype == torch.float16 else norms


def _needs_autograd(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _sharpened_traceable(x, weight, p, q, stride, padding, dilation, groups, normalize, eps, pool):
    """The same values as plain differentiable torch ops, for torch.compile of a whole model: the compiler derives
    the backward and fuses the elementwise work itself, as it does for a conv model."""
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        sdt = torch.promote_types(dtype, torch.float32)
        wc = (backend.unit_kernels_math(weight, eps)[0] if normalize else weight).to(dtype)
        y = F.conv2d(x.to(dtype), wc, None, stride, padding, dilation, groups).to(sdt)
        if normalize:
            s = patch_sq_norm(x.to(sdt), weight.shape[-2:], stride, padding, dilation, groups)
            n = (s + eps).sqrt() + q.to(sdt)
            y = (backend._grouped(y, groups) / n.unsqueeze(2)).flatten(1, 2)
        if pool is not None:
            y = backend._pooled_values(y, pool)
        return (torch.sign(y) * (y.abs() + eps).pow(p.to(sdt).view(1, -1, 1, 1))).to(dtype)


def _sharpened(x, weight, p, q, stride, padding, dilation, groups, normalize, eps, pool):
    """The autograd function where a gradient is wanted; otherwise (evaluation, `torch.no_grad`) the same values
    without it, nothing saved for backward: one compiled graph per layer where it runs compiled
    (`backend.layer_inference`), else op by op (`eager` below; `backend.pool_sharpen` for a pooled layer)."""
    stride, dilation = to_pair(stride), to_pair(dilation)
    padding = conv_padding(padding, tuple(weight.shape[-2:]), stride, dilation)
    if torch.compiler.is_compiling():  # inside torch.compile of a whole model (--compile)
        return _sharpened_traceable(x, weight, p, q, stride, padding, dilation, groups, normalize, eps, pool)
    if _needs_autograd(x, weight, p, q):
        return _SharpenedFunction.apply(x, weight, p, q, stride, padding, dilation, groups, normalize, eps, pool)
    dtype = _compute_dtype(x)

    def eager():  # op by op
        _, c, _, n, norms = _convolve_and_norm(x, weight, q, stride, padding, dilation, groups, normalize, eps,
                                               dtype)
        scale = _output_scale(norms, dtype)
        if pool is None:
            return backend.sharpen(c, n, p, eps, scale)
        return backend.pool_sharpen(c, n, p, eps, pool, scale)
    with torch.autocast(x.device.type, enabled=False):
        return backend.layer_inference(x, weight, p, q, (tuple(weight.shape[-2:]), stride, padding, dilation, groups),
                                       normalize, eps, pool, dtype, eager)


def pool_spec(absolute: bool, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> tuple:
    """The `pool` argument of the sharpened functions: max (absolute=False) or max-abs pooling of their output."""
    stride = kernel_size if stride is None or stride == [] else stride
    return (bool(absolute), to_pair(kernel_size), to_pair(stride), to_pair(padding), to_pair(dilation), bool(ceil_mode))


def sharpened_cosine_similarity2d(x, weight, p, q, stride=1, padding=0, dilation=1, groups=1, eps=EPS, pool=None):
    """SCS: sign(s.k) * (|s.k| / ((||s|| + q) ||k||) + eps) ** p for every patch s and kernel k.

    `p` has one value per output channel, `q` is a scalar tensor. stride, padding, dilation, groups: as in
    F.conv2d (padding also 'valid' or 'same'; see `conv_padding`). `pool` (see `pool_spec`): return the pooled
    output, computed at a fraction of the cost.
    """
    return _sharpened(x, weight, p, q.reshape(()), stride, padding, dilation, groups, True, eps, pool)


def sharpened_sdp2d(x, weight, p, stride=1, padding=0, dilation=1, groups=1, eps=EPS, pool=None):
    """SharpenedSDP: sign(s.k) * (|s.k| + eps) ** p, no normalisation. `pool`: as in SCS."""
    return _sharpened(x, weight, p, weight.new_zeros(()), stride, padding, dilation, groups, False, eps, pool)


class _MaxAbsPool2d(torch.autograd.Function):
    """Max-abs pooling that saves only the chosen indices (int64, output-sized), as MaxPool2d does."""

    @staticmethod
    def forward(ctx, x, pool):
        out, idx = backend.max_abs_pool_train(x, pool)
        if out._base is not None:  # custom Functions may not return views of their intermediates (in-place ReLU)
            out = out.clone()
        ctx.save_for_backward(idx)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        b, c, h, w = ctx.input_shape
        return _scatter(grad, idx, c, (h, w)), None


def max_abs_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Per window, the element of largest magnitude with its sign; ties go to the positive value."""
    pool = pool_spec(True, kernel_size, stride, padding, dilation, ceil_mode)
    if torch.compiler.is_compiling():
        return backend._pooled_values(x, pool)
    if not _needs_autograd(x):
        return backend.max_abs_pool(x, pool)  # no autograd function, nothing saved
    return _MaxAbsPool2d.apply(x, pool)
