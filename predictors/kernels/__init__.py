"""Kernel detection: which kernels a runtime really runs for an ONNX graph (splitter, fusion rules)."""

from hwlat.predictors.kernels.fusion import FusionProbe, FusionRules, decide, default_probes, probe_kernels
from hwlat.predictors.kernels.splitter import ModelSplitter, SplitResult, UnsupportedOpsError

__all__ = [
    "FusionProbe",
    "FusionRules",
    "ModelSplitter",
    "SplitResult",
    "UnsupportedOpsError",
    "decide",
    "default_probes",
    "probe_kernels",
]
