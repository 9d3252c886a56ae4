"""Made-up but structured kernel latencies, so tests of predictor plumbing need no device time."""

from __future__ import annotations

from hwlat.predictors import FusionRules, Kernel, KernelRegressor, LatencyPredictor, LatencyTable
from hwlat.predictors.building import KernelSampler

# The rules ONNX Runtime's probe finds on x86 (tests must not depend on a measurement).
RULES = FusionRules(
    "ort",
    {
        "conv>add": True,
        "conv_act>add": False,
        "conv|add>act": True,
        "add>act": False,
        "conv>mul": False,
        "concat>shuffle": True,
        "shuffle>split": True,
        "concat|shuffle>split": True,
    },
)


def synthetic_ms(kernel: Kernel) -> float:
    """A made-up but structured latency: compute and memory terms, a penalty off channel alignment,
    8-bit compute 2.5x faster."""
    penalty = 1.0 if kernel.head.input_shape[1] % 4 == 0 else 1.6
    compute = 40e9 * (2.5 if kernel.head.dtype != "float32" else 1.0)
    return penalty * (kernel.flops / compute + kernel.bytes_moved / 8e9) * 1e3 + 0.002


def synthetic_regressor(
    n: int = 500, dtypes: tuple[str, ...] = ("float32",), scale: float = 1.0
) -> KernelRegressor:
    kernels = KernelSampler(RULES, random_state=1, dtypes=dtypes).sample(n * len(dtypes))
    return KernelRegressor(max_iter=120).fit(kernels, [scale * synthetic_ms(k) for k in kernels])


def synthetic_predictor(
    n: int = 300, dtypes: tuple[str, ...] = ("float32",), scale: float = 1.0
) -> LatencyPredictor:
    """A gbdt predictor on synthetic kernel times (no overhead terms), for the given kernel dtypes;
    ``scale`` multiplies every time (0.1: a predictor ten times too optimistic)."""
    table = LatencyTable({}, synthetic_regressor(n, dtypes, scale))
    # The synthetic device's limits are known exactly: synthetic_ms's 40 GFLOP/s and 8 GB/s.
    roofline = {"gflops": 40.0, "gbps": 8.0, "fitted_on": 0}
    meta = {"note": "synthetic", "training": {"dtypes": list(dtypes)}, "roofline": roofline}
    return LatencyPredictor(table, RULES, "local", "ort", "gbdt", meta)
