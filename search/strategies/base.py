"""The ask/tell interface every search strategy implements, and the strategy registry.

A strategy proposes architectures (``ask``) and learns from their evaluations (``tell``);
the Study owns the loop, the objectives and the storage (the Optuna split of study and
sampler). Contract, relied on by resume (see search/study.py):

* all randomness comes from ``self.rng``, seeded by ``random_state``, so the same seed,
  options and told values give the same asks;
* ``tell`` accepts any architectures, not only ones this strategy asked for;
* ``tell`` receives *losses* (lower is better in every column: maximised objectives are
  negated) and *ratios* (value / limit per budget: <= 1 is within budget).

Plugging in your own strategy::

    from hwlat.search.strategies import Strategy, register_strategy

    @register_strategy
    class Greedy(Strategy):
        name = "greedy"                      # what --strategy and get_strategy() accept

        def __init__(self, patience: int = 5, random_state: int | None = 0) -> None:
            super().__init__(random_state)
            self.patience = patience          # keep every option as an attribute: config()

        def ask(self, n): ...                 # -> list of archs, using self.space and self.rng
        def tell(self, archs, losses, ratios): ...
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from hwlat.errors import HwlatError
from hwlat.search.pareto import violation

Arch = tuple[int, ...]
DIRECTIONS = ("minimize", "maximize")


class SpaceLike(Protocol):
    """What strategies need from a search space (search.spaces provides the real ones)."""

    decisions: Sequence[Any]  # each with .name and .options

    def sample(self, rng: np.random.Generator) -> Arch: ...
    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch: ...
    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch: ...


class UnknownStrategyError(HwlatError):
    """A strategy name that is not registered."""


class Strategy(ABC):
    """Base class: seeded RNG, binding to a space, and ``config()`` for storage."""

    name: ClassVar[str] = ""
    default_batch_size: ClassVar[int] = 16

    def __init__(self, random_state: int | None = 0) -> None:
        self.random_state = random_state
        self.rng = np.random.default_rng(random_state)
        self.space: Any = None
        self.directions: tuple[str, ...] = ()
        self.n_constraints = 0

    def bind(self, space: SpaceLike, directions: Sequence[str], n_constraints: int) -> None:
        """Called once by the Study before the first ask."""
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad:
            raise ValueError(f"unknown objective direction(s) {bad}; use {' or '.join(DIRECTIONS)}")
        self.space = space
        self.directions = tuple(directions)
        self.n_constraints = n_constraints

    @abstractmethod
    def ask(self, n: int) -> list[Arch]:
        """``n`` architectures to evaluate next."""

    @abstractmethod
    def tell(self, archs: Sequence[Arch], losses: np.ndarray, ratios: np.ndarray) -> None:
        """Results of evaluating ``archs``: losses (n, objectives), ratios (n, budgets)."""

    def config(self) -> dict:
        """The constructor arguments (by the convention that each is kept as an attribute)."""
        params = inspect.signature(type(self).__init__).parameters
        return {p: getattr(self, p) for p in params if p != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def canonical(space: Any, arch: Sequence[int]) -> Arch:
    """``arch`` in the space's canonical form (equal networks, equal tuples) when it has one."""
    to_canonical = getattr(space, "canonicalize", None)
    return tuple(to_canonical(arch)) if to_canonical else tuple(int(v) for v in arch)


def rank_keys(losses: np.ndarray, ratios: np.ndarray) -> list[tuple[float, float]]:
    """Single-objective ordering with budgets: (violation, primary loss), lower is better.

    Feasible points (violation 0) come first, ordered by the primary objective; infeasible
    ones follow, the least over budget first. NaN losses count as the worst.
    """
    primary = np.nan_to_num(np.asarray(losses, dtype=float)[:, 0], nan=np.inf)
    return list(zip(violation(ratios).tolist(), primary.tolist(), strict=True))


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a Strategy available by its ``name`` (CLI ``--strategy``)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute 'name' to be registered")
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str, **options: Any) -> Strategy:
    """A new strategy by registered name, e.g. ``get_strategy("nsga2", random_state=1)``."""
    if name not in STRATEGIES:
        raise UnknownStrategyError(
            f"unknown search strategy {name!r}; use one of "
            f"{', '.join(sorted(STRATEGIES))} or register your own "
            "with search.strategies.register_strategy"
        )
    return STRATEGIES[name](**options)
