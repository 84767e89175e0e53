"""convert(): any model's Conv2d -> sharpened layers of the same geometry, with what could not be swapped listed."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scs_probe import convert
from scs_probe.errors import OptionError
from scs_probe.layers import CosineSimilarity2d, MaxAbsPool2d, SharpenedCosineSimilarity2d, SharpenedSDP2d


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)                       # bias: dropped
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8, bias=False)
        self.same = nn.Conv2d(8, 8, 3, padding="same", bias=False)      # string padding: swapped
        self.even = nn.Conv2d(8, 8, 2, padding="same", bias=False)      # padded more on one side: left as it is
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.pool(self.act(self.stem(x)))
        x = F.relu(self.dw(x))                                          # functional: cannot be removed
        return self.head(self.even(self.same(x)).mean((2, 3)))


def sharpened_extra(model):
    """Parameters a sharpened layer adds over a bias-free conv: p per output channel (learned), log_q (SCS)."""
    n = 0
    for m in model.modules():
        if isinstance(m, SharpenedCosineSimilarity2d | SharpenedSDP2d):
            n += m.p.numel() if m.fixed_p is None else 0
            n += 1 if isinstance(m, SharpenedCosineSimilarity2d) else 0
    return n


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")  # Tiny.even, on purpose
def test_convert_swaps_modules_and_reports_what_stays():
    torch.manual_seed(0)
    model = Tiny()
    new, report = convert(model, layer="scs", activation="none", pool="maxabs", copy_weights=True)
    assert isinstance(model.stem, nn.Conv2d)  # the original is untouched
    assert isinstance(new.stem, SharpenedCosineSimilarity2d) and isinstance(new.dw, SharpenedCosineSimilarity2d)
    assert (new.dw.stride, new.dw.padding, new.dw.dilation, new.dw.groups) == ((2, 2), (2, 2), (2, 2), 8)
    assert torch.equal(new.stem.weight, model.stem.weight) and torch.equal(new.dw.weight, model.dw.weight)
    assert isinstance(new.same, SharpenedCosineSimilarity2d) and new.same.padding == (1, 1)
    assert type(new.even) is nn.Conv2d and "padding 'same'" in report.skipped["even"]
    assert "one side" in report.skipped["even"]
    assert isinstance(new.pool, MaxAbsPool2d) and isinstance(new.act, nn.Identity)
    assert report.replaced == ["stem", "dw", "same"] and report.dropped_biases == ["stem"]
    assert report.removed_activations == ["act (ReLU)"] and report.pools == ["pool"]
    assert report.traced and report.functional_activations == ["torch.nn.functional.relu (test_convert.py:26 in "
                                                                "forward)"]
    assert count(new) == count(model) - 8 + sharpened_extra(new)  # stem's bias gone, p and q added
    x = torch.rand(2, 3, 16, 16)
    assert new(x).shape == model(x).shape
    assert "functional activations that stay" in report.summary() and "1 conv biases dropped" in report.summary()


def test_convert_options():
    model = Tiny()
    only_stem = convert(model, layer="sdp", include=["stem"]).model
    assert isinstance(only_stem.stem, SharpenedSDP2d) and type(only_stem.dw) is nn.Conv2d
    assert type(convert(model, exclude=["st*"]).model.stem) is nn.Conv2d
    cosine = convert(model, layer="cosine").model
    assert isinstance(cosine.stem, SharpenedCosineSimilarity2d) and cosine.stem.fixed_p == 1.0
    assert type(CosineSimilarity2d(3, 8, 3)) is type(cosine.stem)
    assert convert(model, fixed_p=2.0).model.stem.fixed_p == 2.0
    kept = convert(model).model
    assert isinstance(kept.act, nn.ReLU) and type(kept.pool) is nn.MaxPool2d
    same = convert(model, inplace=True).model
    assert same is model and isinstance(model.stem, SharpenedCosineSimilarity2d)
    for bad in ({"layer": "conv"}, {"activation": "gelu"}, {"pool": "avg"}):
        with pytest.raises(OptionError):
            convert(Tiny(), **bad)
    with pytest.raises(ValueError, match="fixed_p must be >= 0.1"):  # a bad argument: not every conv "skipped"
        convert(Tiny(), fixed_p=0.05)


TORCHVISION = ["resnet18", "vgg11", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_convert_torchvision_models_forward_backward_and_counts(name):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10)
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    biases = sum(m.bias.numel() for m in model.modules() if type(m) is nn.Conv2d and m.bias is not None)
    new, report = convert(model, layer="scs", pool="maxabs", copy_weights=True)
    assert report.replaced == convs and not report.skipped
    assert count(new) == count(model) - biases + sharpened_extra(new)
    x = torch.rand(2, 3, 32, 32)
    out = new.train()(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [m.weight.grad for m in new.modules() if isinstance(m, SharpenedCosineSimilarity2d)]
    assert len(grads) == len(convs) and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
def test_convert_timm_model():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", num_classes=10, pretrained=False)
    new, report = convert(model, activation="none")
    assert len(report.replaced) == sum(type(m) is nn.Conv2d for m in model.modules()) > 0
    assert not any(isinstance(m, nn.ReLU) for m in new.modules())
    new(torch.rand(2, 3, 32, 32)).sum().backward()


def test_activation_none_keeps_squeeze_excitation_gates():
    import torchvision
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    new, report = convert(model, activation="none")
    gates = [n for n, m in model.named_modules() if isinstance(m, nn.Hardsigmoid)]
    assert gates and all(isinstance(new.get_submodule(n), nn.Hardsigmoid) for n in gates)
    assert [g.split(" ")[0] for g in report.kept_gates] == gates
    assert not any(isinstance(m, nn.Hardswish | nn.ReLU) for m in new.modules())
    assert "gating modules kept" in report.summary() and "(Hardswish)" in report.summary()
