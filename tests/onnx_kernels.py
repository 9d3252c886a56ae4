"""Read an exported ONNX graph as the kernels a runtime runs, independently of search/spaces.

The test compares this with ``space.ops(arch)``. Grouping rule (ONNX Runtime's CPU fusions
that hwlat's tables assume): BatchNorm is already folded into Conv by the exporter; an
activation whose input is a Conv output used by nothing else joins that Conv;
Reshape-Transpose-Reshape is a channel shuffle; Flatten, Identity and Constant are free.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from hwlat.profiler.opspec import OpSpec

_FREE = {"Constant", "Identity", "Flatten"}


def onnx_kernels(model: onnx.ModelProto) -> list[OpSpec]:
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    shapes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        shapes[info.name] = tuple(d.dim_value for d in info.type.tensor_type.shape.dim)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        if node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    for name, value in constants.items():
        shapes.setdefault(name, tuple(value.shape))
    uses = Counter(name for node in graph.node for name in node.input)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    done: set[int] = set()  # ids of nodes already part of a kernel

    def only_consumer(name: str) -> onnx.NodeProto | None:
        if uses[name] != 1 or name in graph_outputs:
            return None
        return consumers[name][0]

    kernels = []
    for node in graph.node:
        if id(node) in done or node.op_type in _FREE:
            continue
        op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        in_shape = shapes[node.input[0]]
        if op == "Conv":
            weight = constants[node.input[1]]
            pads = attrs.get("pads", [0, 0, 0, 0])
            assert len(set(pads)) == 1 and len(set(attrs["strides"])) == 1, attrs
            act = "none"
            nxt = only_consumer(node.output[0])
            if nxt is not None and _activation(nxt, constants) is not None:
                act = _activation(nxt, constants)
                done.add(id(nxt))
            kernels.append(
                OpSpec(
                    "conv",
                    in_shape,
                    out_channels=weight.shape[0],
                    kernel=weight.shape[2],
                    stride=attrs["strides"][0],
                    padding=pads[0],
                    groups=attrs.get("group", 1),
                    bias=len(node.input) == 3,
                    activation=act,
                )
            )
        elif _activation(node, constants) is not None:
            kernels.append(OpSpec("act", in_shape, activation=_activation(node, constants)))
        elif op in ("Add", "Mul"):
            a, b = (shapes[name] for name in node.input)
            full, other = (a, b) if np.prod(a) >= np.prod(b) else (b, a)
            assert other in (full, (*full[:2], 1, 1)), (a, b)
            kernels.append(OpSpec(op.lower(), full, broadcast="none" if a == b else "channel"))
        elif op == "AveragePool":
            pads = attrs.get("pads", [0, 0, 0, 0])
            assert attrs.get("count_include_pad", 0) == 0 and len(set(pads)) == 1, attrs
            kernels.append(
                OpSpec(
                    "avgpool",
                    in_shape,
                    kernel=attrs["kernel_shape"][0],
                    stride=attrs["strides"][0],
                    padding=pads[0],
                )
            )
        elif op == "GlobalAveragePool":
            kernels.append(OpSpec("globalavgpool", in_shape))
        elif op == "Gemm":
            assert attrs.get("transB") == 1, attrs
            kernels.append(
                OpSpec(
                    "gemm",
                    in_shape,
                    out_channels=constants[node.input[1]].shape[0],
                    bias=len(node.input) == 3,
                )
            )
        elif op == "Reshape":
            transpose = only_consumer(node.output[0])
            back = transpose and only_consumer(transpose.output[0])
            assert transpose is not None and transpose.op_type == "Transpose", "bare Reshape"
            assert back is not None and back.op_type == "Reshape", "Reshape-Transpose without Reshape"
            groups = int(constants[node.input[1]][1])
            done.update({id(transpose), id(back)})
            kernels.append(OpSpec("shuffle", in_shape, groups=groups))
        else:
            raise AssertionError(f"no kernel rule for ONNX op {op} ({node.name})")
    return kernels


def _activation(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> str | None:
    op = node.op_type
    if op == "Relu":
        return "relu"
    if op == "HardSwish":
        return "hardswish"
    if op == "HardSigmoid":
        return "hardsigmoid"
    if op == "Sigmoid":
        return "sigmoid"
    if op == "Clip":
        lo, hi = (float(constants[name]) for name in node.input[1:3])
        return "relu6" if (lo, hi) == (0.0, 6.0) else None
    return None
