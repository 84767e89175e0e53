"""CUDA-only checks (skipped without CUDA): every layer against the float64 reference on the GPU, eager and
compiled (Triton), fused pooling, inference, autocast bfloat16/float16, gradcheck in float64 on the GPU.
`benchmarks/gpu.sh` runs this file and the epoch benchmark on a CUDA machine."""

import pytest
import torch
from torch import nn

from scs_probe.layers import (
    CosineSimilarity2d,
    MaxAbsPool2d,
    SharpenedCosineSimilarity2d,
    SharpenedSDP2d,
    get_backend,
    pool_spec,
    set_backend,
)
from scs_probe.layers import backend as backend_module
from scs_probe.layers.reference import layer_reference, max_abs_pool_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda"
LAYERS = [(SharpenedCosineSimilarity2d, 1), (SharpenedCosineSimilarity2d, 4), (SharpenedSDP2d, 1),
          (CosineSimilarity2d, 1)]
POOLS = [None, (True, 2, None, 0, True), (True, 3, 2, 1, False), (False, 2, None, 0, True)]


@pytest.fixture(params=["eager", "compiled"])
def backend(request):
    before = get_backend()
    set_backend(request.param)
    yield request.param
    set_backend(before)
    backend_module._state["failed"] = None


@pytest.mark.parametrize("pool", POOLS, ids=["unpooled", "maxabs2", "maxabs3s2p1", "max2"])
@pytest.mark.parametrize("cls,groups", LAYERS, ids=["scs", "scs-g4", "sdp", "cos"])
def test_layer_matches_reference_on_cuda(backend, cls, groups, pool):
    torch.manual_seed(0)
    layer = cls(8, 16, 3, padding=1, groups=groups).to(DEV)
    x = torch.randn(4, 8, 13, 11, device=DEV, requires_grad=True)
    spec = None if pool is None else pool_spec(*pool[:4], 1, pool[4])
    out = layer(x, pool=spec)
    ref = layer_reference(layer, x, pool)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, pool=spec), out.detach(), rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    params = [x] + list(layer.parameters())
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(ref, params, g.double())
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4)
    assert backend_module._state["failed"] is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pooled", [False, True])
def test_autocast_close_to_float32(backend, dtype, pooled):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("no native bfloat16")
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(64, 32, 3, padding=1).to(DEV)
    x = (torch.randn(4, 64, 16, 16, device=DEV) * 12).requires_grad_()  # fp16: squares would overflow
    spec = pool_spec(True, 2, None, 0, 1, True) if pooled else None
    ref = layer(x, pool=spec)
    with torch.autocast("cuda", dtype=dtype):
        out = layer(x, pool=spec)
    assert out.dtype == torch.float32 or out.dtype == dtype
    out = out.float()
    assert torch.isfinite(out).all() and (out != 0).float().mean() > 0.99
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=2e-2)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).float().mean() > 0.9


def test_gradcheck_float64_on_cuda():
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(3, 4, 3, padding=1).double().to(DEV)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, device=DEV, requires_grad=True)
    for spec in (None, pool_spec(True, 2, None, 0, 1, True)):
        assert torch.autograd.gradcheck(lambda x, w, p, lq: layer(x, pool=spec),
                                        (x, layer.weight, layer.p, layer.log_q))
    pool = MaxAbsPool2d(3, 2, 1)
    assert torch.autograd.gradcheck(pool, (x,))


def test_max_abs_pool_on_cuda(backend):
    torch.manual_seed(0)
    x = torch.randn(8, 16, 33, 33, device=DEV)
    with torch.no_grad():
        assert torch.equal(MaxAbsPool2d(3, 2, 1)(x), max_abs_pool_reference(x, 3, 2, 1))


def test_zoo_models_train_step_on_cuda(backend):
    from scs_probe.zoo import build_model
    for arch, norm in (("rohrer100k", "none"), ("resnet18", "bn")):
        model = build_model(arch, layer="scs", activation="none", pool="maxabs", norm=norm).to(DEV)
        x = torch.rand(16, 3, 32, 32, device=DEV)
        nn.functional.cross_entropy(model(x), torch.arange(16, device=DEV) % 10).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.eval()
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()
