"""The elementwise half of the sharpened layers, forward and backward, in two interchangeable backends.

Around its convolutions SCS does elementwise work on every output (divide by the patch norm, abs, add eps, pow,
sign; about fifteen passes in the backward). Run as separate eager ops, each pass reads and writes the whole
output: on a CPU that costs more than a small convolution. The `compiled` backend hands the same formulas to
TorchInductor, which fuses each direction into one loop (C++/OpenMP on CPU, Triton on CUDA).

Backends (`set_backend`, or the environment variable SCS_PROBE_BACKEND):
- `eager`: in-place torch ops, no compilation;
- `compiled`: the fused kernels for float32/bfloat16/float16 (float64 stays eager);
- `auto` (default): compiled for outputs (and kernels) of at least `AUTO_MIN_NUMEL` elements (the zoo's layers at
  training and evaluation batch sizes, down to resnet18's last 1x1 layer at batch 128), eager for small ones,
  where a one-off compilation (a few seconds per layer shape and direction, cached on disk) would not pay.
If compilation fails (no C++ compiler, no Triton), a warning says so once and everything runs eager.

Besides the sharpening, the norms of SCS: the patch norm and the kernels' inverse norms in one graph
(`patch_norm`), their terms in the backward pass and q's gradient in one (`norms_backward`), and under no_grad a
whole layer, its convolution included, in one (`layer_inference`). A compiled call costs some 20 us of dynamo and
wrappers before its kernel runs, and small layers spend more time in calls than in arithmetic.
"""

from __future__ import annotations

import logging
import os
import types
import warnings

import torch
import torch.nn.functional as F

from . import windows

BACKENDS = ("auto", "eager", "compiled")
AUTO_MIN_NUMEL = 1 << 16
_COMPILED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_state = {"backend": None, "failed": None, "fns": {}}


ENV_VAR = "SCS_PROBE_BACKEND"


def set_backend(backend: str) -> None:
    """Choose how the sharpening runs: 'auto', 'eager' or 'compiled' (case-insensitive; see the module
    docstring)."""
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    _state["backend"] = name


def get_backend() -> str:
    """The backend in use: the last `set_backend`, else $SCS_PROBE_BACKEND (read here only), else 'auto'."""
    if _state["backend"] is None:
        value = os.environ.get(ENV_VAR, "").strip() or "auto"
        try:
            set_backend(value)
        except ValueError:
            raise ValueError(f"{ENV_VAR}={value!r} is not a backend: expected one of {', '.join(BACKENDS)}") \
                from None
    return _state["backend"]


def backend_used() -> str:
    """What actually runs: the backend in use, or "eager (fallback: reason)" once compilation has failed in this
    process (runs record this, not the backend that was asked for)."""
    if _state["failed"] and get_backend() != "eager":
        return f"eager (fallback: {_state['failed'][:200]})"
    return get_backend()


def _use_compiled(t: torch.Tensor, numel: int | None = None) -> bool:
    """Whether work on `t` runs compiled; `numel`: the size that decides under `auto`, where it is not t's (a
    pooled layer's backward decides by the unpooled grid, as its forward did)."""
    backend = get_backend()
    if backend == "eager" or _state["failed"] or t.dtype not in _COMPILED_DTYPES:
        return False
    if torch.compiler.is_compiling():  # inside a user's torch.compile: let it trace the eager formulas
        return False
    return backend == "compiled" or (t.numel() if numel is None else numel) >= AUTO_MIN_NUMEL


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, groups, C / groups, H, W] (a view), so a per-group norm broadcasts over channels."""
    return t.unflatten(1, (groups, -1))


def _sharpen_math(c, n, p, eps: float, sdt: torch.dtype, s=None):
    """out = sign(y) * (|y| + eps) ** p with y = c / n per group (n None: y = c). p: [1, C, 1, 1]; s (SCS): the
    kernels' inverse norms [1, C, 1, 1], c the raw kernels' convolution and y = c s / n."""
    return _sharpen_values(_y(c, n, sdt), p, eps, s).to(c.dtype)


def _sharpen_backward_math(g, c, n, p, eps: float, sdt: torch.dtype, s=None):
    """Elementwise backward from the saved pre-sharpening value c (y = c / n, or c s / n with the kernels' inverse
    norms s: then d L / d c carries the factor s): a = |y| + eps, out = sign(y) a**p,
    d out / d y = p |out| / a. The layer's output is not saved, so an in-place op on it (a ReLU, a residual `+=`)
    cannot spoil the backward pass, and a costs no more than recovering it from the output would.

    Returns (d L / d c, t, u) with d L / d n = -sum_group(t) / n and d L / d p = sum_batch(u): t = g p out
    (1 - eps / a) (None without n), u = sum over H, W of g out log a, [B, C]. The sum over H, W rides along in the
    elementwise loop; the channel sum for t does not: fused, inductor would write log a and 1 / a out to memory
    for a second loop, which costs more than reducing t afterwards. Where y == 0 the output and every term
    vanish (sign 0), as autograd through the formula gives."""
    y, g = _y(c, n, sdt), g.to(sdt)
    gy, go, inv_a, log_a = _sharpen_backward_terms(g, y, p, eps, s)
    u = (go * log_a).sum(dim=(2, 3))
    if n is None:
        return gy, None, u
    gc = (_grouped(gy, n.shape[1]) / n.unsqueeze(2)).flatten(1, 2)
    return gc, (1.0 - eps * inv_a) * go * p, u


def _sharpen_backward_terms(g, y, p, eps: float, s=None):
    """The elementwise core of the sharpening's backward at y: (d L / d y, g out, 1 / a, log a); with s > 0 (per
    channel), of the sharpening of y s, d L / d y included. (s enters here, not as a scaled copy of y: a per-channel
    factor on a value used several times made Inductor tile the loops by channel, 3.5x slower.)"""
    sign = torch.sign(y)
    a = (y.abs() if s is None else y.abs() * s) + eps
    log_a = a.log()
    inv_a = 1.0 / a  # a division: 20 % faster than exp(-log a) in the compiled loop
    mag = torch.exp(log_a * p) * sign.abs()
    gy = mag * inv_a * p * g
    return (gy if s is None else gy * s), g * mag * sign, inv_a, log_a


def _narrow_plane(h: int, w: int) -> bool:
    """Whether an h x w plane is narrower than a vector, and more than one element: resnet18's 2x2 layers at
    32 px. Inductor vectorises a plane's row with masked lanes there (a 2x2 plane fills 4 of AVX-512's 16), so
    these layers run their sharpening with n and p given per element (`_flat`), as flat rows: [128, 256, 2, 2],
    forward 0.41 -> 0.25 ms, backward 1.51 -> 0.46 ms on two threads. 1x1 planes are flat rows already."""
    return 1 < h * w < 16


def _small_plane(c: torch.Tensor) -> bool:
    """Whether c is 4-D with planes narrower than a vector (`_narrow_plane`)."""
    return c.dim() == 4 and _narrow_plane(c.shape[-2], c.shape[-1])


def _flat(c, n, p, s=None):
    """n per group -> per element [B, C, H, W]; p [1, C, 1, 1] -> [1, C, H, W], both contiguous: every operand
    then has c's contiguous layout, and Inductor runs C, H and W as one flat loop. (The tensors stay 4-D: an
    output viewed back from [B, C*H*W] would be a view, which an in-place op after the layer may not modify.)
    s (SCS, with n): the kernels' inverse norms, folded into n per element as n / s: y = c / (n / s), d L / d c =
    d L / d y / (n / s), and t needs no n (the caller divides its channel sum by the true n)."""
    b, ch, h, w = c.shape
    if n is None:
        nf = None
    elif s is None:
        nf = _per_channel(n, ch).contiguous()
    else:
        g = n.shape[1]
        nf = (n.unsqueeze(2) / s.view(1, g, ch // g, 1, 1)).flatten(1, 2)
    return nf, p.expand(1, ch, h, w).contiguous()


def _sharpen_flat_math(c, n, p, eps: float, sdt: torch.dtype):
    """`_sharpen_math` with n and p per element (`_flat`)."""
    y = c.to(sdt) if n is None else c.to(sdt) / n
    return _sharpen_values(y, p, eps).to(c.dtype)


def _sharpen_backward_flat_math(g, c, n, p, eps: float, sdt: torch.dtype):
    """`_sharpen_backward_math` with n and p per element (`_flat`): (d L / d c, t, u summed over the batch only,
    [C, H, W]), the sums over channels (t) and over the plane (u) left to the caller. (Summed over the batch here,
    in the elementwise loop: ATen's sum over the batch and plane afterwards cost 85 us of [128, 256, 2, 2]'s
    backward.)"""
    y, g = c.to(sdt), g.to(sdt)
    if n is not None:
        y = y / n
    gy, go, inv_a, log_a = _sharpen_backward_terms(g, y, p, eps)
    u = (go * log_a).sum(dim=0)
    if n is None:
        return gy, None, u
    return gy / n, (1.0 - eps * inv_a) * go * p, u


def _sharpen_eager(c, n, p, eps, sdt, s=None):
    """`_sharpen_math` in place on one new buffer: the same values with two allocations instead of six (c itself
    is saved for the backward pass: never written)."""
    y = c.to(sdt, copy=True)
    if s is not None:
        y.mul_(s)
    if n is not None:
        _grouped(y, n.shape[1]).div_(n.unsqueeze(2))
    sign = y.sign()
    return y.abs_().add_(eps).pow_(p).mul_(sign).to(c.dtype)


def _sharpen_backward_eager(g, c, n, p, eps, sdt, s=None):
    """`_sharpen_backward_math` with in-place ops on its own buffers (c is saved for backward: never written)."""
    g = g.to(sdt)
    y = c.to(sdt) if s is None else c.to(sdt) * s
    if n is not None:
        y = (_grouped(y, n.shape[1]) / n.unsqueeze(2)).flatten(1, 2)
    sign = y.sign()
    a = y.abs().add_(eps)
    del y
    inv_a = a.reciprocal()
    log_a = a.log_()
    mag = log_a.mul(p).exp_().mul_(sign.abs())
    go = mag.mul(sign).mul_(g)
    del sign
    gy = mag.mul_(inv_a).mul_(p).mul_(g)
    u = log_a.mul_(go).sum(dim=(2, 3))
    del log_a
    if s is not None:
        gy.mul_(s)
    if n is None:
        return gy, None, u
    _grouped(gy, n.shape[1]).div_(n.unsqueeze(2))
    return gy, inv_a.mul_(-eps).add_(1.0).mul_(go).mul_(p), u


_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
             torch.float16: torch.int16}


def max_abs_key(x: torch.Tensor) -> torch.Tensor:
    """A float tensor whose max-pooling picks the element of largest magnitude, ties going to the positive one.

    The bits of |x| with the lowest mantissa bit replaced by (x > 0): ordered by magnitude, and at equal magnitude
    positive first. One pooling pass instead of pooling x and -x (CPU max pooling costs several elementwise
    passes). Magnitudes one unit in the last place apart compare as equal (the positive, else the first, wins): a
    difference within float rounding."""
    it = _INT_VIEW[x.dtype]
    mask = (1 << (torch.iinfo(it).bits - 1)) - 2  # clear the sign bit and the lowest mantissa bit
    return x.view(it).bitwise_and(mask).bitwise_or_(x > 0).view(x.dtype)


def _pool_key_math(c, n, absolute: bool):
    y = c if n is None else (_grouped(c.to(n.dtype), n.shape[1]) / n.unsqueeze(2)).flatten(1, 2)
    return max_abs_key(y) if absolute else y


def _y(c, n, sdt):
    """y = c / n per group, in the sharpening dtype (the kernels' inverse norms s, where given, apply in the
    sharpening: `_sharpen_values`)."""
    y = c.to(sdt)
    return y if n is None else (_grouped(y, n.shape[1]) / n.unsqueeze(2)).flatten(1, 2)


def _sharpen_values(y, p, eps: float, s=None):
    """sign(y) * (|y| + eps) ** p, as exp(p log(|y| + eps)): inductor's vectorised exp and log cost two thirds of the
    time of its pow (a stem layer's 2 M outputs, sharpening alone: 7.8 -> 5.3 ms on one CPU thread), within a
    few ulp of it. With s > 0 (per channel), of y s."""
    a = y.abs() if s is None else y.abs() * s
    return torch.sign(y) * torch.exp(p * torch.log(a + eps))


def _per_channel(t: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, groups, H, W] -> [B, channels, H, W], each group's plane repeated for its channels."""
    b, g, h, w = t.shape
    return t.unsqueeze(2).expand(b, g, channels // g, h, w).reshape(b, channels, h, w)


def _pooled_values(y, pool):
    """Max or max-abs pooling of y, exact and without indices: for max-abs, the window max and min side by side
    (inductor runs both reductions in one loop over each window), the larger magnitude, the max on ties."""
    absolute, kernel_size, stride, padding, dilation, ceil_mode = pool
    hi = F.max_pool2d(y, kernel_size, stride, padding, dilation, ceil_mode)
    if not absolute:
        return hi
    lo = F.max_pool2d(-y, kernel_size, stride, padding, dilation, ceil_mode)  # -min
    return torch.where(hi >= lo, hi, -lo)


def _make_patch_norm(geometry):
    """(x, q, eps, sdt, w) -> (root, n, s): root = sqrt(sum of x**2 over each patch + eps), n = root + q, per group,
    in float32 at least; the square, the channel sum, the box filter and the root in one graph. With the kernels w
    (SCS, but in float16: `functional._kernels`) also their inverse norms s [C] (`kernel_inverse_norms_math`) in the
    same graph: four ATen calls fewer per layer, 40 us of a small layer's 350."""
    from .functional import patch_sq_norm  # functional imports this module

    kernel_size, stride, padding, dilation, groups = geometry

    def patch_norm(x, q, eps: float, sdt: torch.dtype, w=None):
        root = (patch_sq_norm(x.to(sdt), kernel_size, stride, padding, dilation, groups) + eps).sqrt()
        return root, root + q.to(sdt), None if w is None else kernel_inverse_norms_math(w, eps)
    return patch_norm


def kernel_inverse_norms_math(w: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(|k|^2 + eps) per output channel, float32 at least: [C]."""
    w = w.flatten(1).to(torch.promote_types(w.dtype, torch.float32))
    return (w.square().sum(dim=1) + eps).rsqrt()


def kernel_inverse_norms_eager(w: torch.Tensor, eps: float) -> torch.Tensor:
    """`kernel_inverse_norms_math` with nothing weight-sized written: one vector-norm reduction."""
    w = w.flatten(1)
    norm = torch.linalg.vector_norm(w, dim=1, dtype=torch.promote_types(w.dtype, torch.float32))
    return norm.square_().add_(eps).rsqrt_()


def patch_norm(x: torch.Tensor, ref: torch.Tensor, q: torch.Tensor, eps: float, geometry,
               weight: torch.Tensor | None = None):
    """(root, n, s) of `_make_patch_norm` (s None without `weight`: the detached kernels), compiled where the
    layer's output `ref` runs compiled, except on input planes narrower than a vector (`_small_plane`): there
    Inductor counts the plane's one masked vector step as zero steps and parallelises the channel sum instead of
    the batch, one OpenMP region per image (resnet18's [128, 256, 2, 2]: 230 us compiled, 40 us as ATen ops)."""
    geometry = tuple(geometry)
    sdt = _sharpen_dtype(x)

    def eager(x, q, eps, sdt, w):
        root, n, _ = _make_patch_norm(geometry)(x, q, eps, sdt)
        return root, n, None if w is None else kernel_inverse_norms_eager(w, eps)
    if _small_plane(x):
        return eager(x, q, eps, sdt, weight)
    return _fused(_make_patch_norm, geometry, (x, q, eps, sdt, weight), eager, ref, batched=1)


def _make_patch_norm_backward(geometry):
    """(gx, gn, root, x, sdt) -> d L / d x: the convolution's input gradient gx plus the patch norm's,
    2 x * box_sum_backward(gn / (2 root)) per group, in one graph (eager: five passes over the input)."""
    from .functional import _box_sum_backward, _expand_groups  # functional imports this module

    kernel_size, stride, padding, dilation, groups = geometry

    def patch_norm_backward(gx, gn, root, x, sdt: torch.dtype):
        gs = gn / root * 0.5
        if _box_adjoint_is_a_box(kernel_size, stride, padding, dilation):
            gsq = _box_sum_adjoint(gs, kernel_size, padding)
        else:
            gsq = _box_sum_backward(gs, (x.shape[0], groups, *x.shape[-2:]), kernel_size, stride, padding, dilation,
                                    groups, sdt)
        return gx.to(sdt) + 2.0 * x.to(sdt) * _expand_groups(gsq, x.shape[1])
    return patch_norm_backward


def _box_adjoint_is_a_box(kernel_size, stride, padding, dilation) -> bool:
    """Whether the box sum (stride 1, undilated, computed by avg_pool2d) has a box sum for its adjoint."""
    return tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and \
        all(2 * p <= k for p, k in zip(padding, kernel_size))


def _box_sum_adjoint(g, kernel_size, padding):
    """The adjoint of a stride-1 box sum: the box sum of g zero-padded by k - 1 - p on each side (input i collects
    the outputs i + p - k + 1 .. i + p). Inductor runs avg_pool2d's forward as one vectorised loop, its backward
    as a gather over windows: resnet18's [128, 64, 8, 8] patch-norm backward 183 -> 72 us."""
    (kh, kw), (ph, pw) = kernel_size, padding
    lh, lw = kh - 1 - ph, kw - 1 - pw
    if 2 * lh <= kh and 2 * lw <= kw:
        return F.avg_pool2d(g, kernel_size, 1, (lh, lw), count_include_pad=True, divisor_override=1)
    return F.avg_pool2d(F.pad(g, (lw, lw, lh, lh)), kernel_size, 1, 0, divisor_override=1)


def _patch_norm_backward_eager(gx, gn, root, x, sdt, geometry):
    from .functional import _box_sum_backward, _expand_groups

    kernel_size, stride, padding, dilation, groups = geometry
    gs = gn.div(root).mul_(0.5)
    gsq = _box_sum_backward(gs, (x.shape[0], groups, *x.shape[-2:]), kernel_size, stride, padding, dilation, groups,
                            sdt)
    return gx.to(sdt).addcmul_(x, _expand_groups(gsq, x.shape[1]), value=2.0)


def _make_norms_backward(geometry, eager: bool = False):
    """(gx, gn, root, x, n, gw, w, s, sdt, unit) -> (d L / d x, d L / d w, d L / d q): what SCS adds to the
    convolution's gradients, in one graph: the patch norm's term on the input gradient gx
    (`_make_patch_norm_backward`; `eager`: `_patch_norm_backward_eager`, for the op-by-op path), the kernel norms'
    on the raw kernels' gradient gw (`_raw_kernels_backward_math`; `unit`, float16: gw is the unit kernels'
    gradient, the raw ones' gw s) and q's gradient, the sum of gn. gx or gw None: not wanted. (One compiled call
    where there were two and three ATen calls: a compiled call costs some 20 us of dynamo and wrappers before its
    kernel runs.)"""
    if eager:
        def patch_norm_backward(gx, gn, root, x, sdt):
            return _patch_norm_backward_eager(gx, gn, root, x, sdt, geometry)
    else:
        patch_norm_backward = _make_patch_norm_backward(geometry)

    def norms_backward(gx, gn, root, x, n, gw, w, s, sdt: torch.dtype, unit: bool):
        if n is not None:  # gn is sharpen_backward's t
            gn = -_grouped(gn, n.shape[1]).sum(dim=2) / n
        if gx is not None:
            gx = patch_norm_backward(gx, gn, root, x, sdt)
        if gw is not None:
            gw = _raw_kernels_backward_math(gw, w, s, unit)
        return gx, gw, gn.sum()
    return norms_backward


def norms_backward(gx, gn, root, x, gw, w, s, geometry, unit: bool = False, n=None):
    """The gradients an SCS layer's two norms add (`_make_norms_backward`; float32 at least): gx, gw None where not
    wanted; w: the detached kernels, s their inverse norms. With n, gn is `sharpen_backward`'s t, reduced to
    d L / d n here."""
    geometry = tuple(geometry)
    args = (gx, gn, root, x, n, gw, w, s, _sharpen_dtype(gn), bool(unit))
    return _fused(_make_norms_backward, geometry, args, _make_norms_backward(geometry, eager=True), x,
                  batched=5)


def _make_pool_sharpen_train(pool):
    """(c, n, p, eps, sdt, s) -> (pooled sharpened output, flat indices of the winners, c and n (per channel) at
    them): what the backward pass needs, from one pooling pass over the key and one gather."""
    absolute, kernel_size, stride, padding, dilation, ceil_mode = pool

    def pool_sharpen_train(c, n, p, eps: float, sdt: torch.dtype, s=None):
        y = _y(c, n, sdt)  # s > 0 per channel: the same winners
        key = max_abs_key(y) if absolute else y
        _, idx = F.max_pool2d(key, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        flat = idx.flatten(2)
        cg = c.flatten(2).gather(2, flat).view(idx.shape)
        if n is None:
            return _sharpen_values(cg.to(sdt), p, eps, s).to(c.dtype), idx, cg, None
        ng = _per_channel(n, c.shape[1]).flatten(2).gather(2, flat).view(idx.shape)
        return _sharpen_values(cg.to(sdt) / ng, p, eps, s).to(c.dtype), idx, cg, ng
    return pool_sharpen_train


def _make_pool_sharpen_backward(pool):
    """(g, cg, ng, p, idx, like, groups, eps, sdt, s) -> (d L / d c on the unpooled grid, d L / d n [B, groups, H, W]
    or None, u): the pooled sharpening's backward and its scatter to the winners' positions in one graph
    (inductor's max_pool2d_with_indices_backward: a loop over the unpooled grid, no atomic adds). `like`: any
    tensor of the unpooled shape (only its shape and layout are read)."""
    _, kernel_size, stride, padding, dilation, ceil_mode = pool

    def unpool(t, idx, like):
        return torch.ops.aten.max_pool2d_with_indices_backward(t, like, list(kernel_size), list(stride),
                                                               list(padding), list(dilation), ceil_mode, idx)

    def pool_sharpen_backward(g, cg, ng, p, idx, like, groups: int, eps: float, sdt: torch.dtype, s=None):
        gc, t, u = _sharpen_backward_math(g, cg, ng, p, eps, sdt, s)
        gc = unpool(gc, idx, like)
        if ng is None:
            return gc, None, u
        gn = unpool(-t / ng, idx, like)
        return gc, _grouped(gn, groups).sum(dim=2), u
    return pool_sharpen_backward


def _layout(a: torch.Tensor, fixed: bool) -> tuple:
    """What a compiled graph is specialised to: dtype, device and, `fixed`, every size but the batch's (only whether
    the batch is 1) and every stride (but of size-1 dims, which a graph does not read), else which sizes are 1
    (symbolic sizes still specialise on those) and whether the layout is channels_last; a parameter's every size.
    (Strides in the key: a graph is compiled for one layout, and a layout its guards reject would recompile the
    same key up to dynamo's limit. Plain tensors skip Parameter's isinstance, a Python-level check.)"""
    shape = a.shape
    if type(a) is not torch.Tensor and isinstance(a, torch.nn.Parameter):  # dynamo keeps a parameter's sizes
        return a.dtype, a.device, tuple(shape)  # static: one graph per shape, or every other layer's weights
        # would recompile the same graph up to the recompile limit
    if fixed:
        strides = tuple(None if n == 1 else st for n, st in zip(shape, a.stride()))
        return a.dtype, a.device, a.dim() > 0 and shape[0] == 1, tuple(shape[1:]), strides
    channels_last = a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
    return a.dtype, a.device, channels_last, tuple(n == 1 for n in shape)


def _signature(args, fixed: bool = True) -> tuple:
    return tuple(_layout(a, fixed) if isinstance(a, torch.Tensor) else a for a in args)


class _NoCudaRuntime(logging.Filter):
    def filter(self, record):
        return "No CUDA runtime is found" not in record.getMessage()


def _quiet_cuda_probe() -> None:
    """TorchInductor's C++ build logs a warning when a CUDA build of torch finds no CUDA runtime: noise on every
    CPU-only machine, which a user cannot act on. A filter (torch resets its loggers' levels) drops that line."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntime) for f in logger.filters):
        logger.addFilter(_NoCudaRuntime())


def _itself(fn):
    """The factory of a kernel that needs no static arguments."""
    return fn


def _compiled(make, static, args, fixed: bool = True):
    """A compiled `make(static)` per static value (pool sizes, geometry: constants in the graph) and argument
    signature (`_layout`). `fixed`: every size but the batch is fixed, as for a model's layers: with symbolic sizes
    Inductor's CPU loops lose their vectorisation over small rows (a 2x2 max-abs pool of a [256, 64, 15, 15]
    output ran 11x slower, 74 ms against 6.7 ms). Otherwise (small tensors under the `compiled` backend: tests,
    tiny models) all sizes are symbolic, one graph for many shapes. Each graph gets a code object with a name of
    its own, because dynamo keeps its recompilation count and its automatic-dynamic record per (file, line,
    name): shared, a second layer's sizes would turn the first one's symbolic too."""
    key = (make.__name__, static, fixed, _signature(args, fixed))
    if key not in _state["fns"]:
        _quiet_cuda_probe()
        fn = make(static)
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{len(_state['fns'])}")
        clone = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        _state["fns"][key] = torch.compile(clone, dynamic=None if fixed else True, fullgraph=True,
                                           options=getattr(make, "inductor_options", None))
    return _state["fns"][key]


def _batch_dynamic(args) -> None:
    """Mark the batch dimension of the batched arguments symbolic, so that the last, smaller batch of an epoch
    and the evaluation batch reuse the graph instead of compiling their own. Never a parameter's: the mark stays
    on the tensor and would reach a user's torch.compile of the whole model."""
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape[0] > 1 and \
                (type(a) is torch.Tensor or not isinstance(a, torch.nn.Parameter)):
            torch._dynamo.maybe_mark_dynamic(a, 0)


def _fused(make, static, args, eager, ref: torch.Tensor, numel: int | None = None, batched: int | None = None):
    """`make(static)(*args)` compiled where `ref` runs compiled (`_use_compiled`), else `eager(*args)`. A failing
    compilation switches the process to eager (once, with a warning); running out of memory is the run's failure,
    not the compiler's, and is raised, and so is an error of the arguments' own (an input of another channel count
    than the kernels', which the graph's convolution meets while dynamo traces it): eager raises it too, and the
    process keeps compiling. `batched`: how many leading arguments carry the batch (default: all; a kernel's first
    dimension is its channels, not a batch)."""
    if _use_compiled(ref, numel):
        fixed = (ref.numel() if numel is None else numel) >= AUTO_MIN_NUMEL
        try:
            if fixed:  # on every call: a guard that fails (another stride) recompiles, and must see the mark too
                _batch_dynamic(args if batched is None else args[:batched])
            return _compiled(make, static, args, fixed)(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            out = eager(*args)  # raises the arguments' own error; only a compiler's failure gets past it
            _mark_failed(e)
            return out
    return eager(*args)


def _run(math_fn, eager_fn, ref: torch.Tensor, *args):
    return _fused(_itself, math_fn, args, eager_fn, ref)


def _mark_failed(e: Exception) -> None:
    _state["failed"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    warnings.warn(f"scs_probe: compiled kernels unavailable ({_state['failed'][:200]}); running eager. "
                  "Set SCS_PROBE_BACKEND=eager to silence this.", RuntimeWarning, stacklevel=4)


def _sharpen_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # the sharpening runs in float32 at least


def _channel_scale(scale: torch.Tensor | None, sdt: torch.dtype):
    return None if scale is None else scale.to(sdt).view(1, -1, 1, 1)


def sharpen(c: torch.Tensor, n: torch.Tensor | None, p: torch.Tensor, eps: float,
            scale: torch.Tensor | None = None) -> torch.Tensor:
    """Forward elementwise part: c [B, C, H, W] (any float dtype), n [B, groups, H, W] or None, p [C]; `scale`
    [C] (SCS, with n; training and inference): c is the convolution with the raw kernels, scale their inverse norms.
    Returns the layer output in c's dtype."""
    sdt = _sharpen_dtype(c)
    pv = p.to(sdt).view(1, -1, 1, 1)
    n = None if n is None else n.to(sdt)
    sv = _channel_scale(scale, sdt)
    if _small_plane(c) and _use_compiled(c) and (n is not None or sv is None):
        return _run(_sharpen_flat_math, _sharpen_flat_math, c, c, *_flat(c, n, pv, sv), eps, sdt)
    return _run(_sharpen_math, _sharpen_eager, c, c, n, pv, eps, sdt, sv)


def pool_key(c: torch.Tensor, n: torch.Tensor | None, absolute: bool) -> torch.Tensor:
    """What max pooling of the sharpened output compares, from before the sharpening: y = c / n (per group), or
    for max-abs pooling `max_abs_key(y)`. One fused pass when compiled."""
    if n is None and not absolute:
        return c
    return _run(_pool_key_math, _pool_key_math, c, c, n, absolute)


def sharpen_backward(g: torch.Tensor, c: torch.Tensor, n: torch.Tensor | None, p: torch.Tensor, eps: float,
                     scale: torch.Tensor | None = None):
    """Backward elementwise part from the pre-sharpening c (see `_sharpen_backward_math`; `scale` as in
    `sharpen`): (d L / d c, t [B, C, H, W] or None, d L / d p [C]), in float32 at least. t is d L / d n before its
    reduction, -sum_group(t) / n, which `norms_backward` does in its graph."""
    sdt = _sharpen_dtype(c)
    pv = p.to(sdt).view(1, -1, 1, 1)
    n = None if n is None else n.to(sdt)
    sv = _channel_scale(scale, sdt)
    if _small_plane(c) and _use_compiled(c) and (n is not None or sv is None):
        gc, t, u = _run(_sharpen_backward_flat_math, _sharpen_backward_flat_math, c, g, c, *_flat(c, n, pv, sv),
                        eps, sdt)
        u = u.sum(dim=(1, 2))
    else:
        gc, t, u = _run(_sharpen_backward_math, _sharpen_backward_eager, c, g, c, n, pv, eps, sdt, sv)
        u = u.sum(dim=0)
    return gc, t, u


def unit_kernels_math(w, eps: float):
    """Each kernel scaled to unit L2 norm (with eps), and the norms: SCS's kernels inside a user's torch.compile
    of the whole model, where the compiler derives the backward."""
    w = w.to(torch.promote_types(w.dtype, torch.float32))
    norm = (w.square().sum(dim=(1, 2, 3), keepdim=True) + eps).sqrt()
    return w / norm, norm


def _raw_kernels_backward_math(gw, w, s, unit: bool = False):
    """d L / d w from the raw kernels' gradient gw, through the inverse norm s = (|w|^2 + eps)^-1/2 that scales
    the output: gw - s^2 <gw, w> w per kernel (the same as (g - w_hat <g, w_hat>) / |w| for w_hat = w s).
    `unit` (float16): gw is the unit kernels' gradient, the raw ones' gw s."""
    sdt = s.dtype
    gw, w = gw.to(sdt), w.to(sdt)
    if unit:
        gw = gw * s.view(-1, 1, 1, 1)
    return gw - w * (s * s).view(-1, 1, 1, 1) * (gw * w).sum(dim=(1, 2, 3), keepdim=True)


def _make_window_sharpen(sgeom):
    """Pooled inference: the window loop picks the winners of y = c / n, and the kernels' inverse norms s apply in
    the sharpening (a positive scale per channel picks the same winners). Applied in the window loop, the
    per-channel load of s made Inductor tile channels by 16 and gather each row element by element:
    rohrer100k's first pooled layer, 2.6 -> 6.6 ms."""
    def window_sharpen(c, n, p, eps: float, sdt: torch.dtype, s=None):
        return _sharpen_values(windows.pooled_strided(_y(c, n, sdt), sgeom), p, eps, s).to(c.dtype)
    return window_sharpen


def _make_window_pool(sgeom):
    def window_pool(x):
        return windows.pooled_strided(x, sgeom)
    return window_pool


def _make_window_sharpen_train(geom):
    """(c, n, p, eps, sdt, s) -> (pooled sharpened output, the winners' offsets in their windows, y = c / n and n
    at them), in one loop over the pooled grid (`windows.winners`); s scales y in the sharpening only."""
    def window_sharpen_train(c, n, p, eps: float, sdt: torch.dtype, s=None):
        per_channel = None if n is None else _per_channel(n, c.shape[1])
        y, offset, nw = windows.winners(_y(c, n, sdt), geom, per_channel)  # y: unscaled (`_make_window_sharpen`)
        return _sharpen_values(y, p, eps, s).to(c.dtype), offset, y, nw
    return window_sharpen_train


def _make_window_sharpen_backward(geom):
    """Backward of `_make_window_sharpen_train` on the pooled grid, from y and n at the winners: (d L / d c at
    them, d L / d n [B, groups, H, W] or None, u, the winners' flat indices). `pool_sharpen_backward` scatters
    d L / d c onto the grid as max pooling's backward does (inductor's loop over the full grid, w // 2 indexing,
    does not vectorise); d L / d n is summed over channels on the pooled grid (`windows.unpool_channel_sum`: ATen's
    scatter_add of it took 17 ms on two threads where this graph takes 5)."""
    def window_sharpen_backward(g, y, nw, p, offset, groups: int, eps: float, sdt: torch.dtype, s=None):
        gy, _, u = _sharpen_backward_math(g, y, None, p, eps, sdt, s)  # d L / d y, pooled (y = c / n, unscaled)
        idx = windows.offsets_to_indices(offset, geom)
        if nw is None:
            return gy, None, u, idx
        return gy / nw, windows.unpool_channel_sum(-(gy * y) / nw, offset, groups, geom), u, idx
    return window_sharpen_backward


def _window_sharpen_backward_eager(g, y, nw, pv, offset, groups, eps, sdt, s, geom):
    gy, _, u = _sharpen_backward_eager(g, y, None, pv, eps, sdt, s)
    idx = windows.offsets_to_indices(offset, geom)
    if nw is None:
        return gy, None, u, idx
    t = gy.mul(y).div_(nw).neg_()
    return gy.div_(nw), _scatter_to_grid(t, t, idx, groups, geom[-2:])[1], u, idx


def _scatter_to_grid(gc, t, idx, groups: int, size):
    """The winners' gradients onto the [B, C, H, W] grid and d L / d n [B, groups, H, W] (the sum over each
    group's channels of t at its winners), as max pooling's backward does: zeros, then a scatter (adding: where
    windows overlap, one element can win several)."""
    b, c = gc.shape[:2]
    hw = size[0] * size[1]
    flat = idx.flatten(2)
    gfull = gc.new_zeros((b, c, hw)).scatter_add_(2, flat, gc.flatten(2)).view(b, c, *size)
    if t is None:
        return gfull, None
    gn = t.new_zeros((b, groups, hw)).scatter_add_(2, flat.flatten(1).unflatten(1, (groups, -1)),  # batch 0 too
                                                  t.flatten(1).unflatten(1, (groups, -1)))
    return gfull, gn.view(b, groups, *size)


def _window_geometry(c: torch.Tensor, pool):
    """`windows.geometry` where the pooled kernels of non-overlapping windows apply (compiled runs), else None."""
    return windows.geometry(pool, c.shape[-2:]) if _use_compiled(c) else None


def pool_sharpen(c: torch.Tensor, n: torch.Tensor | None, p: torch.Tensor, eps: float, pool,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """The sharpened output max- or max-abs-pooled (`pool`: see `functional.pool_spec`), for inference (nothing
    saved; `scale` as in `sharpen`). Exact. Compiled: one loop over the pooled grid (`windows.pooled_strided`),
    faster than ATen's max pooling alone; eager: max pooling with indices of the key, then the winners
    sharpened."""
    sgeom = windows.strided_geometry(pool, c.shape[-2:]) if _use_compiled(c) else None
    sdt = _sharpen_dtype(c)
    pv = p.to(sdt).view(1, -1, 1, 1)
    n = None if n is None else n.to(sdt)
    sv = _channel_scale(scale, sdt)
    eager = lambda *a: _pool_sharpen_train_eager(*a, pool)[0]  # noqa: E731
    if sgeom is None:
        return eager(c, n, pv, eps, sdt, sv)
    return _fused(_make_window_sharpen, sgeom, (c, n, pv, eps, sdt, sv), eager, c)


def _make_layer_inference(static):
    """(x, w, p, q, eps, dtype) -> (the layer's output, n), for inference: the convolution, the kernels' inverse
    norms, the patch norm and the sharpening (pooled: `_make_window_sharpen`) in one graph, one compiled call per
    layer instead of two and five ATen calls. n (None for SDP) is an output only so that Inductor writes it once:
    read by the pooled window loop alone, its box sum was recomputed inside that loop (rohrer100k's evaluation
    speed-up 0.66x -> 0.86x by making n an output). The convolution stays ATen's (Inductor calls it as an
    external kernel, in the layout eager runs it in: `inductor_options`), so conv models and SCS share its speed;
    what the graph saves is dispatch: resnet18's [128, 64, 8, 8] layer 3.85 -> 3.53 ms, a [2, 64, 8, 8] one
    345 -> 218 us."""
    conv_geometry, normalize, sgeom, _ = static
    kernel_size, stride, padding, dilation, groups = conv_geometry
    patch_norm = _make_patch_norm(conv_geometry)

    def layer_inference(x, w, p, q, eps: float, dtype: torch.dtype):
        sdt = torch.promote_types(dtype, torch.float32)
        xc = x.to(dtype)
        c = F.conv2d(xc, w.to(dtype), None, stride, padding, dilation, groups)
        n = sv = None
        if normalize:
            _, n, s = patch_norm(xc, q, eps, sdt, w)
            sv = s.to(sdt).view(1, -1, 1, 1)
        pv = p.to(sdt).view(1, -1, 1, 1)
        if sgeom is None:
            return _sharpen_math(c, n, pv, eps, sdt, sv), n
        return _sharpen_values(windows.pooled_strided(_y(c, n, sdt), sgeom), pv, eps, sv).to(c.dtype), n
    return layer_inference


# Inductor would otherwise turn the graph's convolution to channels_last (its own copies of x and w), a layout a
# conv model's eager convolution does not get
_make_layer_inference.inductor_options = {"layout_optimization": False}


def _conv_out_size(size, kernel_size, stride, padding, dilation) -> tuple:
    """F.conv2d's output plane for an input plane of `size` (below 1 where conv2d has none)."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation))


def layer_inference(x, weight, p, q, conv_geometry, normalize: bool, eps: float, pool, dtype, eager):
    """A sharpened layer's output without autograd (`_make_layer_inference`), where its output runs compiled and
    no special case applies: float16's unit kernels (`functional._kernels`), input or output planes narrower than
    a vector (`_narrow_plane`: the patch norm's and the sharpening's special paths), a pool without a strided
    window geometry; otherwise, and if compilation fails, `eager()`: the layer's ops one by one. (A batch of 0 is
    no special case.)"""
    conv_geometry = tuple(conv_geometry)
    kernel_size, stride, padding, dilation, groups = conv_geometry
    if x.dim() != 4 or dtype == torch.float16 or _small_plane(x):
        return eager()
    size = _conv_out_size(x.shape[-2:], kernel_size, stride, padding, dilation)
    numel = x.shape[0] * weight.shape[0] * size[0] * size[1]
    if not _use_compiled(x, numel) or _narrow_plane(*size) or min(size) < 1:
        return eager()
    sgeom = None if pool is None else windows.strided_geometry(pool, size)
    if pool is not None and sgeom is None:
        return eager()
    args = (x, weight.detach(), p, q, eps, dtype)
    static = (conv_geometry, bool(normalize), sgeom, tuple(weight.shape))  # the shape: dynamo specialises the
    # convolution on its channels, so graphs shared across shapes would recompile up to the limit
    return _fused(_make_layer_inference, static, args, lambda *a: (eager(), None), x, numel, batched=1)[0]


def _max_abs_pool_eager(x: torch.Tensor, pool):
    """Values and flat indices: one pooling pass over `max_abs_key` with indices, and a gather (into a tensor of
    its own, not a view: an in-place ReLU after MaxAbsPool2d must be allowed on its output)."""
    _, kernel_size, stride, padding, dilation, ceil_mode = pool
    idx = F.max_pool2d(max_abs_key(x), kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)[1]
    out = x.new_empty(idx.shape)
    torch.gather(x.flatten(2), 2, idx.flatten(2), out=out.flatten(2))
    return out, idx


def _make_window_pool_train(sgeom):
    def window_pool_train(x):
        return windows.strided_winners(x, sgeom)
    return window_pool_train


def max_abs_pool(x: torch.Tensor, pool) -> torch.Tensor:
    """MaxAbsPool2d for inference, no autograd: compiled, `windows.pooled_strided`; eager, one pooling pass over
    the key with indices and a gather."""
    sgeom = windows.strided_geometry(pool, x.shape[-2:]) if _use_compiled(x) else None
    if sgeom is None:
        return _max_abs_pool_eager(x, pool)[0]
    return _fused(_make_window_pool, sgeom, (x,), lambda x: _max_abs_pool_eager(x, pool)[0], x)


def max_abs_pool_train(x: torch.Tensor, pool):
    """MaxAbsPool2d's values and the winners' flat int64 indices (for its backward pass): compiled,
    `windows.strided_winners`, one loop over the pooled grid (resnet18's overlapping stem pool: ATen's max pooling
    with indices of the key cost twice conv's whole max pooling step); eager, `_max_abs_pool_eager`."""
    sgeom = windows.strided_geometry(pool, x.shape[-2:]) if _use_compiled(x) else None
    if sgeom is None:
        return _max_abs_pool_eager(x, pool)
    return _fused(_make_window_pool_train, sgeom, (x,), lambda x: _max_abs_pool_eager(x, pool), x)


def pool_sharpen_train(c: torch.Tensor, n: torch.Tensor | None, p: torch.Tensor, eps: float, pool,
                       scale: torch.Tensor | None = None):
    """Training forward of a pooled sharpened layer: (output, where the winners are, a, b) for
    `pool_sharpen_backward`. Non-overlapping windows, compiled: the winners' offsets in their windows (floats,
    `windows.winners`), y and n (per channel) at them; otherwise max pooling's flat int64 indices, c at the winners
    and n (per channel) there. `scale`: as in `sharpen`."""
    sdt = _sharpen_dtype(c)
    pv = p.to(sdt).view(1, -1, 1, 1)
    n = None if n is None else n.to(sdt)
    args = (c, n, pv, eps, sdt, _channel_scale(scale, sdt))
    eager = lambda *a: _pool_sharpen_train_eager(*a, pool)  # noqa: E731
    geom = _window_geometry(c, pool)
    if geom is not None:
        return _fused(_make_window_sharpen_train, geom, args, eager, c)
    return _fused(_make_pool_sharpen_train, tuple(pool), args, eager, c)


def _pool_sharpen_train_eager(c, n, pv, eps, sdt, sv, pool):
    """Eager pooled sharpening: (output, the winners' indices, c and n at them); the winners of y = c / n (a
    positive scale per channel, the kernels' inverse norms `sv`, picks the same ones)."""
    _, kernel_size, stride, padding, dilation, ceil_mode = pool
    key = _pool_key_math(c, n, pool[0])
    idx = F.max_pool2d(key, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)[1]
    del key
    flat = idx.flatten(2)
    cg = c.flatten(2).gather(2, flat).view(idx.shape)
    ng = None if n is None else _per_channel(n, c.shape[1]).flatten(2).gather(2, flat).view(idx.shape)
    return _sharpen_eager(cg, ng, pv, eps, sdt, sv), idx, cg, ng  # ng per channel: one group per channel


def pool_sharpen_backward(g, cg, ng, p, where, size, groups: int, eps: float, pool, scale=None):
    """Backward of `pool_sharpen_train`: (d L / d c [B, C, H, W], d L / d n [B, groups, H, W] or None, d L / d p)."""
    sdt = _sharpen_dtype(cg)
    pv = p.to(sdt).view(1, -1, 1, 1)
    sv = _channel_scale(scale, sdt)
    numel = cg.shape[0] * cg.shape[1] * size[0] * size[1]  # the unpooled grid's, as in the forward pass
    if where.is_floating_point():  # window offsets (`windows.winners`); cg is y there, ng n there
        geom = windows.geometry(pool, size)
        gc, gn, u, idx = _fused(_make_window_sharpen_backward, geom, (g, cg, ng, pv, where, groups, eps, sdt, sv),
                                lambda *a: _window_sharpen_backward_eager(*a, geom), cg, numel)
        return _scatter_to_grid(gc, None, idx, groups, size)[0], gn, u.sum(dim=0)
    like = g.new_empty((*cg.shape[:2], *size), dtype=sdt)
    gc, gn, u = _fused(_make_pool_sharpen_backward, tuple(pool), (g, cg, ng, pv, where, like, groups, eps, sdt, sv),
                       lambda g, cg, ng, pv, idx, like, groups, eps, sdt, sv: _pool_sharpen_backward_eager(
                           g, cg, ng, pv, idx, size, groups, eps, sdt, sv), cg, numel)
    return gc, gn, u.sum(dim=0)


def _pool_sharpen_backward_eager(g, cg, ng, pv, idx, size, groups, eps, sdt, sv=None):
    gc, t, u = _sharpen_backward_eager(g, cg, ng, pv, eps, sdt, sv)
    return (*_scatter_to_grid(gc, None if ng is None else t.div_(ng).neg_(), idx, groups, size), u)
