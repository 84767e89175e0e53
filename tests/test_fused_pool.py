"""A sharpened layer fused with the max or max-abs pooling after it equals the two run one after the other."""

import pytest
import torch
from torch import nn

from scs_probe.layers import MaxAbsPool2d, PoolFusedSequential, SharpenedCosineSimilarity2d, SharpenedSDP2d, pool_spec
from scs_probe.layers.backend import max_abs_key
from scs_probe.zoo import build_model

POOLS = [(2, None, 0, True), (3, 2, 1, False), (4, 4, 0, True)]


def _params(layer):
    return list(layer.parameters())


@pytest.mark.parametrize("cls", [SharpenedCosineSimilarity2d, SharpenedSDP2d])
@pytest.mark.parametrize("absolute", [True, False], ids=["maxabs", "max"])
@pytest.mark.parametrize("k,s,pad,ceil", POOLS)
@pytest.mark.parametrize("groups", [1, 2])
def test_fused_equals_layer_then_pool(cls, absolute, k, s, pad, ceil, groups):
    torch.manual_seed(k + groups)
    layer = cls(4, 6, 3, padding=1, groups=groups).double()
    pool = (MaxAbsPool2d if absolute else nn.MaxPool2d)(k, s, pad, ceil_mode=ceil)
    x = torch.randn(2, 4, 11, 9, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        x[0, :, :3] = 0  # zero patches: y == 0 exactly
    fused = layer(x, pool=pool_spec(absolute, k, s, pad, 1, ceil))
    plain = pool(layer(x))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-14)
    g = torch.randn_like(fused)
    for a, b in zip(torch.autograd.grad(fused, [x] + _params(layer), g),
                    torch.autograd.grad(plain, [x] + _params(layer), g)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_gradcheck():
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    spec = pool_spec(True, 2, None, 0, 1, True)
    assert torch.autograd.gradcheck(lambda x, w, p, lq: layer(x, pool=spec), (x, layer.weight, layer.p, layer.log_q))


def test_sequential_fuses_keeps_state_dict_and_respects_hooks():
    torch.manual_seed(0)
    mods = [SharpenedCosineSimilarity2d(3, 8, 3), MaxAbsPool2d(2, ceil_mode=True), nn.ReLU(inplace=True),
            SharpenedSDP2d(8, 4, 3, padding=1), nn.MaxPool2d(2), nn.Flatten()]
    fused, plain = PoolFusedSequential(*mods), nn.Sequential(*mods)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(fused(x), plain(x))
    calls = []
    mods[0].register_forward_hook(lambda m, i, o: calls.append(o.shape))
    fused(x)
    assert calls == [torch.Size([3, 8, 14, 14])]  # the hooked layer ran unfused and its hook saw its own output


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "none"])
def test_rohrer_models_train_through_the_fused_path(activation):
    model = build_model("rohrer47k", layer="scs", activation=activation, pool="maxabs")
    assert isinstance(model, PoolFusedSequential)
    x = torch.rand(4, 3, 32, 32)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()  # in-place ReLU after the pool
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_max_abs_key_orders_by_magnitude_then_sign(dtype):
    torch.manual_seed(0)
    x = torch.randn(4000).to(dtype)
    special = torch.tensor([0.0, -0.0, 2.0, -2.0, 1e-30, -1e-30]).to(dtype)
    x = torch.cat([x, special, -x[:50]])  # exact +-ties
    key = max_abs_key(x).double()
    i, j = torch.randint(0, len(x), (2, 20000))
    up = torch.nextafter(x.abs(), torch.full_like(x, float("inf")))
    ki, kj = key[i], key[j]
    larger = x[i].abs() > up[j]
    # a magnitude larger by more than one unit in the last place never loses (closer ones compare equal)
    assert (ki[larger] >= kj[larger]).all()
    pos, neg = x[:50].abs(), -x[:50].abs()  # exact ties: the positive one ranks higher
    assert (max_abs_key(pos) > max_abs_key(neg)).all()
    assert (max_abs_key(x) >= 0).all()
    inf = float("inf")
    assert MaxAbsPool2d(2)(torch.tensor([[[[-inf, 3.0], [inf, -2.0]]]]).to(dtype)).item() == inf
    assert MaxAbsPool2d(2)(torch.tensor([[[[1.0, -inf], [0.0, -2.0]]]]).to(dtype)).item() == -inf


def test_in_place_module_after_a_fused_pair():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    for after in (nn.ReLU(inplace=True), nn.LeakyReLU(0.1, inplace=True)):
        mods = [SharpenedCosineSimilarity2d(3, 5, 3), MaxAbsPool2d(2), after]
        out = PoolFusedSequential(*mods)(x)
        out.sum().backward()  # no in-place modification of a saved tensor
        torch.testing.assert_close(out, nn.Sequential(*mods)(x))
