"""Search storage: studies and their trials in one SQLite file.

A study row holds the configuration that must not change on resume (space, objectives,
strategy and its options, batch size); a trial row is one evaluated architecture. A batch
of trials is committed in one transaction as soon as it is evaluated, so an interruption
loses at most the batch being evaluated. One file can hold many studies (by name).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hwlat.profiler.store import StoreError
from hwlat.search.trial import Trial

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    number INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    arch TEXT NOT NULL,
    "values" TEXT NOT NULL,
    feasible INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (study_id, number)
);
"""


class SearchStorageError(StoreError):
    """The search database cannot be opened or written."""


@dataclass(frozen=True)
class StoredStudy:
    id: int
    name: str
    config: dict
    created_at: float


class SearchStorage:
    """SQLite storage of studies; ``path=None`` keeps everything in memory (tests, throwaway runs)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None and not self.path.parent.exists():
            raise SearchStorageError(
                f"cannot create search database {self.path}: folder {self.path.parent} does not exist"
            )
        try:
            self._db = sqlite3.connect(
                str(self.path) if self.path else ":memory:", check_same_thread=False, timeout=30
            )
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SearchStorageError(
                f"{self.path} is not a usable hwlat search database ({exc}); use another output folder"
            ) from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SearchStorage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_study(self, name: str) -> StoredStudy | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, config, created_at FROM studies WHERE name = ?", (name,)
            ).fetchone()
        return StoredStudy(row[0], row[1], json.loads(row[2]), row[3]) if row else None

    def create_study(self, name: str, config: dict) -> StoredStudy:
        now = time.time()
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT INTO studies (name, config, created_at) VALUES (?, ?, ?)",
                (name, json.dumps(config, sort_keys=True), now),
            )
        return StoredStudy(int(cursor.lastrowid), name, json.loads(json.dumps(config)), now)

    def study_names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM studies ORDER BY id")]

    def add_trials(self, study_id: int, trials: Sequence[Trial]) -> None:
        """Insert trials in one transaction (all or none)."""
        rows = [
            (
                study_id,
                t.number,
                t.batch,
                json.dumps(list(t.arch)),
                json.dumps([float(v) for v in t.values]),
                int(t.feasible),
                t.created_at,
            )
            for t in trials
        ]
        with self._lock, self._db:
            self._db.executemany(
                'INSERT INTO trials (study_id, number, batch, arch, "values", '
                "feasible, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def trials(self, study_id: int) -> list[Trial]:
        with self._lock:
            rows = self._db.execute(
                'SELECT number, batch, arch, "values", feasible, created_at '
                "FROM trials WHERE study_id = ? ORDER BY number",
                (study_id,),
            ).fetchall()
        return [
            Trial(r[0], r[1], tuple(json.loads(r[2])), tuple(json.loads(r[3])), bool(r[4]), r[5])
            for r in rows
        ]
