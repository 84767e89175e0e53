"""--compile and --channels-last: TrainOptions fields and CLI flags, off by default, the same for conv and SCS."""

import pytest
import torch
from click.testing import CliRunner

from scs_probe.training.options import TrainOptions
from scs_probe.training.trainer import speed_options
from scs_probe.zoo import build_model


def _variant(layer):
    return dict(layer=layer, activation="relu" if layer == "conv" else "none",
                pool="max" if layer == "conv" else "maxabs")


def test_options_default_off_and_round_trip():
    o = TrainOptions()
    assert o.compile is False and o.channels_last is False
    o2 = TrainOptions.from_dict(TrainOptions(compile=True, channels_last=True).to_dict())
    assert o2.compile and o2.channels_last
    assert {"compile", "channels_last"} <= set(TrainOptions.RESUMABLE)  # how fast, not what: may change on resume


def test_cli_flags_listed():
    from scs_probe.cli.app import cli
    out = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--compile" in out and "--channels-last" in out


@pytest.mark.parametrize("layer", ["conv", "scs"])
def test_channels_last_keeps_values_and_state_dict(layer):
    torch.manual_seed(0)
    kw = _variant(layer)
    plain = build_model("rohrer100k", **kw)
    model = build_model("rohrer100k", **kw)
    model.load_state_dict(plain.state_dict())
    net = speed_options(model, channels_last=True)
    assert net is model and model.state_dict().keys() == plain.state_dict().keys()
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["conv", "scs"])
def test_compile_matches_eager(layer):
    torch.manual_seed(0)
    kw = _variant(layer)
    plain, model = build_model("rohrer100k", **kw), build_model("rohrer100k", **kw)
    model.load_state_dict(plain.state_dict())
    net = speed_options(model, compile=True)
    assert net is not model and model.state_dict().keys() == plain.state_dict().keys()
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    for a, b in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)
