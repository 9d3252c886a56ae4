"""Search strategies behind one ask/tell interface; see base.py for how to add your own."""

from .base import (
    STRATEGIES,
    Arch,
    Strategy,
    UnknownStrategyError,
    get_strategy,
    register_strategy,
)
from .evolution import RegularizedEvolution
from .nsga2 import NSGA2
from .random_search import RandomSearch
from .reinforce import Reinforce, RewardError

__all__ = [
    "STRATEGIES",
    "Arch",
    "NSGA2",
    "RandomSearch",
    "RegularizedEvolution",
    "Reinforce",
    "RewardError",
    "Strategy",
    "UnknownStrategyError",
    "get_strategy",
    "register_strategy",
]
