"""Small torch models importable as `tests.models_for_tests:NAME` (module:callable) by
`--model` and `reinit probe` tests. Defined here so no test needs torchvision."""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """A torchvision-style conv net: conv/bn/relu stem, a grouped conv, a transposed conv,
    LayerNorm over channels-last features, a linear head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.grouped = nn.Conv2d(8, 16, kernel_size=3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(16, 6, kernel_size=2, stride=2, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        x = self.relu(self.grouped(x))
        x = self.relu(self.up(x))
        x = self.pool(x).flatten(1)
        return self.fc(self.norm(x))


def convnet(num_classes: int = 10) -> ConvNet:
    return ConvNet(num_classes)


def mlp(depth: int = 8, width: int = 64, inputs: int = 64) -> nn.Sequential:
    """A deep ReLU MLP: the classic vanishing/exploding-signal experiment."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers)


class Constants(nn.Module):
    """Parameters whose values only the constructor gives (no `reset_parameters`, no init
    touches them), as CLIP's `logit_scale`: a constant, one computed from a constant, one
    written in place through a view; one drawn and one left empty (no value without a rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.full((4,), 0.5))
        self.temperature = nn.Parameter(torch.tensor(2.0).log())
        self.shift = nn.Parameter(torch.ones(4))
        self.shift.data[1:] *= 3
        self.noise = nn.Parameter(torch.ones(2).normal_())
        self.gate = nn.Parameter(torch.empty(3))


def constants() -> Constants:
    return Constants()


class BitViews(nn.Module):
    """Constants read and written through a view of another dtype (the same storage, shape
    and strides): `scale` is 1.0 written as its int32 bits; `mask` only viewed as int32."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.zeros(4))
        self.scale.data.view(torch.int32).fill_(0x3F800000)  # 1.0's bits
        self.register_buffer("mask", torch.full((4,), 2.0))
        self.bits = self.mask.view(torch.int32)  # not a buffer: a view kept beside


def bit_views() -> BitViews:
    return BitViews()
