"""TVM's fusion rules, as data: which producer -> consumer pairs TVM compiles into one kernel.

ONNX Runtime's fusions are found by measurement (predictors/kernels/fusion.py), because its
graph optimiser decides them by kernel, layout and channel alignment. TVM decides by rule:
Relax's FuseOps (in the "zero" pipeline every hwlat TVM build runs first,
profiler/backends/tvm/backend.py) groups operators by their pattern kind, whatever the shapes:

  * conv2d, matmul (gemm) and the poolings start a kernel and take the elementwise and
    broadcast ops after them into it (bias, activation, residual add, a channel multiply);
    so does mean (global average pooling), a reduction;
  * add, mul and activations are elementwise: they join the kernel before them, whatever it is
    (a depthwise conv with ReLU6 and then a residual add is one kernel in TVM, two in ONNX
    Runtime);
  * concat, split and channel shuffle (reshape, transpose, reshape) are injective: they join a
    kernel of elementwise and injective ops, never a conv's, gemm's or pooling's;
  * nothing joins a conv, gemm, pooling or mean that follows it (no prologue fusion).

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

# A gemm has no rules: its output is 2-D, and every op that could follow it in a kernel is 4-D.
PRODUCERS = (
    "conv",
    "conv_act",
    "maxpool",
    "avgpool",
    "globalavgpool",
    "add",
    "mul",
    "act",
    "concat",
    "split",
    "shuffle",
)
ELEMENTWISE = ("add", "mul", "act")
INJECTIVE = ("concat", "split", "shuffle")

# A concat never continues a kernel (a kernel's op reads the previous op's whole output, and a
# concat's first input is only part of its channels), so it is a producer only.
CONSUMERS = (*ELEMENTWISE, "split", "shuffle")

TVM_FUSED: dict[str, bool] = {
    f"{producer}>{consumer}": consumer in ELEMENTWISE or producer in ELEMENTWISE + INJECTIVE
    for producer in PRODUCERS
    for consumer in CONSUMERS
}


def tvm_fusion_rules(backend: str) -> FusionRules:
    """TVM's fusion rules for a TVM backend (``tvm`` or ``tvm-untuned``: tuning changes schedules,
    not which ops are fused)."""
    return FusionRules(backend=backend, fused=dict(TVM_FUSED))
