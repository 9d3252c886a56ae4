"""A synthetic search problem with a known optimum, for testing and benchmarking strategies.

``SyntheticProblem`` is a multiple-choice knapsack shaped like layer-wise NAS: each of
``n_decisions`` decisions (a layer) has ``n_options`` options; option j of decision d adds
a latency cost (increasing with j, like a wider or larger-kernel block) and an accuracy
gain (increasing but saturating, with per-layer noise so that the cheapest way to buy
accuracy differs between layers). Accuracy and latency are sums over decisions, so the
exact best accuracy under any latency budget, and the exact Pareto front, follow from
dynamic programming over integer costs (0.01 ms units) -- something no real space offers.

The problem object is its own latency model: ``predict_batch(space, archs)`` has the
signature of predictors.LatencyPredictor, so it plugs into LatencyObjective unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hwlat.search.objectives import CallableObjective, LatencyObjective, Objective
from hwlat.search.spaces.base import Decision
from hwlat.search.strategies.base import Arch

_COST_UNIT_MS = 0.01


class SyntheticSpace:
    """A product space of categorical decisions with the search-space methods strategies use."""

    def __init__(self, sizes: Sequence[int], name: str = "synthetic") -> None:
        self.name = name
        self.decisions = [Decision(f"d{i}", tuple(range(k))) for i, k in enumerate(sizes)]

    def sample(self, rng: np.random.Generator) -> Arch:
        return tuple(int(rng.integers(len(d.options))) for d in self.decisions)

    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """One decision moved to another option."""
        d = int(rng.integers(len(self.decisions)))
        k = len(self.decisions[d].options)
        if k < 2:
            return tuple(arch)
        new = (arch[d] + 1 + int(rng.integers(k - 1))) % k
        return tuple(arch[:d]) + (new,) + tuple(arch[d + 1 :])

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover."""
        take_b = rng.random(len(a)) < 0.5
        return tuple(int(y) if t else int(x) for x, y, t in zip(a, b, take_b, strict=True))

    def encode(self, arch: Arch) -> np.ndarray:
        return np.concatenate([np.eye(len(d.options))[i] for d, i in zip(self.decisions, arch, strict=True)])

    def to_dict(self, arch: Arch) -> dict:
        return {d.name: d.options[i] for d, i in zip(self.decisions, arch, strict=True)}

    def size(self) -> int:
        return int(np.prod([len(d.options) for d in self.decisions], dtype=float))


class SyntheticProblem:
    """Accuracy (maximise) and latency (minimise, budgeted) over a SyntheticSpace."""

    device = "synthetic"

    def __init__(self, n_decisions: int = 12, n_options: int = 6, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.space = SyntheticSpace([n_options] * n_decisions)
        j = np.arange(n_options)
        layer_cost = rng.uniform(5, 30, size=(n_decisions, 1))  # 0.05-0.3 ms per layer step
        self.costs = np.rint(layer_cost * (1 + j) * rng.uniform(0.8, 1.2, (n_decisions, n_options))).astype(
            int
        )
        self.costs.sort(axis=1)
        layer_gain = rng.uniform(0.5, 2.0, size=(n_decisions, 1))
        gains = layer_gain * np.log1p(j) + rng.normal(0, 0.3, (n_decisions, n_options))
        self.gains = gains - gains.min(axis=1, keepdims=True)
        self.base_accuracy = 50.0

    # ----- objectives ---------------------------------------------------------
    def accuracy(self, archs: Sequence[Arch]) -> np.ndarray:
        index = np.asarray(archs, dtype=int)
        return self.base_accuracy + self.gains[np.arange(index.shape[1]), index].sum(axis=1)

    def latency_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        index = np.asarray(archs, dtype=int)
        return self.costs[np.arange(index.shape[1]), index].sum(axis=1) * _COST_UNIT_MS

    def predict_batch(self, space: object, archs: Sequence[Arch]) -> np.ndarray:
        """The LatencyPredictor call signature."""
        return self.latency_ms(archs)

    def objectives(self, budget_ms: float | None = None) -> list[Objective]:
        return [
            CallableObjective(self.accuracy, "accuracy", "maximize", batched=True),
            LatencyObjective(self, budget_ms),
        ]

    # ----- ground truth -------------------------------------------------------
    def min_latency_ms(self) -> float:
        return float(self.costs.min(axis=1).sum() * _COST_UNIT_MS)

    def max_latency_ms(self) -> float:
        return float(self.costs.max(axis=1).sum() * _COST_UNIT_MS)

    def exact_front(self) -> np.ndarray:
        """Every Pareto-optimal (latency_ms, accuracy) pair, by DP over integer costs."""
        best = self._best_by_cost()
        cost = np.flatnonzero(np.isfinite(best))
        acc = best[cost]
        keep = acc > np.maximum.accumulate(np.concatenate([[-np.inf], acc[:-1]]))
        return np.column_stack([cost[keep] * _COST_UNIT_MS, self.base_accuracy + acc[keep]])

    def best_accuracy(self, budget_ms: float | None = None) -> float:
        """The exact optimum of accuracy subject to latency <= budget_ms."""
        front = self.exact_front()
        if budget_ms is not None:
            front = front[front[:, 0] <= budget_ms + 1e-9]
        return float(front[:, 1].max()) if len(front) else float("nan")

    def _best_by_cost(self) -> np.ndarray:
        """best[c] = highest total gain of any arch costing exactly c units (-inf if none)."""
        best = np.array([0.0])
        for cost, gain in zip(self.costs, self.gains, strict=True):
            new = np.full(best.size + cost.max(), -np.inf)
            for c, g in zip(cost, gain, strict=True):
                np.maximum(new[c : c + best.size], best + g, out=new[c : c + best.size])
            best = new
        return best
