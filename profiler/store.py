"""Store: every measurement in one SQLite file, committed the moment it exists.

One row per (device, backend, kind, key): a re-run of a campaign skips what is
stored, ``--force`` replaces rows. WAL mode lets a report read while a campaign writes.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from hwlat.errors import ConfigError, HwlatError
from hwlat.profiler.measurement import Measurement

DEFAULT_DB_ENV = "HWLAT_DB"
DEFAULT_DB = "hwlat.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    backend TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    error_msg TEXT NOT NULL DEFAULT '',
    median_ms REAL,
    p10_ms REAL,
    p90_ms REAL,
    cv REAL,
    samples_ms TEXT NOT NULL,
    number INTEGER NOT NULL,
    disturbed INTEGER NOT NULL,
    disturbance TEXT NOT NULL DEFAULT '',
    canary_ratio REAL,
    attempts INTEGER NOT NULL,
    backend_version TEXT NOT NULL,
    settings TEXT NOT NULL,
    protocol TEXT NOT NULL,
    host TEXT NOT NULL,
    extra TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (device, backend, kind, key)
);
CREATE TABLE IF NOT EXISTS canary_reference (
    device TEXT NOT NULL,
    backend TEXT NOT NULL,
    settings TEXT NOT NULL,
    reference_ms REAL NOT NULL,
    PRIMARY KEY (device, backend, settings)
);
"""
_COLUMNS = (
    "device",
    "backend",
    "kind",
    "key",
    "status",
    "error_msg",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "cv",
    "samples_ms",
    "number",
    "disturbed",
    "disturbance",
    "canary_ratio",
    "attempts",
    "backend_version",
    "settings",
    "protocol",
    "host",
    "extra",
    "created_at",
)
_JSON_COLUMNS = ("samples_ms", "settings", "protocol", "host", "extra")


class StoreError(HwlatError):
    """The database cannot be opened or read."""


def default_db_path() -> Path:
    """``$HWLAT_DB`` if set, else ``hwlat.db`` in the working directory."""
    return Path(os.environ.get(DEFAULT_DB_ENV, DEFAULT_DB))


class Store:
    """Thread-safe access to one SQLite file (parallel campaigns share it)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if self.path.parent and not self.path.parent.exists():
            raise StoreError(
                f"cannot create database {self.path}: folder {self.path.parent} does "
                "not exist; create it or pass --db with another path"
            )
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not a usable hwlat database ({exc}); pass --db with another path"
            ) from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- writing ----------------------------------------------------------
    def save(self, m: Measurement) -> None:
        """Insert or replace the row for (device, backend, kind, key) and commit at once."""
        row = (
            m.device,
            m.backend,
            m.kind,
            m.key,
            m.status,
            m.error_msg,
            m.median_ms,
            m.p10_ms,
            m.p90_ms,
            m.cv,
            json.dumps(m.samples_ms),
            m.number,
            int(m.disturbed),
            m.disturbance,
            m.canary_ratio,
            m.attempts,
            m.backend_version,
            json.dumps(m.settings),
            json.dumps(m.protocol),
            json.dumps(m.host),
            json.dumps(m.extra),
            m.created_at,
        )
        placeholders = ", ".join("?" * len(_COLUMNS))
        with self._lock, self._db:
            self._db.execute(
                f"INSERT OR REPLACE INTO measurements ({', '.join(_COLUMNS)}) VALUES ({placeholders})", row
            )

    def canary_reference(self, device: str, backend: str, settings: dict) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reference_ms FROM canary_reference WHERE device=? AND backend=? AND settings=?",
                (device, backend, json.dumps(settings, sort_keys=True)),
            ).fetchone()
        return row[0] if row else None

    def update_canary_reference(self, device: str, backend: str, settings: dict, ms: float) -> None:
        """Keep the fastest canary time ever seen for this device setting."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO canary_reference VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "reference_ms = min(reference_ms, excluded.reference_ms)",
                (device, backend, json.dumps(settings, sort_keys=True), ms),
            )

    # ----- reading ----------------------------------------------------------
    def done_keys(self, device: str, backend: str, kind: str = "op") -> set[str]:
        """Keys a re-run skips: clean measurements and deterministic failures.

        Disturbed rows are not done: a re-run measures them again.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM measurements WHERE device=? AND backend=? AND kind=? "
                "AND (status != 'ok' OR disturbed = 0)",
                (device, backend, kind),
            ).fetchall()
        return {r[0] for r in rows}

    def measurements(
        self,
        device: str | None = None,
        backend: str | None = None,
        kind: str | None = None,
        clean_only: bool = False,
    ) -> list[Measurement]:
        where, args = [], []
        for column, value in (("device", device), ("backend", backend), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if clean_only:
            where.append("status = 'ok' AND disturbed = 0")
        sql = f"SELECT {', '.join(_COLUMNS)} FROM measurements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [_to_measurement(dict(zip(_COLUMNS, r, strict=True))) for r in rows]

    def get(self, device: str, backend: str, key: str, kind: str = "op") -> Measurement | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM measurements WHERE "
                "device=? AND backend=? AND kind=? AND key=?",
                (device, backend, kind, key),
            ).fetchone()
        return _to_measurement(dict(zip(_COLUMNS, row, strict=True))) if row else None

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM measurements").fetchone()[0]

    # ----- export -----------------------------------------------------------
    def export(self, path: str | Path, fmt: str, **filters) -> int:
        """Write rows as CSV or JSON (a list of objects); returns the row count."""
        rows = list(_export_rows(self.measurements(**filters)))
        if fmt == "json":
            Path(path).write_text(json.dumps(rows, indent=1))
        elif fmt == "csv":
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(_COLUMNS))
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: json.dumps(v) if k in _JSON_COLUMNS else v for k, v in row.items()})
        else:
            raise ConfigError(f"unknown export format {fmt!r}; use csv or json")
        return len(rows)


def _export_rows(items: Iterable[Measurement]) -> Iterator[dict]:
    for m in items:
        yield {
            "device": m.device,
            "backend": m.backend,
            "kind": m.kind,
            "key": m.key,
            "status": m.status,
            "error_msg": m.error_msg,
            "median_ms": m.median_ms,
            "p10_ms": m.p10_ms,
            "p90_ms": m.p90_ms,
            "cv": m.cv,
            "samples_ms": m.samples_ms,
            "number": m.number,
            "disturbed": m.disturbed,
            "disturbance": m.disturbance,
            "canary_ratio": m.canary_ratio,
            "attempts": m.attempts,
            "backend_version": m.backend_version,
            "settings": m.settings,
            "protocol": m.protocol,
            "host": m.host,
            "extra": m.extra,
            "created_at": m.created_at,
        }


def _to_measurement(row: dict) -> Measurement:
    for column in _JSON_COLUMNS:
        row[column] = json.loads(row[column])
    for derived in ("median_ms", "p10_ms", "p90_ms", "cv"):
        row.pop(derived)
    row["disturbed"] = bool(row["disturbed"])
    return Measurement(**row)
