"""Pooling over non-overlapping windows as elementwise code (`layers.windows`) picks what max and max-abs pooling
pick, and its adjoint puts gradients back where max pooling's backward does."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from scs_probe.layers import backend, pool_spec, windows
from scs_probe.layers.reference import max_abs_pool_reference

HAS_CXX = any(shutil.which(c) for c in ("g++", "clang++", "c++"))
# (kernel, ceil_mode, height, width): even and odd grids, ceil and floor, the zoo's 2x2 and 4x4, a 3x3
CASES = [(2, True, 8, 6), (2, True, 15, 15), (2, False, 15, 9), (4, True, 15, 8), (3, False, 10, 11),
         (3, True, 10, 11)]


def _data(h, w, seed=0):
    torch.manual_seed(seed)
    y = torch.randn(3, 4, h, w, dtype=torch.float64).round(decimals=1)  # many exact ties, +-pairs among them
    y[0, 0] = 0.0
    y[1, 1, :4, :4] = 0.0
    y[1, 1, :2, :2] = torch.tensor([[-1.5, 1.5], [1.5, -1.5]], dtype=torch.float64)
    return y


def _pool(y, absolute, k, ceil):
    if absolute:
        return max_abs_pool_reference(y, k, k, 0, ceil_mode=ceil)
    return F.max_pool2d(y, k, k, 0, ceil_mode=ceil)


@pytest.mark.parametrize("absolute", [True, False], ids=["maxabs", "max"])
@pytest.mark.parametrize("k,ceil,h,w", CASES)
def test_window_values_and_winners_match_pooling(absolute, k, ceil, h, w):
    y = _data(h, w, seed=k + h)
    spec = pool_spec(absolute, k, None, 0, 1, ceil)
    geom = windows.geometry(spec, (h, w))
    want = _pool(y, absolute, k, ceil)
    assert torch.equal(windows.pooled_strided(y, windows.strided_geometry(spec, (h, w))), want)
    best, offset, _ = windows.winners(y, geom)
    assert torch.equal(best, want)
    idx = windows.offsets_to_indices(offset, geom)
    assert torch.equal(y.flatten(2).gather(2, idx.flatten(2)).view_as(want), want)  # the winner holds the value
    if absolute:  # the +-1.5 window: the first positive 1.5 wins
        assert offset[1, 1, 0, 0] == 1 and best[1, 1, 0, 0] == 1.5
    else:  # on ties the first element of the window wins, as max pooling's own indices say
        assert torch.equal(idx, F.max_pool2d(y, k, k, 0, ceil_mode=ceil, return_indices=True)[1])
    assert int(idx.max()) < h * w  # never a position past the edge


@pytest.mark.parametrize("absolute", [True, False], ids=["maxabs", "max"])
@pytest.mark.parametrize("k,s,pad,ceil", [(3, 2, 1, False), (3, 2, 1, True), (2, 1, 0, False), (3, 3, 1, True),
                                          (2, 2, 1, True), (4, 2, 2, False)])
@pytest.mark.parametrize("h,w", [(16, 16), (15, 9), (7, 8)])
def test_strided_values_match_overlapping_and_padded_pooling(absolute, k, s, pad, ceil, h, w):
    y = _data(h, w, seed=k * s + h)
    spec = pool_spec(absolute, k, s, pad, 1, ceil)
    want = max_abs_pool_reference(y, k, s, pad, ceil_mode=ceil) if absolute else \
        F.max_pool2d(y, k, s, pad, ceil_mode=ceil)
    assert torch.equal(windows.pooled_strided(y, windows.strided_geometry(spec, (h, w))), want)


@pytest.mark.parametrize("absolute", [True, False], ids=["maxabs", "max"])
@pytest.mark.parametrize("k,s,pad,ceil", [(3, 2, 1, False), (3, 2, 1, True), (2, 1, 0, False), (2, 2, 1, True),
                                          (4, 2, 2, False), (2, 2, 0, True)])
@pytest.mark.parametrize("h,w", [(16, 16), (15, 9)])
def test_strided_winners_are_max_poolings_indices(absolute, k, s, pad, ceil, h, w):
    """Overlapping and padded windows (training through MaxAbsPool2d): the winner's flat index is the one max
    pooling (of the max-abs key) returns, never a position in the padding."""
    y = _data(h, w, seed=k * s + w)
    spec = pool_spec(absolute, k, s, pad, 1, ceil)
    best, idx = windows.strided_winners(y, windows.strided_geometry(spec, (h, w)))
    key = backend.max_abs_key(y) if absolute else y
    _, want_idx = F.max_pool2d(key, k, s, pad, ceil_mode=ceil, return_indices=True)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, want_idx)
    assert torch.equal(best, y.flatten(2).gather(2, idx.flatten(2)).view_as(best))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,s,pad", [(2, 2, 0), (3, 2, 1), (24, 24, 0)])
def test_strided_winners_of_half_precision_grids_have_exact_indices(dtype, k, s, pad):
    """MaxAbsPool2d trains on bfloat16/float16 activations: offsets and flat indices counted in the input's own type
    were rounded past 256 (bfloat16) or 2048 (float16): wrong winners' positions, and indices past the grid."""
    h = w = 48
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(k)).to(dtype)
    spec = pool_spec(True, k, s, pad, 1, False)
    best, idx = windows.strided_winners(x, windows.strided_geometry(spec, (h, w)))
    assert int(idx.max()) < h * w
    assert torch.equal(best, x.flatten(2).gather(2, idx.flatten(2)).view_as(best))  # the winner is where idx says
    assert torch.equal(best.double(), max_abs_pool_reference(x.double(), k, s, pad))


def test_nan_propagates_and_its_window_keeps_a_real_position():
    y = torch.zeros(1, 1, 3, 3)
    y[0, 0, 2, 2] = float("nan")
    geom = windows.geometry(pool_spec(True, 2, None, 0, 1, True), (3, 3))
    best, offset, _ = windows.winners(y, geom)
    assert torch.isnan(best[0, 0, 1, 1]) and not torch.isnan(best[0, 0, 0, 0])
    assert int(windows.offsets_to_indices(offset, geom).max()) < 9


@pytest.mark.parametrize("k,ceil,h,w", CASES)
@pytest.mark.parametrize("groups", [1, 2])
def test_unpool_channel_sum_is_max_pooling_backward_summed(k, ceil, h, w, groups):
    y = _data(h, w, seed=k)
    spec = pool_spec(True, k, None, 0, 1, ceil)
    geom = windows.geometry(spec, (h, w))
    _, offset, _ = windows.winners(y, geom)
    t = torch.randn(*offset.shape, dtype=torch.float64)
    idx = windows.offsets_to_indices(offset, geom)
    want = torch.zeros(3, 4, h * w, dtype=torch.float64).scatter_add_(2, idx.flatten(2), t.flatten(2))
    want = want.view(3, 4, h, w)
    summed = windows.unpool_channel_sum(t, offset, groups, geom)
    torch.testing.assert_close(summed, want.unflatten(1, (groups, -1)).sum(dim=2), rtol=0, atol=1e-12)


def test_overlapping_or_padded_pools_have_no_window_geometry():
    assert windows.geometry(pool_spec(True, 3, 2, 1, 1, False), (16, 16)) is None  # resnet18's stem pool
    assert windows.geometry(pool_spec(True, 2, 2, 1, 1, False), (16, 16)) is None
    assert windows.geometry(pool_spec(True, 2, 2, 0, 2, False), (16, 16)) is None
    assert windows.geometry(pool_spec(True, 4, 4, 0, 1, True), (3, 8)) is None  # grid smaller than a window
    assert windows.geometry(pool_spec(True, 2, None, 0, 1, True), (15, 8)) == (True, 2, 2, 8, 4, 15, 8)
    assert windows.geometry(pool_spec(False, 2, None, 0, 1, False), (15, 8)) == (False, 2, 2, 7, 4, 15, 8)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CXX, reason="TorchInductor's CPU backend needs a C++ compiler")
def test_compiled_training_uses_the_window_kernels_and_reuses_them_for_other_batches():
    from torch._dynamo.utils import counters

    from scs_probe.layers import SharpenedCosineSimilarity2d
    before = backend.get_backend()
    backend.set_backend("compiled")
    try:
        torch.manual_seed(0)
        layer = SharpenedCosineSimilarity2d(3, 16, 3)
        spec = pool_spec(True, 2, None, 0, 1, True)
        c, n = torch.randn(4, 16, 15, 15), torch.rand(4, 1, 15, 15) + 0.5
        _, where, _, _ = backend.pool_sharpen_train(c, n, layer.p.detach(), 1e-6, spec)
        assert where.is_floating_point()  # offsets in windows, not max pooling's int64 indices
        def step(batch):  # inputs and outputs of 2^16 elements or more: sizes fixed, the batch symbolic
            x = torch.rand(batch, 3, 68, 68, requires_grad=True)
            layer(x, pool=spec).sum().backward()
            with torch.no_grad():
                layer(x, pool=spec)
        step(5)
        graphs = counters["stats"]["unique_graphs"]
        for batch in (6, 7, 12):  # the batch is symbolic: no graph of its own
            step(batch)
        assert counters["stats"]["unique_graphs"] == graphs
        # from 16 images on, ATen may pick another convolution backend, and the inference graph, which holds the
        # convolution (`backend.layer_inference`), guards its batch on that: one graph more, then none
        step(32)
        assert counters["stats"]["unique_graphs"] <= graphs + 1
        graphs = counters["stats"]["unique_graphs"]
        step(64)
        assert counters["stats"]["unique_graphs"] == graphs
        assert any(key[2] for key in backend._state["fns"])  # compiled with fixed sizes
        assert backend._state["failed"] is None
    finally:
        backend.set_backend(before)
