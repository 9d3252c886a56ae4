"""OverheadModel: from a sum of in-context kernel times to a network's end-to-end latency.

    latency_ms = intercept_ms + per_kernel_ms * n_kernels + weight_ms_per_mb * (weight MB)
                 + compute_scale * (sum over float compute kernels)
                 + eight_bit_scale * (sum over 8-bit compute kernels) + memory_scale * (the rest)

``intercept_ms`` is the runtime's per-call overhead (``session.run``, input and output copies),
``per_kernel_ms`` what the executor spends between kernels (and the glue nodes' cost).
``weight_ms_per_mb`` is what streaming the weights from memory costs: a kernel timed over and
over keeps its weights in cache, inside a network the other layers have evicted them (the
classifier gemm of MobileNetV2, 5 MB of weights, takes 0.06 ms in its harness and 0.27 ms in
the network, here). ``compute_scale`` and ``memory_scale`` are the remaining slowdown of
dense convs and gemms, and of the other kernels, inside a network; ``eight_bit_scale`` that of
8-bit convs and gemms (ONNX Runtime's QLinearConv runs 1.2-1.5x slower in a U8S8 network than
in its harness, here, where float32 convs run 1.0-1.05x slower), fitted only when calibration
networks have 8-bit kernels. A few end-to-end
measurements fit them (least squares on relative error, with bounds so that a few noisy
points cannot produce an absurd model). Five terms need about three networks each: with fewer
measurements than ``MIN_MODELS_FOR_SCALES`` only the intercept and the per-kernel term are
fitted. (Ten networks of one space, each timed to within 2-5% on a shared machine, fitted all
five terms into the noise: compute_scale went to its bound and the search's budget-edge winners
were predicted 3-7% fast; the two-term fit of the same data predicted them within 2.5%.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import lsq_linear

COMPUTE_OPS = ("conv", "deconv", "gemm")  # Kernel.op values whose cost scales with the compute term
MIN_MODELS_FOR_SCALES = 15


@dataclass
class OverheadModel:
    intercept_ms: float = 0.0
    per_kernel_ms: float = 0.0
    weight_ms_per_mb: float = 0.0
    compute_scale: float = 1.0
    memory_scale: float = 1.0
    fitted_on: int = 0
    eight_bit_scale: float = 1.0

    def kernel_ms(
        self,
        raw_ms: np.ndarray,
        compute: np.ndarray,
        weight_mb: np.ndarray,
        eight_bit: np.ndarray | None = None,
    ) -> np.ndarray:
        """What each kernel adds to the end-to-end latency: scaled cost, weight streaming, overhead
        (``eight_bit`` marks the compute kernels that run in 8 bits)."""
        scale = np.where(compute, self.compute_scale, self.memory_scale)
        if eight_bit is not None:
            scale = np.where(eight_bit, self.eight_bit_scale, scale)
        return scale * raw_ms + self.weight_ms_per_mb * weight_mb + self.per_kernel_ms

    def fit(
        self,
        compute_ms: Sequence[float],
        memory_ms: Sequence[float],
        weight_mb: Sequence[float],
        n_kernels: Sequence[int],
        measured_ms: Sequence[float],
        eight_bit_ms: Sequence[float] | None = None,
    ) -> OverheadModel:
        """Fit from networks' summed kernel times (split by class: float compute, memory, and
        8-bit compute), weights, kernel counts and times."""
        c, m, w, n, y = (
            np.asarray(v, dtype=np.float64)
            for v in (compute_ms, memory_ms, weight_mb, n_kernels, measured_ms)
        )
        q = np.zeros_like(y) if eight_bit_ms is None else np.asarray(eight_bit_ms, dtype=np.float64)
        if len(y) == 0:
            raise ValueError("fitting the overhead needs at least one end-to-end measurement")
        weight = 1.0 / y
        self.eight_bit_scale = 1.0
        if len(y) >= MIN_MODELS_FOR_SCALES:
            columns = [np.ones_like(y), n, w, c, m]
            lower, upper = [0.0, 0.0, 0.0, 0.8, 0.8], [5.0, 0.05, 0.5, 1.5, 1.5]
            target = y
            if np.count_nonzero(q) >= 3:  # enough quantized networks to tell the 8-bit scale
                columns.append(q)
                lower.append(0.8)
                upper.append(2.0)
            else:
                target = y - q
            A = np.column_stack(columns) * weight[:, None]
            sol = lsq_linear(A, target * weight, bounds=(lower, upper)).x
            (
                self.intercept_ms,
                self.per_kernel_ms,
                self.weight_ms_per_mb,
                self.compute_scale,
                self.memory_scale,
            ) = map(float, sol[:5])
            if len(sol) > 5:
                self.eight_bit_scale = float(sol[5])
        else:
            A = np.column_stack([np.ones_like(y), n]) * weight[:, None]
            sol = lsq_linear(A, (y - c - m - q) * weight, bounds=([0.0, 0.0], [5.0, 0.05])).x
            self.intercept_ms, self.per_kernel_ms = map(float, sol)
            self.weight_ms_per_mb, self.compute_scale, self.memory_scale = 0.0, 1.0, 1.0
        self.fitted_on = int(len(y))
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> OverheadModel:
        return cls(**data)
