"""Pooled sharpening over non-overlapping windows (kernel == stride, no padding or dilation: the scs-gallery
models' 2x2 and 4x4 pools) written as plain elementwise code for TorchInductor; for evaluation, and for
MaxAbsPool2d's training (`strided_winners`), any undilated pool (resnet18's 3x3 stride-2 stem pool too).

Each window's k*k elements are k*k strided views of the layer's output grid, so picking the winner and sharpening
it is one elementwise loop over the pooled grid: no pooling op, no int64 indices. Compiled with every size but
the batch fixed, that loop runs several times faster on a CPU than ATen's max pooling of a convolution's output
(benchmarks/README.md). Training keeps each winner's offset in its window (0 to k*k - 1, as a float) and the pre-
sharpening values there; the backward pass works on the pooled grid, sums d L / d n over each group's channels
there (`unpool_channel_sum`), and the caller puts d L / d c back at the winners' flat indices
(`offsets_to_indices`) with a scatter, as max pooling's backward does (an elementwise loop over the input grid
did not vectorise).

Winners are exact: the largest value (max) or the largest magnitude, the positive value on a tie (max-abs); a
nan propagates, as in max pooling; on exact ties the first element of the window (row-major) wins. Positions
that ceil_mode adds past the edge never win; padding holds copies, and a winning copy is its original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def geometry(pool, size) -> tuple | None:
    """(absolute, kh, kw, oh, ow, h, w) of `pool` (see `functional.pool_spec`) over an output grid of `size`, or
    None where its windows overlap, pad or dilate (those run through max pooling with indices)."""
    absolute, kernel_size, stride, padding, dilation, ceil_mode = pool
    h, w = size
    (kh, kw) = kernel_size
    if tuple(kernel_size) != tuple(stride) or tuple(padding) != (0, 0) or tuple(dilation) != (1, 1) \
            or h < kh or w < kw:
        return None
    rounding = (lambda a, b: -(-a // b)) if ceil_mode else (lambda a, b: a // b)
    return bool(absolute), kh, kw, rounding(h, kh), rounding(w, kw), h, w


def _out_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """ATen's pooling output size (a ceil_mode window must start inside the input or its left padding)."""
    span = n + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    return out - 1 if ceil_mode and (out - 1) * s >= n + p else out


def strided_geometry(pool, size) -> tuple | None:
    """(absolute, kh, kw, sh, sw, ph, pw, oh, ow) of any undilated pool over a grid of `size`, overlapping windows
    too, for the values (`pooled_strided`: evaluation) or the values and flat indices (`strided_winners`:
    MaxAbsPool2d's training), or None (dilation, a window past the grid)."""
    absolute, kernel_size, stride, padding, dilation, ceil_mode = pool
    if tuple(dilation) != (1, 1) or any(2 * p > k for p, k in zip(padding, kernel_size)) \
            or any(n + 2 * p < k for n, p, k in zip(size, padding, kernel_size)):
        return None
    oh, ow = (_out_size(n, k, s, p, ceil_mode) for n, k, s, p in zip(size, kernel_size, stride, padding))
    return (bool(absolute), *kernel_size, *stride, *padding, oh, ow)


def _strided_views(y: torch.Tensor, sgeom) -> list[torch.Tensor]:
    """The kh*kw strided views [..., oh, ow] of a `strided_geometry` pool: element (i, j) of every window,
    row-major. The padding and ceil_mode's edge hold copies of the nearest element, which lies in the same window:
    no window's value changes, and scanned row-major a window still meets its elements first in row-major order
    (a copy of row 0 above row 0 comes with row 0's own order), so the first winner stays the same element."""
    absolute, kh, kw, sh, sw, ph, pw, oh, ow = sgeom
    h, w = y.shape[-2:]
    end_h, end_w = max((oh - 1) * sh + kh - ph - h, 0), max((ow - 1) * sw + kw - pw - w, 0)
    if ph or pw or end_h or end_w:
        y = F.pad(y, (pw, end_w, ph, end_h), mode="replicate")
    return [y[..., i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] for i in range(kh) for j in range(kw)]


def pooled_strided(y: torch.Tensor, sgeom) -> torch.Tensor:
    """Max or max-abs pooling of y, values only, for any `strided_geometry`."""
    return pooled_values(_strided_views(y, sgeom), sgeom[0])


def strided_winners(y: torch.Tensor, sgeom):
    """Max or max-abs pooling of y for any `strided_geometry`, with the winners' flat (row * w + col) int64
    indices, as max pooling returns them (for the backward pass of overlapping pools: resnet18's 3x3 stride-2
    stem pool). A winner in the padding is a copy: its index is its original's."""
    _, kh, kw, sh, sw, ph, pw, oh, ow = sgeom
    h, w = y.shape[-2:]
    best, offset, _ = _pick(_strided_views(y, sgeom), sgeom[0])
    return best, _flat_indices(offset, (kh, kw, sh, sw, ph, pw, oh, ow, h, w))


def _views(t: torch.Tensor, geom) -> list[torch.Tensor]:
    """The kh*kw strided views [..., oh, ow] of t [..., h, w]: element (i, j) of every window, row-major; past
    the edge (ceil_mode) the last row or column repeated, which never wins (a tie goes to the first element)
    and lets the loop run without masks (with a constant pad, inductor vectorised across channels and ran 14x
    slower on a 15x15 grid), or cut (floor)."""
    _, kh, kw, oh, ow, h, w = geom
    pad_h, pad_w = max(oh * kh - h, 0), max(ow * kw - w, 0)
    if pad_h or pad_w:
        t = F.pad(t, (0, pad_w, 0, pad_h), mode="replicate")
    t = t[..., :oh * kh, :ow * kw]
    return [t[..., i::kh, j::kw] for i in range(kh) for j in range(kw)]


def _nan(t: torch.Tensor) -> torch.Tensor:
    return torch.full((), float("nan"), dtype=t.dtype, device=t.device)


def _running(views, better, others):
    """The first best of `views` by `better` (strict: ties keep the earlier element), with its offset (a float)
    and, where `others` is given, the other tensor's value there: selects only."""
    # the offset in float32 at least: bfloat16 counts exactly only to 256 (a 17x17 window)
    odt = torch.promote_types(views[0].dtype, torch.float32)
    best, offset, at = views[0], torch.zeros_like(views[0], dtype=odt), None if others is None else others[0]
    for i in range(1, len(views)):
        take = better(views[i], best)
        best = torch.where(take, views[i], best)
        offset = torch.where(take, float(i), offset)
        if others is not None:
            at = torch.where(take, others[i], at)
    return best, offset, at


def _pick(views, absolute: bool, others=None):
    """The winning value of each window, its offset in the window and `others` there: the window's max, or for
    max-abs its max and min side by side and the larger magnitude (the max on a tie); on exact ties the first
    element. A nan propagates, as in max pooling, with offset 0 and others' first element. The offset is in float32
    at least.

    Written as selects (`where(v > hi, v, hi)`, the offset and others carried along) with the nans flagged apart:
    inductor leaves these loops scalar (strided loads), and its scalar code for torch.maximum chains, or for
    finding the winner again by `==`, is nan tests and compare branches that random data mispredicts. A 2x2
    max-abs pick of [128, 64, 16, 16] took 9.5 ms on one thread against 0.8 ms."""
    hi, hi_at, hi_other = _running(views, torch.gt, others)
    nan = torch.isnan(views[0])
    for v in views[1:]:
        nan = nan | torch.isnan(v)
    best, offset, other = hi, hi_at, hi_other
    if absolute:
        lo, lo_at, lo_other = _running(views, torch.lt, others)
        positive = hi >= -lo
        best = torch.where(positive, hi, lo)
        offset = torch.where(positive, hi_at, lo_at)
        other = None if others is None else torch.where(positive, hi_other, lo_other)
    best = torch.where(nan, _nan(best), best)
    offset = torch.where(nan, 0.0, offset)
    if others is not None:
        other = torch.where(nan, others[0], other)
    return best, offset, other


def pooled_values(views, absolute: bool) -> torch.Tensor:
    """The winning values alone (see `_pick`)."""
    return _pick(views, absolute)[0]


def winners(y: torch.Tensor, geom, other: torch.Tensor | None = None):
    """Per window, the winning value (`_pick`), its offset in the window (a float: 0., 1., ..., in the loop's
    own type) and `other` (shaped like y, or broadcasting against it) there."""
    return _pick(_views(y, geom), geom[0], None if other is None else _views(other, geom))


def unpool_channel_sum(t: torch.Tensor, offset: torch.Tensor, groups: int, geom) -> torch.Tensor:
    """t [B, C, oh, ow] put at each window's winner (0 elsewhere) and summed over the channels of each group:
    [B, groups, h, w]. Summed on the pooled grid, one sum per window position (k*k reductions over contiguous
    rows), then spread out: summing the unpooled grid over channels made inductor read it across channels,
    element by element."""
    _, kh, kw, oh, ow, h, w = geom
    b, c = t.shape[:2]
    tg, og = t.unflatten(1, (groups, c // groups)), offset.unflatten(1, (groups, c // groups))
    zero = torch.zeros((), dtype=t.dtype, device=t.device)
    sums = [torch.where(og == float(i), tg, zero).sum(dim=2) for i in range(kh * kw)]  # each [B, groups, oh, ow]
    full = torch.stack(sums, dim=-1).view(b, groups, oh, ow, kh, kw).permute(0, 1, 2, 4, 3, 5)
    out = full.reshape(b, groups, oh * kh, ow * kw)[..., :h, :w]
    if out.shape[-2] < h or out.shape[-1] < w:
        out = F.pad(out, (0, w - out.shape[-1], 0, h - out.shape[-2]))
    return out


def offsets_to_indices(offset: torch.Tensor, geom) -> torch.Tensor:
    """Window offsets (floats) of a `geometry` -> the flat (row * w + col) int64 indices max pooling returns."""
    _, kh, kw, oh, ow, h, w = geom
    return _flat_indices(offset, (kh, kw, kh, kw, 0, 0, oh, ow, h, w))


def _flat_indices(offset: torch.Tensor, dims) -> torch.Tensor:
    """Offsets in windows of (kh, kw) at strides (sh, sw) with padding (ph, pw) over an (h, w) grid -> flat
    int64 indices, positions in the padding moved to the element they copy (clamped). Counted in the offsets'
    float type (exact below 2^24, checked) and converted last: int64 division has no vector instructions, and
    doing it per element made the backward graph 4x slower."""
    kh, kw, sh, sw, ph, pw, oh, ow, h, w = dims
    if h * w >= 1 << 24:
        offset = offset.double()
    row = torch.div(offset, kw, rounding_mode="floor")
    col = offset - row * kw
    rows = torch.arange(oh, device=offset.device, dtype=offset.dtype).view(-1, 1) * sh - ph + row
    cols = torch.arange(ow, device=offset.device, dtype=offset.dtype).view(1, -1) * sw - pw + col
    if ph or pw or (oh - 1) * sh + kh - ph > h or (ow - 1) * sw + kw - pw > w:
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    return (rows * w + cols).long()
