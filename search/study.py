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

import hashlib
import json
import logging
import os
import threading
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
        worker: str | None = None,
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
        self.worker = worker
        if worker is None:
            self._replay(self.storage.trials(self._id))
        else:  # one of several workers: its own random stream, every stored trial told
            strategy.rng = np.random.default_rng([strategy.random_state or 0, _stream(worker)])
            self._told: set[int] = set()
            self._sync()

    # ----- running ----------------------------------------------------------
    def optimize(
        self,
        budget: int,
        callback: Callable[[Study, list[Trial]], None] | None = None,
        show_progress: bool = False,
    ) -> None:
        """Run until the study holds ``budget`` trials (a total, so re-running resumes)."""
        if self.worker is not None:
            self._optimize_shared(budget, show_progress)
            return
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

    # ----- shared studies: several workers, ask/tell through the database ---------------------
    def _sync(self) -> None:
        """Read every stored trial; tell the strategy those it has not heard of, in number order."""
        self._trials = self.storage.trials(self._id)
        for trial in self._trials:
            self._cache.setdefault(trial.arch, trial.values)
        new = [t for t in self._trials if t.number not in self._told]
        if new:
            self._tell(new)
            self._told.update(t.number for t in new)

    def _optimize_shared(self, budget: int, show_progress: bool) -> None:
        """Work on the study with the other workers until it holds ``budget`` trials.

        Each round: tell the strategy what every worker has stored; finish a trial whose worker
        stopped beating (it died), else claim new trial numbers for the strategy's next asks
        (warm-start trials first) and evaluate them while a thread beats for the claims. A trial
        is stored once (its number is the key); a claim is held by one worker at a time.
        """
        assert self.worker is not None
        progress = None
        if show_progress and budget > len(self._trials):
            from hwlat.profiler.progress import Progress

            progress = Progress(budget - len(self._trials), f"search {self.strategy.name} ({self.worker})")
        while True:
            self._sync()
            if len(self._trials) >= budget:
                break
            claims = self.storage.claims(self._id)
            now = time.time()
            stale = [c for c in claims if c.worker != self.worker and now - c.heartbeat_at > STALE_CLAIM_S]
            mine = self._take_over(stale[:1]) or self._claim_new(budget, claims)
            if not mine:
                time.sleep(POLL_S)  # the rest of the budget is being evaluated by other workers
                continue
            with _Heartbeat(self.storage, self._id, self.worker):
                values = self._evaluate([arch for _, _, arch in mine])
            done = time.time()
            trials = [
                Trial(number, batch, arch, tuple(map(float, v)), bool(self._feasible(v[None, :])[0]), done)
                for (number, batch, arch), v in zip(mine, values, strict=True)
            ]
            stored = self.storage.add_trials(self._id, trials, worker=self.worker)
            if progress:
                progress.update(len(stored), note=self._best_note())
        if progress:
            progress.close()

    def _take_over(self, stale: list) -> list[tuple[int, int, Arch]]:
        taken = [c for c in stale if self.storage.take_over(self._id, c.number, c.worker, self.worker)]
        for claim in taken:
            log.warning(
                "study %r: trial %d of %s (stopped) is evaluated here", self.name, claim.number, claim.worker
            )
        return [(c.number, c.batch, tuple(c.arch)) for c in taken]

    def _claim_new(self, budget: int, claims: list) -> list[tuple[int, int, Arch]]:
        free = budget - len(self._trials) - len(claims)
        if free <= 0:
            return []
        stored = {t.arch for t in self._trials}
        seeds = [a for a in self._seeds if a not in stored and a not in {tuple(c.arch) for c in claims}]
        if seeds:
            archs, batch = seeds[:free], SEED_BATCH
        else:
            archs = [canonical(self.space, a) for a in self.strategy.ask(min(self.batch_size, free))]
            batch = max([t.batch for t in self._trials] + [c.batch for c in claims] + [-1]) + 1
        numbers = [t.number for t in self._trials] + [c.number for c in claims]
        number = max(numbers, default=-1) + 1
        mine = []
        for arch in archs:  # trial numbers are 0 .. budget-1, each claimed by one worker
            while number < budget and not self.storage.claim(self._id, number, batch, arch, self.worker):
                number += 1  # taken by another worker a moment ago
            if number >= budget:
                break
            mine.append((number, batch, arch))
            number += 1
        return mine

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


# A claim whose worker has not beaten for this long is taken over (the worker died).
STALE_CLAIM_S = float(os.environ.get("HWLAT_STALE_CLAIM_S", 30.0))
HEARTBEAT_S = STALE_CLAIM_S / 6
POLL_S = 0.5


def _stream(worker: str) -> int:
    """A random-stream number for a worker (its id is unique; the stream need only differ)."""
    return int(hashlib.sha256(worker.encode()).hexdigest()[:12], 16)


class _Heartbeat:
    """Beats for a worker's claims in a thread while it evaluates them."""

    def __init__(self, storage: SearchStorage, study_id: int, worker: str) -> None:
        self.storage, self.study_id, self.worker = storage, study_id, worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.storage.heartbeat(self.study_id, self.worker)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _mismatch_message(name: str, stored: dict, requested: dict, storage: SearchStorage) -> str:
    diffs = [
        f"{key}: stored {stored.get(key)!r}, now {requested.get(key)!r}"
        for key in sorted(set(stored) | set(requested))
        if stored.get(key) != requested.get(key)
    ]
    where = storage.store.location
    return (
        f"study {name!r} in {where} was created with other settings ({'; '.join(diffs)}). "
        "Repeat the original options (and predictor file) to resume it, or use another output folder / "
        "--study name for a new search."
    )
