"""Predictors: latency models trained from the store.

``LatencyPredictor`` (predict a network, or a batch of a search space's architectures),
built from a ``LatencyTable`` of in-context kernel times with a ``KernelRegressor`` for
kernels never measured, a ``ModelSplitter`` that turns ONNX graphs into kernels, and the
backend's measured ``FusionRules``. ``ArchLatencyRegressor`` learns latency from
(architecture, latency) pairs instead. Heavy dependencies (torch) load only when used.
"""

from .arch_regressor import ArchLatencyRegressor
from .fusion import FusionRules
from .kernel import Kernel
from .kernel_regressor import KernelRegressor
from .predictor import KernelCost, LatencyPredictor, Prediction, PredictorFormatError
from .splitter import ModelSplitter, SplitResult, UnsupportedOpsError
from .table import LatencyTable, MissingKernelError

__all__ = [
    "ArchLatencyRegressor",
    "FusionRules",
    "Kernel",
    "KernelCost",
    "KernelRegressor",
    "LatencyPredictor",
    "LatencyTable",
    "MissingKernelError",
    "ModelSplitter",
    "Prediction",
    "PredictorFormatError",
    "SplitResult",
    "UnsupportedOpsError",
]
