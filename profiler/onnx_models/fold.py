"""Shape arithmetic folded into constants, for compilers that need static shapes (TVM).

PyTorch's exporter writes a channel split such as ``x[:, : x.shape[1] // 2]`` as
``Shape -> Gather -> Div -> Slice``. With static input shapes the slice bounds are constants,
but TVM 0.27's Relax importer does not fold them: it emits a ``dynamic_strided_slice`` whose
output shape is unknown, and legalizing it fails ("emit_te now only supports Tensor that has
ShapeExpr shape"); ``F.pad``'s pads, computed likewise, are refused as "dynamic pads".
``fold_shape_arithmetic`` evaluates every ``Shape`` of a statically shaped
tensor, and every node of the small integer ops that follows from constants only, with ONNX's
reference evaluator, and replaces them by initializers; nothing else in the graph changes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

# Ops that only do shape arithmetic in exported CNNs when all their inputs are constants (a
# chunk's split points, F.pad's pads: Constant -> ConstantOfShape -> Concat -> Reshape -> Slice ->
# Transpose -> Reshape -> Cast).
_FOLDABLE = {
    "Cast",
    "Concat",
    "Constant",
    "Div",
    "Gather",
    "Mul",
    "Add",
    "Sub",
    "Unsqueeze",
    "Squeeze",
    "Slice",
    "Floor",
    "Ceil",
    "Reshape",
    "Transpose",
    "ConstantOfShape",
}


def fold_shape_arithmetic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its shape arithmetic folded (the model itself when there is none)."""
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    known = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept: list[onnx.NodeProto] = []
    folded: dict[str, np.ndarray] = {}
    for node in model.graph.node:  # ONNX nodes are in topological order
        value = None
        if node.op_type == "Shape" and node.input[0] in shapes and not node.attribute:
            value = np.asarray(shapes[node.input[0]], dtype=np.int64)
        elif node.op_type in _FOLDABLE and all(not i or i in known for i in node.input):
            if node.op_type != "Constant" or _is_small_int(node):
                value = _evaluate(node, known, model.opset_import)
        if value is None or len(node.output) != 1:
            kept.append(node)
            continue
        known[node.output[0]] = value
        folded[node.output[0]] = value
    if not folded:
        return model
    used = {i for n in kept for i in n.input} | {o.name for o in model.graph.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(
        numpy_helper.from_array(value, name) for name, value in folded.items() if name in used
    )
    return out


def _is_small_int(node: onnx.NodeProto) -> bool:
    """A Constant holding integers (shape arithmetic), not a float tensor of weights."""
    for a in node.attribute:
        if a.name in ("value_int", "value_ints"):
            return True
        if a.name == "value":
            return a.t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    return False


def _info(name: str, dtype: np.dtype) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), None)


def _evaluate(node: onnx.NodeProto, known: dict, opsets) -> np.ndarray | None:
    inputs = [i for i in node.input if i]
    graph = helper.make_graph(
        [node],
        "fold",
        [
            helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(known[i].dtype), None)
            for i in inputs
        ],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)],
    )
    model = helper.make_model(graph, opset_imports=list(opsets))
    try:
        (value,) = ReferenceEvaluator(model).run(None, {i: known[i] for i in inputs})
    except Exception:  # an op the reference evaluator cannot do: left to the compiler
        return None
    return value
