"""Latency models: the kernel table, the kernel and architecture regressors, the overhead model."""

from hwlat.predictors.models.arch_regressor import ArchLatencyRegressor
from hwlat.predictors.models.kernel_regressor import KernelRegressor
from hwlat.predictors.models.overhead import OverheadModel
from hwlat.predictors.models.table import LatencyTable, MissingKernelError

__all__ = ["ArchLatencyRegressor", "KernelRegressor", "LatencyTable", "MissingKernelError", "OverheadModel"]
