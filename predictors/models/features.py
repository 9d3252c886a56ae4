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
from hwlat.profiler.opspec import ACTIVATIONS, INT_DTYPES

FAMILIES = {
    "conv": "conv",
    "dwconv": "dwconv",
    "gemm": "gemm",
    "maxpool": "pool",
    "avgpool": "pool",
    "globalavgpool": "globalavgpool",
    "add": "eltwise",
    "mul": "eltwise",
    "act": "eltwise",
    "concat": "memory",
    "split": "memory",
    "shuffle": "memory",
    "se": "se",
    "quantize": "convert",
    "dequantize": "convert",
}

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
    "kernel",
    "stride",
    "padding",
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
    "bcast_channel",
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
_OPS = (
    "conv",
    "dwconv",
    "gemm",
    "maxpool",
    "avgpool",
    "globalavgpool",
    "add",
    "mul",
    "act",
    "concat",
    "split",
    "shuffle",
    "se",
    "quantize",
    "dequantize",
)


def family(kernel: Kernel) -> str:
    """Which per-type model predicts this kernel: 8-bit kernels are other code (ORT's QLinear
    kernels, NHWC) than their float32 namesakes, so they get models of their own."""
    name = FAMILIES[kernel.op]
    return name if kernel.head.dtype == "float32" or name == "convert" else f"{name}_8bit"


def kernel_features(kernel: Kernel) -> np.ndarray:
    head = kernel.head
    shape = head.input_shape
    cin = shape[1]
    h, w = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
    out = head.output_shapes[0]
    cout = out[1]
    hout, wout = (out[2], out[3]) if len(out) == 4 else (1, 1)
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
        "kernel": head.kernel,
        "stride": head.stride,
        "padding": head.padding,
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
        "bcast_channel": float(head.broadcast == "channel"),
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


def _pad(c: int, block: int) -> int:
    return (c + block - 1) // block * block
