"""Kernels as ONNX graphs: each op's one-op model (op_models.py) copied in and chained as the kernel
runs them (profiler/kernel.py: each op reads the previous op's output; the SE ``mul`` scales the
kernel's input).

``inline_kernel`` writes the kernel into a graph being built, with its outside inputs named by the
caller (ONNX Runtime's harness puts producers there: profiler/backends/ort/harness.py);
``build_kernel_model`` is the kernel alone, reading graph inputs and writing graph outputs: what a
compiler that fuses across op boundaries (TVM) must be given, so that nothing around the kernel
fuses into it.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import TensorProto, helper

from hwlat.profiler.kernel import Kernel
from hwlat.profiler.onnx_models.files import make_model
from hwlat.profiler.onnx_models.op_models import build_model
from hwlat.profiler.opspec import OpSpec

External = Callable[[tuple[int, ...], OpSpec], str]


def inline_op(
    spec: OpSpec, prefix: str, sources: list[str], seed: int, nodes: list, inits: list
) -> list[str]:
    """Copy the op's one-op model into the graph with its inputs wired to ``sources``; return the
    names of its outputs."""
    graph = build_model(spec, seed=seed).graph
    rename = {f"x{i}": src for i, src in enumerate(sources)}

    def name_of(tensor: str) -> str:
        return rename.get(tensor) or (f"{prefix}_{tensor}" if tensor else tensor)

    for init in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = name_of(init.name)
        inits.append(copy)
    for n, node in enumerate(graph.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{prefix}_{node.op_type}_{n}"
        copy.input[:] = [name_of(t) for t in node.input]
        copy.output[:] = [name_of(t) for t in node.output]
        nodes.append(copy)
    return [name_of(o.name) for o in graph.output]


def inline_kernel(kernel: Kernel, external: External, seed: int, nodes: list, inits: list) -> list[str]:
    """Copy the kernel's ops into the graph, chained; ``external(shape, op)`` names the tensor for
    each input the kernel reads from outside (in ``Kernel.input_shapes`` order). Returns the names
    of the kernel's outputs."""
    kernel_input = ""
    previous: list[str] = []
    for j, spec in enumerate(kernel.ops):
        if j == 0:
            sources = [external(s, spec) for s in spec.input_shapes]
            kernel_input = sources[0]
        elif kernel.is_se and j == len(kernel.ops) - 1:
            sources = [kernel_input, previous[0]]
        else:
            sources = [previous[0], *(external(s, spec) for s in spec.input_shapes[1:])]
        previous = inline_op(spec, f"u{j}", sources, seed + j, nodes, inits)
    return previous


def build_kernel_model(kernel: Kernel, seed: int = 0) -> onnx.ModelProto:
    """The kernel alone (float32): its outside inputs are graph inputs, its outputs graph outputs."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []

    def external(shape: tuple[int, ...], _spec: OpSpec) -> str:
        name = f"x{len(inputs)}"
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    outputs = inline_kernel(kernel, external, seed, nodes, inits)
    graph = helper.make_graph(
        nodes,
        "kernel",
        inputs,
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
            for name, shape in zip(outputs, kernel.output_shapes, strict=True)
        ],
        initializer=inits,
    )
    model = make_model(graph)
    model.doc_string = kernel.key
    onnx.checker.check_model(model, full_check=True)
    return model
