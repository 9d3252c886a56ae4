"""Search: hardware-aware architecture search over spaces, under latency budgets, with verification."""

from hwlat.search.feasibility import InfeasibleBudgetError, minimise
from hwlat.search.hypervolume import hypervolume
from hwlat.search.objectives import CallableObjective, LatencyObjective, Objective
from hwlat.search.pareto import pareto_front
from hwlat.search.proxies import get_proxy
from hwlat.search.runner import run_search
from hwlat.search.spaces import SPACES, SearchSpace, get_space
from hwlat.search.strategies import Strategy, get_strategy, register_strategy
from hwlat.search.study import Study, StudyMismatchError
from hwlat.search.trial import Trial
from hwlat.search.verify import Verification, format_verification, verify_winners

__all__ = [
    "SPACES",
    "CallableObjective",
    "InfeasibleBudgetError",
    "LatencyObjective",
    "Objective",
    "SearchSpace",
    "Strategy",
    "Study",
    "StudyMismatchError",
    "Trial",
    "Verification",
    "format_verification",
    "get_proxy",
    "get_space",
    "get_strategy",
    "hypervolume",
    "minimise",
    "pareto_front",
    "register_strategy",
    "run_search",
    "verify_winners",
]
