"""One call for a whole compression search: episodes stored and resumable, uniform baselines,
the Pareto front, winners and the report.

    env = CompressionEnv(model, (1, 3, 224, 224), PredictorCostModel.load("pred.json"),
                         method="joint", latency_ms=8.0, evaluate=my_accuracy)
    result = compression_search(env, "ddpg", episodes=300, out_dir="out")
    result.winners[0].policy, result.winners[0].latency_ms

Episodes are the trials of a ``Study`` (search/study.py) over ``CompressionSpace``, stored in
the measurement database (``store``: the CLI's ``--db``) or ``<out_dir>/study.db``, one
committed transaction per episode, under ``study_name`` (default: the output folder's name).
Running the same search again resumes it: the strategy is replayed from the stored episodes
(the DDPG agent re-runs its stored episodes through the wall's estimates and relearns from the
stored rewards; nothing is built or evaluated again) and continues up to ``episodes``. Other
settings (method, budgets, strategy options, model, device) raise ``StudyMismatchError``.

Uniform baselines (one keep ratio for every layer, ``UNIFORM_RATIOS``, at each dtype the
device supports; on TVM at float32 too when a TVM cost model is given) are built and
predicted like any policy, but not bound by the wall: some are over budget, and are shown so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwlat.search.compression.cost import FLOAT, CostModel
from hwlat.search.compression.env import CompressionEnv, Policy, PolicyResult
from hwlat.search.compression.space import (
    CompressionSpace,
    WallFeedback,
    get_compression_strategy,
    policy_objectives,
)
from hwlat.search.pareto import pareto_front
from hwlat.search.storage import SearchStorage
from hwlat.search.strategies.base import Strategy
from hwlat.search.study import Study
from hwlat.search.trial import Trial

UNIFORM_RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
STUDY_FILE = "study.db"


@dataclass
class PolicyRecord:
    """A policy found by the search (``number`` = its episode) or a uniform baseline (-1)."""

    number: int
    source: str  # the strategy, or "uniform"
    label: str
    policy: Policy
    result: PolicyResult
    feasible: bool  # within every budget (predicted on the compressed network)
    on_front: bool = False
    tvm_latency_ms: float | None = None

    @property
    def score(self) -> float:
        return self.result.score

    @property
    def latency_ms(self) -> float:
        return self.result.latency_ms

    @property
    def memory_mb(self) -> float:
        return self.result.memory_mb


@dataclass
class CompressionResult:
    env: CompressionEnv
    study: Study
    episodes: list[PolicyRecord]
    baselines: list[PolicyRecord]
    front: list[PolicyRecord]
    winners: list[PolicyRecord]
    seconds_per_episode: float | None = None
    files: dict[str, Path] = field(default_factory=dict)
    verification: list = field(default_factory=list)

    def best(self) -> PolicyRecord | None:
        feasible = [r for r in self.episodes if r.feasible]
        return max(feasible, key=lambda r: (r.score, -r.latency_ms, -r.number)) if feasible else None

    def best_uniform(self) -> PolicyRecord | None:
        """The best uniform baseline within every budget."""
        feasible = [r for r in self.baselines if r.feasible and r.source == "uniform"]
        return max(feasible, key=lambda r: (r.score, -r.latency_ms)) if feasible else None

    def summary(self) -> str:
        env = self.env
        n_feasible = sum(r.feasible for r in self.episodes)
        lines = [
            f"{len(self.episodes)} episodes, {n_feasible} within budget, {len(self.front)} on the Pareto "
            f"front ({env.score_name}, latency, memory)"
        ]
        best, uniform = self.best(), self.best_uniform()
        if best is not None:
            lines.append(f"  best policy: {_describe(env, best)}")
        if uniform is not None:
            lines.append(f"  best uniform baseline within budget: {_describe(env, uniform)}")
        elif self.baselines:
            lines.append("  no uniform baseline is within budget")
        lines += [f"  {name}: {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def _describe(env: CompressionEnv, r: PolicyRecord) -> str:
    where = f"episode {r.number}" if r.number >= 0 else r.label
    return (
        f"{env.score_name} {r.score:.4f}, {r.latency_ms:.4g} ms, {r.memory_mb:.4g} MB "
        f"({where}; {summarize_policy(env, r.policy)})"
    )


def summarize_policy(env: CompressionEnv, policy: Policy) -> str:
    parts = []
    if env.analysis.groups:
        ratios = [k / g.channels for k, g in zip(policy.keep, env.analysis.groups, strict=True)]
        parts.append(f"keep {min(ratios):.2f}-{max(ratios):.2f}, mean {float(np.mean(ratios)):.2f}")
    n_int8 = sum(d != FLOAT for d in policy.dtypes)
    parts.append(f"{n_int8}/{len(policy.dtypes)} layers int8")
    return ", ".join(parts)


def compression_search(
    env: CompressionEnv,
    strategy: str | Strategy = "ddpg",
    episodes: int = 100,
    out_dir: str | Path | None = None,
    *,
    store: Any = None,
    study_name: str | None = None,
    seed: int = 0,
    strategy_options: dict | None = None,
    top_k: int = 3,
    callback: Callable[[CompressionEnv, Study, Trial], None] | None = None,
    uniform_ratios: Sequence[float] | None = UNIFORM_RATIOS,
    tvm_cost_model: CostModel | None = None,
    write: bool = True,
) -> CompressionResult:
    """Run (or resume) ``episodes`` episodes, evaluate the baselines, write the report to ``out_dir``."""
    space = CompressionSpace(env)
    if isinstance(strategy, str):
        strategy = get_compression_strategy(strategy, seed, **(strategy_options or {}))
    out = Path(out_dir) if out_dir is not None else None
    if store is not None:
        storage = SearchStorage(store)
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        storage = SearchStorage(out / STUDY_FILE)
    else:
        storage = SearchStorage(None)
    name = study_name or (out.resolve().name if out is not None else space.name)
    study = Study(
        space,
        policy_objectives(env),
        WallFeedback(strategy, env),
        storage=storage,
        name=name,
        batch_size=1,
        check_feasibility=False,
        warm_start=False,
    )
    resumed = len(study.trials)
    started = time.perf_counter()

    def each(s: Study, new: list[Trial]) -> None:
        if callback is not None:
            for trial in new:
                callback(env, s, trial)

    study.optimize(episodes, callback=each)
    ran = len(study.trials) - resumed
    per_episode = (time.perf_counter() - started) / ran if ran else None
    records = [_record(env, t, strategy.name) for t in study.trials]
    baselines = uniform_baselines(env, uniform_ratios, tvm_cost_model) if uniform_ratios else []
    front = mark_front(records)
    if tvm_cost_model is not None:
        for r in front:
            if all(d == FLOAT for d in r.policy.dtypes):
                r.tvm_latency_ms = tvm_cost_model.cost(env.compress(r.policy, finetune=False).onnx).latency_ms
    winners = sorted(front, key=lambda r: (-r.score, r.latency_ms, r.number))[:top_k]
    result = CompressionResult(env, study, records, baselines, front, winners, per_episode)
    if write and out is not None:
        from hwlat.search.compression.report import write_report

        write_report(result, out)
    return result


def _record(env: CompressionEnv, trial: Trial, source: str) -> PolicyRecord:
    policy = env.policy_of(trial.arch)
    score, latency, memory, agreement, kl = trial.values
    est = env.estimate(policy)
    result = PolicyResult(policy, score, latency, memory, agreement, kl, est.latency_ms, est.memory_mb)
    return PolicyRecord(trial.number, source, f"episode {trial.number}", policy, result, trial.feasible)


def within_budget(env: CompressionEnv, result: PolicyResult) -> bool:
    ok = True
    if env.latency_budget is not None:
        ok &= result.latency_ms <= env.latency_budget
    if env.memory_budget is not None:
        ok &= result.memory_mb <= env.memory_budget
    return bool(ok)


def uniform_baselines(
    env: CompressionEnv, ratios: Sequence[float] = UNIFORM_RATIOS, tvm_cost_model: CostModel | None = None
) -> list[PolicyRecord]:
    """One keep ratio for every layer, at each dtype the device supports (keep 1.0 only for a
    network that cannot be pruned); float32 ones also predicted on TVM when given."""
    ratios = ratios if env.analysis.groups and env.analysis.torch_model is not None else (1.0,)
    records = []
    for dtype in reversed(env.supported_dtypes):  # float32 first
        for ratio in sorted(set(ratios)):
            policy = env.uniform(ratio, dtype)
            result = env.evaluate(policy)
            record = PolicyRecord(
                -1, "uniform", f"uniform {ratio:g} {dtype}", policy, result, within_budget(env, result)
            )
            if tvm_cost_model is not None and dtype == FLOAT:
                compressed = env.compress(policy, finetune=False)
                record.tvm_latency_ms = tvm_cost_model.cost(compressed.onnx).latency_ms
            records.append(record)
    return records


def mark_front(records: list[PolicyRecord]) -> list[PolicyRecord]:
    """Feasible non-dominated records over (score up, latency down, memory down), one per policy."""
    if not records:
        return []
    losses = np.array([[-r.score, r.latency_ms, _finite(r.memory_mb)] for r in records], dtype=float)
    violations = np.array([0.0 if r.feasible else 1.0 for r in records])
    front, seen = [], set()
    for i in sorted(pareto_front(losses, violations), key=lambda i: (losses[i, 0], losses[i, 1], i)):
        if records[i].policy not in seen:
            seen.add(records[i].policy)
            records[i].on_front = True
            front.append(records[i])
    return front


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
