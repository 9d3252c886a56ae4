"""Search strategies behind one ask/tell interface; see base.py for how to add your own."""

from hwlat.search.strategies.base import (
    STRATEGIES,
    Arch,
    Strategy,
    UnknownStrategyError,
    get_strategy,
    register_strategy,
)
from hwlat.search.strategies.evolution import RegularizedEvolution
from hwlat.search.strategies.nsga2 import NSGA2
from hwlat.search.strategies.random_search import RandomSearch
from hwlat.search.strategies.reinforce import Reinforce, RewardError

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
