"""Published CNNs written from their papers, for validating predictors on networks they never saw.

Weights are random (nothing is downloaded); latency does not depend on them. Each
builder returns an eval-mode ``torch.nn.Module`` taking a 1x3xRxR input.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import nn

from hwlat.profiler.onnx_models import torch_to_onnx


def _make_divisible(v: float, divisor: int = 8) -> int:
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
        mid = _make_divisible(cin * expand) if expand != 1 else cin
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(conv_bn(cin, mid, 1, 1, act=act))
        layers.append(conv_bn(mid, mid, k, s, groups=mid, act=act))
        if se_ratio:
            reduced = max(1, int((se_base or mid) * se_ratio))
            if se_gate is nn.Hardsigmoid:
                reduced = _make_divisible(reduced)
            layers.append(SqueezeExcite(mid, reduced, se_gate, nn.SiLU if act is nn.SiLU else nn.ReLU))
        layers.append(conv_bn(mid, cout, 1, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def _classifier(
    cin: int, hidden: int | None = None, act: type[nn.Module] = nn.Hardswish, classes: int = 1000
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if hidden:
        layers += [nn.Linear(cin, hidden), act(), nn.Linear(hidden, classes)]
    else:
        layers.append(nn.Linear(cin, classes))
    return nn.Sequential(*layers)


def mobilenet_v2(width: float = 1.0) -> nn.Module:
    """Sandler et al. 2018, Table 2."""
    cfg = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
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


def _mobilenet_v3(cfg: list[tuple], last: int, head: int) -> nn.Module:
    """MobileNetV3 from its table: rows of (kernel, expanded width, out, SE, activation, stride)."""
    hs = nn.Hardswish
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=hs)]
    cin = 16
    for k, exp, cout, se, act, s in cfg:
        layers.append(InvertedResidual(cin, cout, k, s, exp / cin, act=act, se_ratio=0.25 if se else 0))
        cin = cout
    layers.append(conv_bn(cin, last, 1, 1, act=hs))
    return nn.Sequential(*layers, _classifier(last, head))


def mobilenet_v3_large() -> nn.Module:
    """Howard et al. 2019, Table 1 (large)."""
    hs, re = nn.Hardswish, nn.ReLU
    cfg = [
        (3, 16, 16, False, re, 1),
        (3, 64, 24, False, re, 2),
        (3, 72, 24, False, re, 1),
        (5, 72, 40, True, re, 2),
        (5, 120, 40, True, re, 1),
        (5, 120, 40, True, re, 1),
        (3, 240, 80, False, hs, 2),
        (3, 200, 80, False, hs, 1),
        (3, 184, 80, False, hs, 1),
        (3, 184, 80, False, hs, 1),
        (3, 480, 112, True, hs, 1),
        (3, 672, 112, True, hs, 1),
        (5, 672, 160, True, hs, 2),
        (5, 960, 160, True, hs, 1),
        (5, 960, 160, True, hs, 1),
    ]
    return _mobilenet_v3(cfg, last=960, head=1280)


def mnasnet_a1() -> nn.Module:
    """Tan et al. 2019, Figure 7 (MnasNet-A1)."""
    cfg = [
        (1, 16, 1, 1, 3, False),
        (6, 24, 2, 2, 3, False),
        (3, 40, 3, 2, 5, True),
        (6, 80, 4, 2, 3, False),
        (6, 112, 2, 1, 3, True),
        (6, 160, 3, 2, 5, True),
        (6, 320, 1, 1, 3, False),
    ]
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
    cin = 32
    for t, c, n, s, k, se in cfg:
        for i in range(n):
            layers.append(
                InvertedResidual(cin, c, k, s if i == 0 else 1, t, act=nn.ReLU, se_ratio=0.25 if se else 0)
            )
            cin = c
    layers.append(conv_bn(cin, 1280, 1, 1))
    return nn.Sequential(*layers, _classifier(1280))


def efficientnet_b0() -> nn.Module:
    """Tan & Le 2019, Table 1: MBConv with SE (ratio 0.25 of the block input) and swish."""
    cfg = [
        (1, 16, 1, 1, 3),
        (6, 24, 2, 2, 3),
        (6, 40, 2, 2, 5),
        (6, 80, 3, 2, 3),
        (6, 112, 3, 1, 5),
        (6, 192, 4, 2, 5),
        (6, 320, 1, 1, 3),
    ]
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.SiLU)]
    cin = 32
    for t, c, n, s, k in cfg:
        for i in range(n):
            layers.append(
                InvertedResidual(
                    cin,
                    c,
                    k,
                    s if i == 0 else 1,
                    t,
                    act=nn.SiLU,
                    se_ratio=0.25,
                    se_gate=nn.Sigmoid,
                    se_base=cin,
                )
            )
            cin = c
    layers.append(conv_bn(cin, 1280, 1, 1, act=nn.SiLU))
    return nn.Sequential(*layers, _classifier(1280))


class BasicBlock(nn.Module):
    expansion = 1  # output channels per unit of width

    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, s), conv_bn(cout, cout, 3, 1, act=None))
        self.short = conv_bn(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.short(x))


def resnet(depths: tuple[int, ...] = (2, 2, 2, 2), block: type[nn.Module] = BasicBlock) -> nn.Module:
    """He et al. 2016: ResNet-18 is (2, 2, 2, 2), ResNet-34 (3, 4, 6, 3), both with basic
    blocks; ResNet-50 is (3, 4, 6, 3) with bottleneck blocks."""
    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (n, width) in enumerate(zip(depths, (64, 128, 256, 512), strict=True)):
        for i in range(n):
            layers.append(block(cin, width, 2 if i == 0 and stage > 0 else 1))
            cin = width * block.expansion
    return nn.Sequential(*layers, _classifier(cin))


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


def shufflenet_v2(channels: tuple[int, ...] = (116, 232, 464, 1024)) -> nn.Module:
    """ShuffleNetV2 1.0x (Ma et al. 2018, Table 5)."""
    layers: list[nn.Module] = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for n, c in zip((4, 8, 4), channels[:3], strict=True):
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
        nn.Conv2d(3, 64, 3, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(64, 16, 64),
        Fire(128, 16, 64),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(128, 32, 128),
        Fire(256, 32, 128),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 48, 192),
        Fire(384, 48, 192),
        Fire(384, 64, 256),
        Fire(512, 64, 256),
        nn.Conv2d(512, 1000, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def mobilenet_v3_small() -> nn.Module:
    """Howard et al. 2019, Table 2 (small)."""
    hs, re = nn.Hardswish, nn.ReLU
    cfg = [
        (3, 16, 16, True, re, 2),
        (3, 72, 24, False, re, 2),
        (3, 88, 24, False, re, 1),
        (5, 96, 40, True, hs, 2),
        (5, 240, 40, True, hs, 1),
        (5, 240, 40, True, hs, 1),
        (5, 120, 48, True, hs, 1),
        (5, 144, 48, True, hs, 1),
        (5, 288, 96, True, hs, 2),
        (5, 576, 96, True, hs, 1),
        (5, 576, 96, True, hs, 1),
    ]
    return _mobilenet_v3(cfg, last=576, head=1024)


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-B0's layout without squeeze-and-excitation, with ReLU6 (the Lite variant)."""
    cfg = [
        (1, 16, 1, 1, 3),
        (6, 24, 2, 2, 3),
        (6, 40, 2, 2, 5),
        (6, 80, 3, 2, 3),
        (6, 112, 3, 1, 5),
        (6, 192, 4, 2, 5),
        (6, 320, 1, 1, 3),
    ]
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
    cin = 32
    for t, c, n, s, k in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, k, s if i == 0 else 1, t, act=nn.ReLU6))
            cin = c
    layers.append(conv_bn(cin, 1280, 1, 1, act=nn.ReLU6))
    return nn.Sequential(*layers, _classifier(1280))


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


def resnet50() -> nn.Module:
    """He et al. 2016, bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion)."""
    return resnet((3, 4, 6, 3), Bottleneck)


def squeezenet_1_0() -> nn.Module:
    """Iandola et al. 2016, Table 1 (v1.0)."""
    return nn.Sequential(
        nn.Conv2d(3, 96, 7, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(96, 16, 64),
        Fire(128, 16, 64),
        Fire(128, 32, 128),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 32, 128),
        Fire(256, 48, 192),
        Fire(384, 48, 192),
        Fire(384, 64, 256),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(512, 64, 256),
        nn.Conv2d(512, 1000, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def random_network(seed: int) -> tuple[nn.Module, int]:
    """A random CNN built from the zoo's blocks, and its input resolution.

    Families: inverted residuals (random expansion, kernel, activation, SE), ResNet basic or
    bottleneck blocks, ShuffleNetV2 units and SqueezeNet fire modules, at random widths
    (some not multiples of 8), depths and resolutions. These train and calibrate predictors;
    the published models above stay unseen for validation.
    """
    rng = random.Random(seed)
    family = rng.choices(["mobile", "resnet", "shuffle", "squeeze"], weights=[5, 2, 2, 1])[0]
    resolution = rng.choice([128, 160, 192, 224, 224, 256])
    torch.manual_seed(seed)
    build_family = {
        "mobile": _random_mobile,
        "resnet": _random_resnet,
        "shuffle": _random_shuffle,
        "squeeze": _random_squeeze,
    }[family]
    return build_family(rng).eval(), resolution


def _width(rng: random.Random, base: float, odd: float = 0.1) -> int:
    if rng.random() < odd:
        return max(4, int(base * rng.uniform(0.8, 1.25)))
    return _make_divisible(base * rng.uniform(0.8, 1.25))


def _random_mobile(rng: random.Random) -> nn.Module:
    acts = [nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU]
    cin = _width(rng, rng.choice([16, 24, 32]), odd=0)
    layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=rng.choice(acts))]
    base = float(cin)
    for stage in range(rng.randint(5, 7)):
        stride = 2 if stage in (1, 2, 3, 5) else 1
        base *= rng.uniform(1.2, 2.0) if stride == 2 or stage == 4 else 1.0
        cout = _width(rng, base)
        act = rng.choice(acts)
        se = rng.random() < 0.4
        gate = rng.choice([nn.Hardsigmoid, nn.Sigmoid])
        for i in range(rng.randint(1, 4)):
            layers.append(
                InvertedResidual(
                    cin,
                    cout,
                    rng.choice([3, 3, 5, 7]),
                    stride if i == 0 else 1,
                    rng.choice([1, 3, 4, 6, 6]) if i else rng.choice([3, 4, 6]),
                    act=act,
                    se_ratio=0.25 if se else 0,
                    se_gate=gate,
                )
            )
            cin = cout
    head = rng.choice([640, 960, 1024, 1280])
    layers.append(conv_bn(cin, head, 1, 1, act=rng.choice(acts)))
    return nn.Sequential(*layers, _classifier(head, rng.choice([None, 1024, 1280])))


def _random_resnet(rng: random.Random) -> nn.Module:
    base = rng.choice([32, 48, 64, 64, 96])
    stem = rng.choice([3, 7])
    layers: list[nn.Module] = [conv_bn(3, base, stem, 2), nn.MaxPool2d(3, 2, 1)]
    bottleneck = rng.random() < 0.4
    cin = base
    for stage in range(4):
        width = base * 2**stage
        for i in range(rng.randint(1, 3)):
            s = 2 if i == 0 and stage > 0 else 1
            if bottleneck:
                layers.append(Bottleneck(cin, width // 2, s))
                cin = width // 2 * Bottleneck.expansion
            else:
                layers.append(BasicBlock(cin, width, s))
                cin = width
    return nn.Sequential(*layers, _classifier(cin))


def _random_shuffle(rng: random.Random) -> nn.Module:
    c1 = 2 * rng.randint(20, 130)
    channels = (c1, 2 * c1, 4 * c1, rng.choice([512, 1024]))
    layers: list[nn.Module] = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for n, c in zip((rng.randint(2, 4), rng.randint(4, 8), rng.randint(2, 4)), channels[:3], strict=True):
        for i in range(n):
            layers.append(ShuffleUnit(cin, c, 2 if i == 0 else 1))
            cin = c
    layers.append(conv_bn(cin, channels[3], 1, 1))
    return nn.Sequential(*layers, _classifier(channels[3]))


def _random_squeeze(rng: random.Random) -> nn.Module:
    stem = rng.choice([64, 96])
    layers: list[nn.Module] = [
        nn.Conv2d(3, stem, rng.choice([3, 7]), 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
    ]
    cin = stem
    for stage in range(3):
        for _ in range(rng.randint(1, 3)):
            squeeze = _width(rng, 16 * 2**stage)
            expand = _width(rng, 64 * 2**stage)
            layers.append(Fire(cin, squeeze, expand))
            cin = 2 * expand
        if stage < 2:
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
    layers += [nn.Conv2d(cin, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


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

# Variants of the published models (other widths, resolutions, layouts): more never-seen
# networks for validation. name -> (builder, input resolution).
VARIANTS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "mobilenet_v2_0.75_160": (lambda: mobilenet_v2(0.75), 160),
    "mobilenet_v2_1.4": (lambda: mobilenet_v2(1.4), 224),
    "mobilenet_v3_small": (mobilenet_v3_small, 224),
    "efficientnet_lite0": (efficientnet_lite0, 224),
    "efficientnet_b0_240": (efficientnet_b0, 240),
    "resnet18_160": (resnet, 160),
    "resnet50": (resnet50, 224),
    "shufflenet_v2_0.5": (lambda: shufflenet_v2((48, 96, 192, 1024)), 224),
    "shufflenet_v2_1.5": (lambda: shufflenet_v2((176, 352, 704, 1024)), 224),
    "squeezenet_1_0": (squeezenet_1_0, 224),
}


def build(name: str) -> nn.Module:
    if name in VARIANTS:
        torch.manual_seed(0)
        return VARIANTS[name][0]().eval()
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join([*ZOO, *VARIANTS])}")
    torch.manual_seed(0)
    return ZOO[name]().eval()


def resolution(name: str) -> int:
    """The input resolution a zoo model or variant is exported at."""
    return VARIANTS[name][1] if name in VARIANTS else 224


def export_all(directory: str | Path, names: list[str] | None = None) -> list[Path]:
    """Export zoo models and variants (all by default) as ``directory/<name>.onnx``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [export_onnx(build(n), directory / f"{n}.onnx", resolution(n)) for n in names or [*ZOO, *VARIANTS]]


def export_onnx(model: nn.Module, path: str | Path, resolution: int = 224) -> Path:
    """Export with the legacy exporter (offline, fast, folds batch-norm into convs), opset 17."""
    path = Path(path)
    onnx.save(torch_to_onnx(model, (1, 3, resolution, resolution)), path)
    return path
