"""A compression environment seen as a search space, so that ``Study`` (storage, resume,
ask/tell) and the existing strategies run on it.

An architecture is a policy's option indices: the kept channel count of each pruning group
(amc, joint), then the dtype of each layer (haq, joint). ``canonicalize`` replays it through
the environment's action wall, so whatever a strategy proposes (a random sample, an
evolution's mutant) becomes the policy the wall lets through, exactly as the DDPG agent's
actions do: every strategy searches the same environment, with the same budgets. Canonical
policies are fixed points (the wall never lowers an action that fits).

Strategies: ``ddpg`` (search/compression/ddpg.py), and ``evolution`` and ``random`` from
``hwlat.search.strategies`` (regularized evolution with a population of 20 and tournaments
of 5 by default: a compression search evaluates hundreds of policies, not thousands).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hwlat.errors import ConfigError
from hwlat.search.compression.env import CompressionEnv
from hwlat.search.objectives import Objective
from hwlat.search.strategies.base import Arch, Strategy

MUTATION_SIGMA = 0.15  # keep ratio steps of a mutation


class CompressionSpace:
    """The search-space face of a ``CompressionEnv``."""

    def __init__(self, env: CompressionEnv) -> None:
        self.env = env
        self.name = env.study_name()
        self.decisions = env.decisions

    def _keep_decisions(self) -> int:
        return len(self.env.analysis.groups) if self.env.decides_keep else 0

    def sample(self, rng: np.random.Generator) -> Arch:
        """Uniform over each decision's options: AMC's random warm-up actions."""
        return tuple(int(rng.integers(len(d.options))) for d in self.decisions)

    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """Each decision changes with probability 1/n (at least one): a keep ratio moves by a normal
        step (sigma 0.15), a dtype flips to another option."""
        arch = list(arch)
        n = len(arch)
        chosen = np.flatnonzero(rng.random(n) < 1.0 / n)
        if chosen.size == 0:
            chosen = np.array([int(rng.integers(n))])
        keep_decisions = self._keep_decisions()
        for d in chosen:
            options = self.decisions[d].options
            if d < keep_decisions:
                channels = options[-1]
                ratio = options[arch[d]] / channels + rng.normal(0.0, MUTATION_SIGMA)
                arch[d] = int(np.argmin([abs(o - ratio * channels) for o in options]))
            elif len(options) > 1:
                others = [i for i in range(len(options)) if i != arch[d]]
                arch[d] = int(others[int(rng.integers(len(others)))])
        return tuple(arch)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        take = rng.random(len(a)) < 0.5
        return tuple(int(x if t else y) for x, y, t in zip(a, b, take, strict=True))

    def canonicalize(self, arch: Sequence[int]) -> Arch:
        return self.env.rollout_arch(arch).arch

    def to_dict(self, arch: Arch) -> dict:
        return self.env.describe(self.env.policy_of(arch))


class PolicyObjective(Objective):
    """One value of the built and predicted policy (``CompressionEnv.evaluate``, cached)."""

    def __init__(self, env: CompressionEnv, field: str, name: str, direction: str, budget=None) -> None:
        super().__init__(name, direction, budget)
        self.env = env
        self.field = field

    def evaluate(self, space: Any, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([getattr(self.env.evaluate(self.env.policy_of(a)), self.field) for a in archs])

    def describe(self) -> dict:
        return {**super().describe(), "field": self.field}


def policy_objectives(env: CompressionEnv) -> list[PolicyObjective]:
    """Score (maximised), latency and memory (budgets), and the fidelity columns, in that order."""
    device = env.cost_model.device
    return [
        PolicyObjective(env, "score", env.score_name, "maximize"),
        PolicyObjective(env, "latency_ms", f"latency_ms@{device}", "minimize", env.latency_budget),
        PolicyObjective(env, "memory_mb", f"memory_mb@{device}", "minimize", env.memory_budget),
        PolicyObjective(env, "top1_agreement", "top1_agreement (proxy)", "maximize"),
        PolicyObjective(env, "kl", "kl (proxy)", "minimize"),
    ]


class WallFeedback(Strategy):
    """A strategy whose told policies also teach the environment's wall (``CompressionEnv.observe``):
    the predicted latency and memory (objectives 1 and 2) against the wall's estimate. Everything
    else is the wrapped strategy's; ``Study`` replays ``tell`` on resume, so the wall follows."""

    def __init__(self, inner: Strategy, env: CompressionEnv) -> None:
        super().__init__(inner.random_state)
        self.inner = inner
        self.env = env
        self.name = inner.name
        self.default_batch_size = inner.default_batch_size
        self.rng = inner.rng

    def bind(self, space: Any, directions: Sequence[str], n_constraints: int) -> None:
        super().bind(space, directions, n_constraints)
        self.inner.bind(space, directions, n_constraints)

    def ask(self, n: int) -> list[Arch]:
        return self.inner.ask(n)

    def tell(self, archs: Sequence[Arch], losses: np.ndarray, ratios: np.ndarray) -> None:
        for arch, row in zip(archs, np.asarray(losses, dtype=float), strict=True):
            self.env.observe(self.env.policy_of(arch), float(row[1]), float(row[2]))
        self.inner.tell(archs, losses, ratios)

    def config(self) -> dict:
        return self.inner.config()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


STRATEGY_NAMES = ("ddpg", "evolution", "random")


def get_compression_strategy(name: str, seed: int = 0, **options: Any) -> Strategy:
    """``ddpg``, ``evolution`` or ``random``, seeded, for a compression search."""
    from hwlat.search.compression.ddpg import DDPGStrategy
    from hwlat.search.strategies import RandomSearch, RegularizedEvolution

    if name == "ddpg":
        return DDPGStrategy(random_state=seed, **options)
    if name == "evolution":
        options = {"population_size": 20, "sample_size": 5, **options}
        return RegularizedEvolution(random_state=seed, **options)
    if name == "random":
        return RandomSearch(random_state=seed, **options)
    raise ConfigError(f"unknown compression strategy {name!r}; use one of {', '.join(STRATEGY_NAMES)}")
