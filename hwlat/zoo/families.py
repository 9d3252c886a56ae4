"""CNN families outside the zoo, written from their papers: the "networks users have" benchmark.

Neither the published zoo (``hwlat.zoo.published``) nor the random training generator
(``hwlat.zoo.random_nets``) builds these networks: their stems, stage plans, widths and
heads come from the papers cited below, and each is written here on its own (no block is
shared with the zoo's code), in the form its authors' reference code exports (GhostNet's
``relu6(x + 3) / 6`` gate, DenseNet's pre-activation batch norms, ConvNeXt's permute ->
LayerNorm -> Linear on channels-last tensors, RepVGG in its deployed single-branch form).
Widths or resolutions are reduced where noted to keep one measurement short on a small CPU.
Random weights: latency does not depend on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hwlat.profiler.onnx_models import torch_to_onnx


def _cba(
    cin: int, cout: int, k: int | tuple[int, int], s: int = 1, groups: int = 1, act=nn.ReLU
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation (None: none)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    layers = [
        nn.Conv2d(cin, cout, (kh, kw), s, (kh // 2, kw // 2), groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, *([act()] if act is not None else []))


# ----- DenseNet-121 (Huang et al., CVPR 2017): dense blocks of pre-activation BN-ReLU-conv -----
class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth),
            nn.ReLU(),
            nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def densenet121(growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16)) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    c = 64
    for i, n in enumerate(blocks):
        for _ in range(n):
            layers.append(_DenseLayer(c, growth))
            c += growth
        if i < len(blocks) - 1:  # transition: BN-ReLU-1x1 conv halving the channels, 2x2 average pool
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


# ----- GhostNet 1.0x (Han et al., CVPR 2020): ghost modules (a conv, cheap depthwise features, sliced) ---
def _divisible(v: float, d: int = 4) -> int:
    out = max(d, int(v + d / 2) // d * d)
    return out + d if out < 0.9 * v else out


class _Ghost(nn.Module):
    def __init__(self, cin: int, cout: int, relu: bool) -> None:
        super().__init__()
        self.cout = cout
        init = math.ceil(cout / 2)
        act = nn.ReLU if relu else None
        self.primary = _cba(cin, init, 1, act=act)
        self.cheap = _cba(init, init, 3, groups=init, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, : self.cout]


class _GhostSE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        reduced = _divisible(c * 0.25)
        self.reduce = nn.Conv2d(c, reduced, 1)
        self.expand = nn.Conv2d(reduced, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * (nn.functional.relu6(gate + 3.0) / 6.0)  # the reference code's hard sigmoid


class _GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int, s: int, se: bool) -> None:
        super().__init__()
        body: list[nn.Module] = [_Ghost(cin, mid, relu=True)]
        if s > 1:
            body.append(_cba(mid, mid, k, s, groups=mid, act=None))
        if se:
            body.append(_GhostSE(mid))
        body.append(_Ghost(mid, cout, relu=False))
        self.body = nn.Sequential(*body)
        self.short = (
            nn.Identity()
            if cin == cout and s == 1
            else nn.Sequential(_cba(cin, cin, k, s, groups=cin, act=None), _cba(cin, cout, 1, act=None))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


def ghostnet() -> nn.Module:
    cfg = [  # kernel, expansion width, out, SE, stride
        (3, 16, 16, 0, 1),
        (3, 48, 24, 0, 2),
        (3, 72, 24, 0, 1),
        (5, 72, 40, 1, 2),
        (5, 120, 40, 1, 1),
        (3, 240, 80, 0, 2),
        (3, 200, 80, 0, 1),
        (3, 184, 80, 0, 1),
        (3, 184, 80, 0, 1),
        (3, 480, 112, 1, 1),
        (3, 672, 112, 1, 1),
        (5, 672, 160, 1, 2),
        (5, 960, 160, 0, 1),
        (5, 960, 160, 1, 1),
        (5, 960, 160, 0, 1),
        (5, 960, 160, 1, 1),
    ]
    layers: list[nn.Module] = [_cba(3, 16, 3, 2)]
    c = 16
    for k, mid, cout, se, s in cfg:
        layers.append(_GhostBottleneck(c, mid, cout, k, s, bool(se)))
        c = cout
    layers += [
        _cba(c, 960, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(960, 1280, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(1280, 1000),
    ]
    return nn.Sequential(*layers)


# ----- EfficientNetV2-S (Tan & Le, ICML 2021, Table 4): fused MBConv early, MBConv with SE late -----
class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, s: int, expand: int, fused: bool) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if fused:
            layers.append(_cba(cin, mid, 3, s, act=nn.SiLU))
            if expand != 1:
                layers.append(_cba(mid, cout, 1, act=None))
        else:
            layers += [_cba(cin, mid, 1, act=nn.SiLU), _cba(mid, mid, 3, s, groups=mid, act=nn.SiLU)]
            reduced = max(1, cin // 4)
            layers.append(_SqueezeExcite(mid, reduced))
            layers.append(_cba(mid, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int, reduced: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c, reduced, 1),
            nn.SiLU(),
            nn.Conv2d(reduced, c, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def efficientnetv2_s() -> nn.Module:
    stages = [  # fused, expansion, stride, out, layers
        (True, 1, 1, 24, 2),
        (True, 4, 2, 48, 4),
        (True, 4, 2, 64, 4),
        (False, 4, 2, 128, 6),
        (False, 6, 1, 160, 9),
        (False, 6, 2, 256, 15),
    ]
    layers: list[nn.Module] = [_cba(3, 24, 3, 2, act=nn.SiLU)]
    c = 24
    for fused, expand, s, cout, n in stages:
        for i in range(n):
            layers.append(_MBConv(c, cout, s if i == 0 else 1, expand, fused))
            c = cout
    layers += [_cba(c, 1280, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


# ----- RepVGG-A0 (Ding et al., CVPR 2021), deployed: one 3x3 conv + bias + ReLU per layer -----
def repvgg_a0() -> nn.Module:
    a, b = 0.75, 2.5
    plan = [
        (min(64, int(64 * a)), 1),
        (int(64 * a), 2),
        (int(128 * a), 4),
        (int(256 * a), 14),
        (int(512 * b), 1),
    ]
    layers: list[nn.Module] = []
    c = 3
    for width, n in plan:
        for i in range(n):
            layers += [nn.Conv2d(c, width, 3, 2 if i == 0 else 1, 1), nn.ReLU()]
            c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


# ----- ResNeXt-50 32x4d (Xie et al., CVPR 2017): bottlenecks with a grouped 3x3 -----
class _GroupedBottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, s: int, groups: int = 32, base_width: int = 4) -> None:
        super().__init__()
        width = planes * base_width // 64 * groups
        cout = planes * 4
        self.body = nn.Sequential(
            _cba(cin, width, 1), _cba(width, width, 3, s, groups=groups), _cba(width, cout, 1, act=None)
        )
        self.short = _cba(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def resnext50_32x4d() -> nn.Module:
    layers: list[nn.Module] = [_cba(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
        for j in range(n):
            layers.append(_GroupedBottleneck(c, planes, 2 if i > 0 and j == 0 else 1))
            c = planes * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


# ----- GoogLeNet (Szegedy et al., CVPR 2015, Table 1): inception modules, 5x5 branch as in the paper ---
class _Inception(nn.Module):
    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pool: int) -> None:
        super().__init__()

        def conv(i: int, o: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2), nn.ReLU())

        self.b1 = conv(cin, c1, 1)
        self.b3 = nn.Sequential(conv(cin, r3, 1), conv(r3, c3, 3))
        self.b5 = nn.Sequential(conv(cin, r5, 1), conv(r5, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, pool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def googlenet() -> nn.Module:
    plan = [
        (192, 64, 96, 128, 16, 32, 32),
        (256, 128, 128, 192, 32, 96, 64),
        "pool",
        (480, 192, 96, 208, 16, 48, 64),
        (512, 160, 112, 224, 24, 64, 64),
        (512, 128, 128, 256, 24, 64, 64),
        (512, 112, 144, 288, 32, 64, 64),
        (528, 256, 160, 320, 32, 128, 128),
        "pool",
        (832, 256, 160, 320, 32, 128, 128),
        (832, 384, 192, 384, 48, 128, 128),
    ]
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(64, 64, 1),
        nn.ReLU(),
        nn.Conv2d(64, 192, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    for item in plan:
        layers.append(nn.MaxPool2d(3, 2, 1) if item == "pool" else _Inception(*item))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000)]
    return nn.Sequential(*layers)


# ----- VGG-16 with batch norm (Simonyan & Zisserman, ICLR 2015), half width -----
def vgg16_bn_half(resolution: int = 160) -> nn.Module:
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    c = 3
    for v in plan:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(_cba(c, int(v) // 2, 3))
            c = int(v) // 2
    side = resolution // 32
    layers += [
        nn.Flatten(),
        nn.Linear(c * side * side, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 1000),
    ]
    return nn.Sequential(*layers)


# ----- RegNetY-400MF (Radosavovic et al., CVPR 2020): group width 8, SE 0.25 of the block input -----
class _RegNetY(nn.Module):
    def __init__(self, cin: int, cout: int, s: int, group_width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _cba(cin, cout, 1),
            _cba(cout, cout, 3, s, groups=cout // group_width),
            _SqueezeExciteRelu(cout, int(cin * 0.25)),
            _cba(cout, cout, 1, act=None),
        )
        self.short = _cba(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class _SqueezeExciteRelu(nn.Module):
    def __init__(self, c: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, reduced, 1)
        self.expand = nn.Conv2d(reduced, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(torch.relu(self.reduce(nn.functional.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


def regnety_400mf() -> nn.Module:
    layers: list[nn.Module] = [_cba(3, 32, 3, 2)]
    c = 32
    for width, depth in zip((48, 104, 208, 440), (1, 3, 6, 6), strict=True):
        for i in range(depth):
            layers.append(_RegNetY(c, width, 2 if i == 0 else 1))
            c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


# ----- MobileNetV1 (Howard et al., 2017, Table 1): depthwise separable convs -----
def mobilenet_v1() -> nn.Module:
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
    layers: list[nn.Module] = [_cba(3, 32, 3, 2)]
    c = 32
    for cout, s in plan:
        layers += [_cba(c, c, 3, s, groups=c), _cba(c, cout, 1)]
        c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


# ----- ConvNeXt-Atto (Liu et al., CVPR 2022; the timm atto widths): channels-last MLP blocks -----
class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, as timm writes it (permute, norm, permute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gamma * self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


def convnext_atto() -> nn.Module:
    dims, depths = (40, 80, 160, 320), (2, 2, 6, 2)
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), _LayerNorm2d(dims[0], eps=1e-6)]
    for i, (c, n) in enumerate(zip(dims, depths, strict=True)):
        if i > 0:
            layers += [_LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], c, 2, 2)]
        layers += [_ConvNeXtBlock(c) for _ in range(n)]
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(dims[-1], eps=1e-6),
        nn.Linear(dims[-1], 1000),
    ]
    return nn.Sequential(*layers)


# ----- U-Net (Ronneberger et al., MICCAI 2015), quarter width, padded convs: transposed-conv decoder ---
class _UNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 256), classes: int = 2) -> None:
        super().__init__()

        def double(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(_cba(i, o, 3), _cba(o, o, 3))

        self.down = nn.ModuleList(
            [double(3, widths[0])] + [double(a, b) for a, b in zip(widths, widths[1:], strict=False)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(b, a, 2, 2) for a, b in zip(widths, widths[1:], strict=False)]
        )
        self.merge = nn.ModuleList([double(2 * a, a) for a in widths[:-1]])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([skips[i], self.up[i](x)], 1))
        return self.head(x)


FAMILIES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "densenet121": (densenet121, 224),
    "ghostnet": (ghostnet, 224),
    "efficientnetv2_s_160": (efficientnetv2_s, 160),
    "repvgg_a0": (repvgg_a0, 224),
    "resnext50_32x4d_160": (resnext50_32x4d, 160),
    "googlenet": (googlenet, 224),
    "vgg16_bn_half_160": (vgg16_bn_half, 160),
    "regnety_400mf": (regnety_400mf, 224),
    "mobilenet_v1": (mobilenet_v1, 224),
    "convnext_atto": (convnext_atto, 224),
    "unet_quarter_128": (_UNet, 128),
}


def export_family(name: str, path: str | Path) -> Path:
    """Export one family network (random weights, seed 0) as ONNX at its resolution."""
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    builder, resolution = FAMILIES[name]
    torch.manual_seed(0)
    path = Path(path)
    import onnx

    onnx.save(torch_to_onnx(builder().eval(), (1, 3, resolution, resolution)), path)
    return path
