"""The graphs that put several of a layer's steps together (`backend.norms_backward`, `backend.layer_inference`),
checked as plain functions, uncompiled: their formulas against autograd and the training forward, and which
layers take the inference graph. Seconds, no C++ compiler: the compiled runs of the same formulas are in
test_fast_paths and test_backend."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from scs_probe.layers import SharpenedCosineSimilarity2d, SharpenedSDP2d, pool_spec, windows
from scs_probe.layers import backend as backend_module
from scs_probe.layers.functional import patch_sq_norm

EPS = 1e-6


def test_conv_out_size_is_conv2ds():
    """`_conv_out_size` decides which layers take the inference graph: it must be F.conv2d's output size for
    every stride, padding and dilation, and below 1 where F.conv2d has no output."""
    for size, k, s, p, d in itertools.product([(7, 6), (5, 5), (1, 1), (3, 8)], [(3, 3), (1, 1), (2, 3)],
                                              [(1, 1), (2, 3)], [(0, 0), (1, 2)], [(1, 1), (2, 1)]):
        got = backend_module._conv_out_size(size, k, s, p, d)
        try:
            want = F.conv2d(torch.zeros(1, 1, *size), torch.zeros(1, 1, *k), None, s, p, d).shape[-2:]
        except RuntimeError:  # no output: the layer keeps its op-by-op path, which raises the same error
            assert min(got) < 1, (size, k, s, p, d)
            continue
        assert got == tuple(want), (size, k, s, p, d)


def _norms_case(groups, seed=0):
    """An SCS layer's pieces in float64 with L = sum(G * y), y = c s / n per group: (x, w, q, geometry, G)."""
    torch.manual_seed(seed)
    geometry = ((3, 2), (2, 1), (1, 0), (1, 2), groups)
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, 3, 2, dtype=torch.float64)
    q = torch.tensor(0.3, dtype=torch.float64)
    return x, w, q, geometry


def _forward(x, w, q, geometry):
    (kernel_size, stride, padding, dilation, groups) = geometry
    c = F.conv2d(x, w, None, stride, padding, dilation, groups)
    root = (patch_sq_norm(x, kernel_size, stride, padding, dilation, groups) + EPS).sqrt()
    n = root + q
    s = backend_module.kernel_inverse_norms_math(w, EPS)
    y = (backend_module._grouped(c * s.view(1, -1, 1, 1), groups) / n.unsqueeze(2)).flatten(1, 2)
    return c, root, n, s, y


@pytest.mark.parametrize("unit", [False, True], ids=["raw", "unit"])
@pytest.mark.parametrize("terms", [False, True], ids=["gn", "t"])
@pytest.mark.parametrize("fn", ["math", "eager"])
def test_norms_backward_is_autograds_gradient(fn, terms, unit):
    """`norms_backward`'s graph and its eager twin: the convolution's gradients (raw kernels, or float16's unit
    kernels w s) plus both norms' terms, and q's gradient, equal autograd's through the whole layer; given t
    (`sharpen_backward`'s, unpooled), they reduce it to d L / d n themselves, per group and with its sign."""
    x, w, q, geometry = _norms_case(groups=2)
    groups = geometry[-1]
    xr, wr, qr = (t.clone().requires_grad_() for t in (x, w, q))
    c, root, n, s, y = _forward(xr, wr, qr, geometry)
    g = torch.randn_like(y)
    want = torch.autograd.grad((g * y).sum(), (xr, wr, qr))

    # the pieces the autograd function hands over: d L / d c (through c alone, s and n fixed), t or d L / d n
    root, n, s = root.detach(), n.detach(), s.detach()
    gc = (backend_module._grouped(g * s.view(1, -1, 1, 1), groups) / n.unsqueeze(2)).flatten(1, 2)
    t = g * y.detach()  # d L / d n = -sum_group(t) / n
    gn = -backend_module._grouped(t, groups).sum(dim=2) / n
    kernel_size, stride, padding, dilation, _ = geometry
    wc = w * s.view(-1, 1, 1, 1) if unit else w  # float16 convolves with the unit kernels
    gcu = gc / s.view(1, -1, 1, 1) if unit else gc  # ... and then d L / d c carries no s
    gx, gw, _ = torch.ops.aten.convolution_backward(gcu, x, wc, None, list(stride), list(padding), list(dilation),
                                                    False, [0, 0], groups, [True, True, False])
    args = (gx, t if terms else gn, root, x, n if terms else None, gw, w, s, torch.float64, unit)
    if fn == "math":
        got = backend_module._make_norms_backward(geometry)(*args)
    else:
        got = backend_module._make_norms_backward(geometry, eager=True)(*args)
    for name, a, b in zip(("x", "w", "q"), got, want):
        torch.testing.assert_close(a.reshape(b.shape), b, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("pool", [None, (True, 2, None, 0, True), (False, 3, 2, 1, False)],
                         ids=["unpooled", "maxabs2ceil", "max3s2p1"])
@pytest.mark.parametrize("cls,groups,stride", [(SharpenedCosineSimilarity2d, 1, 1), (SharpenedCosineSimilarity2d, 2, 2),
                                               (SharpenedSDP2d, 1, 1)], ids=["scs", "scs-groups2-s2", "sdp"])
def test_layer_inference_graph_is_the_training_forward(backend, cls, groups, stride, pool):
    """`_make_layer_inference`'s function (uncompiled) equals the autograd function's forward: the kernels'
    inverse norms s applied, n per group, the pool's winners; and its n is the patch norm."""
    backend("eager")
    torch.manual_seed(groups)
    layer = cls(4, 6, 3, stride=stride, padding=1, groups=groups)
    x = torch.randn(2, 4, 11, 10)
    spec = None if pool is None else pool_spec(*pool[:4], 1, pool[4])
    geometry = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, groups)
    size = backend_module._conv_out_size(x.shape[-2:], *geometry[:4])
    sgeom = None if spec is None else windows.strided_geometry(spec, size)
    assert spec is None or sgeom is not None
    normalize = cls is SharpenedCosineSimilarity2d
    q = layer.effective_q() if normalize else layer.weight.new_zeros(())
    fn = backend_module._make_layer_inference((geometry, normalize, sgeom, tuple(layer.weight.shape)))
    with torch.no_grad():
        out, n = fn(x, layer.weight, layer.effective_p(), q, layer.eps, x.dtype)
    want = layer(x.clone().requires_grad_(), pool=spec).detach()
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-7)
    if normalize:
        root = (patch_sq_norm(x, *geometry) + layer.eps).sqrt()
        torch.testing.assert_close(n, root + q.detach())


def _route(monkeypatch, backend):
    """The `compiled` backend with `_compiled` returning the uncompiled function: [(make's name, static)] of
    every graph a forward takes, without compiling anything."""
    backend("compiled")
    taken = []

    def compiled(make, static, args, fixed=True):
        taken.append((make.__name__, static, backend_module._signature(args, fixed)))
        return make(static)
    monkeypatch.setattr(backend_module, "_compiled", compiled)
    return taken


@pytest.mark.parametrize("pool", [None, (True, 2, None, 0, True)], ids=["unpooled", "maxabs2ceil"])
@pytest.mark.parametrize("size,graph", [((9, 9), True), ((1, 1), True), ((3, 3), False), ((8, 8), False)],
                         ids=["9x9", "1x1", "narrow-input", "narrow-output"])
def test_which_layers_take_the_inference_graph(backend, monkeypatch, size, graph, pool):
    """Under no_grad a layer is one graph, but where a special case applies: input planes narrower than a vector
    (the patch norm's `_small_plane` rule), and output planes as narrow (the sharpening's flat rows: here the
    stride-3 8x8 input's 3x3 output); 1x1 planes are no special case. Either way the values are the layer's."""
    if pool is not None and size == (1, 1):
        pytest.skip("a 2x2 pool needs an output of two elements at least")
    taken = _route(monkeypatch, backend)
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(4, 6, 3, stride=3 if size == (8, 8) else 1, padding=1)
    x = torch.randn(2, 4, *size)
    spec = None if pool is None else pool_spec(*pool[:4], 1, pool[4])
    with torch.no_grad():
        out = layer(x, pool=spec)
    assert any(name == "_make_layer_inference" for name, _, _ in taken) == graph
    torch.testing.assert_close(out, layer(x.clone().requires_grad_(), pool=spec).detach(), rtol=1e-6, atol=1e-7)


def test_float16_and_overlapping_pools_keep_their_paths(backend, monkeypatch):
    """float16 convolves with unit kernels (`functional._kernels`), which the graph does not; a pool whose windows
    have no strided geometry (dilated) keeps the op-by-op path too."""
    taken = _route(monkeypatch, backend)
    layer = SharpenedCosineSimilarity2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 9, 9)
    args = (x, layer.weight, layer.effective_p(), layer.effective_q(), ((3, 3), (1, 1), (1, 1), (1, 1), 1), True,
            layer.eps)
    assert backend_module.layer_inference(*args, None, torch.float16, lambda: "eager") == "eager"
    dilated = pool_spec(True, 2, 2, 0, 2, False)
    assert windows.strided_geometry(dilated, (9, 9)) is None
    assert backend_module.layer_inference(*args, dilated, torch.float32, lambda: "eager") == "eager"
    assert not taken


def test_inference_graphs_are_keyed_by_the_kernels_shape(backend, monkeypatch):
    """Layers that differ in their kernels' shape alone (p computed, not a parameter: no other argument tells)
    get graphs of their own: dynamo specialises the convolution on its channels, and one graph shared by a dozen
    shapes recompiled up to dynamo's limit."""
    taken = _route(monkeypatch, backend)
    with torch.no_grad():
        for out_channels in (3, 4):
            SharpenedCosineSimilarity2d(2, out_channels, 3, padding=1)(torch.rand(2, 2, 5, 5))
    keys = {(static, sig) for name, static, sig in taken if name == "_make_layer_inference"}
    assert len(keys) == 2


def test_an_empty_batch_takes_the_inference_graph(backend, monkeypatch):
    """A batch of 0 (a model's output sizes without images) is no special case: its output is empty."""
    taken = _route(monkeypatch, backend)
    layer = SharpenedCosineSimilarity2d(4, 6, 3, padding=1, groups=2)
    with torch.no_grad():
        out = layer(torch.randn(0, 4, 9, 9))
    assert out.shape == (0, 6, 9, 9) and any(name == "_make_layer_inference" for name, _, _ in taken)
