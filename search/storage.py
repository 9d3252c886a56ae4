"""Search storage: studies and their trials, in the same database as the measurements.

A study row holds the configuration that must not change on resume (space, objectives,
strategy and its options, batch size); a trial row is one evaluated architecture. A batch
of trials is committed in one transaction as soon as it is evaluated, so an interruption
loses at most the batch being evaluated. One database holds many studies (by name), and any
machine that reaches it (a PostgreSQL server) can resume or inspect a study.

Several workers can share one study (search/study.py): a worker *claims* the trial numbers
it is about to evaluate (``trial_claims``, with a heartbeat), and a claim whose worker stopped
beating is handed to another worker, so that no trial is evaluated twice and none is lost.
Claims and stored trials of a study change one transaction at a time (``_study_locked``), so a
claim exists only for a number not stored yet, and a worker stores only what it still claims.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from hwlat.profiler.store import Store, StoreError, schema
from hwlat.search.trial import Trial

log = logging.getLogger(__name__)


class SearchStorageError(StoreError):
    """The search database cannot be opened or written."""


@dataclass(frozen=True)
class StoredStudy:
    id: int
    name: str
    config: dict
    created_at: float


@dataclass(frozen=True)
class Claim:
    """A trial number a worker has asked for and is evaluating."""

    number: int
    batch: int
    arch: tuple[int, ...]
    worker: str
    heartbeat_at: float


class SearchStorage:
    """Studies in a Store; ``store=None`` keeps everything in memory (tests, throwaway runs)."""

    def __init__(self, store: Store | str | Path | None = None) -> None:
        if isinstance(store, Store):
            self.store = store
        else:
            self.store = Store(":memory:" if store is None else store)
        self.engine = self.store.engine
        self._lock = threading.RLock()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SearchStorage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- studies ----------------------------------------------------------
    def get_study(self, name: str) -> StoredStudy | None:
        t = schema.studies
        with self._lock, self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.name == name)).first()
        return StoredStudy(row.id, row.name, json.loads(row.config), row.created_at) if row else None

    def create_study(self, name: str, config: dict) -> StoredStudy:
        """Create the study, or return the one another worker created a moment ago."""
        now = time.time()
        try:
            with self._lock, self.engine.begin() as conn:
                conn.execute(
                    sa.insert(schema.studies).values(
                        name=name, config=json.dumps(config, sort_keys=True), created_at=now
                    )
                )
        except sa.exc.IntegrityError:
            pass  # created concurrently: the stored one is compared by the caller
        stored = self.get_study(name)
        assert stored is not None
        return stored

    def study_names(self) -> list[str]:
        t = schema.studies
        with self._lock, self.engine.connect() as conn:
            return list(conn.execute(sa.select(t.c.name).order_by(t.c.id)).scalars())

    @contextlib.contextmanager
    def _study_locked(self, study_id: int) -> Iterator[sa.Connection]:
        """A transaction holding the study against other workers' claims and stores: checking that a
        number is not stored and claiming it must be one step (two workers otherwise both stored
        trial 2: one claimed it while the other, which had claimed it first, was storing it)."""
        with self._lock, self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the database's one write lock, now
            else:
                s = schema.studies
                conn.execute(sa.select(s.c.id).where(s.c.id == study_id).with_for_update())
            yield conn

    # ----- trials -----------------------------------------------------------
    def add_trials(self, study_id: int, trials: Sequence[Trial], worker: str = "") -> list[Trial]:
        """Insert trials in one transaction (all or none), releasing their claims; returns those stored.

        A ``worker`` stores only the trials it still claims: one whose claim another worker took
        over (this one stalled past the stale-claim time) is left to that worker.
        """
        c = schema.trial_claims
        if worker:
            with self._study_locked(study_id) as conn:
                held = set(
                    conn.execute(
                        sa.select(c.c.number).where(
                            (c.c.study_id == study_id)
                            & (c.c.worker == worker)
                            & c.c.number.in_([t.number for t in trials])
                        )
                    ).scalars()
                )
                lost = [t.number for t in trials if t.number not in held]
                trials = [t for t in trials if t.number in held]
                self._insert_trials(conn, study_id, trials, worker)
            if lost:
                log.warning(
                    "trials %s were taken over by another worker; their results here are dropped", lost
                )
            return list(trials)
        try:
            with self._lock, self.engine.begin() as conn:
                self._insert_trials(conn, study_id, trials, worker)
        except sa.exc.IntegrityError:
            raise SearchStorageError(
                f"trials {[t.number for t in trials]} of study {study_id} are stored already"
            ) from None
        return list(trials)

    def _insert_trials(
        self, conn: sa.Connection, study_id: int, trials: Sequence[Trial], worker: str
    ) -> None:
        rows = [
            {
                "study_id": study_id,
                "number": t.number,
                "batch": t.batch,
                "arch": json.dumps(list(t.arch)),
                "values": json.dumps([float(v) for v in t.values]),
                "feasible": bool(t.feasible),
                "created_at": t.created_at,
                "worker": worker,
            }
            for t in trials
        ]
        if not rows:
            return
        c = schema.trial_claims
        conn.execute(sa.insert(schema.trials), rows)
        numbers = [t.number for t in trials]
        conn.execute(sa.delete(c).where((c.c.study_id == study_id) & c.c.number.in_(numbers)))

    def trials(self, study_id: int) -> list[Trial]:
        t = schema.trials
        with self._lock, self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.study_id == study_id).order_by(t.c.number)).all()
        return [
            Trial(
                r.number,
                r.batch,
                tuple(json.loads(r.arch)),
                tuple(json.loads(r.values)),
                bool(r.feasible),
                r.created_at,
            )
            for r in rows
        ]

    # ----- claims (shared studies) ------------------------------------------
    def claim(self, study_id: int, number: int, batch: int, arch: Sequence[int], worker: str) -> bool:
        """Claim a trial number for ``worker``; False when it is claimed or stored already."""
        t, c = schema.trials, schema.trial_claims
        with self._study_locked(study_id) as conn:
            for table in (t, c):
                taken = conn.execute(
                    sa.select(table.c.number).where(
                        (table.c.study_id == study_id) & (table.c.number == number)
                    )
                ).first()
                if taken is not None:
                    return False
            conn.execute(
                sa.insert(c).values(
                    study_id=study_id,
                    number=number,
                    batch=batch,
                    arch=json.dumps([int(v) for v in arch]),
                    worker=worker,
                    heartbeat_at=time.time(),
                )
            )
        return True

    def take_over(self, study_id: int, number: int, old_worker: str, worker: str) -> bool:
        """Move a stale claim to ``worker`` (only one taker wins, and not while its old worker stores it)."""
        c = schema.trial_claims
        with self._study_locked(study_id) as conn:
            result = conn.execute(
                sa.update(c)
                .where((c.c.study_id == study_id) & (c.c.number == number) & (c.c.worker == old_worker))
                .values(worker=worker, heartbeat_at=time.time())
            )
        return result.rowcount == 1

    def heartbeat(self, study_id: int, worker: str) -> None:
        c = schema.trial_claims
        with self._lock, self.engine.begin() as conn:
            conn.execute(
                sa.update(c)
                .where((c.c.study_id == study_id) & (c.c.worker == worker))
                .values(heartbeat_at=time.time())
            )

    def claims(self, study_id: int) -> list[Claim]:
        c = schema.trial_claims
        with self._lock, self.engine.connect() as conn:
            rows = conn.execute(sa.select(c).where(c.c.study_id == study_id).order_by(c.c.number)).all()
        return [Claim(r.number, r.batch, tuple(json.loads(r.arch)), r.worker, r.heartbeat_at) for r in rows]

    def release(self, study_id: int, worker: str) -> None:
        """Drop the claims of a worker that stops without finishing them."""
        c = schema.trial_claims
        with self._lock, self.engine.begin() as conn:
            conn.execute(sa.delete(c).where((c.c.study_id == study_id) & (c.c.worker == worker)))
