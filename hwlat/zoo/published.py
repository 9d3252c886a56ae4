"""Published CNNs written from their papers, for validating predictors on networks they never saw.

Weights are random (nothing is downloaded); latency does not depend on them. Each
builder returns an eval-mode ``torch.nn.Module`` taking a 1x3xRxR input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import nn

from hwlat.profiler.onnx_models import torch_to_onnx
from hwlat.zoo.blocks import (
    BasicBlock,
    Bottleneck,
    Fire,
    InvertedResidual,
    ShuffleUnit,
    classifier,
    conv_bn,
    make_divisible,
)


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
    cin = make_divisible(32 * width)
    layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
    for t, c, n, s in cfg:
        cout = make_divisible(c * width)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, 3, s if i == 0 else 1, t))
            cin = cout
    last = make_divisible(1280 * max(1.0, width))
    layers.append(conv_bn(cin, last, 1, 1, act=nn.ReLU6))
    return nn.Sequential(*layers, classifier(last))


def _mobilenet_v3(cfg: list[tuple], last: int, head: int) -> nn.Module:
    """MobileNetV3 from its table: rows of (kernel, expanded width, out, SE, activation, stride)."""
    hs = nn.Hardswish
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=hs)]
    cin = 16
    for k, exp, cout, se, act, s in cfg:
        layers.append(InvertedResidual(cin, cout, k, s, exp / cin, act=act, se_ratio=0.25 if se else 0))
        cin = cout
    layers.append(conv_bn(cin, last, 1, 1, act=hs))
    return nn.Sequential(*layers, classifier(last, head))


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
    return nn.Sequential(*layers, classifier(1280))


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
    return nn.Sequential(*layers, classifier(1280))


def resnet(depths: tuple[int, ...] = (2, 2, 2, 2), block: type[nn.Module] = BasicBlock) -> nn.Module:
    """He et al. 2016: ResNet-18 is (2, 2, 2, 2), ResNet-34 (3, 4, 6, 3), both with basic
    blocks; ResNet-50 is (3, 4, 6, 3) with bottleneck blocks."""
    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (n, width) in enumerate(zip(depths, (64, 128, 256, 512), strict=True)):
        for i in range(n):
            layers.append(block(cin, width, 2 if i == 0 and stage > 0 else 1))
            cin = width * block.expansion
    return nn.Sequential(*layers, classifier(cin))


def shufflenet_v2(channels: tuple[int, ...] = (116, 232, 464, 1024)) -> nn.Module:
    """ShuffleNetV2 1.0x (Ma et al. 2018, Table 5)."""
    layers: list[nn.Module] = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for n, c in zip((4, 8, 4), channels[:3], strict=True):
        for i in range(n):
            layers.append(ShuffleUnit(cin, c, 2 if i == 0 else 1))
            cin = c
    layers.append(conv_bn(cin, channels[3], 1, 1))
    return nn.Sequential(*layers, classifier(channels[3]))


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
    return nn.Sequential(*layers, classifier(1280))


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
