"""NSGA-II, Deb et al. 2002, "A Fast and Elitist Multiobjective Genetic Algorithm: NSGA-II".

Multi-objective: every objective counts. Each generation makes ``population_size``
children (binary tournaments on (front rank, crowding distance), uniform crossover with
probability ``crossover_prob``, then a mutation with probability ``mutation_prob``), and
the next parents are the best
``population_size`` of parents + children by constrained non-dominated sorting (feasible
before infeasible, infeasible by violation; the paper's constraint-handling rule) with
crowding distance to break the last front. The first generation is random.

A child identical to a parent or to another child of the batch is mutated again (a few
tries): in a discrete space copies waste evaluations and crowd out the front.
mutation_prob 0.5 rather than 1: on both benchmark problems (benchmarks/RESULTS-search.md)
it gave a higher median hypervolume than always mutating (0.94 vs 0.89 of the exact front
on the synthetic problem), the recombination of good parents alone being worth keeping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hwlat.search.pareto import crowding_distance, non_dominated_sort, violation
from hwlat.search.strategies.base import Arch, Strategy, register_strategy

_RETRIES = 5


@register_strategy
class NSGA2(Strategy):
    name = "nsga2"
    default_batch_size = 50

    def __init__(
        self,
        population_size: int = 50,
        crossover_prob: float = 0.9,
        mutation_prob: float = 0.5,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(random_state)
        if population_size < 4:
            raise ValueError(f"nsga2 needs population_size >= 4, got {population_size}")
        for option, p in (("crossover_prob", crossover_prob), ("mutation_prob", mutation_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{option} must be in [0, 1], got {p}")
        self.population_size = population_size
        self.crossover_prob = crossover_prob
        self.mutation_prob = mutation_prob
        self._parents: list[Arch] = []
        self._parent_losses = np.empty((0, 0))
        self._parent_violations = np.empty(0)
        self._rank = np.empty(0, dtype=int)
        self._crowding = np.empty(0)
        self._children: list[tuple[Arch, np.ndarray, float]] = []

    def ask(self, n: int) -> list[Arch]:
        if not self._parents:
            return [tuple(self.space.sample(self.rng)) for _ in range(n)]
        seen = set(self._parents)
        out = []
        for _ in range(n):
            child = self._offspring()
            for _ in range(_RETRIES):
                if child not in seen:
                    break
                child = tuple(self.space.mutate(child, self.rng))
            seen.add(child)
            out.append(child)
        return out

    def tell(self, archs: Sequence[Arch], losses: np.ndarray, ratios: np.ndarray) -> None:
        losses = np.nan_to_num(np.asarray(losses, dtype=float), nan=np.inf)
        for arch, loss, v in zip(archs, losses, violation(ratios), strict=True):
            self._children.append((tuple(arch), loss, float(v)))
        if len(self._children) >= self.population_size:
            self._next_generation()

    # ----- internals --------------------------------------------------------
    def _offspring(self) -> Arch:
        a = self._parents[self._binary_tournament()]
        if self.rng.random() < self.crossover_prob:
            b = self._parents[self._binary_tournament()]
            a = tuple(self.space.crossover(a, b, self.rng))
        if self.rng.random() < self.mutation_prob:
            a = tuple(self.space.mutate(a, self.rng))
        return a

    def _binary_tournament(self) -> int:
        i, j = self.rng.choice(len(self._parents), size=2, replace=False)
        key_i, key_j = (self._rank[i], -self._crowding[i]), (self._rank[j], -self._crowding[j])
        if key_i == key_j:
            return int(i if self.rng.random() < 0.5 else j)
        return int(i if key_i < key_j else j)

    def _next_generation(self) -> None:
        archs = self._parents + [c[0] for c in self._children]
        losses = np.vstack(
            [self._parent_losses.reshape(-1, self._children[0][1].size)]
            + [c[1][None, :] for c in self._children]
        )
        violations = np.concatenate([self._parent_violations, [c[2] for c in self._children]])
        self._children = []
        chosen, rank, crowding = [], [], []
        for r, front in enumerate(non_dominated_sort(losses, violations)):
            distance = crowding_distance(losses[front])
            if len(chosen) + len(front) > self.population_size:
                order = np.argsort(-distance, kind="stable")[: self.population_size - len(chosen)]
                front, distance = front[order], distance[order]
            chosen.extend(front.tolist())
            rank.extend([r] * len(front))
            crowding.extend(distance.tolist())
            if len(chosen) >= self.population_size:
                break
        self._parents = [archs[i] for i in chosen]
        self._parent_losses = losses[chosen]
        self._parent_violations = violations[chosen]
        self._rank = np.asarray(rank)
        self._crowding = np.asarray(crowding)
