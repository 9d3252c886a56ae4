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
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from hwlat.errors import ConfigError, HwlatError
from hwlat.profiler.measurement import Measurement

DEFAULT_DB_ENV = "HWLAT_DB"
DEFAULT_DB = "hwlat.db"

SCHEMA_VERSION = 2  # PRAGMA user_version; 1 (or 0) is the store before wall_s..baseline_rss_mb were columns
STATS = ("median_ms", "p10_ms", "p90_ms", "cv")  # derived from samples_ms, stored for queries and exports
_SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER"}


def _column_specs() -> list[tuple[str, str]]:
    """(name, SQL definition) of every column, derived from the Measurement dataclass."""
    specs = []
    for f in fields(Measurement):
        base, _, none = str(f.type).partition(" | ")
        if base.startswith(("list", "dict")):
            sql = "TEXT NOT NULL"  # JSON
        else:
            sql = _SQL_TYPES[base] + ("" if none else " NOT NULL")
            if f.default not in (MISSING, None):
                sql += f" DEFAULT {int(f.default) if isinstance(f.default, bool) else repr(f.default)}"
        specs.append((f.name, sql))
        if f.name == "error_msg":
            specs += [(name, "REAL") for name in STATS]
    return specs


COLUMN_SPECS = _column_specs()
_COLUMNS = tuple(name for name, _ in COLUMN_SPECS)
_JSON_COLUMNS = tuple(f.name for f in fields(Measurement) if str(f.type).startswith(("list", "dict")))
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS measurements (\n    id INTEGER PRIMARY KEY,\n"
    + "".join(f"    {name} {sql},\n" for name, sql in COLUMN_SPECS)
    + "    UNIQUE (device, backend, kind, key)\n);\n"
    + """CREATE TABLE IF NOT EXISTS canary_reference (
    device TEXT NOT NULL,
    backend TEXT NOT NULL,
    settings TEXT NOT NULL,
    reference_ms REAL NOT NULL,
    PRIMARY KEY (device, backend, settings)
);
"""
)
# Version 1 kept these in the extra JSON column; migrating moves them into their own columns.
_MOVED_FROM_EXTRA = ("repeats", "wall_s", "peak_rss_mb", "baseline_rss_mb")


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
            self._migrate()
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not a usable hwlat database ({exc}); pass --db with another path"
            ) from None
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        """Bring a version-1 store (the same table, fewer columns) to this schema."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(measurements)")}
        if not present:
            return  # a new file: the schema is created as it is
        with self._db:
            for name, sql in COLUMN_SPECS:
                if name not in present:
                    self._db.execute(f"ALTER TABLE measurements ADD COLUMN {name} {sql}")
            for name in _MOVED_FROM_EXTRA:
                if name not in present:
                    moved = f"coalesce(json_extract(extra, '$.{name}'), {name})"
                    self._db.execute(
                        f"UPDATE measurements SET {name} = {moved}, extra = json_remove(extra, '$.{name}')"
                    )

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
        values = {**asdict(m), **{name: getattr(m, name) for name in STATS}}
        row = tuple(
            json.dumps(values[c]) if c in _JSON_COLUMNS else int(values[c]) if c == "disturbed" else values[c]
            for c in _COLUMNS
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
        values = {**asdict(m), **{name: getattr(m, name) for name in STATS}}
        yield {c: values[c] for c in _COLUMNS}


def _to_measurement(row: dict) -> Measurement:
    for column in _JSON_COLUMNS:
        row[column] = json.loads(row[column])
    for derived in STATS:
        row.pop(derived)
    row["disturbed"] = bool(row["disturbed"])
    return Measurement(**row)
