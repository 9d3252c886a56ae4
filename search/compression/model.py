"""What a compression search needs to know about a network, read once from the model.

``ModelAnalysis`` lists the network's layers (every Conv2d/Linear the forward pass calls, in
call order: what HAQ quantizes), its pruning groups (``hwlat.compress.prunable_groups``: layers
that lose the same output channels, what AMC prunes), and maps both onto the float ONNX graph
the predictor splits: the i-th Conv/Gemm node of the exported graph is the i-th layer called
(checked against the weight shapes). For every tensor of that graph it records which pruning
group sets its channel count (``Source``), so that the cost model can rebuild each kernel, and
the memory estimate each activation, for any choice of kept channels without exporting again.

A model given as ONNX (quantization-only searches) has layers (its Conv/Gemm nodes) and no
pruning groups.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hwlat.errors import ConfigError, HwlatError
from hwlat.profiler.onnx_models import OnnxGraph, load_model, torch_to_onnx
from hwlat.profiler.onnx_models.graph import attrs

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# Ops whose output has the channels of their first data input.
CHANNEL_PRESERVING = frozenset(
    {
        "Relu",
        "Clip",
        "HardSwish",
        "HardSigmoid",
        "Sigmoid",
        "LeakyRelu",
        "Tanh",
        "Softmax",
        "BatchNormalization",
        "Identity",
        "Dropout",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pad",
    }
)
RESHAPING = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze"})
KINDS = ("conv", "depthwise", "linear")


class ModelAnalysisError(HwlatError):
    """A network whose layers cannot be matched to its ONNX graph."""


@dataclass(frozen=True)
class Layer:
    """One Conv2d/Linear layer as the search sees it."""

    index: int
    name: str  # the torch module's name, or the ONNX node's name for an ONNX model
    node: str  # its node in the float ONNX graph
    kind: str  # conv, depthwise or linear
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    input_hw: tuple[int, int]  # feature map the layer reads (1x1 for linear)
    params: int  # weights and bias
    bias: bool
    group: int | None  # pruning group, None when its output channels are never pruned


@dataclass(frozen=True)
class PruneGroup:
    """Layers that keep the same number of output channels; one keep decision."""

    index: int
    layers: tuple[int, ...]  # layer indices, forward order
    channels: int


@dataclass(frozen=True)
class Source:
    """A tensor's channel count: ``factor * kept[group]`` (``group`` None: fixed at ``channels``)."""

    group: int | None
    factor: int
    channels: int  # in the original network

    def count(self, kept: Sequence[int]) -> int:
        return self.channels if self.group is None else self.factor * kept[self.group]


class ModelAnalysis:
    """Layers, pruning groups and the channel source of every tensor of a network's float graph."""

    def __init__(self, model: Any, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(int(v) for v in input_shape)
        if isinstance(model, (str, Path, onnx.ModelProto)):
            self.torch_model = None
            self.onnx = load_model(model)
            names, groups = None, []
        else:
            import torch

            from hwlat.compress import prunable_groups

            self.torch_model = model.eval()
            example = torch.zeros(*self.input_shape)
            names = _called_layers(model, example)
            groups = prunable_groups(model, example) if names else []
            self.onnx = torch_to_onnx(model, self.input_shape)
        self.graph = OnnxGraph(self.onnx)
        nodes = [n for n in self.graph.data_nodes if n.op_type in LAYER_OPS]
        if any(not n.name for n in nodes):
            raise ModelAnalysisError(
                "the ONNX model has Conv/Gemm nodes without names; compression search refers to layers by "
                "node name",
                "name every node (torch.onnx.export does)",
            )
        if names is not None and len(names) != len(nodes):
            raise ModelAnalysisError(
                f"the model calls {len(names)} Conv2d/Linear layers but its ONNX export has "
                f"{len(nodes)} Conv/Gemm/MatMul nodes",
                "compression search supports networks whose layers export one node each",
            )
        group_of = {name: g for g, members in enumerate(groups) for name in members}
        self.layers: list[Layer] = []
        for i, node in enumerate(nodes):
            name = names[i] if names is not None else (node.name or f"{node.op_type}_{i}")
            self.layers.append(self._layer(i, name, node, group_of.get(name)))
        if names is not None:
            self._check_weights(names)
        index = {layer.name: layer.index for layer in self.layers}
        self.groups = [
            PruneGroup(g, tuple(index[n] for n in members), self.layers[index[members[0]]].out_channels)
            for g, members in enumerate(groups)
        ]
        self.node_layer = {layer.node: layer.index for layer in self.layers}
        self.sources = self._sources()
        # the channel source of each layer's input
        self.input_sources = [self.node_input_source(layer.node) for layer in self.layers]

    # ----- layers -------------------------------------------------------------------
    def _layer(self, i: int, name: str, node: onnx.NodeProto, group: int | None) -> Layer:
        g = self.graph
        data_in = node.input[0]
        in_shape = g.shapes.get(data_in)
        w_shape = g.shapes.get(node.input[1])
        out_shape = g.shapes.get(node.output[0])
        if in_shape is None or w_shape is None or out_shape is None:
            raise ModelAnalysisError(f"cannot read the shapes of layer {name!r} (node {node.name!r})")
        bias = int(np.prod(g.shapes[node.input[2]])) if len(node.input) > 2 and node.input[2] else 0
        if node.op_type == "Conv":
            a = attrs(node)
            groups = int(a.get("group", 1))
            cin, cout = int(in_shape[1]), int(out_shape[1])
            kind = "depthwise" if groups > 1 and groups == cin == cout else "conv"
            return Layer(
                i,
                name,
                node.name,
                kind,
                cin,
                cout,
                int(w_shape[2]),
                int(a.get("strides", [1])[0]),
                groups,
                (int(in_shape[2]), int(in_shape[3])),
                int(np.prod(w_shape)) + bias,
                bias > 0,
                group,
            )
        transposed = node.op_type == "Gemm" and attrs(node).get("transB", 0)
        cin = int(in_shape[-1])
        cout = int(w_shape[0] if transposed else w_shape[-1])
        params = int(np.prod(w_shape)) + bias
        return Layer(i, name, node.name, "linear", cin, cout, 1, 1, 1, (1, 1), params, bias > 0, group)

    def _check_weights(self, names: list[str]) -> None:
        assert self.torch_model is not None
        modules = dict(self.torch_model.named_modules())
        for layer in self.layers:
            weight = tuple(modules[layer.name].weight.shape)
            node_weight = tuple(self.graph.shapes.get(self._node(layer.node).input[1], ()))
            if math.prod(weight) != math.prod(node_weight):
                raise ModelAnalysisError(
                    f"layer {layer.name!r} (weight {weight}) does not match ONNX node {layer.node!r} "
                    f"(weight {node_weight})",
                    "compression search matches layers to nodes in call order",
                )

    def _node(self, name: str) -> onnx.NodeProto:
        if not hasattr(self, "_nodes"):
            self._nodes = {n.name: n for n in self.graph.data_nodes}
        return self._nodes[name]

    # ----- channel sources ----------------------------------------------------------
    def _sources(self) -> dict[str, Source]:
        """Which group sets each tensor's channel count (axis 1), propagated in graph order."""
        g = self.graph
        sources: dict[str, Source] = {}
        for inp in self.onnx.graph.input:
            if inp.name in g.shapes and inp.name not in g.static:
                shape = g.shapes[inp.name]
                sources[inp.name] = Source(None, 1, int(shape[1]) if len(shape) > 1 else 1)
        for node in g.data_nodes:
            ins = [i for i in node.input if i and not g.is_static(i)]
            for out in node.output:
                shape = g.shapes.get(out)
                if not out or shape is None:
                    continue
                channels = int(shape[1]) if len(shape) > 1 else 1
                sources[out] = self._source_of(node, ins, channels, sources)
        return sources

    def _source_of(self, node: onnx.NodeProto, ins: list[str], channels: int, sources: dict) -> Source:
        fixed = Source(None, 1, channels)
        if node.name in self.node_layer:
            group = self.layers[self.node_layer[node.name]].group
            return Source(group, 1, channels) if group is not None else fixed
        known = [sources[i] for i in ins if i in sources]
        if not known:
            return fixed
        src = next((s for s in known if s.group is not None), known[0])
        if src.group is None:
            return fixed
        if node.op_type in CHANNEL_PRESERVING and src.channels == channels:
            return Source(src.group, src.factor, channels)
        if node.op_type in RESHAPING:
            in_shape = self.graph.shapes.get(ins[0], ())
            if channels == src.channels:
                return Source(src.group, src.factor, channels)
            # Flatten of a (N, C, H, W) map into (N, C*H*W): the channels stay in blocks of H*W.
            if len(in_shape) >= 2 and in_shape[1] == src.channels and channels == math.prod(in_shape[1:]):
                return Source(src.group, src.factor * (channels // src.channels), channels)
        return fixed

    def source(self, tensor: str) -> Source | None:
        return self.sources.get(tensor)

    def node_input_source(self, node_name: str) -> Source | None:
        """The channel source of a node's first data input."""
        if not hasattr(self, "_nodes"):
            self._nodes = {n.name: n for n in self.graph.data_nodes}
        node = self._nodes.get(node_name)
        if node is None:
            return None
        for i in node.input:
            if i and not self.graph.is_static(i):
                return self.sources.get(i)
        return None

    def summary(self) -> str:
        kinds = {k: sum(1 for layer in self.layers if layer.kind == k) for k in KINDS}
        return (
            f"{len(self.layers)} layers ({', '.join(f'{n} {k}' for k, n in kinds.items() if n)}), "
            f"{len(self.groups)} pruning groups"
        )


def _called_layers(model: Any, example: Any) -> list[str]:
    """Names of the Conv2d/Linear modules the forward pass calls, in call order (each once)."""
    import torch
    from torch import nn

    probe = copy.deepcopy(model).eval()
    names = {m: n for n, m in probe.named_modules()}
    called: dict[str, None] = {}
    hooks = [
        m.register_forward_hook(lambda m, _i, _o: called.setdefault(names[m]))
        for m in probe.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            probe(example)
    finally:
        for h in hooks:
            h.remove()
    if not called:
        raise ConfigError("the model calls no Conv2d or Linear layer; there is nothing to compress")
    return list(called)
