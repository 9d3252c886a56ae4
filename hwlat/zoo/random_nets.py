"""Random CNNs for training and calibrating predictors, sampled from generic motifs.

Nothing here is a published network's plan: the stem, the number of stages, each stage's block
motif, depth, width and stride, and the head are all drawn from distributions (resolutions
from 80 to 288, widths log-uniform, expansions, kernels, activations and squeeze-and-excitation
at random), so that a predictor trained on these networks has never seen the published CNNs it
is validated on (``hwlat.zoo.published``) by construction. ``GENERATOR_VERSION`` names the
distribution: networks cached under another version are not reused.

Motifs: inverted residual, basic residual, bottleneck residual, plain conv (sometimes behind
an explicit reflect or zero pad), grouped conv residual, fire (squeeze/expand concat),
channel-split shuffle unit, dense concat (pre-activation batch norm), factorised 1xk/kx1
convs, dilated residual, fused inverted residual (a kxk expansion), parallel branches of
several kernel sizes, a channels-last mixer (layer norm and linear layers on NHWC), and an
hourglass (down, conv, upsample by resize or transposed conv, add). Activations include GELU,
Mish, LeakyReLU and ELU; heads pool by average or max.
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn

from hwlat.zoo.blocks import Bottleneck, Fire, InvertedResidual, ShuffleUnit, conv_bn

GENERATOR_VERSION = 3
_ACTS = (
    nn.ReLU,
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.SiLU,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.LeakyReLU,
    nn.ELU,
)
_MOTIFS = (
    "inverted",
    "inverted",
    "basic",
    "bottleneck",
    "plain",
    "grouped",
    "fire",
    "shuffle",
    "dense",
    "factorised",
    "dilated",
    "fused",
    "branches",
    "mixer",
    "hourglass",
)


def random_network(seed: int) -> tuple[nn.Module, int]:
    """A random CNN and its input resolution (eval mode, random weights, 1x3xRxR input)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    resolution = rng.randrange(80, 289, rng.choice([1, 8, 8, 16]))
    act = rng.choice(_ACTS)
    width = _width(rng, 8, 96)
    stem_k = rng.choice([3, 3, 5, 7])
    layers: list[nn.Module] = [conv_bn(3, width, stem_k, rng.choice([1, 2, 2, 2]), act=act)]
    size = math.ceil(resolution / layers[0][0].stride[0])
    if rng.random() < 0.3 and size >= 16:
        layers.append(nn.MaxPool2d(3, 2, 1))
        size = math.ceil(size / 2)
    for stage in range(rng.randint(3, 6)):
        motif = rng.choice(_MOTIFS)
        stride = 2 if stage > 0 and size >= 8 and rng.random() < 0.7 else 1
        cout = max(
            8, int(width * rng.uniform(1.0, 2.3)) if stride == 2 else int(width * rng.uniform(0.8, 1.6))
        )
        if rng.random() < 0.7:
            cout = max(8, round(cout / 8) * 8)
        depth = rng.randint(1, 4)
        for i in range(depth):
            block, width = _block(rng, motif, width, cout, stride if i == 0 else 1, act, size)
            layers.append(block)
            if i == 0:
                size = math.ceil(size / stride)
    if rng.random() < 0.6:
        head = _width(rng, 256, 2048)
        layers.append(conv_bn(width, head, 1, 1, act=rng.choice(_ACTS)))
        width = head
    layers += [nn.AdaptiveAvgPool2d(1) if rng.random() < 0.8 else nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    if rng.random() < 0.3:
        hidden = _width(rng, 128, 2048)
        layers += [nn.Linear(width, hidden), rng.choice(_ACTS)()]
        width = hidden
    layers.append(nn.Linear(width, int(math.exp(rng.uniform(math.log(10), math.log(2000))))))
    return nn.Sequential(*layers).eval(), resolution


def _width(rng: random.Random, lo: int, hi: int) -> int:
    value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return max(4, round(value / 8) * 8 if rng.random() < 0.7 else round(value))


def _block(
    rng: random.Random, motif: str, cin: int, cout: int, stride: int, act, size: int
) -> tuple[nn.Module, int]:
    """One block of ``motif`` on a ``size`` x ``size`` input; returns it and its output channels
    (an hourglass that cannot halve its input evenly is a basic residual instead)."""
    k = rng.choice([3, 3, 5, 7])
    if motif == "inverted":
        se = rng.uniform(0.05, 0.3) if rng.random() < 0.35 else 0.0
        gate = rng.choice([nn.Hardsigmoid, nn.Sigmoid])
        return InvertedResidual(
            cin, cout, k, stride, rng.uniform(1, 7), act=act, se_ratio=se, se_gate=gate
        ), cout
    if motif == "hourglass" and stride == 1 and size % 2 == 0 and size >= 8:
        return _Hourglass(cin, act, rng.choice(["nearest", "bilinear", "deconv"])), cin
    if motif in ("basic", "hourglass"):
        return _Residual(
            conv_bn(cin, cout, k, stride, act=act), conv_bn(cout, cout, 3, 1, act=None), cin, cout, stride
        ), cout
    if motif == "bottleneck":
        width = max(4, cout // rng.choice([2, 4]))
        return Bottleneck(cin, width, stride), width * Bottleneck.expansion
    if motif == "plain":
        if rng.random() < 0.3:  # an explicit pad: reflect, or TensorFlow's asymmetric "same" zeros
            mode = rng.choice(["reflect", "constant"])
            pad = (k // 2,) * 4 if mode == "reflect" else (0, k - 1, 0, k - 1)
            conv = nn.Conv2d(cin, cout, k, stride, 0, bias=False)
            return nn.Sequential(_Pad(pad, mode), conv, nn.BatchNorm2d(cout), act()), cout
        return conv_bn(cin, cout, k, stride, act=act), cout
    if motif == "factorised":
        k = rng.choice([3, 5, 7])
        body = nn.Sequential(
            _conv_bn_hw(cin, cout, (1, k), (1, stride), act),
            _conv_bn_hw(cout, cout, (k, 1), (stride, 1), None),
        )
        return _Residual(body, nn.Identity(), cin, cout, stride), cout
    if motif == "dilated":
        d = rng.choice([2, 3, 4])
        first = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, d, dilation=d, bias=False), nn.BatchNorm2d(cout), act()
        )
        return _Residual(first, conv_bn(cout, cout, 1, 1, act=None), cin, cout, stride), cout
    if motif == "fused":
        mid = _width(rng, cin, cin * 6)
        body = nn.Sequential(conv_bn(cin, mid, k, stride, act=act), conv_bn(mid, cout, 1, 1, act=None))
        return (_Add(body) if stride == 1 and cin == cout else body), cout
    if motif == "branches":
        return _Branches(rng, cin, cout, stride, act), cout
    if motif == "mixer":
        block = _Mixer(cin, rng.choice([3, 5, 7]), rng.choice([2, 3, 4]), rng.choice([nn.GELU, act]))
        if stride == 1 and cin == cout:
            return block, cout
        return nn.Sequential(block, conv_bn(cin, cout, 3 if stride == 2 else 1, stride, act=None)), cout
    if motif == "grouped":
        groups = rng.choice([2, 4, 8, 16, 32])
        mid = max(groups, cout // groups * groups)
        body = nn.Sequential(
            conv_bn(cin, mid, 1, 1, act=act), conv_bn(mid, mid, 3, stride, groups=groups, act=act)
        )
        return _Residual(body, conv_bn(mid, cout, 1, 1, act=None), cin, cout, stride), cout
    if motif == "fire":
        squeeze = max(4, cin // rng.choice([2, 4, 8]))
        expand = max(4, cout // 2)
        block = nn.Sequential(
            Fire(cin, squeeze, expand), nn.MaxPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        )
        return block, 2 * expand
    if motif == "shuffle":
        cout = max(4, cout // 2 * 2)
        if stride == 1 and cin != cout:
            return conv_bn(cin, cout, 1, 1, act=act), cout
        return ShuffleUnit(cin, cout, stride), cout
    growth = max(4, cout // rng.choice([4, 8]))  # dense: concat the input with new features
    return _Dense(cin, growth, k, stride, act), cin + growth


def _conv_bn_hw(cin: int, cout: int, k: tuple[int, int], s: tuple[int, int], act) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, (k[0] // 2, k[1] // 2), bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act is not None else []))


class _Pad(nn.Module):
    def __init__(self, pad: tuple[int, int, int, int], mode: str) -> None:
        super().__init__()
        self.pad, self.mode = pad, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, self.pad, mode=self.mode)


class _Add(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Branches(nn.Module):
    """Two to four parallel branches (1x1; kxk behind a 1x1 reduction; pool then 1x1), concatenated."""

    def __init__(self, rng: random.Random, cin: int, cout: int, stride: int, act) -> None:
        super().__init__()
        n = rng.randint(2, 4)
        widths = [max(4, cout // n)] * (n - 1)
        widths.append(cout - sum(widths))
        branches = []
        for i, w in enumerate(widths):
            kind = i % 3 if i < 3 else rng.randrange(3)
            if kind == 0:
                branches.append(conv_bn(cin, w, 1, stride, act=act))
            elif kind == 1:
                mid = max(4, w // rng.choice([1, 2]))
                branches.append(
                    nn.Sequential(
                        conv_bn(cin, mid, 1, 1, act=act), conv_bn(mid, w, rng.choice([3, 5]), stride, act=act)
                    )
                )
            else:
                pool = nn.MaxPool2d(3, stride, 1) if rng.random() < 0.5 else nn.AvgPool2d(3, stride, 1)
                branches.append(nn.Sequential(pool, conv_bn(cin, w, 1, 1, act=act)))
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class _Mixer(nn.Module):
    """Depthwise kxk conv, then on channels-last tensors a layer norm and a two-layer MLP, residual."""

    def __init__(self, channels: int, k: int, expand: int, act) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, k, 1, k // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, expand * channels), act(), nn.Linear(expand * channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


class _Hourglass(nn.Module):
    """Down by 2, a conv, back up (nearest or bilinear resize, or a transposed conv), added to the input."""

    def __init__(self, channels: int, act, up: str) -> None:
        super().__init__()
        self.down = conv_bn(channels, channels, 3, 2, act=act)
        self.up = (
            nn.ConvTranspose2d(channels, channels, 2, 2)
            if up == "deconv"
            else nn.Upsample(scale_factor=2, mode=up)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


class _Residual(nn.Module):
    """``relu(second(first(x)) + shortcut(x))`` with a 1x1 projection when the shape changes."""

    def __init__(self, first: nn.Module, second: nn.Module, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(first, second)
        self.short = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


class _Dense(nn.Module):
    """Pre-activation batch norm, a conv producing ``growth`` channels, concatenated to the input."""

    def __init__(self, cin: int, growth: int, k: int, stride: int, act) -> None:
        super().__init__()
        self.norm = nn.Sequential(nn.BatchNorm2d(cin), act())
        self.conv = nn.Conv2d(cin, growth, k, 1, k // 2, bias=False)
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.cat((x, self.conv(self.norm(x))), dim=1))
