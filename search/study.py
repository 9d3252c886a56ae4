"""Study: runs a strategy's ask/tell loop over objectives and keeps every trial in storage.

    study = Study(space, [accuracy, latency], get_strategy("evolution", random_state=0),
                  storage="out/study.db")
    study.optimize(budget=2000)          # total trials; run again to resume
    front = study.pareto_front()

Warm start: a study with budgets first evaluates, and tells the strategy, the fastest
architecture found for each budget by the feasibility check (search/feasibility.py), so
that every strategy starts with a network known to fit; without it a tight budget can
leave a whole random first generation infeasible. These trials have batch number -1 and
count towards the evaluation budget; ``warm_start=False`` turns it off (the benchmark does,
to compare strategies with Optuna on equal terms).

Trials come in batches of ``batch_size`` (one ``ask``); a batch is evaluated together
(``predict_batch`` is much faster per architecture than one call each), committed in one
transaction, then told to the strategy. Architectures evaluated before (in this study)
are not evaluated again; their stored values are reused.

What resume guarantees. Reopening a study replays it: the strategy, rebuilt with the
same options and seed, is asked every stored batch again and told the *stored* values
(no objective is re-evaluated). Strategies are deterministic functions of their seed and
what they were told, so the replayed asks equal the stored ones and the strategy ends in
the state it had when the run stopped; the run continues exactly as an uninterrupted one
would, and gives the same trials and the same final front, provided that
  * the strategy has a ``random_state`` (a None seed cannot be replayed),
  * the code of the strategy and the space is unchanged, and
  * objectives evaluated after the interruption give the values they would have given
    before (true for predictors and the built-in proxies; a user function that trains
    a network may not be).
An interruption loses at most the batch being evaluated. ``optimize(budget)`` always
stops on a batch boundary or inside the last batch; a later ``optimize`` with a larger
budget finishes that batch first, so one long run and several shorter ones agree.
If the replayed asks differ from the stored trials (changed code), the study warns and
continues from the stored trials: it resumes, but is no longer identical.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwlat.errors import ConfigError, HwlatError
from hwlat.search.feasibility import Minimum, check_budgets
from hwlat.search.objectives import Objective
from hwlat.search.pareto import pareto_front
from hwlat.search.storage import SearchStorage
from hwlat.search.strategies.base import Arch, Strategy, canonical
from hwlat.search.trial import Trial

log = logging.getLogger(__name__)

SEED_BATCH = -1  # the batch number of warm-start trials


class StudyMismatchError(HwlatError):
    """A stored study of that name was created with different settings."""


class Study:
    """A search: space + objectives + strategy, persisted trial by trial."""

    def __init__(
        self,
        space: Any,
        objectives: Sequence[Objective],
        strategy: Strategy,
        storage: SearchStorage | str | Path | None = None,
        name: str = "search",
        batch_size: int | None = None,
        check_feasibility: bool = True,
        warm_start: bool = True,
    ) -> None:
        if not objectives:
            raise ValueError("a study needs at least one objective")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(
                f"objective names must be unique, got {names}; two latency objectives for "
                'one device need LatencyObjective(..., device="a distinct name")'
            )
        self.space = space
        self.objectives = list(objectives)
        self.strategy = strategy
        self.name = name
        self.batch_size = batch_size or strategy.default_batch_size
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        self.storage = storage if isinstance(storage, SearchStorage) else SearchStorage(storage)
        self._signs = np.array([-1.0 if o.direction == "maximize" else 1.0 for o in objectives])
        self._budget_cols = [i for i, o in enumerate(objectives) if o.budget is not None]
        self._budgets = np.array([objectives[i].budget for i in self._budget_cols], dtype=float)
        self.minima: dict[str, Minimum] = check_budgets(space, objectives) if check_feasibility else {}
        self.warm_start = warm_start and bool(self.minima)
        self._seeds = list(dict.fromkeys(m.arch for m in self.minima.values())) if self.warm_start else []

        config = self._config()
        stored = self.storage.get_study(name)
        if stored is None:
            stored = self.storage.create_study(name, config)
        elif stored.config != config:
            raise StudyMismatchError(_mismatch_message(name, stored.config, config, self.storage))
        self._id = stored.id
        strategy.bind(space, [o.direction for o in objectives], len(self._budget_cols))
        self._trials: list[Trial] = []
        self._cache: dict[Arch, tuple[float, ...]] = {}
        self._open: list[Arch] | None = None  # asked archs of the batch in progress
        self._batch = 0  # number of the next (or open) batch
        self._n_seeded = 0  # warm-start trials stored (batch SEED_BATCH)
        self.identical_replay = True
        self._replay(self.storage.trials(self._id))

    # ----- running ----------------------------------------------------------
    def optimize(
        self,
        budget: int,
        callback: Callable[[Study, list[Trial]], None] | None = None,
        show_progress: bool = False,
    ) -> None:
        """Run until the study holds ``budget`` trials (a total, so re-running resumes)."""
        progress = None
        if show_progress and budget > len(self._trials):
            from hwlat.profiler.progress import Progress

            progress = Progress(budget - len(self._trials), f"search {self.strategy.name}")
        while len(self._trials) < budget:
            if self._seeds and not self._n_seeded:
                new = self._store(self._seeds, SEED_BATCH)
                self._tell(new)
                self._n_seeded = len(new)
                continue
            if self._open is None:
                self._open = [canonical(self.space, a) for a in self.strategy.ask(self.batch_size)]
                if len(self._open) != self.batch_size:
                    raise RuntimeError(
                        f"strategy {self.strategy.name!r} returned {len(self._open)} "
                        f"architectures for ask({self.batch_size})"
                    )
            # every earlier batch is full
            done = len(self._trials) - self._n_seeded - self._batch * self.batch_size
            new = self._store(self._open[done : done + budget - len(self._trials)], self._batch)
            if done + len(new) == self.batch_size:
                self._tell(self._trials[-self.batch_size :])
                self._open = None
                self._batch += 1
            if progress:
                progress.update(len(new), note=self._best_note())
            if callback:
                callback(self, new)

    def _store(self, archs: list[Arch], batch: int) -> list[Trial]:
        """Evaluate ``archs`` and commit them as trials of ``batch`` in one transaction."""
        values = self._evaluate(archs)
        now = time.time()
        new = [
            Trial(
                len(self._trials) + i,
                batch,
                arch,
                tuple(map(float, v)),
                bool(self._feasible(v[None, :])[0]),
                now,
            )
            for i, (arch, v) in enumerate(zip(archs, values, strict=True))
        ]
        self.storage.add_trials(self._id, new)
        self._trials.extend(new)
        return new

    def _evaluate(self, archs: list[Arch]) -> np.ndarray:
        missing = list(dict.fromkeys(a for a in archs if a not in self._cache))
        if missing:
            columns = [np.asarray(o.evaluate(self.space, missing), dtype=float) for o in self.objectives]
            for arch, row in zip(missing, np.column_stack(columns), strict=True):
                self._cache[arch] = tuple(float(v) for v in row)
        return np.array([self._cache[a] for a in archs], dtype=float).reshape(len(archs), -1)

    def _tell(self, trials: list[Trial]) -> None:
        values = np.array([t.values for t in trials], dtype=float).reshape(len(trials), -1)
        self.strategy.tell([t.arch for t in trials], values * self._signs, self._ratios(values))

    def _replay(self, stored: list[Trial]) -> None:
        """Bring the strategy to where it was by re-asking and telling the stored batches."""
        for trial in stored:
            self._cache.setdefault(trial.arch, trial.values)
        batches: dict[int, list[Trial]] = {}
        for trial in stored:
            batches.setdefault(trial.batch, []).append(trial)
        for number in sorted(batches):
            trials = batches[number]
            if number == SEED_BATCH:
                self._trials.extend(trials)
                self._tell(trials)
                self._n_seeded = len(trials)
                continue
            asked = [canonical(self.space, a) for a in self.strategy.ask(self.batch_size)]
            if [t.arch for t in trials] != asked[: len(trials)]:
                self._warn_replay(number)
            self._trials.extend(trials)
            self._batch = number
            if len(trials) == self.batch_size:
                self._tell(trials)
                self._batch += 1
            else:
                self._open = [t.arch for t in trials] + asked[len(trials) :]

    def _warn_replay(self, batch: int) -> None:
        if self.identical_replay:
            log.warning(
                "study %r: replaying batch %d asked other architectures than the ones "
                "stored (changed code, options or an unseeded strategy); continuing from "
                "the stored trials, but the result will differ from an uninterrupted run",
                self.name,
                batch,
            )
        self.identical_replay = False

    # ----- results ----------------------------------------------------------
    @property
    def trials(self) -> list[Trial]:
        return list(self._trials)

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def values(self) -> np.ndarray:
        """(trials, objectives) in the objectives' own units."""
        return np.array([t.values for t in self._trials], dtype=float).reshape(
            len(self._trials), len(self.objectives)
        )

    def losses(self) -> np.ndarray:
        """Values turned into minimisation form (maximised objectives negated)."""
        return self.values() * self._signs

    def feasible(self) -> np.ndarray:
        return np.array([t.feasible for t in self._trials], dtype=bool)

    def pareto_front(self) -> list[Trial]:
        """Feasible non-dominated trials, one per architecture, best primary objective first."""
        losses = self.losses()
        index = pareto_front(losses, np.where(self.feasible(), 0.0, 1.0))
        index = sorted(index, key=lambda i: (losses[i, 0], i))
        seen: set[Arch] = set()
        front = []
        for i in index:
            if self._trials[i].arch not in seen:
                seen.add(self._trials[i].arch)
                front.append(self._trials[i])
        return front

    def best(self, k: int = 1) -> list[Trial]:
        """The ``k`` front members with the best primary objective (the winners to verify)."""
        return self.pareto_front()[:k]

    # ----- helpers ----------------------------------------------------------
    def _ratios(self, values: np.ndarray) -> np.ndarray:
        return values[:, self._budget_cols] / self._budgets

    def _feasible(self, values: np.ndarray) -> np.ndarray:
        return np.all(self._ratios(values) <= 1.0, axis=1)

    def _best_note(self) -> str:
        feasible = self.feasible()
        if not feasible.any():
            return "no architecture within budget yet"
        best = self.losses()[feasible, 0].min() * self._signs[0]
        return f"best {self.objectives[0].name} {best:.4g}"

    def _config(self) -> dict:
        config = {
            "space": getattr(self.space, "name", type(self.space).__name__),
            "decisions": [len(d.options) for d in self.space.decisions],
            "objectives": [o.describe() for o in self.objectives],
            "strategy": {"name": self.strategy.name, "options": self.strategy.config()},
            "batch_size": self.batch_size,
            "warm_start": self.warm_start,
        }
        return json.loads(json.dumps(config))


def _mismatch_message(name: str, stored: dict, requested: dict, storage: SearchStorage) -> str:
    diffs = [
        f"{key}: stored {stored.get(key)!r}, now {requested.get(key)!r}"
        for key in sorted(set(stored) | set(requested))
        if stored.get(key) != requested.get(key)
    ]
    where = storage.store.location
    return (
        f"study {name!r} in {where} was created with other settings ({'; '.join(diffs)}). "
        "Repeat the original options to resume it, or use another output folder / study name "
        "for a new search."
    )
