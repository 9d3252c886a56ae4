"""TVM's fusion rules, as data: which producer -> consumer pairs TVM compiles into one kernel.

ONNX Runtime's fusions are found by measurement (predictors/kernels/fusion.py), because its
graph optimiser decides them by kernel, layout and channel alignment. TVM decides by rule:
Relax's FuseOps (in the "zero" pipeline every hwlat TVM build runs first,
profiler/backends/tvm/backend.py) groups operators by their pattern kind, whatever the shapes:

  * conv2d, conv2d_transpose, matmul (gemm), the poolings, layer norm and softmax start a
    kernel and take the elementwise and broadcast ops after them into it (bias, activation,
    residual add, a channel multiply, a standalone batch norm, a channel slice from 0);
  * add, mul, activations, batch norm and a channel slice are elementwise: they join the
    kernel before them, whatever it is (a depthwise conv with ReLU6 and then a residual add is
    one kernel in TVM, two in ONNX Runtime), except a global max pooling's;
  * concat, split, channel shuffle (reshape, transpose, reshape), pad, resize and transpose are
    injective: they join a kernel of elementwise and injective ops, never an anchor's;
  * global max pooling is a max reduction: an elementwise op before it joins it (an injective
    one does not), nothing after it joins it; global average pooling is an anchor;
  * nothing joins an anchor that follows it (no prologue fusion).

So a TVM predictor needs no fusion probe: the rules below are what FuseOps did when each pair
was compiled with TVM 0.27 (tests/test_tvm_predictor.py compiles every pair a kernel can hold
and fails if the installed TVM fuses otherwise). The splitter and sampler use them as they use
measured rules: rules are keyed ``"<producer class>><consumer class>"`` (``FusionRules.fuses``
falls back to a kernel's last op, which is all TVM's rules need); a pair not listed is not fused.
A squeeze-and-excitation block stays one kernel of the splitter (TVM runs it as three: the
mean, the first conv, the second conv with the multiply), measured as a whole.
"""

from __future__ import annotations

from hwlat.predictors.kernels.fusion import FusionRules

# Pattern kinds, as FuseOps sees the TIR each op is legalised to (checked op by op with TVM 0.27):
# anchors take the elementwise ops after them and nothing before them (conv2d, conv2d_transpose,
# matmul, the poolings, adaptive average pooling, layer norm, softmax, a reduction over channels).
ANCHORS = (
    "conv",
    "conv_act",
    "deconv",
    "gemm",
    "gemm_act",
    "maxpool",
    "avgpool",
    "globalavgpool",
    "layernorm",
    "instancenorm",
    "softmax",
    "reduce",
)
# Elementwise (indices in = indices out): a standalone batch norm is a broadcast multiply-add,
# and a channel slice starts at channel 0.
ELEMENTWISE = ("add", "mul", "act", "bn", "slice")
INJECTIVE = ("concat", "split", "shuffle", "pad", "resize", "transpose", "pixelshuffle")
# Global max pooling is a max reduction: elementwise ops before it join it, nothing after it does.
REDUCTIONS = ("globalmaxpool",)
PRODUCERS = (*ANCHORS, *ELEMENTWISE, *INJECTIVE, *REDUCTIONS)

# A concat never continues a kernel (a kernel's op reads the previous op's whole output, and a
# concat's first input is only part of its channels), so it is a producer only.
CONSUMERS = (*ELEMENTWISE, *(c for c in INJECTIVE if c != "concat"), *REDUCTIONS)


def _fused(producer: str, consumer: str) -> bool:
    if producer in REDUCTIONS:
        return False
    if consumer in ELEMENTWISE:
        return True
    if consumer in REDUCTIONS:
        return producer in ELEMENTWISE
    return producer in ELEMENTWISE + INJECTIVE  # an injective consumer


TVM_FUSED: dict[str, bool] = {f"{p}>{c}": _fused(p, c) for p in PRODUCERS for c in CONSUMERS}


def tvm_fusion_rules(backend: str) -> FusionRules:
    """TVM's fusion rules for a TVM backend (``tvm`` or ``tvm-untuned``: tuning changes schedules,
    not which ops are fused)."""
    return FusionRules(backend=backend, fused=dict(TVM_FUSED))
