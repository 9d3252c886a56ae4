"""An int8 cost model for tests, until predictors learn int8 kernels: a float32 predictor whose
int8 layer kernels cost ``1 / speedup`` as much, plus a cost per float-to-int8 boundary.

``predict`` of an ORT QDQ model strips it back to float (weights dequantized into float
initializers, each activation QuantizeLinear -> DequantizeLinear pair replaced by an Identity),
predicts that with the float predictor, divides the kernels of int8 layers (those whose weight
came through a DequantizeLinear) by ``speedup`` and adds ``boundary_ms`` per QuantizeLinear of an
activation; memory is the QDQ graph's own footprint (int8 weights) through the memory model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hwlat.predictors import Prediction
from hwlat.predictors.models.memory import onnx_footprint
from hwlat.profiler.kernel import Kernel
from hwlat.search.compression.cost import INT8, PredictorCostModel


class EmulatedInt8CostModel(PredictorCostModel):
    def __init__(self, predictor, speedup: float = 2.5, boundary_ms: float = 0.0005) -> None:
        super().__init__(predictor)
        self.speedup = speedup
        self.boundary_ms = boundary_ms

    def dtypes(self) -> tuple[str, ...]:
        return ("int8", "float32")

    def kernel_latency_ms(self, kernels: Sequence[Kernel], dtypes: Sequence[str]) -> np.ndarray:
        base = np.asarray(self.predictor.kernel_latency_ms(list(kernels)), dtype=float)
        return base / np.where(np.asarray(dtypes) == INT8, self.speedup, 1.0)

    def predict(self, model: onnx.ModelProto) -> Prediction:
        if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
            return self.predictor.predict(model)
        float_model, int8_nodes, boundaries = strip_qdq(model)
        prediction = self.predictor.predict(float_model)
        for k in prediction.kernels:
            if int8_nodes.intersection(k.nodes):
                k.latency_ms /= self.speedup
        prediction.latency_ms = (
            prediction.overhead_ms
            + sum(k.latency_ms for k in prediction.kernels)
            + self.boundary_ms * boundaries
        )
        footprint = onnx_footprint(model)
        prediction.peak_memory_mb = self.predictor.memory.predict_mb(footprint)
        prediction.weights_mb, prediction.activations_mb = footprint.weights_mb, footprint.activations_mb
        return prediction


def strip_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str], int]:
    """(float model, names of the Conv/Gemm nodes with quantized weights, activation quantizations)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    weight_dq: set[str] = set()
    keep, new_inits = [], []
    boundaries = 0
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            zero = (
                numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 else 0.0
            )
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if np.ndim(scale) == 1 and q.ndim > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
            value = ((q - zero) * scale).astype(np.float32)
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
            weight_dq.add(node.output[0])
        elif node.op_type == "DequantizeLinear" and producer.get(node.input[0]) is not None:
            q = producer[node.input[0]]
            keep.append(helper.make_node("Identity", [q.input[0]], [node.output[0]], name=node.name))
        elif node.op_type == "QuantizeLinear":
            boundaries += 1
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    used = {t.name for t in new_inits}
    remaining = [t for t in g.initializer if t.name not in used]
    del g.initializer[:]
    g.initializer.extend(remaining + new_inits)
    int8_nodes = {n.name for n in keep if n.op_type in ("Conv", "Gemm") and n.input[1] in weight_dq}
    return model, int8_nodes, boundaries
