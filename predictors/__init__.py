"""Predictors: latency models of one device built from the store, and ``predict(model)`` for NAS code.

``LatencyPredictor`` (predict a network, or a batch of a search space's architectures),
built from a ``LatencyTable`` of in-context kernel times with a ``KernelRegressor`` for
kernels never measured, a ``ModelSplitter`` that turns ONNX graphs into kernels, and the
backend's measured ``FusionRules``. ``ArchLatencyRegressor`` learns latency from
(architecture, latency) pairs instead. Subpackages follow the pipeline: ``kernels``
(detection), ``models``, ``building`` (profiling and training), ``formats`` (table files).
"""

from hwlat.errors import PredictorFormatError
from hwlat.predictors.building import TrainingConfig, train_predictor
from hwlat.predictors.kernels.fusion import FusionRules
from hwlat.predictors.kernels.splitter import ModelSplitter, SplitResult, UnsupportedOpsError
from hwlat.predictors.metrics import AccuracyReport, accuracy
from hwlat.predictors.models.arch_regressor import ArchLatencyRegressor
from hwlat.predictors.models.kernel_regressor import KernelRegressor
from hwlat.predictors.models.table import LatencyTable, MissingKernelError
from hwlat.predictors.predictor import KernelCost, LatencyPredictor, Prediction
from hwlat.profiler.kernel import Kernel

__all__ = [
    "AccuracyReport",
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
    "TrainingConfig",
    "UnsupportedOpsError",
    "accuracy",
    "train_predictor",
]
