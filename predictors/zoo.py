"""Published CNNs written from their papers, for validating predictors on networks they never saw.

Weights are random (nothing is downloaded); latency does not depend on them. Each
builder returns an eval-mode ``torch.nn.Module`` taking a 1x3xRxR input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
            ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, gate: type[nn.Module] = nn.Hardsigmoid,
                 act: type[nn.Module] = nn.ReLU) -> None:
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

    def __init__(self, cin: int, cout: int, k: int, s: int, expand: float,
                 act: type[nn.Module] = nn.ReLU6, se_ratio: float = 0.0,
                 se_gate: type[nn.Module] = nn.Hardsigmoid, se_base: int | None = None) -> None:
        super().__init__()
        mid = _make_divisible(cin * expand) if expand != 1 else cin
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(conv_bn(cin, mid, 1, 1, act=act))
        layers.append(conv_bn(mid, mid, k, s, groups=mid, act=act))
        if se_ratio:
            reduced = max(1, int((se_base or mid) * se_ratio))
            if se_gate is nn.Hardsigmoid:
                reduced = _make_divisible(reduced)
            layers.append(SqueezeExcite(mid, reduced, se_gate,
                                        nn.SiLU if act is nn.SiLU else nn.ReLU))
        layers.append(conv_bn(mid, cout, 1, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def _classifier(cin: int, hidden: int | None = None, act: type[nn.Module] = nn.Hardswish,
                classes: int = 1000) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if hidden:
        layers += [nn.Linear(cin, hidden), act(), nn.Linear(hidden, classes)]
    else:
        layers.append(nn.Linear(cin, classes))
    return nn.Sequential(*layers)


def mobilenet_v2(width: float = 1.0) -> nn.Module:
    """Sandler et al. 2018, Table 2."""
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
    cin = _make_divisible(32 * width)
    layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
    for t, c, n, s in cfg:
        cout = _make_divisible(c * width)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, 3, s if i == 0 else 1, t))
            cin = cout
    last = _make_divisible(1280 * max(1.0, width))
    layers.append(conv_bn(cin, last, 1, 1, act=nn.ReLU6))
    return nn.Sequential(*layers, _classifier(last))


def mobilenet_v3_large() -> nn.Module:
    """Howard et al. 2019, Table 1 (large)."""
    hs, re = nn.Hardswish, nn.ReLU
    cfg = [(3, 16, 16, False, re, 1), (3, 64, 24, False, re, 2), (3, 72, 24, False, re, 1),
           (5, 72, 40, True, re, 2), (5, 120, 40, True, re, 1), (5, 120, 40, True, re, 1),
           (3, 240, 80, False, hs, 2), (3, 200, 80, False, hs, 1), (3, 184, 80, False, hs, 1),
           (3, 184, 80, False, hs, 1), (3, 480, 112, True, hs, 1), (3, 672, 112, True, hs, 1),
           (5, 672, 160, True, hs, 2), (5, 960, 160, True, hs, 1), (5, 960, 160, True, hs, 1)]
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=hs)]
    cin = 16
    for k, exp, cout, se, act, s in cfg:
        layers.append(InvertedResidual(cin, cout, k, s, exp / cin, act=act, se_ratio=0.25 if se else 0))
        cin = cout
    layers.append(conv_bn(cin, 960, 1, 1, act=hs))
    return nn.Sequential(*layers, _classifier(960, 1280))


def mnasnet_a1() -> nn.Module:
    """Tan et al. 2019, Figure 7 (MnasNet-A1)."""
    cfg = [(1, 16, 1, 1, 3, False), (6, 24, 2, 2, 3, False), (3, 40, 3, 2, 5, True),
           (6, 80, 4, 2, 3, False), (6, 112, 2, 1, 3, True), (6, 160, 3, 2, 5, True),
           (6, 320, 1, 1, 3, False)]
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
    cin = 32
    for t, c, n, s, k, se in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, k, s if i == 0 else 1, t, act=nn.ReLU,
                                           se_ratio=0.25 if se else 0))
            cin = c
    layers.append(conv_bn(cin, 1280, 1, 1))
    return nn.Sequential(*layers, _classifier(1280))


def efficientnet_b0() -> nn.Module:
    """Tan & Le 2019, Table 1: MBConv with SE (ratio 0.25 of the block input) and swish."""
    cfg = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
           (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.SiLU)]
    cin = 32
    for t, c, n, s, k in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, k, s if i == 0 else 1, t, act=nn.SiLU,
                                           se_ratio=0.25, se_gate=nn.Sigmoid, se_base=cin))
            cin = c
    layers.append(conv_bn(cin, 1280, 1, 1, act=nn.SiLU))
    return nn.Sequential(*layers, _classifier(1280))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, s), conv_bn(cout, cout, 3, 1, act=None))
        self.short = conv_bn(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.short(x))


def resnet(depths: tuple[int, ...] = (2, 2, 2, 2)) -> nn.Module:
    """He et al. 2016: ResNet-18 is (2, 2, 2, 2), ResNet-34 (3, 4, 6, 3)."""
    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (n, c) in enumerate(zip(depths, (64, 128, 256, 512))):
        for i in range(n):
            layers.append(BasicBlock(cin, c, 2 if i == 0 and stage > 0 else 1))
            cin = c
    return nn.Sequential(*layers, _classifier(512))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (Ma et al. 2018, Fig. 3c/d)."""

    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.s = s
        branch = cout // 2
        right_in = cin if s == 2 else branch
        self.right = nn.Sequential(conv_bn(right_in, branch, 1, 1),
                                   conv_bn(branch, branch, 3, s, groups=branch, act=None),
                                   conv_bn(branch, branch, 1, 1))
        self.left = nn.Sequential(conv_bn(cin, cin, 3, s, groups=cin, act=None),
                                  conv_bn(cin, branch, 1, 1)) if s == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.s == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.right(b)), dim=1)
        else:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def shufflenet_v2(channels: tuple[int, ...] = (116, 232, 464, 1024)) -> nn.Module:
    """ShuffleNetV2 1.0x (Ma et al. 2018, Table 5)."""
    layers: list[nn.Module] = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for n, c in zip((4, 8, 4), channels[:3]):
        for i in range(n):
            layers.append(ShuffleUnit(cin, c, 2 if i == 0 else 1))
            cin = c
    layers.append(conv_bn(cin, channels[3], 1, 1))
    return nn.Sequential(*layers, _classifier(channels[3]))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat((self.e1(x), self.e3(x)), dim=1)


def squeezenet_1_1() -> nn.Module:
    """Iandola et al. 2016, v1.1 (the reference implementation's cheaper variant)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(64, 16, 64), Fire(128, 16, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(128, 32, 128), Fire(256, 32, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 48, 192), Fire(384, 48, 192), Fire(384, 64, 256), Fire(512, 64, 256),
        nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


ZOO: dict[str, Callable[[], nn.Module]] = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_0.5": lambda: mobilenet_v2(0.5),
    "mobilenet_v3_large": mobilenet_v3_large,
    "mnasnet_a1": mnasnet_a1,
    "efficientnet_b0": efficientnet_b0,
    "resnet18": resnet,
    "resnet34": lambda: resnet((3, 4, 6, 3)),
    "shufflenet_v2": shufflenet_v2,
    "squeezenet_1_1": squeezenet_1_1,
}


def build(name: str) -> nn.Module:
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    torch.manual_seed(0)
    return ZOO[name]().eval()


def export_onnx(model: nn.Module, path: str | Path, resolution: int = 224) -> Path:
    """Export with the legacy exporter (offline, fast, folds batch-norm into convs), opset 17."""
    path = Path(path)
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, resolution, resolution),), str(path),
                          input_names=["input"], output_names=["logits"], opset_version=17,
                          do_constant_folding=True, dynamo=False)
    return path
