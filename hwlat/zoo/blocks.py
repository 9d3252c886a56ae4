"""Building blocks of the zoo's networks, as the papers define them (conv+BN+activation, inverted
residuals with optional squeeze-and-excitation, ResNet blocks, ShuffleNetV2 units, fire modules)."""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn(
    cin: int, cout: int, k: int, s: int, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(
        self,
        channels: int,
        reduced: int,
        gate: type[nn.Module] = nn.Hardsigmoid,
        act: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3, MnasNet and EfficientNet's block: expand 1x1, depthwise kxk, (SE), project 1x1."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        s: int,
        expand: float,
        act: type[nn.Module] = nn.ReLU6,
        se_ratio: float = 0.0,
        se_gate: type[nn.Module] = nn.Hardsigmoid,
        se_base: int | None = None,
    ) -> None:
        super().__init__()
        mid = make_divisible(cin * expand) if expand != 1 else cin
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(conv_bn(cin, mid, 1, 1, act=act))
        layers.append(conv_bn(mid, mid, k, s, groups=mid, act=act))
        if se_ratio:
            reduced = max(1, int((se_base or mid) * se_ratio))
            if se_gate is nn.Hardsigmoid:
                reduced = make_divisible(reduced)
            layers.append(SqueezeExcite(mid, reduced, se_gate, nn.SiLU if act is nn.SiLU else nn.ReLU))
        layers.append(conv_bn(mid, cout, 1, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def classifier(
    cin: int, hidden: int | None = None, act: type[nn.Module] = nn.Hardswish, classes: int = 1000
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if hidden:
        layers += [nn.Linear(cin, hidden), act(), nn.Linear(hidden, classes)]
    else:
        layers.append(nn.Linear(cin, classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1  # output channels per unit of width

    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, s), conv_bn(cout, cout, 3, 1, act=None))
        self.short = conv_bn(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.short(x))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (Ma et al. 2018, Fig. 3c/d)."""

    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.s = s
        branch = cout // 2
        right_in = cin if s == 2 else branch
        self.right = nn.Sequential(
            conv_bn(right_in, branch, 1, 1),
            conv_bn(branch, branch, 3, s, groups=branch, act=None),
            conv_bn(branch, branch, 1, 1),
        )
        self.left = (
            nn.Sequential(conv_bn(cin, cin, 3, s, groups=cin, act=None), conv_bn(cin, branch, 1, 1))
            if s == 2
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.s == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.right(b)), dim=1)
        else:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat((self.e1(x), self.e3(x)), dim=1)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, s: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            conv_bn(cin, width, 1, 1), conv_bn(width, width, 3, s), conv_bn(width, cout, 1, 1, act=None)
        )
        self.short = conv_bn(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.short(x))
