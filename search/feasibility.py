"""Fail fast on budgets no architecture can meet.

Before a search starts, each budgeted objective (typically predicted latency on a device)
is minimised over the space by *coordinate descent*: from a few starting architectures
(every decision at its first option, every decision at its last option, and two seeded
random ones), sweep the decisions one at a time, try all options of that decision with the
others fixed (one ``evaluate`` = one ``predict_batch`` call for all starts together), keep
the best, and repeat until a sweep changes nothing. Cost: about
sweeps x sum(options per decision) x 4 predictions, milliseconds to seconds.

It is exact when the objective is a sum of per-decision terms (a lookup-table latency
model nearly is) and a coordinate-wise local minimum otherwise, so the value found is an
upper bound of the space's true minimum: in principle a budget reported impossible could
be met by a network the descent did not reach. For the latency of a layer-wise space the
descent lands on the smallest network (fewest blocks, smallest kernels and expansions,
lowest resolution), where every single change makes it slower.

The architectures found also warm-start the search (search/study.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwlat.errors import HwlatError
from hwlat.search.objectives import Objective
from hwlat.search.strategies.base import Arch, canonical

_RANDOM_STARTS = 2
_MAX_SWEEPS = 10


class InfeasibleBudgetError(HwlatError):
    """No architecture of the space can meet a budget (``smallest``: the least value found)."""

    def __init__(self, message: str, fix: str | None = None, smallest: float | None = None) -> None:
        super().__init__(message, fix)
        self.smallest = smallest


@dataclass(frozen=True)
class Minimum:
    objective: str
    arch: Arch
    value: float
    evaluations: int


def minimise(space: Any, objective: Objective, seed: int = 0) -> Minimum:
    """The smallest value of ``objective`` found by multi-start coordinate descent."""
    sizes = [len(d.options) for d in space.decisions]
    rng = np.random.default_rng(seed)
    starts = [[0 for _ in sizes], [k - 1 for k in sizes]]
    starts += [[int(rng.integers(k)) for k in sizes] for _ in range(_RANDOM_STARTS)]
    current = [list(a) for a in dict.fromkeys(canonical(space, s) for s in starts)]
    values = _evaluate(space, objective, [tuple(a) for a in current])
    evaluations = len(current)
    for _ in range(_MAX_SWEEPS):
        changed = False
        for d, k in enumerate(sizes):
            if k < 2:
                continue
            candidates = [canonical(space, a[:d] + [j] + a[d + 1 :]) for a in current for j in range(k)]
            scores = _evaluate(space, objective, candidates).reshape(len(current), k)
            evaluations += len(candidates)
            for s, row in enumerate(scores):
                j = int(np.argmin(row))
                if row[j] < values[s]:
                    changed = True
                    current[s] = list(candidates[s * k + j])
                    values[s] = row[j]
        if not changed:
            break
    best = int(np.argmin(values))
    return Minimum(objective.name, tuple(current[best]), float(values[best]), evaluations)


def check_budgets(space: Any, objectives: Sequence[Objective]) -> dict[str, Minimum]:
    """Minimum of every budgeted objective; raises InfeasibleBudgetError for an impossible one."""
    minima = {}
    for objective in objectives:
        if objective.budget is None:
            continue
        found = minimise(space, objective)
        minima[objective.name] = found
        if not found.value <= objective.budget:
            described = space.to_dict(found.arch) if hasattr(space, "to_dict") else found.arch
            raise InfeasibleBudgetError(
                f"no architecture of space {getattr(space, 'name', type(space).__name__)!r} can "
                f"meet the budget {objective.name} <= {objective.budget:g}: the smallest found "
                f"(coordinate descent over every decision) is {found.value:.4g}, for {described}. "
                f"Raise the budget to at least {found.value:.4g} or use a smaller space.",
                smallest=found.value,
            )
    return minima


def _evaluate(space: Any, objective: Objective, archs: list[Arch]) -> np.ndarray:
    return np.nan_to_num(objective.evaluate(space, archs).astype(float), nan=np.inf)
