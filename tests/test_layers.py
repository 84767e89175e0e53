"""Layers against slow unfold references, gradients in float64, numerics at zero, autocast, devices."""

import math
import random

import pytest
import torch
from torch import nn

from scs_probe.layers import (
    P_MIN,
    CosineSimilarity2d,
    MaxAbsPool2d,
    SharpenedCosineSimilarity2d,
    SharpenedSDP2d,
    pool_spec,
    sharpened_cosine_similarity2d,
    sharpened_sdp2d,
)
from scs_probe.layers.reference import max_abs_pool_reference, scs_naive_autograd, scs_reference, sdp_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_configs(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        groups = rng.choice([1, 1, 2, 3])
        cin = groups * rng.randint(1, 4)
        cout = groups * rng.randint(1, 4)
        k = rng.choice([1, 2, 3, 5])
        out.append(dict(cin=cin, cout=cout, k=k, stride=rng.choice([1, 2, 3]), padding=rng.randint(0, 2),
                        groups=groups, h=rng.randint(k, 11), w=rng.randint(k, 9), b=rng.randint(1, 3)))
    return out


def _layer_and_input(cls, c, dtype=torch.float64, device="cpu"):
    torch.manual_seed(sum(v * 31**i for i, v in enumerate(c.values())) % 2**31)
    layer = cls(c["cin"], c["cout"], c["k"], c["stride"], c["padding"], groups=c["groups"]).to(device, dtype)
    x = torch.randn(c["b"], c["cin"], c["h"], c["w"], dtype=dtype, device=device, requires_grad=True)
    return layer, x


def _reference(layer, x):
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, SharpenedCosineSimilarity2d):
        return scs_reference(x, layer.weight, layer.effective_p(), layer.effective_q(), *args)
    return sdp_reference(x, layer.weight, layer.effective_p(), *args)


@pytest.mark.parametrize("cls", [SharpenedCosineSimilarity2d, SharpenedSDP2d])
@pytest.mark.parametrize("c", random_configs(12, seed=1),
                         ids=lambda c: "{cin}-{cout}-k{k}-s{stride}-p{padding}-g{groups}".format(**c))
def test_forward_and_gradients_match_reference(cls, c):
    layer, x = _layer_and_input(cls, c)
    with torch.no_grad():
        x[0, :, : c["h"] // 2] = 0  # zero patches: padding-like regions, black pixels
    y, ref = layer(x), _reference(layer, x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    params = [x] + [p for p in layer.parameters()]
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, params, gy)
    want = torch.autograd.grad(ref, params, gy)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def _config_id(c):
    return "{cin}-{cout}-k{k}-s{stride}-p{padding}-g{groups}-{h}x{w}".format(**c)


def _small(c):
    """The same geometry on a one-image input just large enough for it: gradcheck's cost is one forward pass
    per input element, so the reference comparison above covers the larger inputs."""
    side = c["k"] + c["stride"]
    return {**c, "h": min(c["h"], side), "w": min(c["w"], side), "b": 1}


@pytest.mark.parametrize("c", [_small(c) for c in random_configs(4, seed=2)], ids=_config_id)
def test_gradcheck_float64(c):
    layer, x = _layer_and_input(SharpenedCosineSimilarity2d, c)
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    q = layer.effective_q().detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, p, q: sharpened_cosine_similarity2d(x, w, p, q, *args),
                                    (x, layer.weight, layer.p, q))
    sdp, x2 = _layer_and_input(SharpenedSDP2d, c)
    assert torch.autograd.gradcheck(lambda x, w, p: sharpened_sdp2d(x, w, p, *args), (x2, sdp.weight, sdp.p))


def test_float32_matches_naive_formulation():
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(16, 24, 3, padding=1)
    x = torch.randn(4, 16, 12, 12, requires_grad=True)
    y = layer(x)
    ref = scs_naive_autograd(x, layer.weight, layer.effective_p(), layer.effective_q(), 1, 1)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, layer.weight, layer.p, layer.log_q], g),
                    torch.autograd.grad(ref, [x, layer.weight, layer.p, layer.log_q], g)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("cls", [SharpenedCosineSimilarity2d, SharpenedSDP2d])
@pytest.mark.parametrize("p", [0.1, 1.0, 3.0])
def test_all_zero_input_gives_finite_outputs_and_gradients(cls, p):
    layer = cls(3, 4, 3, padding=1, fixed_p=p) if p != 3.0 else cls(3, 4, 3, padding=1)
    x = torch.zeros(2, 3, 8, 8, requires_grad=True)
    y = layer(x)
    assert torch.isfinite(y).all() and (y == 0).all()
    y.sum().backward()
    for t in [x.grad] + [q.grad for q in layer.parameters()]:
        assert t is not None and torch.isfinite(t).all()


def test_fixed_and_unsharpened_p():
    scs = SharpenedCosineSimilarity2d(3, 5, 3, fixed_p=2.5)
    assert "p" not in dict(scs.named_parameters()) and torch.equal(scs.effective_p(), torch.full((5,), 2.5))
    cos = CosineSimilarity2d(3, 5, 3, padding=1)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    # p = 1: plain cosine similarity, |y| <= 1 (+eps) and sign kept
    y = cos(x)
    ref = scs_reference(x, cos.weight, torch.ones(5), cos.effective_q(), 1, 1)
    torch.testing.assert_close(y, ref)
    assert y.abs().max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="fixed_p"):
        SharpenedCosineSimilarity2d(3, 5, 3, fixed_p=0.0)


def test_effective_p_and_q():
    layer = SharpenedCosineSimilarity2d(3, 7, 3)
    assert layer.effective_p().shape == (7,) and ((layer.p >= 1) & (layer.p <= 3)).all()
    with torch.no_grad():
        layer.p[0] = -5.0
    assert layer.effective_p()[0] == P_MIN
    assert layer.effective_q().shape == () and math.isclose(layer.effective_q().item(), 1e-3, rel_tol=1e-5)
    # effective_p/q are what the forward uses
    x = torch.randn(1, 3, 5, 5)
    ref = scs_reference(x, layer.weight, layer.effective_p(), layer.effective_q())
    torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-5)


def test_drop_in_for_conv2d_shapes():
    for kw in [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
               dict(kernel_size=3, groups=4), dict(kernel_size=1, stride=2)]:
        conv, scs = nn.Conv2d(8, 12, **kw), SharpenedCosineSimilarity2d(8, 12, **kw)
        x = torch.randn(2, 8, 13, 10)
        assert conv(x).shape == scs(x).shape == SharpenedSDP2d(8, 12, **kw)(x).shape
        assert conv.weight.shape == scs.weight.shape
    with pytest.raises(ValueError, match="divisible"):
        SharpenedCosineSimilarity2d(6, 4, 3, groups=4)


def test_bfloat16_autocast_close_to_float32():
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(8, 16, 3, padding=1)
    x = torch.rand(2, 8, 10, 10, requires_grad=True)
    y32 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = layer(x)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.03)
    y16.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert layer.p.grad.dtype == torch.float32 and layer.log_q.grad.dtype == torch.float32


@pytest.mark.parametrize("pooled", [False, True])
def test_float16_autocast_does_not_overflow_the_patch_norm(pooled):
    """64 channels at std 12: the patch's sum of squares (~83,000) is beyond float16's 65,504; summed in float16
    it became inf and zeroed most outputs and their gradients, with no nan for a GradScaler to notice."""
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(64, 32, 3, padding=1)
    x = (torch.randn(2, 64, 12, 12) * 12).requires_grad_()
    pool = pool_spec(True, 2) if pooled else None
    fn = lambda: sharpened_cosine_similarity2d(x, layer.weight, layer.effective_p(), layer.effective_q(),  # noqa: E731
                                               padding=1, pool=pool)
    y32 = fn()
    g32, = torch.autograd.grad(y32.sum(), x)
    with torch.autocast("cpu", dtype=torch.float16):
        y16 = fn()
    g16, = torch.autograd.grad(y16.float().sum(), x)
    assert y16.dtype == torch.float16
    assert (y16 == 0).float().mean() < 0.02 and (g16 == 0).float().mean() < 0.02
    torch.testing.assert_close(y16.float(), y32, rtol=0.02, atol=2e-3)
    assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("pooled", [False, True])
def test_float16_autocast_does_not_depend_on_the_kernels_scale(pooled):
    """SCS's output does not depend on the kernels' scale (where |k|^2 >> eps), so training may grow it; in float16
    too: convolved raw (their inverse norms applied afterwards), large kernels (elements ~8e3, well inside
    float16's range) overflowed the float16 convolution to inf. Outputs (training and no-grad) and every gradient
    must be float32's."""
    scale = 1e5
    torch.manual_seed(0)
    layer = SharpenedCosineSimilarity2d(16, 8, 3, padding=1)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    pool = pool_spec(True, 2) if pooled else None
    params = [x, layer.weight, layer.p, layer.log_q]
    y32 = layer(x, pool)
    g32 = torch.autograd.grad(y32.sum(), params)
    with torch.no_grad():
        layer.weight.mul_(scale)
    with torch.autocast("cpu", dtype=torch.float16):
        y16 = layer(x, pool)
        with torch.no_grad():
            y16_eval = layer(x, pool)
    gx, gw, gp, gq = torch.autograd.grad(y16.float().sum(), params)
    for y in (y16, y16_eval):
        assert y.dtype == torch.float16
        torch.testing.assert_close(y.float(), y32, rtol=0.02, atol=2e-3)
    cos = torch.nn.functional.cosine_similarity
    assert cos(gx.flatten(), g32[0].flatten(), dim=0) > 0.999
    assert cos(gw.flatten() * scale, g32[1].flatten(), dim=0) > 0.999  # d L / d (scale w) = d L / d w / scale
    assert cos(gp, g32[2], dim=0) > 0.999
    torch.testing.assert_close(gq, g32[3], rtol=0.02, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_layers_on_device(device):
    layer = SharpenedCosineSimilarity2d(4, 6, 3, padding=1).to(device)
    x = torch.randn(2, 4, 7, 7, device=device, requires_grad=True)
    y = layer(x)
    assert y.device.type == device
    y.sum().backward()
    assert x.grad.device.type == device
    ref = scs_reference(x.detach().cpu().double(), layer.weight.detach().cpu().double(),
                        layer.effective_p().detach().cpu().double(), layer.effective_q().detach().cpu().double(), 1, 1)
    torch.testing.assert_close(y.detach().cpu().double(), ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("k,s,pad,ceil", [(2, 2, 0, True), (3, 2, 1, False), (4, 4, 0, True), (3, 1, 1, True)])
def test_max_abs_pool_matches_reference(k, s, pad, ceil):
    torch.manual_seed(k * 10 + s)
    x = torch.randn(2, 3, 9, 11, requires_grad=True)
    pool = MaxAbsPool2d(k, s, pad, ceil_mode=ceil)
    y = pool(x)
    ref = max_abs_pool_reference(x, k, s, pad, ceil)
    torch.testing.assert_close(y, ref)
    assert y.shape == nn.MaxPool2d(k, s, pad, ceil_mode=ceil)(x).shape
    # explicit windows: the element of largest magnitude, sign kept
    if pad == 0 and not ceil:
        win = x.detach().unfold(2, k, s).unfold(3, k, s).flatten(-2)
        want = win.gather(-1, win.abs().argmax(-1, keepdim=True)).squeeze(-1)
        torch.testing.assert_close(y.detach(), want)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_max_abs_pool_keeps_sign_and_ties_go_positive():
    x = torch.tensor([[[[-3.0, 1.0], [2.0, 0.5]]]])
    assert MaxAbsPool2d(2)(x).item() == -3.0
    tie = torch.tensor([[[[-2.0, 2.0], [1.0, -1.0]]]])
    assert MaxAbsPool2d(2)(tie).item() == 2.0


@pytest.mark.parametrize("k,s,pad", [(2, 2, 0), (3, 2, 1)])
def test_max_abs_pool_gradcheck(k, s, pad):
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: MaxAbsPool2d(k, s, pad, ceil_mode=True)(x), (x,))


def test_compiling_drops_torchs_no_cuda_runtime_warning(caplog):
    """On CPU-only machines TorchInductor's C++ build warns that no CUDA runtime is found: the backend drops
    that one line (and nothing else the logger says)."""
    import logging

    from scs_probe.layers import backend
    backend._quiet_cuda_probe()
    backend._quiet_cuda_probe()  # idempotent
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("cls", [SharpenedCosineSimilarity2d, SharpenedSDP2d])
def test_in_place_ops_on_the_output_leave_the_gradients_right(cls, pooled):
    """Drop-in for Conv2d: an in-place ReLU or residual `+=` on the output must not spoil the backward pass."""
    from scs_probe.layers import PoolFusedSequential
    torch.manual_seed(0)
    layer = cls(3, 4, 3, padding=1)
    block = PoolFusedSequential(layer, MaxAbsPool2d(2)) if pooled else layer
    x = torch.randn(2, 3, 8, 8)
    grads = []
    for inplace in (False, True):
        layer.zero_grad()
        out = block(x)
        out = torch.relu_(out.add_(1.0)) if inplace else torch.relu(out + 1.0)
        out.square().sum().backward()
        grads.append([t.grad.clone() for t in (layer.weight, layer.p)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pooled", [False, True])
def test_an_empty_batch_has_an_empty_gradient(pooled):
    """A batch of 0 images (as conv and max pooling allow) backpropagates, pooled and by MaxAbsPool2d too."""
    layer = SharpenedCosineSimilarity2d(3, 4, 3, padding=1)
    x = torch.zeros(0, 3, 8, 8, requires_grad=True)
    out = layer(x, pool=pool_spec(True, 2) if pooled else None)
    (MaxAbsPool2d(2)(out) if not pooled else out).sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.abs().sum() == 0


def test_a_layer_made_under_inference_mode_evaluates():
    """Parameters created under torch.inference_mode track no version, which the inference cache of unit
    kernels keys on: such a layer is evaluated without the cache."""
    torch.manual_seed(0)
    with torch.inference_mode():
        layer = SharpenedCosineSimilarity2d(3, 4, 3)
        x = torch.randn(2, 3, 6, 6)
        out = layer(x)
    from scs_probe.layers.reference import layer_reference
    assert torch.allclose(out.double(), layer_reference(layer, x), atol=1e-5)


def test_string_padding_as_in_conv2d():
    """'valid' and 'same' (stride 1, odd dilated kernel) give Conv2d's output size; what Conv2d would pad unevenly,
    a wrong string or 'same' with a stride is a clear ValueError, not a TypeError from deep inside."""
    x = torch.rand(1, 2, 9, 7)
    for kw in (dict(kernel_size=3, padding="same"), dict(kernel_size=(5, 3), padding="same", dilation=(1, 2)),
               dict(kernel_size=3, padding="valid")):
        layer = SharpenedCosineSimilarity2d(2, 4, **kw)
        assert layer(x).shape == torch.nn.Conv2d(2, 4, **kw)(x).shape
        assert all(isinstance(v, int) for v in layer.padding)
    for kw, msg in ((dict(kernel_size=2, padding="same"), "one side"), (dict(kernel_size=3, padding="full"), "got"),
                    (dict(kernel_size=3, padding="same", stride=2), "stride 1")):
        with pytest.raises(ValueError, match=msg):
            SharpenedCosineSimilarity2d(2, 4, **kw)


def test_string_padding_in_the_functional_api():
    """F.conv2d takes 'same' and 'valid'; so do the functional forms, with the layers' values and errors."""
    from scs_probe.layers.functional import sharpened_cosine_similarity2d, sharpened_sdp2d
    x = torch.rand(2, 2, 9, 7)
    layer = SharpenedCosineSimilarity2d(2, 4, kernel_size=(5, 3), padding="same", dilation=(1, 2))
    with torch.no_grad():
        p, q = layer.effective_p(), layer.effective_q()
        out = sharpened_cosine_similarity2d(x, layer.weight, p, q, padding="same", dilation=(1, 2))
        assert torch.allclose(out, layer(x)) and out.shape[-2:] == x.shape[-2:]
        valid = sharpened_sdp2d(x, layer.weight, p, padding="valid", dilation=(1, 2))
        assert torch.allclose(valid, sharpened_sdp2d(x, layer.weight, p, padding=0, dilation=(1, 2)))
        with pytest.raises(ValueError, match="stride 1"):
            sharpened_sdp2d(x, layer.weight, p, stride=2, padding="same")


@pytest.mark.parametrize("padding", [b"same", ("same",), ("same", "same"), {"a": 1}, 1.5, 1.0, None, True, (1, 1, 1)])
def test_padding_that_is_neither_numbers_nor_a_mode_is_a_type_error(padding):
    """As F.conv2d: a TypeError naming the argument, in training and in evaluation alike (never an IndexError, an
    int added to a str deep inside, or b'same' read as the padding 115, 97, 109, 101)."""
    from scs_probe.layers.functional import sharpened_cosine_similarity2d
    x, weight, p = torch.rand(1, 2, 6, 6), torch.rand(3, 2, 3, 3), torch.full((3,), 2.0)
    for grad in (False, True):
        with pytest.raises(TypeError, match="padding must be"):
            sharpened_cosine_similarity2d(x, weight.requires_grad_(grad), p, torch.tensor(0.1), padding=padding)
    with pytest.raises(TypeError, match="padding must be"):
        SharpenedCosineSimilarity2d(2, 3, kernel_size=3, padding=padding)


def test_one_padding_in_a_sequence_pads_both_sides_as_in_conv2d():
    """padding=(1,) is padding=1 for F.conv2d; the sharpened forms gave it in training and failed in evaluation."""
    from scs_probe.layers.functional import sharpened_sdp2d
    x, weight, p = torch.rand(1, 2, 6, 5), torch.rand(3, 2, 3, 3), torch.full((3,), 2.0)
    for grad in (False, True):
        w = weight.clone().requires_grad_(grad)
        assert torch.equal(sharpened_sdp2d(x, w, p, padding=(1,)), sharpened_sdp2d(x, w, p, padding=1))
    layer = SharpenedCosineSimilarity2d(2, 3, kernel_size=3, padding=[1])
    with torch.no_grad():
        assert layer.padding == (1, 1) and layer(x).shape[-2:] == x.shape[-2:]
