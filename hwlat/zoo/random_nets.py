"""Random CNNs for training and calibrating predictors, built from the zoo's blocks."""

from __future__ import annotations

import random

import torch
from torch import nn

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
    return make_divisible(base * rng.uniform(0.8, 1.25))


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
    return nn.Sequential(*layers, classifier(head, rng.choice([None, 1024, 1280])))


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
    return nn.Sequential(*layers, classifier(cin))


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
    return nn.Sequential(*layers, classifier(channels[3]))


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
