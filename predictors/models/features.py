"""Numeric features of a kernel, for the gradient-boosted kernel models.

Shapes, costs (FLOPs, bytes moved, arithmetic intensity, in log2 so that trees split on
orders of magnitude), the fused epilogue, and channel alignment: ONNX Runtime runs a conv
in the blocked NCHWc layout only for some channel counts and pads channels to the block,
so ``c % 4``, ``c % 16`` and the padding waste decide which kernel runs. 8-bit kernels carry
their width (and signedness) and are modelled apart (``family``).
"""

from __future__ import annotations

import math

import numpy as np

from hwlat.profiler.kernel import Kernel
from hwlat.profiler.opspec import ACTIVATIONS, BROADCASTS, INT_DTYPES, OpSpec

FAMILIES = {
    "conv": "conv",
    "dwconv": "dwconv",
    "deconv": "deconv",
    "gemm": "gemm",
    "maxpool": "pool",
    "avgpool": "pool",
    "globalavgpool": "globalpool",
    "globalmaxpool": "globalpool",
    "add": "eltwise",
    "mul": "eltwise",
    "act": "eltwise",
    "bn": "eltwise",
    "layernorm": "norm",
    "softmax": "norm",
    "concat": "memory",
    "split": "memory",
    "slice": "memory",
    "shuffle": "memory",
    "pad": "memory",
    "resize": "memory",
    "transpose": "memory",
    "se": "se",
    "quantize": "convert",
    "dequantize": "convert",
    # Ops added later go last: a kernel's op_code is its index here, which saved predictors keep.
    "instancenorm": "norm",
    "reduce": "globalpool",
    "pixelshuffle": "memory",
}
# Ops whose tensors are channels last, (N, ..., C): linear layers and the normalisations of
# transformer-style blocks; element-wise ops too when their input is not 4-D.
_CHANNELS_LAST = ("gemm", "layernorm", "softmax")

FEATURES = (
    "log_flops",
    "log_bytes",
    "log_params",
    "intensity",
    "log_in_elems",
    "log_out_elems",
    "cin",
    "cout",
    "h",
    "w",
    "hout",
    "wout",
    "log_cin",
    "log_cout",
    "log_hw",
    "log_hwout",
    "kernel_h",
    "kernel_w",
    "stride_h",
    "stride_w",
    "padding_h",
    "padding_w",
    "dilation",
    "groups",
    "cin_per_group",
    "depthwise",
    "bias",
    "act",
    "n_ops",
    "fused_add",
    "fused_act",
    "fused_concat",
    "fused_shuffle",
    "fused_split",
    "broadcast",
    "n_parts",
    "min_part",
    "se_reduced",
    "se_gate",
    "cin_mod4",
    "cout_mod4",
    "cin_mod16",
    "cout_mod16",
    "cin_lt16",
    "cin_pad16",
    "cout_pad16",
    "op_code",
    "bits",
    "unsigned",
)
_OPS = tuple(FAMILIES)
# Features renamed since a predictor was saved, which read the same values under the new name:
# "bcast_channel" was 0 or 1, as "broadcast" is for "none" and "channel" (BROADCASTS' order).
_LEGACY_NAMES = {"bcast_channel": "broadcast"}


def same_features(names: list[str]) -> bool:
    """Whether a saved regressor's feature names are this version's (renamed ones included)."""
    return [_LEGACY_NAMES.get(n, n) for n in names] == list(FEATURES)


def family(kernel: Kernel) -> str:
    """Which per-type model predicts this kernel: 8-bit kernels are other code (ORT's QLinear
    kernels, NHWC) than their float32 namesakes, so they get models of their own, and so do
    convs whose weights are dequantized on every run or quantized by the runtime (another
    layout, another weight format: ``OpSpec.weights``)."""
    name = FAMILIES[kernel.op]
    if kernel.head.dtype != "float32" and name != "convert":
        name += "_8bit"
    return name if kernel.head.weights == "constant" else f"{name}_{kernel.head.weights}"


def kernel_features(kernel: Kernel) -> np.ndarray:
    head = kernel.head
    cin, h, w = _channels_hw(head, head.input_shape)
    cout, hout, wout = _channels_hw(head, head.output_shapes[0])
    flops, nbytes = kernel.flops, kernel.bytes_moved
    tail = [o.op for o in kernel.ops[1:]]
    in_elems = sum(math.prod(s) for s in kernel.input_shapes)
    out_elems = sum(math.prod(s) for s in kernel.output_shapes)
    se = kernel.is_se
    parts = head.parts or (0,)
    values = {
        "log_flops": math.log2(flops + 1),
        "log_bytes": math.log2(nbytes + 1),
        "log_params": math.log2(kernel.params + 1),
        "intensity": flops / max(nbytes, 1),
        "log_in_elems": math.log2(in_elems),
        "log_out_elems": math.log2(out_elems),
        "cin": cin,
        "cout": cout,
        "h": h,
        "w": w,
        "hout": hout,
        "wout": wout,
        "log_cin": math.log2(cin),
        "log_cout": math.log2(cout),
        "log_hw": math.log2(h * w),
        "log_hwout": math.log2(hout * wout),
        "kernel_h": head.kernel_hw[0],
        "kernel_w": head.kernel_hw[1],
        "stride_h": head.stride_hw[0],
        "stride_w": head.stride_hw[1],
        "padding_h": head.padding_hw[0],
        "padding_w": head.padding_hw[1],
        "dilation": max(head.dilation_hw),
        "groups": head.groups,
        "cin_per_group": cin // head.groups,
        "depthwise": float(kernel.op == "dwconv"),
        "bias": float(head.bias),
        "act": ACTIVATIONS.index(head.activation),
        "n_ops": len(kernel.ops),
        "fused_add": float("add" in tail and not se),
        "fused_act": float("act" in tail),
        "fused_concat": float("concat" in tail),
        "fused_shuffle": float("shuffle" in tail),
        "fused_split": float("split" in tail),
        "broadcast": BROADCASTS.index(head.broadcast),
        "n_parts": len(head.parts),
        "min_part": min(parts),
        "se_reduced": kernel.ops[1].out_channels if se else 0,
        "se_gate": ACTIVATIONS.index(kernel.ops[2].activation) if se else 0,
        "cin_mod4": float(cin % 4 == 0),
        "cout_mod4": float(cout % 4 == 0),
        "cin_mod16": float(cin % 16 == 0),
        "cout_mod16": float(cout % 16 == 0),
        "cin_lt16": float(cin < 16),
        "cin_pad16": _pad(cin, 16) / cin,
        "cout_pad16": _pad(cout, 16) / cout,
        "op_code": _OPS.index(kernel.op),
        "bits": 8.0 if head.dtype in INT_DTYPES else 32.0,
        "unsigned": float(head.dtype == "uint8"),
    }
    return np.array([values[f] for f in FEATURES], dtype=np.float64)


def feature_matrix(kernels: list[Kernel]) -> np.ndarray:
    if not kernels:
        return np.zeros((0, len(FEATURES)))
    return np.stack([kernel_features(k) for k in kernels])


def _channels_hw(head: OpSpec, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Channels and spatial size of a tensor of the kernel: NCHW, or (N, ..., C) channels last."""
    if head.op in _CHANNELS_LAST or len(head.input_shape) != 4:
        spatial = shape[1:-1] if len(shape) > 2 else ()
        h = spatial[0] if spatial else 1
        return shape[-1], h, math.prod(spatial[1:]) if len(spatial) > 1 else 1
    return shape[1], shape[2] if len(shape) == 4 else 1, shape[3] if len(shape) == 4 else 1


def _pad(c: int, block: int) -> int:
    return (c + block - 1) // block * block
