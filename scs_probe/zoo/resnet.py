"""ResNets: torchvision's ImageNet ResNet18 (10 classes) and the CIFAR ResNet20 (option-A shortcuts). Their
names, axes, presets and counts are declared in `builtin`, which names these builders."""

from __future__ import annotations

import torch.nn.functional as F
import torchvision
from torch import nn

from ..conversion import convert
from .blocks import Normalized, activation, batchnorm, kernel_layer, pooling
from .variants import Variant


def _swap_modules(module: nn.Module, v: Variant) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(module, name, activation(v.activation))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, batchnorm(v.norm, child.num_features))
        else:
            _swap_modules(child, v)


class _Shortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, v: Variant, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = kernel_layer(v.layer, cin, cout, 3, stride, 1, bias=False, fixed_p=v.fixed_p)
        self.bn1 = batchnorm(v.norm, cout)
        self.act1 = activation(v.activation)
        self.conv2 = kernel_layer(v.layer, cout, cout, 3, 1, 1, bias=False, fixed_p=v.fixed_p)
        self.bn2 = batchnorm(v.norm, cout)
        self.act2 = activation(v.activation)
        self.shortcut = _Shortcut(cout // 4) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, v: Variant, blocks_per_stage: int = 3):
        super().__init__()
        self.conv1 = kernel_layer(v.layer, 3, 16, 3, 1, 1, bias=False, fixed_p=v.fixed_p)
        self.bn1 = batchnorm(v.norm, 16)
        self.act1 = activation(v.activation)
        stages, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(_BasicBlock(v, cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def resnet18(v: Variant) -> nn.Module:
    """torchvision's ResNet18 through `scs_probe.convert`, with the study's activation and BatchNorm swaps."""
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    if v.layer != "conv":
        net = convert(net, layer=v.layer, fixed_p=v.fixed_p, inplace=True).model
    _swap_modules(net, v)
    net.maxpool = pooling(v.pool, 3, 2, 1)
    return Normalized(net)


def resnet20(v: Variant) -> nn.Module:
    return Normalized(ResNet20(v))
