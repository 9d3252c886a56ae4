"""Objectives: what a search optimises, evaluated a batch of architectures at a time.

The first objective of a study is the *primary* one: single-objective strategies
(evolution, rl) optimise it; NSGA-II optimises all of them. An objective with a
``budget`` (minimised objectives only) is also a constraint: value <= budget.

* LatencyObjective: predicted latency on one device, from anything with
  ``predict_batch(space, archs) -> latency_ms array`` (a predictors.LatencyPredictor).
  One per device for a multi-device search, each with its own budget.
* CallableObjective: your own accuracy (or anything) as a Python function of an arch.
* Built-in accuracy proxies: search/proxies.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hwlat.errors import ConfigError
from hwlat.search.strategies.base import DIRECTIONS, Arch


class Objective(ABC):
    """A named, directed quantity of an architecture, optionally with a budget."""

    def __init__(self, name: str, direction: str, budget: float | None = None) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"objective {name!r}: direction must be one of {DIRECTIONS}, got {direction!r}")
        if budget is not None:
            if direction != "minimize":
                raise ValueError(
                    f"objective {name!r}: a budget is an upper limit and needs a minimised objective"
                )
            if not 0 < budget < float("inf"):
                raise ConfigError(f"objective {name!r}: budget must be a positive number, got {budget}")
        self.name = name
        self.direction = direction
        self.budget = budget

    @abstractmethod
    def evaluate(self, space: Any, archs: Sequence[Arch]) -> np.ndarray:
        """One float per architecture (NaN when it cannot be evaluated)."""

    def describe(self) -> dict:
        """What a study records to recognise this objective when it is reopened."""
        return {"name": self.name, "direction": self.direction, "budget": self.budget}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def searched_budget_ms(budget_ms: float, margin_pct: float) -> float:
    """The budget a search runs under so that a network predicted at it and measured up to
    ``margin_pct`` slower than predicted still meets ``budget_ms``."""
    return budget_ms / (1 + margin_pct / 100)


class LatencyObjective(Objective):
    """Predicted latency (ms) on one device; ``budget_ms`` makes it a constraint too."""

    def __init__(self, predictor: Any, budget_ms: float | None = None, device: str | None = None) -> None:
        if not callable(getattr(predictor, "predict_batch", None)):
            raise TypeError(
                f"{type(predictor).__name__} has no predict_batch(space, archs); "
                "pass a predictors.LatencyPredictor"
            )
        self.predictor = predictor
        self.device = device or str(getattr(predictor, "device", "device"))
        super().__init__(f"latency_ms@{self.device}", "minimize", budget_ms)

    def evaluate(self, space: Any, archs: Sequence[Arch]) -> np.ndarray:
        values = np.asarray(self.predictor.predict_batch(space, list(archs)), dtype=float)
        if values.shape != (len(archs),):
            raise ValueError(
                f"predictor for {self.device} returned shape {values.shape} for "
                f"{len(archs)} architectures; expected one latency per architecture"
            )
        return values

    def describe(self) -> dict:
        """Also which predictor: a study resumed with another predictor file would mix two devices'
        (or two trainings') latencies, so it is refused."""
        fingerprint = getattr(self.predictor, "fingerprint", None)
        return {**super().describe(), **({"predictor": fingerprint} if fingerprint else {})}


class CallableObjective(Objective):
    """A user function of one arch (``fn(arch) -> float``), or of a list if ``batched``."""

    def __init__(
        self,
        fn: Callable,
        name: str = "accuracy",
        direction: str = "maximize",
        budget: float | None = None,
        batched: bool = False,
    ) -> None:
        super().__init__(name, direction, budget)
        self.fn = fn
        self.batched = batched

    def evaluate(self, space: Any, archs: Sequence[Arch]) -> np.ndarray:
        if self.batched:
            values = np.asarray(self.fn(list(archs)), dtype=float)
        else:
            values = np.array([float(self.fn(a)) for a in archs])
        if values.shape != (len(archs),):
            raise ValueError(
                f"objective {self.name!r} returned shape {values.shape} for "
                f"{len(archs)} architectures; return one number per architecture"
            )
        return values
