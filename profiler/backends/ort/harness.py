"""Harness models: a kernel measured in the context it runs in, not as a one-op program.

With ONNX Runtime's ORT_ENABLE_ALL, a conv alone pays for converting its input to the
blocked NCHWc layout and back, while inside a network consecutive convs stay blocked; an
add alone is a separate kernel, while after a conv it is folded into the conv. So each
kernel is measured between a *producer* and a *consumer* like the ones a CNN has around it:

    x_i -> hwlat_ctx_pre_i (1x1 depthwise conv + ReLU) -> [kernel] -> hwlat_ctx_post_k (1x1
    depthwise conv) -> hwlat_ctx_y_k

The producer picks the layout a channel-preserving conv would give the tensor (ORT blocks
a conv's output only for some channel counts), and its ReLU keeps ORT from folding the
kernel's own add or activation into the harness. The agent's ``profile_kernels`` then
counts every node that is not ``hwlat_ctx*``: the kernel's nodes and the layout reorders
the kernel causes, but not the reorders at the graph's edges (profiler/agent.py,
``unit_kernel_times``). Inputs with fewer than 8 channels (the image) and 2-D inputs (a
classifier after Flatten) come straight from the graph input, as they do in a network, and so
does a conv with dequantized weights (an int8 conv ORT leaves float32): it reads a
DequantizeLinear's plain NCHW output in a network and writes a QuantizeLinear's input, with no
layout change around it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwlat.profiler.agent import HARNESS_PREFIX
from hwlat.profiler.backends.base import cache_dir
from hwlat.profiler.backends.ort.backend import OrtBackend
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.onnx_models import make_model, save_once
from hwlat.profiler.onnx_models.kernel_models import inline_kernel
from hwlat.profiler.onnx_models.op_models import ACTIVATION_SCALE
from hwlat.profiler.opspec import INT_DTYPES, OpSpec

MIN_PRODUCED_CHANNELS = 8
HARNESS_VERSION = 4  # part of the cached file's name: a changed harness is rebuilt, not reused


def build_harness(kernel: Kernel, seed: int = 0) -> onnx.ModelProto:
    """The kernel between harness producers and consumers, as a checked ONNX model."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    graph_inputs: list[onnx.ValueInfoProto] = []
    graph_outputs: list[onnx.ValueInfoProto] = []
    plain = kernel.head.weights == "dequantized"  # no producers or consumers: see above

    def external(shape: tuple[int, ...], consumer: OpSpec) -> str:
        i = len(graph_inputs)
        name = f"x{i}"
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        if consumer.dtype in INT_DTYPES and consumer.op != "quantize":  # an 8-bit tensor arrives
            return _int8_producer(f"{HARNESS_PREFIX}_pre{i}", name, shape, consumer, rng, nodes, inits)
        if plain or len(shape) != 4 or shape[1] < MIN_PRODUCED_CHANNELS:
            return name
        return _depthwise(f"{HARNESS_PREFIX}_pre{i}", name, shape[1], True, rng, nodes, inits)

    previous = inline_kernel(kernel, external, seed, nodes, inits)
    last = kernel.ops[-1]
    for k, (name, shape) in enumerate(zip(previous, kernel.output_shapes, strict=True)):
        out = f"{HARNESS_PREFIX}_y{k}"  # ORT names a blocked conv after its output tensor
        if last.dtype in INT_DTYPES and last.op != "dequantize":  # an 8-bit tensor leaves
            _int8_consumer(f"{HARNESS_PREFIX}_post{k}", name, shape, last, rng, nodes, inits, out)
        elif len(shape) == 4 and not plain:
            _depthwise(f"{HARNESS_PREFIX}_post{k}", name, shape[1], False, rng, nodes, inits, out)
        else:
            nodes.append(helper.make_node("Identity", [name], [out], name=f"{HARNESS_PREFIX}_out{k}"))
        graph_outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape)))

    graph = helper.make_graph(nodes, "harness", graph_inputs, graph_outputs, initializer=inits)
    model = make_model(graph)
    model.doc_string = kernel.key
    onnx.checker.check_model(model, full_check=True)
    return model


def harness_path(kernel: Kernel, directory: str | Path) -> Path:
    """Write the kernel's harness model into ``directory`` (named by a hash of its key) unless there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(f"{HARNESS_VERSION}:{kernel.key}".encode()).hexdigest()[:16]
    return save_once(directory / f"{kernel.op}-{digest}.onnx", lambda: build_harness(kernel))


@dataclass(frozen=True)
class ProbeModel:
    """A fixed ONNX file measured like a kernel (the profiler-overhead probe); ``op`` names it."""

    key: str
    path: Path
    op: str = "probe"


class HarnessBackend(OrtBackend):
    """ONNX Runtime, with kernels as harness models (OpSpecs, like the canary, stay one-op models).

    Use with ``Campaign(..., kind="kernel")`` so the agent profiles instead of timing end to end.
    """

    kernel_command = "profile_kernels"

    def artifact(self, spec: OpSpec | Kernel | ProbeModel) -> Path:  # type: ignore[override]
        if isinstance(spec, Kernel):
            return harness_path(spec, cache_dir() / "harness")
        if isinstance(spec, ProbeModel):
            return spec.path
        return super().artifact(spec)


# The convs of the QDQ fan-out probe: one whose input and output each have one reader, and
# those next to a branching tensor (the first's output, the other two's input, has two readers).
QDQ_PROBE_SINGLE = "qdq_probe_single"
QDQ_PROBE_BRANCHING = ("qdq_probe_fans_out", "qdq_probe_fanned_a", "qdq_probe_fanned_b")


def qdq_probe_fused(kernel_nodes: list[dict]) -> dict[str, bool]:
    """Which of the probe's convs ONNX Runtime ran as one QLinearConv, from the kernel nodes of
    its profile (it names the QLinearConv it fuses after the conv)."""
    fused = [n["name"] for n in kernel_nodes if n["op"] == "QLinearConv"]
    convs = (QDQ_PROBE_SINGLE, *QDQ_PROBE_BRANCHING)
    return {conv: any(name.startswith(conv) for name in fused) for conv in convs}


def qdq_fanout_probe(dtype: str, directory: str | Path) -> Path:
    """Four QDQ convs as ONNX Runtime's static quantizer writes them (one Q and one DQ per
    tensor, per-channel 8-bit weights), where two of the tensors between them are read by two
    convs. Whether ORT runs each conv as QLinearConv depends on the platform: on x86 it turns
    int8 Q->DQ pairs with one reader into uint8 and fuses uint8 only, so an int8 conv next to a
    tensor with two readers stays a float Conv between DequantizeLinear and QuantizeLinear."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    channels, hw = 32, 28
    shape = [1, channels, hw, hw]

    def build() -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []

        def quantized(source: str, name: str) -> str:
            scale, zero = _qparams(name, dtype, inits)
            nodes.append(
                helper.make_node("QuantizeLinear", [source, scale, zero], [f"{name}_q"], name=f"{name}_q")
            )
            nodes.append(
                helper.make_node(
                    "DequantizeLinear", [f"{name}_q", scale, zero], [f"{name}_dq"], name=f"{name}_dq"
                )
            )
            return f"{name}_dq"

        def conv(source: str, name: str) -> str:
            weights = rng.integers(-127, 127, (channels, channels, 1, 1))
            weight = _int8_weight(name, weights, 1.0 / 1024, nodes, inits)
            y = f"{name}_y"
            nodes.append(helper.make_node("Conv", [source, weight], [y], name=name, kernel_shape=[1, 1]))
            return quantized(y, f"{name}_out")

        fans_out, fanned_a, fanned_b = QDQ_PROBE_BRANCHING
        shared = conv(conv(quantized("x", "qdq_probe_in"), QDQ_PROBE_SINGLE), fans_out)
        outputs = [conv(shared, fanned_a), conv(shared, fanned_b)]
        return make_model(
            helper.make_graph(
                nodes,
                "qdq_fanout_probe",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o in outputs],
                initializer=inits,
            )
        )

    return save_once(directory / f"qdq_fanout_probe_{dtype}_v1.onnx", build)


def relu_chain(nodes: int, directory: str | Path) -> Path:
    """``nodes`` ReLUs in a row on a 1x16x1x1 tensor: nodes that cost next to nothing, so that a
    profiled run shows what the profiler itself adds to each node's recorded time."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shape = [1, 16, 1, 1]

    def build() -> onnx.ModelProto:
        return make_model(
            helper.make_graph(
                [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu{i}") for i in range(nodes)],
                "relu_chain",
                [helper.make_tensor_value_info("t0", TensorProto.FLOAT, shape)],
                [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, shape)],
            )
        )

    return save_once(directory / f"relu_chain_{nodes}.onnx", build)


def _depthwise(
    name: str,
    source: str,
    channels: int,
    relu: bool,
    rng: np.random.Generator,
    nodes: list,
    inits: list,
    out: str | None = None,
) -> str:
    out = out or f"{name}_out"
    w = numpy_helper.from_array(
        (rng.standard_normal((channels, 1, 1, 1)) * 0.5 + 1).astype(np.float32), f"{name}_w"
    )
    b = numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), f"{name}_b")
    inits.extend([w, b])
    conv_out = f"{name}_conv" if relu else out
    nodes.append(
        helper.make_node(
            "Conv", [source, w.name, b.name], [conv_out], name=name, kernel_shape=[1, 1], group=channels
        )
    )
    if relu:
        nodes.append(helper.make_node("Relu", [conv_out], [out], name=f"{name}_act"))
    return out


# ----- 8-bit harness: producers and consumers in the QDQ form, at the op models' one scale ----------
def _int8_producer(
    name: str,
    source: str,
    shape: tuple[int, ...],
    consumer: OpSpec,
    rng: np.random.Generator,
    nodes: list,
    inits: list,
) -> str:
    """Graph input -> Q -> DQ (-> an 8-bit 1x1 depthwise conv -> Q -> DQ): the 8-bit tensor an op
    of a quantized network reads. Returns the float (DQ) tensor the consumer's own Q cancels
    against, or for a ``dequantize`` kernel the 8-bit tensor itself. A channel shuffle gets no
    conv: ORT would carry the conv's NHWC layout through the shuffle's reshape into a strided
    5-D transpose (0.30 ms at 116x28x28, 4x what ShuffleNetV2's shuffles cost in the network,
    where they read a concat)."""
    scale, zero = _qparams(name, consumer.dtype, inits)
    q, dq = f"{name}_qin", f"{name}_dqin"
    nodes += [
        helper.make_node("QuantizeLinear", [source, scale, zero], [q], name=f"{name}_q"),
        helper.make_node("DequantizeLinear", [q, scale, zero], [dq], name=f"{name}_dq"),
    ]
    if len(shape) == 4 and shape[1] >= MIN_PRODUCED_CHANNELS and consumer.op != "shuffle":
        dq = _depthwise_int8(name, dq, shape[1], scale, zero, rng, nodes, inits)
    if consumer.op == "dequantize":  # the kernel reads the 8-bit tensor
        out = f"{name}_qout"
        nodes.append(helper.make_node("QuantizeLinear", [dq, scale, zero], [out], name=f"{name}_qout"))
        return out
    return dq


def _int8_consumer(
    name: str,
    source: str,
    shape: tuple[int, ...],
    producer: OpSpec,
    rng: np.random.Generator,
    nodes: list,
    inits: list,
    out: str,
) -> None:
    """The kernel's 8-bit output (after its own Q -> DQ, or a ``quantize`` kernel's int8 tensor)
    -> (an 8-bit 1x1 depthwise conv ->) DQ -> graph output."""
    scale, zero = _qparams(name, producer.dtype, inits)
    dq = source
    if producer.op == "quantize":
        dq = f"{name}_dqin"
        nodes.append(helper.make_node("DequantizeLinear", [source, scale, zero], [dq], name=f"{name}_dqin"))
    if len(shape) == 4 and shape[1] >= MIN_PRODUCED_CHANNELS:
        dq = _depthwise_int8(name, dq, shape[1], scale, zero, rng, nodes, inits)
    q = f"{name}_qout"
    nodes += [
        helper.make_node("QuantizeLinear", [dq, scale, zero], [q], name=f"{name}_q"),
        helper.make_node("DequantizeLinear", [q, scale, zero], [out], name=f"{name}_dq"),
    ]


def _qparams(name: str, dtype: str, inits: list) -> tuple[str, str]:
    zero_type, zero = (np.int8, 0) if dtype == "int8" else (np.uint8, 128)
    inits += [
        numpy_helper.from_array(np.array(ACTIVATION_SCALE, np.float32), f"{name}_scale"),
        numpy_helper.from_array(np.array(zero, zero_type), f"{name}_zero"),
    ]
    return f"{name}_scale", f"{name}_zero"


def _depthwise_int8(
    name: str,
    source: str,
    channels: int,
    scale: str,
    zero: str,
    rng: np.random.Generator,
    nodes: list,
    inits: list,
) -> str:
    """DQ'd input -> 1x1 depthwise conv with int8 weights -> Q -> DQ: one QLinearConv in ORT."""
    weight = _int8_weight(name, rng.integers(60, 127, (channels, 1, 1, 1)), 1.0 / 127, nodes, inits)
    nodes += [
        helper.make_node(
            "Conv", [source, weight], [f"{name}_conv"], name=name, kernel_shape=[1, 1], group=channels
        ),
        helper.make_node("QuantizeLinear", [f"{name}_conv", scale, zero], [f"{name}_cq"], name=f"{name}_cq"),
        helper.make_node(
            "DequantizeLinear", [f"{name}_cq", scale, zero], [f"{name}_cdq"], name=f"{name}_cdq"
        ),
    ]
    return f"{name}_cdq"


def _int8_weight(name: str, values: np.ndarray, scale: float, nodes: list, inits: list) -> str:
    """A conv weight as ORT's quantizer writes it: int8 values, one scale per output channel
    (zero point 0), and the DequantizeLinear that makes it float32. Returns the float tensor."""
    channels = values.shape[0]
    inits += [
        numpy_helper.from_array(values.astype(np.int8), f"{name}_wq"),
        numpy_helper.from_array(np.full(channels, scale, np.float32), f"{name}_wscale"),
        numpy_helper.from_array(np.zeros(channels, np.int8), f"{name}_wzero"),
    ]
    dequantize = [f"{name}_wq", f"{name}_wscale", f"{name}_wzero"]
    nodes.append(helper.make_node("DequantizeLinear", dequantize, [f"{name}_w"], name=f"{name}_wdq", axis=0))
    return f"{name}_w"
