"""Torch modules for ``Net`` layers, written so the legacy ONNX export reads as ``Net.kernels()``.

Shapes are static Python ints (the channel shuffle's Reshape targets become constants), and
batch-norm statistics are random rather than the identity so folded biases look like a
trained network's.
"""

from __future__ import annotations

import torch
from torch import nn

from hwlat.search.spaces.graph import Layer, Net

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid}


class GraphModule(nn.Module):
    """Runs a ``Net``'s layers in order; tracing records only the tensor ops."""

    def __init__(self, net: Net) -> None:
        super().__init__()
        layers = net.live_layers()
        self.layers = nn.ModuleList(_module(layer) for layer in layers)
        self.plan = [(layer.inputs, layer.output) for layer in layers]
        self.output_id = net.output.id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {0: x}
        for module, (inputs, output) in zip(self.layers, self.plan, strict=True):
            values[output] = module(*(values[i] for i in inputs))
        return values[self.output_id]


class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Mul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class Scale(nn.Module):
    """Multiply by a constant (1, C, 1, 1) tensor."""

    def __init__(self, channels: int, value: float) -> None:
        super().__init__()
        self.register_buffer("factor", torch.full((1, channels, 1, 1), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Affine(nn.Module):
    """Inference-time BatchNorm written as ``x * scale + shift`` (ONNX Mul, Add)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("factor", 1.0 + 0.1 * torch.randn(1, channels, 1, 1))
        self.register_buffer("shift", 0.1 * torch.randn(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor + self.shift


class ChannelShuffle(nn.Module):
    def __init__(self, shape: tuple[int, ...], groups: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = self.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Classifier(nn.Module):
    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))


def _batchnorm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.0, 0.1)
        bn.running_mean.normal_(0.0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return bn


def _module(layer: Layer) -> nn.Module:
    p = dict(layer.params)
    channels = layer.in_shape[1]
    if layer.kind == "conv":
        parts: list[nn.Module] = [
            nn.Conv2d(
                channels,
                p["out"],
                p["kernel"],
                p["stride"],
                p["kernel"] // 2,
                groups=p["groups"],
                bias=p["bias"] and not p["bn"],
            )
        ]
        if p["bn"]:
            parts.append(_batchnorm(p["out"]))
        if p["act"] != "none":
            parts.append(_ACTIVATIONS[p["act"]]())
        return nn.Sequential(*parts)
    if layer.kind == "act":
        return _ACTIVATIONS[p["act"]]()
    if layer.kind == "add":
        return Add()
    if layer.kind == "mul":
        return Mul()
    if layer.kind == "scale":
        return Scale(channels, p["value"])
    if layer.kind == "affine":
        return Affine(channels)
    if layer.kind == "avgpool":
        return nn.AvgPool2d(p["kernel"], p["stride"], p["padding"], count_include_pad=False)
    if layer.kind == "gap":
        return nn.AdaptiveAvgPool2d(1)
    if layer.kind == "shuffle":
        return ChannelShuffle(layer.in_shape, p["groups"])
    if layer.kind == "linear":
        return Classifier(channels, p["out"])
    raise AssertionError(f"unknown layer kind {layer.kind!r}")
