"""The compiled (TorchInductor) and eager sharpening kernels agree with the float64 reference and each other."""

import warnings

import pytest
import torch

from scs_probe.layers import SharpenedCosineSimilarity2d, SharpenedSDP2d, get_kernels, kernels, set_kernels
from scs_probe.layers.reference import scs_reference, sdp_reference

CASES = [(SharpenedCosineSimilarity2d, 1), (SharpenedCosineSimilarity2d, 4), (SharpenedSDP2d, 1),
         (SharpenedSDP2d, 2)]


@pytest.fixture
def backend():
    """Set a backend for one test; restore the previous one and forget compilation failures afterwards."""
    before = get_kernels()
    yield set_kernels
    set_kernels(before)
    kernels._state["failed"] = None


def _grads(layer, x, backend_name, amp=False):
    set_kernels(backend_name)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = layer(x)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)
    params = [x] + list(layer.parameters())
    return [y.float()] + list(torch.autograd.grad((y.float() * weights).sum(), params))


def _reference(layer, x):
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    xd, wd, pd = x.double(), layer.weight.double(), layer.effective_p().double()
    if isinstance(layer, SharpenedCosineSimilarity2d):
        return scs_reference(xd, wd, pd, layer.effective_q().double(), *args)
    return sdp_reference(xd, wd, pd, *args)


@pytest.mark.parametrize("cls,groups", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_compiled_matches_eager_and_reference(backend, cls, groups):
    torch.manual_seed(groups)
    layer = cls(8, 16, 3, padding=1, groups=groups)
    x = torch.randn(3, 8, 9, 9, requires_grad=True)
    with torch.no_grad():
        x[0, :, :4] = 0  # zero patches
    eager = _grads(layer, x, "eager")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="scs_probe")
        compiled = _grads(layer, x, "compiled")
    assert kernels._state["failed"] is None
    torch.testing.assert_close(eager[0], _reference(layer, x).float(), rtol=1e-4, atol=1e-5)
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
    small, large = torch.zeros(1, 4, 8, 8), torch.zeros(kernels.AUTO_MIN_NUMEL)
    assert not kernels._use_compiled(small) and kernels._use_compiled(large)
    assert not kernels._use_compiled(large.double())  # float64 (gradcheck) always runs eager
    backend("eager")
    assert not kernels._use_compiled(large)


def test_compile_failure_falls_back_to_eager_with_one_warning(backend, monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(kernels, "_state", {"backend": None, "failed": None, "fns": {}})
    monkeypatch.setattr(torch, "compile", broken)
    backend("compiled")
    layer = SharpenedCosineSimilarity2d(4, 6, 3)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="compiled kernels unavailable .*no C\\+\\+ compiler"):
        y = layer(x)
    torch.testing.assert_close(y.double(), _reference(layer, x), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x).sum().backward()  # warned once; the backward runs eager too
    assert torch.isfinite(x.grad).all()


def test_backend_names_are_checked(backend, monkeypatch):
    with pytest.raises(ValueError, match="unknown kernel backend 'fast'"):
        backend("fast")
    monkeypatch.setattr(kernels, "_state", {"backend": None, "failed": None, "fns": {}})
    monkeypatch.setenv("SCS_PROBE_KERNELS", "Eager")
    assert get_kernels() == "eager"
