"""OpSpec -> the smallest valid ONNX model that runs that kernel.

Each model is shaped the way the op appears inside a real exported network after
the runtime's fusions: batch-norm is already folded into the conv weights and bias,
and the activation follows the conv as the exporter writes it (Relu, Clip, HardSwish,
Sigmoid+Mul for swish), so ONNX Runtime fuses it exactly as it would in a model.

An 8-bit op (int8: S8S8, uint8: U8S8) is written the way ONNX Runtime's static quantizer
writes a quantized network (QDQ): every activation passes QuantizeLinear -> DequantizeLinear,
weights are int8 per output channel behind a DequantizeLinear, a bias is int32 at the input
scale times the weight scale, and ORT fuses DQ -> op -> Q into its QLinear kernel. Every
activation uses one scale (``ACTIVATION_SCALE``), so that a DQ -> Q pair between two 8-bit ops
of a harness cancels as it does in a network calibrated end to end.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwlat.profiler.onnx_models.files import make_model, save_once
from hwlat.profiler.opspec import INT_DTYPES, OpSpec

ACTIVATION_SCALE = 0.05
_ZERO_POINT = {"int8": (TensorProto.INT8, np.int8, 0), "uint8": (TensorProto.UINT8, np.uint8, 128)}


def build_model(spec: OpSpec, seed: int = 0) -> onnx.ModelProto:
    """A checked ONNX model with inputs ``x0..xN`` and outputs ``y0..yM``; weights are random."""
    rng = np.random.default_rng(seed)
    inputs = [_value_info(f"x{i}", shape) for i, shape in enumerate(spec.input_shapes)]
    outputs = [_value_info(f"y{i}", shape) for i, shape in enumerate(spec.output_shapes)]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    head = _core_nodes(spec, rng, nodes, inits)
    if spec.op in ("conv", "deconv", "gemm", "act"):
        head = _activation_nodes(spec.activation, head, nodes, inits, spec.output_shapes[0])
    if spec.op != "split":
        _rename(nodes, head, "y0")
    if spec.dtype in INT_DTYPES:
        inputs, outputs = _to_qdq(spec, nodes, inits, inputs, outputs)
    elif spec.weights == "dequantized":
        nodes[:0] = _dequantized_weights(inits)
    graph = helper.make_graph(nodes, spec.op, inputs, outputs, initializer=inits)
    model = make_model(graph)
    model.doc_string = spec.key
    onnx.checker.check_model(model, full_check=True)
    return model


def model_path(spec: OpSpec, directory: str | Path) -> Path:
    """Write the op's model into ``directory`` (named by a hash of its key) unless present."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{spec.op}-{hashlib.sha256(spec.key.encode()).hexdigest()[:16]}.onnx"
    return save_once(path, lambda: build_model(spec))


def _value_info(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _weight(name: str, array: np.ndarray, inits: list) -> str:
    inits.append(numpy_helper.from_array(array.astype(np.float32), name))
    return name


def _core_nodes(spec: OpSpec, rng: np.random.Generator, nodes: list, inits: list) -> str:
    """Append the op's main node(s) as torch's exporter writes them; return the tensor they produce."""
    op = spec.op
    if op in ("conv", "deconv"):
        return _conv_nodes(spec, rng, nodes, inits)
    if op == "gemm":
        return _linear_nodes(spec, rng, nodes, inits)
    if op in ("maxpool", "avgpool"):
        (kh, kw), (ph, pw) = spec.kernel_hw, spec.padding_hw
        attrs = dict(kernel_shape=[kh, kw], strides=list(spec.stride_hw), pads=[ph, pw, ph, pw])
        if op == "avgpool":
            attrs["count_include_pad"] = 0
        nodes.append(
            helper.make_node("MaxPool" if op == "maxpool" else "AveragePool", ["x0"], ["pool_out"], **attrs)
        )
        return "pool_out"
    if op in ("globalavgpool", "globalmaxpool"):
        name = "GlobalAveragePool" if op == "globalavgpool" else "GlobalMaxPool"
        nodes.append(helper.make_node(name, ["x0"], ["pool_out"]))
        return "pool_out"
    if op in ("add", "mul"):
        nodes.append(helper.make_node(op.capitalize(), ["x0", "x1"], ["elt_out"]))
        return "elt_out"
    if op == "concat":
        nodes.append(
            helper.make_node("Concat", [f"x{i}" for i in range(len(spec.parts))], ["cat_out"], axis=spec.axis)
        )
        return "cat_out"
    if op == "split":
        sizes = _weight_int64("split_sizes", list(spec.parts), inits)
        outs = [f"y{i}" for i in range(len(spec.parts))]
        nodes.append(helper.make_node("Split", ["x0", sizes], outs, axis=spec.axis))
        return ""
    if op == "slice":  # x[:, :out], a ghost module's or a pruned branch's channel range
        bounds = [
            _weight_int64(f"slice_{n}", [v], inits)
            for n, v in (("starts", 0), ("ends", spec.out_channels), ("axes", spec.axis))
        ]
        nodes.append(helper.make_node("Slice", ["x0", *bounds], ["slice_out"]))
        return "slice_out"
    if op == "shuffle":
        # The exporter's form of ShuffleNet's channel shuffle: Reshape -> Transpose -> Reshape.
        n, c, h, w = spec.input_shape
        g = spec.groups
        s1 = _weight_int64("shape_grouped", [n, g, c // g, h, w], inits)
        s2 = _weight_int64("shape_flat", [n, c, h, w], inits)
        nodes.append(helper.make_node("Reshape", ["x0", s1], ["grouped"]))
        nodes.append(helper.make_node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]))
        nodes.append(helper.make_node("Reshape", ["swapped", s2], ["shuffle_out"]))
        return "shuffle_out"
    if op == "bn":
        c = spec.input_shape[1]
        params = [
            _weight("bn_scale", rng.uniform(0.5, 1.5, c), inits),
            _weight("bn_bias", rng.standard_normal(c) * 0.1, inits),
            _weight("bn_mean", rng.standard_normal(c) * 0.1, inits),
            _weight("bn_var", rng.uniform(0.5, 1.5, c), inits),
        ]
        nodes.append(helper.make_node("BatchNormalization", ["x0", *params], ["bn_out"]))
        return "bn_out"
    if op == "layernorm":
        c = spec.input_shape[-1]
        scale = _weight("ln_scale", rng.uniform(0.5, 1.5, c), inits)
        bias = _weight("ln_bias", rng.standard_normal(c) * 0.1, inits)
        nodes.append(
            helper.make_node("LayerNormalization", ["x0", scale, bias], ["ln_out"], axis=-1, epsilon=1e-5)
        )
        return "ln_out"
    if op == "instancenorm":
        c = spec.input_shape[1]
        scale = _weight("in_scale", rng.uniform(0.5, 1.5, c), inits)
        bias = _weight("in_bias", rng.standard_normal(c) * 0.1, inits)
        nodes.append(helper.make_node("InstanceNormalization", ["x0", scale, bias], ["in_out"], epsilon=1e-5))
        return "in_out"
    if op == "softmax":
        nodes.append(helper.make_node("Softmax", ["x0"], ["softmax_out"], axis=-1))
        return "softmax_out"
    if op == "pad":
        (ph, pw) = spec.padding_hw
        pads = _weight_int64("pads", [0, 0, ph, pw, 0, 0, ph, pw], inits)
        nodes.append(helper.make_node("Pad", ["x0", pads], ["pad_out"], mode=spec.mode))
        return "pad_out"
    if op == "resize":  # F.interpolate(scale_factor=s) as the exporter writes it
        sh, sw = spec.stride_hw
        scales = _weight("resize_scales", np.array([1.0, 1.0, sh, sw]), inits)
        attrs = {"mode": spec.mode}
        if spec.mode == "nearest":
            attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        else:
            attrs.update(coordinate_transformation_mode="pytorch_half_pixel")
        nodes.append(helper.make_node("Resize", ["x0", "", scales], ["resize_out"], **attrs))
        return "resize_out"
    if op == "transpose":
        nodes.append(helper.make_node("Transpose", ["x0"], ["transpose_out"], perm=list(spec.perm)))
        return "transpose_out"
    if op == "reduce":  # x.mean(1, keepdim=True) as the exporter writes it (opset 17: axes attribute)
        name = {"mean": "ReduceMean", "max": "ReduceMax", "sum": "ReduceSum"}[spec.mode]
        if spec.mode == "sum":  # ReduceSum took its axes as an input from opset 13
            nodes.append(helper.make_node(name, ["x0", _weight_int64("axes", [1], inits)], ["reduce_out"]))
        else:
            nodes.append(helper.make_node(name, ["x0"], ["reduce_out"], axes=[1], keepdims=1))
        return "reduce_out"
    if op == "pixelshuffle":  # as torch writes PixelShuffle, and PixelUnshuffle (no ONNX op of its own)
        s = spec.stride_hw[0]
        if spec.mode == "up":
            nodes.append(helper.make_node("DepthToSpace", ["x0"], ["shuffle_out"], blocksize=s, mode="CRD"))
            return "shuffle_out"
        n, c, h, w = spec.input_shape
        blocks = _weight_int64("shape_blocks", [n, c, h // s, s, w // s, s], inits)
        flat = _weight_int64("shape_flat", list(spec.output_shapes[0]), inits)
        nodes.append(helper.make_node("Reshape", ["x0", blocks], ["blocked"]))
        nodes.append(helper.make_node("Transpose", ["blocked"], ["moved"], perm=[0, 1, 3, 5, 2, 4]))
        nodes.append(helper.make_node("Reshape", ["moved", flat], ["shuffle_out"]))
        return "shuffle_out"
    if op in ("act", "quantize", "dequantize"):
        return "x0"
    raise AssertionError(f"no ONNX form for op {op!r}")


def _conv_nodes(spec: OpSpec, rng: np.random.Generator, nodes: list, inits: list) -> str:
    """Conv or ConvTranspose (batch-norm folded into weights and bias, as exported)."""
    cin, cout, g = spec.input_shape[1], spec.out_channels, spec.groups
    (kh, kw), (ph, pw) = spec.kernel_hw, spec.padding_hw
    if spec.op == "conv":
        shape, fan_in = (cout, cin // g, kh, kw), cin // g * kh * kw
    else:
        shape, fan_in = (cin, cout // g, kh, kw), cin // g * kh * kw
    ins = ["x0", _weight("w", rng.standard_normal(shape) / np.sqrt(fan_in), inits)]
    if spec.bias:
        ins.append(_weight("b", rng.standard_normal(cout) * 0.1, inits))
    attrs = dict(kernel_shape=[kh, kw], strides=list(spec.stride_hw), pads=[ph, pw, ph, pw], group=g)
    if spec.op == "conv":
        attrs["dilations"] = list(spec.dilation_hw)
    name = "Conv" if spec.op == "conv" else "ConvTranspose"
    nodes.append(helper.make_node(name, ins, ["conv_out"], **attrs))
    return "conv_out"


def _linear_nodes(spec: OpSpec, rng: np.random.Generator, nodes: list, inits: list) -> str:
    """nn.Linear: Gemm on (N, C); MatMul then a bias Add on (N, ..., C), as the exporter writes it."""
    cin = spec.input_shape[-1]
    w = rng.standard_normal((spec.out_channels, cin)) / np.sqrt(cin)
    bias = rng.standard_normal(spec.out_channels) * 0.1
    if len(spec.input_shape) == 2:
        ins = ["x0", _weight("w", w, inits)]
        if spec.bias:
            ins.append(_weight("b", bias, inits))
        nodes.append(helper.make_node("Gemm", ins, ["gemm_out"], transB=1))
        return "gemm_out"
    nodes.append(helper.make_node("MatMul", ["x0", _weight("w", w.T, inits)], ["matmul_out"]))
    if not spec.bias:
        return "matmul_out"
    nodes.append(helper.make_node("Add", [_weight("b", bias, inits), "matmul_out"], ["gemm_out"]))
    return "gemm_out"


def _weight_int64(name: str, values: list[int], inits: list) -> str:
    inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def _activation_nodes(activation: str, head: str, nodes: list, inits: list, shape: tuple[int, ...]) -> str:
    """The activation's nodes after ``head`` as torch's exporter writes them; ``shape`` is the
    activated tensor's (PReLU's slope has one value per channel: axis 1 of an image, the last
    axis of a channels-last tensor)."""
    if activation == "none":
        return head
    out = f"{activation}_out"
    if activation == "relu6":
        lo = _weight("clip_min", np.array(0.0), inits)
        hi = _weight("clip_max", np.array(6.0), inits)
        nodes.append(helper.make_node("Clip", [head, lo, hi], [out]))
    elif activation == "hardsigmoid":
        nodes.append(helper.make_node("HardSigmoid", [head], [out], alpha=1.0 / 6, beta=0.5))
    elif activation == "swish":
        nodes.append(helper.make_node("Sigmoid", [head], [f"{out}_gate"]))
        nodes.append(helper.make_node("Mul", [head, f"{out}_gate"], [out]))
    elif activation == "gelu":  # x * 0.5 * (1 + erf(x / sqrt(2))); ORT fuses it into one Gelu
        root2 = _weight("gelu_sqrt2", np.array(np.sqrt(2.0)), inits)
        one = _weight("gelu_one", np.array(1.0), inits)
        half = _weight("gelu_half", np.array(0.5), inits)
        nodes += [
            helper.make_node("Div", [head, root2], [f"{out}_scaled"]),
            helper.make_node("Erf", [f"{out}_scaled"], [f"{out}_erf"]),
            helper.make_node("Add", [f"{out}_erf", one], [f"{out}_shift"]),
            helper.make_node("Mul", [head, f"{out}_shift"], [f"{out}_prod"]),
            helper.make_node("Mul", [f"{out}_prod", half], [out]),
        ]
    elif activation == "mish":  # x * tanh(softplus(x))
        nodes += [
            helper.make_node("Softplus", [head], [f"{out}_softplus"]),
            helper.make_node("Tanh", [f"{out}_softplus"], [f"{out}_tanh"]),
            helper.make_node("Mul", [head, f"{out}_tanh"], [out]),
        ]
    elif activation == "leakyrelu":
        nodes.append(helper.make_node("LeakyRelu", [head], [out], alpha=0.01))
    elif activation == "elu":
        nodes.append(helper.make_node("Elu", [head], [out], alpha=1.0))
    elif activation == "prelu":
        slope_shape = (shape[1], 1, 1) if len(shape) == 4 else (shape[-1],)
        slope = _weight("prelu_slope", np.full(slope_shape, 0.25, np.float32), inits)
        nodes.append(helper.make_node("PRelu", [head, slope], [out]))
    elif activation == "square":  # x.pow(2)
        nodes.append(helper.make_node("Pow", [head, _weight("pow_exponent", np.array(2.0), inits)], [out]))
    else:
        nodes.append(helper.make_node(_UNARY_OPS[activation], [head], [out]))
    return out


# Activations that are one ONNX node without attributes.
_UNARY_OPS = {
    "relu": "Relu",
    "hardswish": "HardSwish",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "erf": "Erf",
    "softplus": "Softplus",
    "sqrt": "Sqrt",
    "exp": "Exp",
    "log": "Log",
    "abs": "Abs",
    "neg": "Neg",
    "reciprocal": "Reciprocal",
    "selu": "Selu",
    "celu": "Celu",
}


def _dequantized_weights(inits: list) -> list[onnx.NodeProto]:
    """Replace the float32 weight ``w`` (and bias ``b``) in ``inits`` by the int8 (int32) constants
    ORT's quantizer writes, per output channel; return the DequantizeLinear nodes that make
    them float32 again."""
    weights = {t.name: numpy_helper.to_array(t) for t in inits if t.name in ("w", "b")}
    if "w" not in weights:
        return []
    w = weights["w"]
    w_scale = np.maximum(np.abs(w.reshape(len(w), -1)).max(axis=1), 1e-8) / 127.0
    w_q = np.clip(np.round(w / w_scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
    inits[:] = [t for t in inits if t.name not in ("w", "b")]
    inits += [
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(w_scale.astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(len(w), np.int8), "w_zero"),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0)]
    if "b" in weights:
        b_scale = (ACTIVATION_SCALE * w_scale).astype(np.float32)
        inits += [
            numpy_helper.from_array(np.round(weights["b"] / b_scale).astype(np.int32), "b_q"),
            numpy_helper.from_array(b_scale, "b_scale"),
            numpy_helper.from_array(np.zeros(len(w), np.int32), "b_zero"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], axis=0))
    return nodes


def _rename(nodes: list, old: str, new: str) -> None:
    for node in nodes:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _to_qdq(spec: OpSpec, nodes: list, inits: list, inputs: list, outputs: list) -> tuple[list, list]:
    """Rewrite a float32 op model into the QDQ form of ``spec.dtype`` (in place; new graph IO)."""
    onnx_type, np_type, zero = _ZERO_POINT[spec.dtype]
    inits += [
        numpy_helper.from_array(np.array(ACTIVATION_SCALE, np.float32), "act_scale"),
        numpy_helper.from_array(np.array(zero, np_type), "act_zero"),
    ]
    if spec.op == "quantize":  # float32 in, 8-bit out: the QuantizeLinear is the kernel
        nodes[:] = [helper.make_node("QuantizeLinear", ["x0", "act_scale", "act_zero"], ["y0"])]
        return inputs, [helper.make_tensor_value_info("y0", onnx_type, list(spec.output_shapes[0]))]
    if spec.op == "dequantize":  # 8-bit in, float32 out
        nodes[:] = [helper.make_node("DequantizeLinear", ["x0", "act_scale", "act_zero"], ["y0"])]
        return [helper.make_tensor_value_info("x0", onnx_type, list(spec.input_shape))], outputs
    front = []
    for i in range(len(inputs)):  # x_i -> Q -> DQ -> the op's nodes
        front += [
            helper.make_node("QuantizeLinear", [f"x{i}", "act_scale", "act_zero"], [f"x{i}_q"]),
            helper.make_node("DequantizeLinear", [f"x{i}_q", "act_scale", "act_zero"], [f"x{i}_dq"]),
        ]
        for node in nodes:
            node.input[:] = [f"x{i}_dq" if name == f"x{i}" else name for name in node.input]
    if spec.weights != "runtime":  # else float32 weights, which ORT quantizes itself
        front += _dequantized_weights(inits)
    back = []
    for o in outputs:  # the op's result -> Q -> DQ -> y_i
        name = o.name
        for node in nodes:
            node.output[:] = [f"{name}_f" if out == name else out for out in node.output]
        back += [
            helper.make_node("QuantizeLinear", [f"{name}_f", "act_scale", "act_zero"], [f"{name}_q"]),
            helper.make_node("DequantizeLinear", [f"{name}_q", "act_scale", "act_zero"], [name]),
        ]
    nodes[:] = front + nodes + back
    return inputs, outputs
