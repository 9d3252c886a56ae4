"""Building a predictor on a device: kernel sampling, in-context kernel profiling, training."""

from hwlat.predictors.building.profiling import KernelProfiler
from hwlat.predictors.building.sampling import KernelSampler
from hwlat.predictors.building.training import (
    AdaptiveReport,
    NotEnoughDataError,
    TrainingConfig,
    adaptive_profile,
    fusion_rules,
    train_predictor,
)

__all__ = [
    "AdaptiveReport",
    "KernelProfiler",
    "KernelSampler",
    "NotEnoughDataError",
    "TrainingConfig",
    "adaptive_profile",
    "fusion_rules",
    "train_predictor",
]
