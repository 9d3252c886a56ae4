"""Peak memory of a network: weights plus the largest set of activations alive at once.

A runtime holds every weight for the whole run, and an activation from the node that writes it
to the last node that reads it. Walking the graph in execution order and adding up what is
alive after each node gives the activation peak (MCUNet's analytic count, generalised to any
graph: a residual input stays alive across its block because its last reader comes later),
with the graph fused as ONNX Runtime fuses it: an element-wise op fused into its producer
allocates nothing, SiLU and GELU are one kernel, a conv writes into the residual it is added
to, and an 8-bit conv holds its kernel's scratch while it runs (checked against liveness over
ORT's own optimized graph and against the memory it measurably adds with its arena off:
``benchmarks/RESULTS-memory.md``). What a process really adds on top (the runtime's own state,
weights prepacked into another layout, the arena's growth in chunks) is device- and runtime-
specific, so ``MemoryModel`` fits ``peak = offset + weight_scale * weights + activation_scale
* peak activations`` per device from models measured there (``Measurement.model_rss_mb``: the
peak while the loaded model runs, in a fresh process with the allocator held still), with
bounds that keep a few measurements from producing nonsense. The peak while the runtime loads
a model (its transient copies of the weights) is measured but not predicted.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto

from hwlat.predictors.models.arena import arena_held_bytes
from hwlat.profiler.onnx_models import OnnxGraph, load_model
from hwlat.profiler.onnx_models.graph import attrs

MB = 1024 * 1024
# Element-wise ops a runtime fuses into the op before them (or runs in place) when that op's
# output has no other reader: they allocate nothing.
IN_PLACE_OPS = frozenset(
    {
        "Relu",
        "Clip",
        "HardSwish",
        "HardSigmoid",
        "Sigmoid",
        "LeakyRelu",
        "BatchNormalization",
        "Identity",
        "Dropout",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
    }
)
_BYTES = {
    TensorProto.FLOAT: 4,
    TensorProto.FLOAT16: 2,
    TensorProto.DOUBLE: 8,
    TensorProto.INT8: 1,
    TensorProto.UINT8: 1,
    TensorProto.INT32: 4,
    TensorProto.INT64: 8,
    TensorProto.BOOL: 1,
}


@dataclass(frozen=True)
class Footprint:
    """What a network needs by construction, before any runtime: weights and the activation peak."""

    weight_bytes: int
    activation_peak_bytes: int  # tensors and kernel scratch alive at once
    peak_node: str = ""  # where the activation peak is reached
    arena_bytes: int = 0  # what ORT's arena holds resident for them after runs (arena.py)

    @property
    def weights_mb(self) -> float:
        return self.weight_bytes / MB

    @property
    def activations_mb(self) -> float:
        return self.activation_peak_bytes / MB

    @property
    def arena_mb(self) -> float:
        return self.arena_bytes / MB


def footprint_of(
    weight_bytes: int,
    steps: Sequence[tuple[str, Sequence[Hashable], Sequence[Hashable]]],
    size_bytes: dict[Hashable, int],
    inputs: Iterable[Hashable],
    outputs: Iterable[Hashable],
    scratch: Collection[Hashable] = (),
) -> Footprint:
    """The footprint of a run's steps: the liveness peak, and what ORT's arena holds after it."""
    inputs, outputs = list(inputs), list(outputs)
    peak, where = liveness_peak(steps, size_bytes, inputs, outputs)
    held = arena_held_bytes(steps, size_bytes, inputs, outputs, scratch)
    return Footprint(int(weight_bytes), int(peak), where, held)


def liveness_peak(
    steps: Sequence[tuple[str, Sequence[Hashable], Sequence[Hashable]]],
    size_bytes: dict[Hashable, int],
    inputs: Iterable[Hashable],
    outputs: Iterable[Hashable],
) -> tuple[int, str]:
    """Largest total size of tensors alive at once, and the step where it is reached.

    ``steps`` are (name, inputs, outputs) in execution order. A tensor is alive from the step
    that writes it (graph inputs: from the start) to the last step that reads it (graph
    outputs: to the end); during a step its inputs and outputs are alive together.
    """
    last_read: dict[Hashable, int] = {}
    for i, (_, ins, _) in enumerate(steps):
        for t in ins:
            last_read[t] = i
    for t in outputs:
        last_read[t] = len(steps)
    live = {t: size_bytes.get(t, 0) for t in inputs}
    current = sum(live.values())
    peak, where = current, "inputs"
    for i, (name, _ins, outs) in enumerate(steps):
        for t in outs:
            if t not in live:
                live[t] = size_bytes.get(t, 0)
                current += live[t]
        if current > peak:
            peak, where = current, name
        for t in [t for t in live if last_read.get(t, -1) <= i]:
            current -= live.pop(t)
    return peak, where


# Activations ORT's graph optimizer fuses into one kernel that reads x and writes one tensor,
# as torch exports them: the element-wise chain from x ends in a Mul by x. ``x * sigmoid(x)``
# (SiLU: QuickGelu) and ``x * (1 + erf(x / sqrt 2))`` (GELU: Gelu). The value says whether the
# fused kernel also takes a trailing multiply by a constant (GELU's 0.5). Mish (softplus,
# tanh) is not fused by ORT and is not listed.
FUSED_ACTIVATION_CHAINS = {("Sigmoid",): False, ("Div", "Erf", "Add"): True, ("Mul", "Erf", "Add"): True}
# Scratch an 8-bit conv allocates while it runs (ORT's QLinearConv): an indirection buffer of
# one pointer per kernel tap and output pixel, or an im2col copy plus an int32 output.
POINTER_BYTES = 8


@dataclass(frozen=True)
class ExecutionSteps:
    """A graph as the runtime executes it, for ``liveness_peak``: the steps that allocate
    (name, inputs, outputs), with fused and in-place nodes folded away."""

    steps: list[tuple[str, list[str], list[str]]]
    inputs: list[str]  # graph inputs that are not constants
    outputs: list[str]  # graph outputs, under the tensor that holds them
    eight_bit_writes: dict[str, str]  # tensor -> the QuantizeLinear output whose size it has
    scratch_bytes: dict[str, int]  # per-step scratch, under a tensor only that step writes


def execution_steps(
    model: onnx.ModelProto, graph: OnnxGraph, eight_bit_nodes: Collection[str] = ()
) -> ExecutionSteps:
    """The allocating steps of ``graph`` in execution order, fused as ORT fuses them.

    - An element-wise op fused into its producer (``IN_PLACE_OPS``, when its input has no
      other reader) writes in place.
    - A fused activation (``FUSED_ACTIVATION_CHAINS``) is one step from x to its output.
    - A conv whose only reader is an Add of a same-shaped tensor is one step (ORT's Sum
      fusion); it writes into that tensor when the Add is its last reader.
    - An 8-bit kernel reads the quantized tensor and writes one (ORT's QDQ fusion): a
      QuantizeLinear after a node that only it reads makes that node write 8 bits, and a
      DequantizeLinear is read through, unless its float output leaves the graph. An 8-bit
      conv (QDQ weights, or in ``eight_bit_nodes``) also holds its scratch while it runs.
    """
    static = graph.static
    readers: dict[str, int] = {}
    last_reader: dict[str, int] = {}
    for n in graph.data_nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
            last_reader[i] = id(n)
    producer = {o: n for n in graph.data_nodes for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    inputs = [i.name for i in model.graph.input if i.name not in static]
    alias: dict[str, str] = {}
    eight_bit_writes: dict[str, str] = {}
    for n in graph.data_nodes:
        if n.op_type == "QuantizeLinear" and n.input[0] in producer and readers.get(n.input[0]) == 1:
            alias[n.output[0]] = n.input[0]
            eight_bit_writes[n.input[0]] = n.output[0]
    skipped, fused_from = _fused_activations(graph, producer, readers)
    sums = _conv_sums(graph, producer, readers)
    deferred = {id(conv) for conv, _ in sums.values()}
    weight_producer = {o: n for n in graph.nodes for o in n.output}  # constant-folded ones too
    scratch_bytes: dict[str, int] = {}
    steps = []
    for n in graph.data_nodes:
        ins = [alias.get(i, i) for i in n.input if i and i not in static]
        if id(n) in skipped or id(n) in deferred:
            continue
        if n.op_type == "QuantizeLinear" and n.output[0] in alias:
            continue
        if n.op_type == "DequantizeLinear" and ins and n.output[0] not in graph_outputs:
            alias[n.output[0]] = ins[0]
            continue
        if n.op_type in IN_PLACE_OPS and len(ins) == 1 and readers.get(n.input[0]) == 1 and n.output:
            alias[n.output[0]] = ins[0]
            continue
        outs = [o for o in n.output if o]
        if id(n) in fused_from:
            ins = [alias.get(fused_from[id(n)], fused_from[id(n)])]
        if id(n) in sums:
            conv, other = sums[id(n)]
            ins = [alias.get(i, i) for i in conv.input if i and i not in static] + [alias.get(other, other)]
            if last_reader.get(other) == id(n) and other not in inputs and n.output[0] not in graph_outputs:
                alias[n.output[0]] = alias.get(other, other)
                outs = []
            n = conv
        scratch = _eight_bit_conv_scratch(n, graph, weight_producer, eight_bit_nodes)
        if scratch:
            scratch_bytes[f"scratch:{n.name}"] = scratch
            outs = [*outs, f"scratch:{n.name}"]
        steps.append((n.name or n.op_type, ins, outs))
    outputs = [alias.get(o.name, o.name) for o in model.graph.output]
    return ExecutionSteps(steps, inputs, outputs, eight_bit_writes, scratch_bytes)


def _single_data_input(node: onnx.NodeProto, static: Collection[str]) -> str | None:
    ins = [i for i in node.input if i and i not in static]
    return ins[0] if len(ins) == 1 else None


def _fused_activations(
    graph: OnnxGraph, producer: dict[str, onnx.NodeProto], readers: dict[str, int]
) -> tuple[set[int], dict[int, str]]:
    """The nodes folded into fused activations (``FUSED_ACTIVATION_CHAINS``), and for each
    fused activation's last node the x it reads."""
    skipped: set[int] = set()
    fused_from: dict[int, str] = {}
    for n in graph.data_nodes:
        ins = [i for i in n.input if i and i not in graph.static]
        if n.op_type != "Mul" or len(ins) != 2:
            continue
        for x, t in (ins, ins[::-1]):
            chain, cur = [], t
            while cur != x and cur in producer and readers.get(cur) == 1 and len(chain) < 3:
                node = producer[cur]
                chain.insert(0, node)
                cur = _single_data_input(node, graph.static) or ""
            key = tuple(c.op_type for c in chain)
            if cur != x or key not in FUSED_ACTIVATION_CHAINS:
                continue
            skipped.update(id(c) for c in chain)
            last = n
            if FUSED_ACTIVATION_CHAINS[key] and readers.get(n.output[0]) == 1:  # its one reader
                tail = next(r for r in graph.data_nodes if n.output[0] in r.input)
                if tail.op_type == "Mul" and _single_data_input(tail, graph.static):
                    skipped.add(id(n))
                    last = tail
            fused_from[id(last)] = x
            break
    return skipped, fused_from


def _conv_sums(
    graph: OnnxGraph, producer: dict[str, onnx.NodeProto], readers: dict[str, int]
) -> dict[int, tuple[onnx.NodeProto, str]]:
    """Adds ORT fuses into the conv before them (conv output read only by the Add, the other
    operand of the same shape): Add -> (conv, the other operand)."""
    sums = {}
    for n in graph.data_nodes:
        ins = [i for i in n.input if i and i not in graph.static]
        if n.op_type != "Add" or len(ins) != 2:
            continue
        for c, other in (ins, ins[::-1]):
            conv = producer.get(c)
            if (
                conv is not None
                and conv.op_type == "Conv"
                and readers.get(c) == 1
                and graph.shapes.get(c) == graph.shapes.get(other)
                and other != c
            ):
                sums[id(n)] = (conv, other)
                break
    return sums


def _eight_bit_conv_scratch(
    node: onnx.NodeProto,
    graph: OnnxGraph,
    producer: dict[str, onnx.NodeProto],
    eight_bit_nodes: Collection[str],
) -> int:
    """Bytes ORT's QLinearConv allocates while it runs (0 for a float conv), following its
    kernel choice on x86 (MLAS): the symmetric-weight kernel (int8 weights, zero points 0;
    a dense conv with input channels a multiple of 4 and output channels a multiple of 8,
    at least 16, or a depthwise conv of a multiple of 16 channels) needs one pointer per
    kernel tap and output pixel, unless pointwise. Any other conv writes an int32 output
    first, and copies its input (im2col) unless pointwise; a depthwise one uses the pointers
    instead of the copy."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return 0
    weight = producer.get(node.input[1])
    quantized = weight is not None and weight.op_type == "DequantizeLinear"
    if not quantized and node.name not in eight_bit_nodes:
        return 0
    w_shape = graph.shapes.get(node.input[1])
    out_shape = graph.shapes.get(node.output[0])
    if not w_shape or not out_shape or len(w_shape) < 3:
        return 0
    a = attrs(node)
    groups = int(a.get("group", 1))
    out_channels, group_in_channels = int(w_shape[0]), int(w_shape[1])
    taps = _numel(w_shape[2:])
    pixels = _numel(out_shape[2:])
    depthwise = groups > 1 and groups == out_channels and group_in_channels == 1
    pointwise = taps == 1 and not any(a.get("pads", ())) and all(s == 1 for s in a.get("strides", (1,)))
    indirection = POINTER_BYTES * taps * pixels
    if quantized and _all_zero(graph, weight):
        if depthwise and groups % 16 == 0:
            return indirection
        dense = groups == 1 and group_in_channels % 4 == 0 and out_channels >= 16 and out_channels % 8 == 0
        if dense:
            return 0 if pointwise else indirection
    int32_output = 4 * out_channels * pixels
    if depthwise:
        return indirection + int32_output
    return int32_output + (0 if pointwise else group_in_channels * taps * pixels)


def _all_zero(graph: OnnxGraph, dequantize: onnx.NodeProto) -> bool:
    """Whether a weight DequantizeLinear has int8 weights and zero points of 0 (symmetric)."""
    weight = graph.value(dequantize.input[0])
    if weight is None or weight.dtype != np.int8:
        return False
    zero = graph.value(dequantize.input[2]) if len(dequantize.input) > 2 and dequantize.input[2] else None
    return zero is None or not np.any(zero)


def onnx_footprint(model: onnx.ModelProto | str, eight_bit_nodes: Collection[str] = ()) -> Footprint:
    """Weights (initializers, at their stored dtype) and the activation peak of an ONNX graph.

    Shapes and dtypes come from ONNX shape inference where it succeeds and from hwlat's own
    shape folding otherwise; tensors computed only from constants (folded at load time by the
    runtime) are not activations. ``eight_bit_nodes`` (``SplitResult.eight_bit_nodes``) are
    the nodes the runtime runs in 8 bits: a float weight one of them reads is held in 8 bits
    (ORT quantizes a float conv between 8-bit layers itself).
    """
    model = load_model(model)
    graph = OnnxGraph(model)
    static = graph.static
    requantized = {n.input[1] for n in graph.data_nodes if n.name in eight_bit_nodes and len(n.input) > 1}
    weights = sum(
        _numel(t.dims) * (1 if t.name in requantized else _BYTES.get(t.data_type, 4))
        for t in model.graph.initializer
    )
    sizes: dict[Hashable, int] = {}
    for name, shape in graph.shapes.items():
        if name in static:
            continue
        dtype = graph.elem_types.get(name, TensorProto.FLOAT)
        sizes[name] = _numel(shape) * _BYTES.get(dtype, 4)
    plan = execution_steps(model, graph, eight_bit_nodes)
    for tensor, quantized in plan.eight_bit_writes.items():
        sizes[tensor] = sizes.get(quantized, 0)
    sizes.update(plan.scratch_bytes)
    return footprint_of(weights, plan.steps, sizes, plan.inputs, plan.outputs, plan.scratch_bytes)


def _numel(shape: Iterable[int]) -> int:
    return math.prod(int(d) for d in shape)


@dataclass
class MemoryModel:
    """``peak_memory_mb = offset_mb + weight_scale * weights_mb + activation_scale * activations``,
    where the activations are what ORT's arena holds (``Footprint.arena_mb``) on a device that
    runs with its arena on (``arena``, the default there), and the liveness peak otherwise."""

    offset_mb: float = 0.0
    weight_scale: float = 1.0
    activation_scale: float = 1.0
    fitted_on: int = 0
    arena: bool = False

    def activations_mb(self, footprint: Footprint) -> float:
        return footprint.arena_mb if self.arena else footprint.activations_mb

    def predict_mb(self, footprint: Footprint) -> float:
        return (
            self.offset_mb
            + self.weight_scale * footprint.weights_mb
            + self.activation_scale * self.activations_mb(footprint)
        )

    def fit(self, footprints: Sequence[Footprint], measured_mb: Sequence[float]) -> MemoryModel:
        """Least squares on the relative error of the measured serving peak (a budget, and the
        +-10% a user checks, are relative: an absolute fit lets the largest calibration networks
        set an offset that swamps small ones), robust beyond 10% (``soft_l1``): a random
        calibration network whose runtime allocates what the footprint does not see (a float
        conv's im2col buffer off ORT's blocked layout) must not set the terms for every other
        network. Scales kept within [0.5, 4]. Models measured at under 1 MB carry no relative
        information and are left out."""
        from scipy.optimize import least_squares

        y = np.asarray(measured_mb, dtype=float)
        X = np.array([[1.0, f.weights_mb, self.activations_mb(f)] for f in footprints]).reshape(-1, 3)
        keep = y >= 1.0
        y, X = y[keep], X[keep]
        if len(y) == 0:
            return self
        if len(y) < 4:  # too few points for three terms: the offset only
            self.offset_mb = float(np.median(y - X[:, 1] - X[:, 2]))
        else:
            fit = least_squares(
                lambda terms: X @ terms / y - 1,
                x0=[float(np.median(y)), 1.0, 1.0],
                loss="soft_l1",
                f_scale=0.1,
                bounds=([-1e6, 0.5, 0.5], [1e6, 4.0, 4.0]),
            )
            self.offset_mb, self.weight_scale, self.activation_scale = (float(v) for v in fit.x)
        self.fitted_on = len(y)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MemoryModel:
        fitted = {k: data[k] for k in ("offset_mb", "weight_scale", "activation_scale", "fitted_on")}
        return cls(**fitted, arena=data.get("arena", False))  # files from before: the liveness peak
