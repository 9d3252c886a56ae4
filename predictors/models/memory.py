"""Peak memory of a network: weights plus the largest set of activations alive at once.

A runtime holds every weight for the whole run, and an activation from the node that writes
it to the last node that reads it. Walking the graph in execution order and adding up what
is alive after each node gives the activation peak (MCUNet's analytic count, generalised to
any graph: a residual input stays alive across its block because its last reader comes
later); an element-wise op that the runtime fuses into its producer allocates nothing. What a
process really adds on top (the runtime's own state, weights prepacked into
another layout, the arena's growth in chunks) is device- and runtime-specific, so
``MemoryModel`` fits ``peak = offset + weight_scale * weights + activation_scale * peak
activations`` per device from models measured there (``Measurement.model_rss_mb``: the peak
while the loaded model runs, in a fresh process with the allocator held still), with bounds
that keep a few measurements from producing nonsense. The peak while the runtime loads a
model (its transient copies of the weights) is measured but not predicted.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto

from hwlat.profiler.onnx_models import OnnxGraph, load_model

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
    activation_peak_bytes: int
    peak_node: str = ""  # where the activation peak is reached

    @property
    def weights_mb(self) -> float:
        return self.weight_bytes / MB

    @property
    def activations_mb(self) -> float:
        return self.activation_peak_bytes / MB


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


@dataclass(frozen=True)
class ExecutionSteps:
    """A graph as the runtime executes it, for ``liveness_peak``: the steps that allocate
    (name, inputs, outputs), with fused and in-place nodes folded away."""

    steps: list[tuple[str, list[str], list[str]]]
    inputs: list[str]  # graph inputs that are not constants
    outputs: list[str]  # graph outputs, under the tensor that holds them
    eight_bit_writes: dict[str, str]  # tensor -> the QuantizeLinear output whose size it has


def execution_steps(model: onnx.ModelProto, graph: OnnxGraph) -> ExecutionSteps:
    """The allocating steps of ``graph`` in execution order.

    An element-wise op that the runtime fuses into its producer (``IN_PLACE_OPS``, when its
    input has no other reader) writes in place. An 8-bit kernel reads the quantized tensor and
    writes one (ORT's QDQ fusion): a QuantizeLinear after a node that only it reads makes that
    node write 8 bits, and a DequantizeLinear is read through, unless its float output leaves
    the graph.
    """
    static = graph.static
    readers: dict[str, int] = {}
    for n in graph.data_nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    produced = {o for n in graph.data_nodes for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    alias: dict[str, str] = {}
    eight_bit_writes: dict[str, str] = {}
    for n in graph.data_nodes:
        if n.op_type == "QuantizeLinear" and n.input[0] in produced and readers.get(n.input[0]) == 1:
            alias[n.output[0]] = n.input[0]
            eight_bit_writes[n.input[0]] = n.output[0]
    steps = []
    for n in graph.data_nodes:
        ins = [alias.get(i, i) for i in n.input if i and i not in static]
        if n.op_type == "QuantizeLinear" and n.output[0] in alias:
            continue
        if n.op_type == "DequantizeLinear" and ins and n.output[0] not in graph_outputs:
            alias[n.output[0]] = ins[0]
            continue
        if n.op_type in IN_PLACE_OPS and len(ins) == 1 and readers.get(n.input[0]) == 1 and n.output:
            alias[n.output[0]] = ins[0]
            continue
        steps.append((n.name or n.op_type, ins, [o for o in n.output if o]))
    inputs = [i.name for i in model.graph.input if i.name not in static]
    outputs = [alias.get(o.name, o.name) for o in model.graph.output]
    return ExecutionSteps(steps, inputs, outputs, eight_bit_writes)


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
    plan = execution_steps(model, graph)
    for tensor, quantized in plan.eight_bit_writes.items():
        sizes[tensor] = sizes.get(quantized, 0)
    peak, where = liveness_peak(plan.steps, sizes, plan.inputs, plan.outputs)
    return Footprint(int(weights), int(peak), where)


def _numel(shape: Iterable[int]) -> int:
    return math.prod(int(d) for d in shape)


@dataclass
class MemoryModel:
    """``peak_memory_mb = offset_mb + weight_scale * weights_mb + activation_scale * activations_mb``."""

    offset_mb: float = 0.0
    weight_scale: float = 1.0
    activation_scale: float = 1.0
    fitted_on: int = 0

    def predict_mb(self, footprint: Footprint) -> float:
        return (
            self.offset_mb
            + self.weight_scale * footprint.weights_mb
            + self.activation_scale * footprint.activations_mb
        )

    def fit(self, footprints: Sequence[Footprint], measured_mb: Sequence[float]) -> MemoryModel:
        """Least squares on the relative error of the measured serving peak (a budget, and the
        +-10% a user checks, are relative: an absolute fit lets the largest calibration networks
        set an offset that swamps small ones), robust beyond 10% (``soft_l1``): a random
        calibration network whose runtime allocates what no liveness count sees (8-bit convs'
        buffers: up to 20x its activations) must not set the terms for every other network.
        Scales kept within [0.5, 4]. Models measured at under 1 MB carry no relative information
        and are left out."""
        from scipy.optimize import least_squares

        y = np.asarray(measured_mb, dtype=float)
        X = np.array([[1.0, f.weights_mb, f.activations_mb] for f in footprints]).reshape(-1, 3)
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
        return cls(**{k: data[k] for k in ("offset_mb", "weight_scale", "activation_scale", "fitted_on")})
