"""Roofline: a generic estimate for nodes no kernel describes (``--lenient``).

A node the splitter cannot map still runs on the device; leaving it out would make the sum
silently low. Its cost is estimated from what it must at least do, on the device's own
measured limits: ``max(FLOPs / attainable compute, bytes / attainable bandwidth)``. Both limits
come from the kernels measured to train the predictor: attainable compute is a high
percentile of the FLOP rate of the convs and gemms (the best a dense kernel reaches), attainable
bandwidth the median byte rate of the large element-wise and data-movement kernels (a new
element-wise op is an average one, not the best).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from hwlat.errors import HwlatError
from hwlat.profiler.kernel import Kernel

MEMORY_BOUND_OPS = ("add", "mul", "act", "bn", "concat", "split", "slice", "pad", "transpose", "resize")
MIN_MEMORY_BOUND_BYTES = 256 * 1024  # smaller kernels are dominated by their fixed cost
COMPUTE_PERCENTILE = 90


class RooflineError(HwlatError):
    """Too few measured kernels of a kind to find the device's limits."""


@dataclass(frozen=True)
class Roofline:
    gflops: float  # attainable compute, GFLOP/s
    gbps: float  # attainable bandwidth, GB/s
    fitted_on: int = 0  # kernels the two limits were read from

    @classmethod
    def fit(cls, kernels: Sequence[Kernel], latency_ms: Sequence[float]) -> Roofline:
        ms = np.asarray(latency_ms, dtype=float)
        compute = [k.flops / t / 1e6 for k, t in zip(kernels, ms, strict=True) if k.op in ("conv", "gemm")]
        memory = [
            k.bytes_moved / t / 1e6
            for k, t in zip(kernels, ms, strict=True)
            if k.op in MEMORY_BOUND_OPS and k.bytes_moved >= MIN_MEMORY_BOUND_BYTES
        ]
        if not compute or not memory:
            raise RooflineError(
                f"cannot find the device's roofline: {len(compute)} conv/gemm and {len(memory)} large "
                "element-wise kernels measured",
                "measure more kernels (hwlat train samples both kinds)",
            )
        return cls(
            float(np.percentile(compute, COMPUTE_PERCENTILE)),
            float(np.median(memory)),
            len(compute) + len(memory),
        )

    def latency_ms(self, flops: float, bytes_moved: float) -> float:
        return max(flops / (self.gflops * 1e6), bytes_moved / (self.gbps * 1e6))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Roofline:
        return cls(float(data["gflops"]), float(data["gbps"]), int(data.get("fitted_on", 0)))
