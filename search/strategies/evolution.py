"""Regularized (aging) evolution, Real et al. 2019, "Regularized Evolution for Image
Classifier Architecture Search".

A population of ``population_size`` architectures; each child is a mutation of the winner
of a tournament among ``sample_size`` random members; the child joins the population and
the *oldest* member leaves (not the worst: aging keeps the search from resting on one
lucky individual). The first ``population_size`` architectures are random.

Single objective: the first (primary) objective; budgets are handled by ranking feasible
architectures before infeasible ones and infeasible ones by how far they are over budget.
With a batch of n asks, n tournaments run against the same population (the paper's
asynchronous workers do the same); n = 1 is the sequential algorithm.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from hwlat.search.strategies.base import Arch, Strategy, rank_keys, register_strategy


@register_strategy
class RegularizedEvolution(Strategy):
    name = "evolution"
    default_batch_size = 8

    def __init__(
        self, population_size: int = 50, sample_size: int = 10, random_state: int | None = 0
    ) -> None:
        super().__init__(random_state)
        if population_size < 2 or not 1 <= sample_size <= population_size:
            raise ValueError(
                f"evolution needs population_size >= 2 and 1 <= sample_size <= "
                f"population_size; got {population_size} and {sample_size}"
            )
        self.population_size = population_size
        self.sample_size = sample_size
        self._population: deque[tuple[Arch, tuple[float, float]]] = deque()
        self._pending = 0

    def ask(self, n: int) -> list[Arch]:
        children = []
        for i in range(n):
            if not self._population or len(self._population) + self._pending + i < self.population_size:
                children.append(tuple(self.space.sample(self.rng)))
            else:
                children.append(tuple(self.space.mutate(self._tournament(), self.rng)))
        self._pending += n
        return children

    def tell(self, archs: Sequence[Arch], losses: np.ndarray, ratios: np.ndarray) -> None:
        for arch, key in zip(archs, rank_keys(losses, ratios), strict=True):
            self._population.append((tuple(arch), key))
            if len(self._population) > self.population_size:
                self._population.popleft()
        self._pending = max(0, self._pending - len(archs))

    def _tournament(self) -> Arch:
        size = min(self.sample_size, len(self._population))
        picks = self.rng.choice(len(self._population), size=size, replace=False)
        best = min(picks, key=lambda i: (self._population[i][1], i))
        return self._population[best][0]
