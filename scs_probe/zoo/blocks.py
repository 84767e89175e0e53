"""The swappable parts of every zoo model: kernel layer, activation, pooling, normalisation."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import MaxAbsPool2d, SharpenedCosineSimilarity2d, SharpenedSDP2d


def kernel_layer(layer: str, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1, bias: bool = True, fixed_p: float | None = None) -> nn.Module:
    """Conv2d (with `bias`) or a sharpened layer of the same shape (sharpened layers never have a bias)."""
    if layer == "conv":
        return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=bias)
    cls = {"scs": SharpenedCosineSimilarity2d, "sdp": SharpenedSDP2d}[layer]
    return cls(in_ch, out_ch, kernel_size, stride, padding, groups=groups, fixed_p=fixed_p)


def activation(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.Identity()


def pooling(kind: str, kernel_size, stride=None, padding=0, ceil_mode=False) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)
    if kind == "maxabs":
        return MaxAbsPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)
    return nn.Identity()


def batchnorm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "bn" else nn.Identity()


class Normalize(nn.Module):
    """Per-channel input normalisation inside the model, so that data and analyses stay in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class Normalized(nn.Module):
    """`net` behind a per-channel input normalisation (CIFAR-10's unless `build_model` sets the data set's): the
    model takes [0, 1] images. The zoo's ResNets and every model from elsewhere are wrapped so."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD)
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))


def resize_head(model: nn.Module, num_classes: int) -> bool:
    """Give the model's last nn.Linear (its classifier) `num_classes` outputs: a fresh Linear where it has another
    number. False where the model has no nn.Linear."""
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        return False
    name, head = heads[-1]
    if head.out_features != num_classes:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                nn.Linear(head.in_features, num_classes, bias=head.bias is not None, device=head.weight.device,
                          dtype=head.weight.dtype))
    return True
