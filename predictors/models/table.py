"""LatencyTable: measured kernel costs, summed, plus the device's overhead model.

An entry is a kernel's in-context time (ms) on one device and backend, keyed by the
kernel key. A kernel the table lacks is predicted by the fallback KernelRegressor and
*reported* (``Costs.fallback``); with no fallback, ``MissingKernelError`` lists the keys.
A missing kernel is never counted as zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hwlat.errors import HwlatError, PredictorFormatError
from hwlat.predictors.models.kernel_regressor import KernelRegressor
from hwlat.predictors.models.overhead import COMPUTE_OPS, OverheadModel
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.opspec import INT_DTYPES


class MissingKernelError(HwlatError):
    """Kernels without a table entry and no regressor to predict them."""


@dataclass
class Costs:
    """Per-kernel costs: raw in-context ms, what each adds end to end, and where it came from."""

    raw_ms: np.ndarray
    latency_ms: np.ndarray
    fallback: np.ndarray  # bool: predicted by the regressor, not looked up


class LatencyTable:
    def __init__(
        self,
        entries: dict[str, float] | None = None,
        fallback: KernelRegressor | None = None,
        overhead: OverheadModel | None = None,
    ) -> None:
        self.entries = dict(entries or {})
        self.fallback = fallback
        self.overhead = overhead or OverheadModel()

    def fit(self, kernels: Sequence[Kernel], latency_ms: Sequence[float]) -> LatencyTable:
        """Entries from measured kernels (a kernel measured twice keeps its last value)."""
        for kernel, ms in zip(kernels, latency_ms, strict=True):
            if not ms > 0:
                raise PredictorFormatError(f"kernel {kernel.key} has latency {ms}; entries must be positive")
            self.entries[kernel.key] = float(ms)
        return self

    def __contains__(self, kernel: Kernel) -> bool:
        return kernel.key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def costs(self, kernels: Sequence[Kernel]) -> Costs:
        raw = np.array([self.entries.get(k.key, np.nan) for k in kernels], dtype=np.float64)
        missing = np.isnan(raw)
        if missing.any():
            lacking = [k for k, m in zip(kernels, missing, strict=True) if m]
            if self.fallback is None:
                keys = "\n  ".join(dict.fromkeys(k.key for k in lacking))
                raise MissingKernelError(
                    f"{len(lacking)} kernels are not in the table and there is no "
                    f"kernel regressor to predict them:\n  {keys}\nprofile them "
                    "(hwlat profile) or train with --kind gbdt"
                )
            raw[missing] = self.fallback.predict(lacking)
        compute, eight_bit = compute_classes(kernels)
        return Costs(raw, self.overhead.kernel_ms(raw, compute, weight_mb(kernels), eight_bit), missing)

    def predict(self, kernels: Sequence[Kernel], glue_nodes: int = 0) -> float:
        """End-to-end latency (ms) of a network made of these kernels and glue nodes."""
        costs = self.costs(kernels)
        return float(
            self.overhead.intercept_ms + costs.latency_ms.sum() + glue_nodes * self.overhead.per_kernel_ms
        )

    def fit_overhead(
        self, networks: Sequence[tuple[Sequence[Kernel], int]], measured_ms: Sequence[float]
    ) -> OverheadModel:
        """Fit the overhead model from networks (kernels, glue node count) measured end to end."""
        compute, memory, eight_bit, weights, counts = [], [], [], [], []
        for kernels, glue in networks:
            costs = self.costs(kernels)
            is_compute, is_eight_bit = compute_classes(kernels)
            compute.append(float(costs.raw_ms[is_compute & ~is_eight_bit].sum()))
            eight_bit.append(float(costs.raw_ms[is_eight_bit].sum()))
            memory.append(float(costs.raw_ms[~is_compute].sum()))
            weights.append(float(weight_mb(kernels).sum()))
            counts.append(len(kernels) + glue)
        self.overhead = OverheadModel().fit(compute, memory, weights, counts, measured_ms, eight_bit)
        return self.overhead

    def to_dict(self) -> dict:
        return {"entries": dict(sorted(self.entries.items())), "overhead": self.overhead.to_dict()}


def compute_classes(kernels: Sequence[Kernel]) -> tuple[np.ndarray, np.ndarray]:
    """Which kernels are compute kernels (convs, gemms), and which of those run in 8 bits."""
    compute = np.array([k.op in COMPUTE_OPS for k in kernels], dtype=bool)
    eight_bit = np.array([k.head.dtype in INT_DTYPES for k in kernels], dtype=bool)
    return compute, compute & eight_bit


def weight_mb(kernels: Sequence[Kernel]) -> np.ndarray:
    """Each kernel's weights in MB, what it streams from memory once per inference: 4 bytes a
    weight, 1 for an 8-bit op's (whose int32 bias is as small a share as float32's)."""
    return np.array(
        [1e-6 * sum(op.params * (1 if op.dtype in INT_DTYPES else 4) for op in k.ops) for k in kernels],
        dtype=np.float64,
    )
