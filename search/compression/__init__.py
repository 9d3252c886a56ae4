"""Compression search per device: AMC-style pruning, HAQ-style mixed precision, or both, under budgets."""

from hwlat.search.compression.accuracy import OrtModule, fidelity
from hwlat.search.compression.cost import Cost, CostEstimator, CostModel, PredictorCostModel
from hwlat.search.compression.ddpg import DDPG, DDPGStrategy
from hwlat.search.compression.env import (
    FEATURES,
    METHODS,
    Compressed,
    CompressionEnv,
    Episode,
    Policy,
    PolicyResult,
)
from hwlat.search.compression.model import ModelAnalysis
from hwlat.search.compression.search import (
    UNIFORM_RATIOS,
    CompressionResult,
    PolicyRecord,
    compression_search,
    uniform_baselines,
)
from hwlat.search.compression.space import CompressionSpace, get_compression_strategy
from hwlat.search.compression.verify import CompressionVerification, format_verification, verify_winners

__all__ = [
    "DDPG",
    "FEATURES",
    "METHODS",
    "UNIFORM_RATIOS",
    "CompressionEnv",
    "CompressionResult",
    "CompressionSpace",
    "CompressionVerification",
    "Compressed",
    "Cost",
    "CostEstimator",
    "CostModel",
    "DDPGStrategy",
    "Episode",
    "ModelAnalysis",
    "OrtModule",
    "Policy",
    "PolicyRecord",
    "PolicyResult",
    "PredictorCostModel",
    "compression_search",
    "fidelity",
    "format_verification",
    "get_compression_strategy",
    "uniform_baselines",
    "verify_winners",
]
