"""The inference path (no autograd function, pooled layers in one pass without indices) and the compiled training
path of pooled layers agree with the autograd path, the eager backend and the float64 reference."""

import shutil

import pytest
import torch
from torch import nn

from scs_probe.layers import (
    MaxAbsPool2d,
    PoolFusedSequential,
    SharpenedCosineSimilarity2d,
    SharpenedSDP2d,
    pool_spec,
)
from scs_probe.layers import backend as backend_module
from scs_probe.layers.reference import layer_reference, max_abs_pool_reference

HAS_CXX = any(shutil.which(c) for c in ("g++", "clang++", "c++"))
BACKENDS = ["eager", pytest.param("compiled", marks=[
    pytest.mark.slow, pytest.mark.skipif(not HAS_CXX, reason="TorchInductor's CPU backend needs a C++ compiler")])]
# the zoo's pools: rohrer 2x2 and 4x4 with ceil_mode, resnet18's 3x3 stride 2 padding 1; max and max-abs
ZOO_POOLS = [(True, 2, None, 0, True), (True, 4, 4, 0, True), (True, 3, 2, 1, False), (False, 2, None, 0, True),
             (False, 3, 2, 1, False)]


def _cases(pools):
    """(backend, pool, cls, groups) for every pool and layer, eager; compiled (each case compiles its own graphs:
    minutes on a cold cache), grouped SCS only with the first two pools (grouping is the same code for all)."""
    layers = [(SharpenedCosineSimilarity2d, 1), (SharpenedCosineSimilarity2d, 2), (SharpenedSDP2d, 1)]
    cases = []
    for name in BACKENDS:
        for i, pool in enumerate(pools):
            for cls, groups in layers:
                # compiled: every graph is built for its case (half a minute each on a cold cache, and CI starts
                # cold), so plain SCS with the first pools only; test_backend covers the other layers compiled
                if name != "eager" and (cls is not SharpenedCosineSimilarity2d or groups == 2 or i >= 3):
                    continue
                label = f"{'scs' if cls is SharpenedCosineSimilarity2d else 'sdp'}{'-groups2' if groups == 2 else ''}"
                pid = "unpooled" if pool is None else \
                    f"{'maxabs' if pool[0] else 'max'}{pool[1]}s{pool[2]}p{pool[3]}{'ceil' if pool[4] else ''}"
                marks = getattr(name, "marks", ())
                cases.append(pytest.param(getattr(name, "values", (name,))[0], pool, cls, groups, marks=marks,
                                          id=f"{label}-{pid}-{getattr(name, 'values', (name,))[0]}"))
    return cases


@pytest.mark.parametrize("name,pool,cls,groups", _cases([None] + ZOO_POOLS))
def test_inference_equals_training_forward_and_reference(backend, name, pool, cls, groups):
    backend(name)
    torch.manual_seed(groups)
    layer = cls(4, 6, 3, padding=1, groups=groups)
    x = torch.randn(2, 4, 11, 9)
    x[0, :, :3] = 0  # zero patches: y == 0, ties between +0 and -0
    spec = None if pool is None else pool_spec(*pool[:4], 1, pool[4])
    with torch.no_grad():
        fast = layer(x, pool=spec)
    slow = layer(x.requires_grad_(), pool=spec)  # the autograd function
    assert slow.grad_fn is not None
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-6, atol=1e-7)
    ref = layer_reference(layer, x.detach(), pool)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-4, atol=1e-5)
    assert backend_module._state["failed"] is None


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("pool", ZOO_POOLS[:3], ids=["2ceil", "4ceil", "3s2p1"])
def test_max_abs_pool_inference_is_exact(backend, name, pool):
    backend(name)
    torch.manual_seed(0)
    x = torch.randn(3, 5, 13, 10)
    x[0, 0, :2, :2] = torch.tensor([[1.5, -1.5], [0.0, -0.0]])  # an exact tie: the positive value wins
    x[1, 1] = 0
    _, k, s, pad, ceil = pool
    with torch.no_grad():
        got = MaxAbsPool2d(k, s, pad, ceil_mode=ceil)(x)
    assert torch.equal(got, max_abs_pool_reference(x, k, s, pad, ceil_mode=ceil))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("size", [2, 1])  # a plane of 4 elements runs as a flat row (backend._small_plane); 1 not
@pytest.mark.parametrize("cls,groups", [(SharpenedCosineSimilarity2d, 2), (SharpenedSDP2d, 1)], ids=["scs", "sdp"])
def test_small_planes_match_the_reference_forward_and_backward(backend, name, size, cls, groups):
    """resnet18's last layers at 32 px: outputs and every gradient (x, weight, p, q) against float64 autograd."""
    backend(name)
    torch.manual_seed(size)
    layer = cls(6, 8, 3, padding=1, groups=groups)
    x = torch.randn(5, 6, size, size, requires_grad=True)
    x.data[0, :, 0] = 0  # zero patches: y == 0
    out = layer(x)
    ref = layer_reference(layer, x.double())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # inference: the raw kernels' convolution, their inverse norms folded into n per element
        torch.testing.assert_close(layer(x).double(), ref.detach(), rtol=1e-4, atol=1e-5)
    g = torch.linspace(-1, 1, out.numel()).view_as(out)
    params = [x] + list(layer.parameters())
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g.double())):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-3, atol=1e-5)
    nn.ReLU(inplace=True)(layer(x)).sum().backward()  # the layer's output is no view: in-place ops may follow
    assert backend_module._state["failed"] is None


# (kernel, stride, padding, dilation, groups): stride-1 box sums whose adjoint is a box (padded by avg_pool2d,
# by F.pad, unequal in height and width), and the strided, dilated and widely padded ones that keep ATen's backward
PATCH_GEOMETRIES = [((3, 3), (1, 1), (1, 1), (1, 1), 1), ((3, 3), (1, 1), (0, 0), (1, 1), 2),
                    ((3, 1), (1, 1), (0, 0), (1, 1), 1), ((2, 2), (1, 1), (1, 1), (1, 1), 1),
                    ((3, 3), (2, 2), (1, 1), (1, 1), 2), ((3, 3), (1, 1), (1, 1), (2, 2), 1),
                    ((3, 3), (1, 1), (2, 2), (1, 1), 1)]


@pytest.mark.parametrize("geometry", PATCH_GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}g{}".format(
    *(v[0] if isinstance(v, tuple) else v for v in g)))
def test_compiled_patch_norm_backward_formula_is_the_patch_norms_gradient(geometry):
    """The patch-norm backward graph the compiled backend builds, run here uncompiled (the layer tests compile it
    for stride-1 "same" padding only): each branch, the box sum's adjoint as a box sum included, is autograd's
    gradient of the patch norm. A wrong branch choice would fail to compile and send the process to eager."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    root, _, _ = backend_module._make_patch_norm(geometry)(x, torch.zeros((), dtype=x.dtype), 1e-6, x.dtype)
    gn, gx = torch.randn_like(root), torch.randn_like(x)
    want = gx + torch.autograd.grad(root, x, gn)[0]
    got = backend_module._make_patch_norm_backward(geometry)(gx, gn, root.detach(), x.detach(), x.dtype)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", BACKENDS)
def test_small_planes_of_an_empty_batch_backpropagate(backend, name):
    """A batch of 0 on 2x2 planes (the flat rows of `backend._small_plane`): reshape(0, -1) could not tell -1."""
    backend(name)
    layer = SharpenedCosineSimilarity2d(4, 4, 3, padding=1, groups=2)
    x = torch.zeros(0, 4, 2, 2, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape and layer.p.grad.abs().sum() == 0
    assert backend_module._state["failed"] is None


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("pool", ZOO_POOLS[:3], ids=["2ceil", "4ceil", "3s2p1"])
def test_max_abs_pool_training_gradients_match_the_reference(backend, name, pool):
    """The compiled training pool (`windows.strided_winners`: values and indices from one loop) routes gradients
    where the float64 reference's autograd does, ties and zeros included."""
    backend(name)
    torch.manual_seed(1)
    x = torch.randn(3, 5, 32, 30)  # 2^14 elements: compiled under the `compiled` backend
    x[0, 0, :2, :2] = torch.tensor([[1.5, -1.5], [0.0, -0.0]])
    x[1, 1] = 0
    _, k, s, pad, ceil = pool
    x.requires_grad_()
    got = MaxAbsPool2d(k, s, pad, ceil_mode=ceil)(x)
    xr = x.detach().double().requires_grad_()
    ref = max_abs_pool_reference(xr, k, s, pad, ceil_mode=ceil)
    assert torch.equal(got.double(), ref.detach())
    g = torch.linspace(-1, 1, got.numel()).view_as(got)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0].double(), torch.autograd.grad(ref, xr, g.double())[0])
    nn.ReLU(inplace=True)(MaxAbsPool2d(k, s, pad, ceil_mode=ceil)(x)).sum().backward()  # its output is no view
    assert backend_module._state["failed"] is None


@pytest.mark.parametrize("name,pool,cls,groups", _cases(ZOO_POOLS))
def test_pooled_training_gradients_match_the_unfused_pair(backend, name, pool, cls, groups):
    """Forward and gradients of the fused pooled layer (eager, compiled) against the layer then the pool. The
    compiled case differentiates after switching to eager: its compiled forward's winners through the eager
    backward a failed compilation falls back to (the compiled backward: test_backend)."""
    backend(name)
    torch.manual_seed(groups)
    layer = cls(4, 6, 3, padding=1, groups=groups)
    x = torch.randn(2, 4, 11, 9, requires_grad=True)
    absolute, k, s, pad, ceil = pool
    spec = pool_spec(absolute, k, s, pad, 1, ceil)
    fused = layer(x, pool=spec)
    backend("eager")
    plain = (MaxAbsPool2d(k, s, pad, ceil_mode=ceil) if absolute else nn.MaxPool2d(k, s, pad, ceil_mode=ceil))(
        layer(x))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    g = torch.linspace(-1, 1, fused.numel()).view_as(fused)
    params = [x] + list(layer.parameters())
    for a, b in zip(torch.autograd.grad(fused, params, g), torch.autograd.grad(plain, params, g)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert backend_module._state["failed"] is None


@pytest.mark.parametrize("name", BACKENDS)
def test_eval_of_a_zoo_model_equals_its_training_forward(backend, name):
    from scs_probe.zoo import build_model
    backend(name)
    model = build_model("rohrer100k", layer="scs", activation="none", pool="maxabs").eval()
    assert isinstance(model, PoolFusedSequential)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        fast = model(x)
    torch.testing.assert_close(fast, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CXX, reason="TorchInductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("pool", [None, (True, 2, None, 0, True)], ids=["unpooled", "maxabs2"])
def test_inference_at_model_sizes_runs_as_one_graph_per_layer(backend, pool):
    """At a model's sizes (`auto`, an output of 2 x 16 x 48 x 48 elements) a no-grad forward is one compiled graph
    (convolution, norms and sharpening: `backend.layer_inference`), equal to the training forward; float16's unit
    kernels and narrow planes keep their own paths."""
    backend("auto")
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 48, 48)
    spec = None if pool is None else pool_spec(*pool[:4], 1, pool[4])
    before = {k for k in backend_module._state["fns"] if k[0] == "_make_layer_inference"}
    with torch.no_grad():
        fast = layer(x, pool=spec)
    assert {k for k in backend_module._state["fns"] if k[0] == "_make_layer_inference"} - before
    torch.testing.assert_close(fast, layer(x.requires_grad_(), pool=spec).detach(), rtol=1e-5, atol=1e-6)
    assert backend_module._state["failed"] is None


def test_no_autograd_graph_or_saved_tensors_under_no_grad():
    layer = SharpenedCosineSimilarity2d(3, 4, 3)
    with torch.no_grad():
        out = layer(torch.rand(1, 3, 8, 8), pool=pool_spec(True, 2))
    assert out.grad_fn is None
    # a frozen layer on an input needing no gradient runs without the autograd function too
    for prm in layer.parameters():
        prm.requires_grad_(False)
    assert layer(torch.rand(1, 3, 8, 8)).grad_fn is None


def test_inference_follows_weights_changed_in_place_even_through_data():
    """No stale kernel norms: an optimizer step, `load_state_dict` and a change through `.data` (EMA code does
    that; it bumps no version counter the parameter shows) all reach the next no-grad forward."""
    torch.manual_seed(0)
    layer, other = SharpenedCosineSimilarity2d(3, 4, 3), SharpenedCosineSimilarity2d(3, 4, 3)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        layer(x)
        for change in (lambda: layer.weight.add_(torch.randn_like(layer.weight)),
                       lambda: layer.load_state_dict(other.state_dict()),
                       lambda: layer.weight.data[:2].mul_(-3)):  # changes the norms, not only signs
            change()
            torch.testing.assert_close(layer(x).double(), layer_reference(layer, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train", [False, True], ids=["no_grad", "train"])
def test_an_input_of_the_wrong_channel_count_raises_and_leaves_compilation_on(backend, train):
    """The inference graph holds the convolution, so dynamo met a wrong input while tracing it: that error turned
    the whole process eager (`_state['failed']`) before the real one was raised. It is the input's error, not the
    compiler's: raised as eager raises it, and compilation stays on."""
    backend("compiled")
    layer = SharpenedCosineSimilarity2d(4, 6, 3, padding=1)
    x = torch.randn(2, 3, 8, 8, requires_grad=train)
    with torch.set_grad_enabled(train), pytest.raises(RuntimeError, match="channels"):
        layer(x)
    assert backend_module._state["failed"] is None
