"""The compiled (TorchInductor) and eager sharpening backends agree with the float64 reference and each other."""

import shutil
import warnings

import pytest
import torch

from scs_probe.layers import SharpenedCosineSimilarity2d, SharpenedSDP2d, get_backend, pool_spec, set_backend
from scs_probe.layers import backend as backend_module
from scs_probe.layers.reference import layer_reference, max_abs_pool_reference

pytestmark = [pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "clang++", "c++")),
                                 reason="TorchInductor's CPU backend needs a C++ compiler"),
              pytest.mark.slow]  # compiles kernels: about a minute cold, seconds from TorchInductor's cache

CASES = [(SharpenedCosineSimilarity2d, 1), (SharpenedCosineSimilarity2d, 4), (SharpenedSDP2d, 1),
         (SharpenedSDP2d, 2)]


def _grads(layer, x, backend_name, amp=False, pool=None):
    set_backend(backend_name)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = layer(x, pool=pool)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)
    params = [x] + list(layer.parameters())
    return [y.float()] + list(torch.autograd.grad((y.float() * weights).sum(), params))


@pytest.mark.parametrize("pool", [None, pool_spec(True, 2, None, 0, 1, True), pool_spec(False, 3, 2, 1, 1, False)],
                         ids=["unpooled", "maxabs-fused", "max-fused"])
@pytest.mark.parametrize("cls,groups", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_compiled_matches_eager_and_reference(backend, cls, groups, pool):
    torch.manual_seed(groups)
    layer = cls(8, 16, 3, padding=1, groups=groups)
    x = torch.randn(3, 8, 9, 9, requires_grad=True)
    with torch.no_grad():
        x[0, :, :4] = 0  # zero patches
    eager = _grads(layer, x, "eager", pool=pool)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="scs_probe")
        compiled = _grads(layer, x, "compiled", pool=pool)
    assert backend_module._state["failed"] is None
    ref = layer_reference(layer, x)
    if pool is not None:
        ref = (max_abs_pool_reference if pool[0] else torch.nn.functional.max_pool2d)(
            ref, pool[1], pool[2], pool[3], ceil_mode=pool[5])
    torch.testing.assert_close(eager[0], ref.float(), rtol=1e-4, atol=1e-5)
    for e, c in zip(eager, compiled):
        assert torch.isfinite(c).all()
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5)


def test_compiled_bfloat16_autocast_matches_eager(backend):
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(8, 16, 3, padding=1)
    x = torch.rand(2, 8, 10, 10, requires_grad=True)
    eager, compiled = _grads(layer, x, "eager", amp=True), _grads(layer, x, "compiled", amp=True)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=2e-2, atol=2e-3)


def test_auto_compiles_only_large_outputs(backend, monkeypatch):
    backend("auto")
    small, large = torch.zeros(1, 4, 8, 8), torch.zeros(backend_module.AUTO_MIN_NUMEL)
    assert not backend_module._use_compiled(small) and backend_module._use_compiled(large)
    assert not backend_module._use_compiled(large.double())  # float64 (gradcheck) always runs eager
    backend("eager")
    assert not backend_module._use_compiled(large)


def test_compile_failure_falls_back_to_eager_with_one_warning(backend, monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(backend_module, "_state", {"backend": None, "failed": None, "fns": {}})
    monkeypatch.setattr(torch, "compile", broken)
    backend("compiled")
    layer = SharpenedCosineSimilarity2d(4, 6, 3)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="compiled kernels unavailable .*no C\\+\\+ compiler"):
        y = layer(x)
    torch.testing.assert_close(y.double(), layer_reference(layer, x), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x).sum().backward()  # warned once; the backward runs eager too
    assert torch.isfinite(x.grad).all()


def test_backend_names_are_checked(backend, monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        backend("fast")
    monkeypatch.setattr(backend_module, "_state", {"backend": None, "failed": None, "fns": {}})
    backend("Compiled")  # the same rule as the environment variable: case-insensitive
    assert get_backend() == "compiled"
    monkeypatch.setattr(backend_module, "_state", {"backend": None, "failed": None, "fns": {}})
    monkeypatch.setenv("SCS_PROBE_BACKEND", "Eager")
    assert get_backend() == "eager"
    monkeypatch.setattr(backend_module, "_state", {"backend": None, "failed": None, "fns": {}})
    monkeypatch.setenv("SCS_PROBE_BACKEND", "fast")
    with pytest.raises(ValueError, match="SCS_PROBE_BACKEND='fast' is not a backend"):
        get_backend()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_pool_key_is_bitwise_the_eager_one(backend, dtype):
    torch.manual_seed(0)
    c, n = torch.randn(2, 6, 9, 9).to(dtype), torch.rand(2, 2, 9, 9) + 0.5
    c[0, 0, 0, :2] = torch.tensor([1.5, -1.5])
    backend("eager")
    want = [backend_module.pool_key(c, n, absolute) for absolute in (True, False)]
    backend("compiled")
    got = [backend_module.pool_key(c, n, absolute) for absolute in (True, False)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_many_weight_shapes_compile_without_reaching_the_recompile_limit(backend):
    """A model's (or a test session's) small layers of a dozen weight shapes: dynamo keeps parameters' sizes
    static, so one graph shared by them recompiled for each and hit dynamo's recompile limit after eight, which
    switched the whole process to eager. Each shape now has a graph of its own."""
    backend("compiled")
    before = backend_module._state["failed"]
    backend_module._state["failed"] = None
    try:
        torch.manual_seed(0)
        for out_channels in range(3, 15):
            layer = SharpenedCosineSimilarity2d(2, out_channels, 3, padding=1)
            layer(torch.rand(2, 2, 5, 5, requires_grad=True)).sum().backward()
            with torch.no_grad():  # inference: one graph with the convolution (`backend.layer_inference`)
                layer(torch.rand(2, 2, 5, 5))
        assert backend_module._state["failed"] is None
    finally:
        backend_module._state["failed"] = before


@pytest.mark.parametrize("k,p", [((1, 1), (0, 0)), ((3, 3), (1, 1)), ((3, 3), (0, 0)), ((5, 3), (2, 0)),
                                 ((7, 7), (3, 3)), ((4, 4), (1, 2))])
def test_box_sum_adjoint_is_the_box_sums_backward(k, p):
    """The compiled patch-norm backward takes a stride-1 box sum's adjoint as a box sum of the zero-padded gradient
    (padding k - 1 - p, through F.pad where avg_pool2d cannot pad that much): it must be avg_pool2d's backward."""
    from scs_probe.layers.functional import _box_sum, _box_sum_backward
    torch.manual_seed(0)
    x = torch.randn(2, 1, 9, 8, dtype=torch.float64)
    out = _box_sum(x, k, (1, 1), p, (1, 1), 1)
    g = torch.randn_like(out)
    want = _box_sum_backward(g, x.shape, k, (1, 1), p, (1, 1), 1, x.dtype)
    assert backend_module._box_adjoint_is_a_box(k, (1, 1), p, (1, 1))
    torch.testing.assert_close(backend_module._box_sum_adjoint(g, k, p), want, rtol=1e-12, atol=1e-12)
    assert not backend_module._box_adjoint_is_a_box(k, (2, 2), p, (1, 1))
