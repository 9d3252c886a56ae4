"""Store: every measurement in one database, committed the moment it exists.

The database is chosen by a URL or a path: a path (the default ``hwlat.db``, or ``$HWLAT_DB``)
is an embedded SQLite file; ``postgresql://user@host/db`` is a server that several controller
machines share. One schema (profiler/store/schema.py) and one code path (SQLAlchemy Core) serve
both, so an export of the same campaign is the same file whichever holds it.

One measurement row per (device, backend, kind, key): a re-run of a campaign skips what is
stored, ``--force`` replaces rows. A store opened ``readonly`` (export, list) never writes:
no tables, no migration, no journal-mode change, and it refuses a path that does not exist or
a database that is not an hwlat store. A store opened for writing creates a new file (in WAL
mode, so reports read while a campaign writes), migrates an older hwlat store with a message,
and refuses anything else rather than adding tables to another program's database.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from hwlat.errors import ConfigError, HwlatError
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.store import schema
from hwlat.profiler.store.schema import JSON_COLUMNS, SCHEMA_VERSION, STATS

log = logging.getLogger(__name__)

DEFAULT_DB_ENV = "HWLAT_DB"
DEFAULT_DB = "hwlat.db"
_COLUMNS = tuple(c.name for c in schema.measurements.columns if c.name != "id")


class StoreError(HwlatError):
    """The database cannot be opened, read or written."""


def default_db() -> str:
    """``$HWLAT_DB`` if set, else ``hwlat.db`` in the working directory."""
    return os.environ.get(DEFAULT_DB_ENV, DEFAULT_DB)


def is_url(db: str | Path) -> bool:
    return "://" in str(db)


class Store:
    """Thread-safe access to one hwlat database (parallel campaigns share it).

    ``db`` is a path (SQLite) or a URL (``postgresql://...``, ``sqlite:///path``); None means
    ``default_db()``.
    """

    def __init__(self, db: str | Path | None = None, readonly: bool = False) -> None:
        self.db = str(db) if db is not None else default_db()
        self.readonly = readonly
        # What a campaign writing here does when another holds its device's lease (leases.py):
        # wait its turn, or fail at once (the CLI's --no-wait sets this to False).
        self.wait_for_devices = True
        self.path: Path | None = None if is_url(self.db) else Path(self.db)
        if self.db.startswith("sqlite:///"):
            self.path = Path(self.db[len("sqlite:///") :])
        self.location = str(self.path) if self.path is not None else sa.make_url(self.db).render_as_string()
        self._lock = threading.RLock()
        self.engine = self._sqlite_engine() if self.path is not None else self._server_engine()
        try:
            self._open_schema()
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            raise StoreError(
                f"cannot open the database {self.location}: {_reason(exc)}", "check --db"
            ) from None
        except sa.exc.DatabaseError as exc:
            self.engine.dispose()
            raise StoreError(
                f"{self.location} is not an hwlat store ({_reason(exc)})", "pass --db with an hwlat database"
            ) from None
        except StoreError:
            self.engine.dispose()
            raise

    # ----- opening ----------------------------------------------------------
    def _sqlite_engine(self) -> sa.Engine:
        path = self.path
        assert path is not None
        if self.readonly:
            if not path.exists():
                raise StoreError(f"database {path} does not exist", "check --db or $HWLAT_DB")
            if not path.is_file():
                raise StoreError(f"{path} is not a database file", "pass --db with an hwlat database file")
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"

            def connect() -> sqlite3.Connection:
                return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
        else:
            if not path.parent.exists():
                raise StoreError(
                    f"cannot create database {path}: folder {path.parent} does not exist",
                    "create it or pass --db with another path",
                )
            self._new_file = not path.exists() or path.stat().st_size == 0

            def connect() -> sqlite3.Connection:
                return sqlite3.connect(path, check_same_thread=False, timeout=30)

        # One connection per thread (parallel campaigns and lease renewals each write); an
        # in-memory database exists only in its one connection, so that one is shared.
        pool = sa.pool.StaticPool if str(path) == ":memory:" else sa.pool.QueuePool
        return sa.create_engine("sqlite://", creator=connect, poolclass=pool)

    def _server_engine(self) -> sa.Engine:
        url = sa.make_url(self.db)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg2")
        if not url.drivername.startswith("postgresql"):
            raise StoreError(
                f"unsupported database URL {self.location}",
                "use a path (SQLite) or postgresql://user@host/db",
            )
        options = "-c default_transaction_read_only=on" if self.readonly else ""
        return sa.create_engine(url, pool_pre_ping=True, connect_args={"options": options} if options else {})

    def _open_schema(self) -> None:
        """Check (and create or migrate) the schema; several processes may open a new store at once."""
        if self.readonly and self.path is not None:
            self._refuse_foreign_file(self.path)
        attempts = 10
        for attempt in range(attempts):
            started = time.monotonic()
            try:
                with self.engine.begin() as conn:
                    if not self.readonly:
                        self._lock_schema(conn)
                    self._check_schema(conn)
                return
            except (sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
                if attempt == attempts - 1 or not _lost_creation_race(exc, time.monotonic() - started):
                    raise
                time.sleep(0.1 * (attempt + 1))  # another process is creating it: look again

    def _lock_schema(self, conn: sa.Connection) -> None:
        """One process creates or migrates the schema at a time, in one transaction: without it, a
        process opening a new SQLite file while another creates its tables (16 campaigns started
        at once) saw them half-made and refused or "migrated" the store."""
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7418)")
            return
        if self._new_file:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # a file hwlat creates; not inside a transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, so the DDL below is all or nothing

    def _refuse_foreign_file(self, path: Path) -> None:
        """Opening a WAL-mode file even read-only leaves -wal and -shm files next to it; another
        program's file is recognised first without them (immutable: no locks, no side files).
        With a -wal file present (a writer is at work) the file alone may lack the newest tables,
        so the ordinary read-only check decides, and it creates nothing new then."""
        if Path(f"{path}-wal").exists():
            return
        uri = f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"
        peek = sa.create_engine(
            "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True), poolclass=sa.pool.NullPool
        )
        try:
            with peek.connect() as conn:
                if schema.stored_version(conn) is None:
                    raise StoreError(
                        f"{self.location} is not an hwlat store (it has other tables)",
                        "pass --db with an hwlat database",
                    )
        finally:
            peek.dispose()

    def _check_schema(self, conn: sa.Connection) -> None:
        version = schema.stored_version(conn)
        if version is None:
            raise StoreError(
                f"{self.location} is not an hwlat store (it has other tables)",
                "pass --db with an hwlat database, or a path that does not exist yet",
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.location} was written by a newer hwlat (schema {version}; this one knows "
                f"{SCHEMA_VERSION})",
                "upgrade hwlat",
            )
        if self.readonly:
            if version == 0:
                raise StoreError(f"{self.location} holds no hwlat data", "check --db")
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{self.location} has schema version {version}; this hwlat reads {SCHEMA_VERSION}",
                    f"migrate it once with: hwlat db migrate --db {self.db}",
                )
            return
        if version == 0:
            schema.create(conn)
        elif version < SCHEMA_VERSION:
            log.warning("migrating the store %s from schema %d to %d", self.location, version, SCHEMA_VERSION)
            schema.migrate(conn)

    def close(self) -> None:
        with self._lock:
            self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A transaction; a database that cannot take it (disk full, read-only file, server gone)
        is one StoreError saying so, with everything committed before it kept."""
        if self.readonly:
            raise StoreError(f"{self.location} was opened read-only")
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.DBAPIError as exc:
            raise StoreError(
                f"cannot write to the store {self.location}: {_reason(exc)}; what was stored before is kept",
                "free disk space or make the file writable, then re-run the command to resume",
            ) from None

    # ----- writing ----------------------------------------------------------
    def save(self, m: Measurement) -> None:
        """Replace the row for (device, backend, kind, key) and commit at once."""
        self.save_all([m])

    def save_all(self, items: Iterable[Measurement]) -> int:
        """Replace the rows of all ``items`` in one transaction: every one is stored, or (a write
        that fails half-way) none. Returns how many."""
        t = schema.measurements
        n = 0
        with self._lock, self._write() as conn:
            for m in items:
                values = {**asdict(m), **{name: getattr(m, name) for name in STATS}}
                row = {c: json.dumps(values[c]) if c in JSON_COLUMNS else values[c] for c in _COLUMNS}
                conn.execute(
                    sa.delete(t).where(
                        (t.c.device == m.device)
                        & (t.c.backend == m.backend)
                        & (t.c.kind == m.kind)
                        & (t.c.key == m.key)
                    )
                )
                conn.execute(sa.insert(t).values(row))
                n += 1
        return n

    def canary_reference(self, device: str, backend: str, settings: dict) -> float | None:
        t = schema.canary_reference
        with self._lock, self.engine.connect() as conn:
            return conn.execute(
                sa.select(t.c.reference_ms).where(
                    (t.c.device == device)
                    & (t.c.backend == backend)
                    & (t.c.settings == _settings_key(settings))
                )
            ).scalar()

    def update_canary_reference(self, device: str, backend: str, settings: dict, ms: float) -> None:
        """Keep the fastest canary time ever seen for this device setting."""
        t = schema.canary_reference
        where = (t.c.device == device) & (t.c.backend == backend) & (t.c.settings == _settings_key(settings))
        with self._lock, self._write() as conn:
            old = conn.execute(sa.select(t.c.reference_ms).where(where)).scalar()
            if old is None:
                conn.execute(
                    sa.insert(t).values(
                        device=device, backend=backend, settings=_settings_key(settings), reference_ms=ms
                    )
                )
            elif ms < old:
                conn.execute(sa.update(t).where(where).values(reference_ms=ms))

    # ----- reading ----------------------------------------------------------
    def done_keys(self, device: str, backend: str, kind: str = "op") -> set[str]:
        """Keys a re-run skips: clean measurements and deterministic failures.

        Disturbed rows and transient failures (the agent died, or did not answer) are not done: a
        re-run measures them again.
        """
        t = schema.measurements
        query = sa.select(t.c.key).where(
            (t.c.device == device)
            & (t.c.backend == backend)
            & (t.c.kind == kind)
            & ((t.c.status == "failed") | ((t.c.status == "ok") & (t.c.disturbed == sa.false())))
        )
        with self._lock, self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def measurements(
        self,
        device: str | None = None,
        backend: str | None = None,
        kind: str | None = None,
        clean_only: bool = False,
    ) -> list[Measurement]:
        t = schema.measurements
        query = sa.select(*(t.c[c] for c in _COLUMNS)).order_by(t.c.id)
        for column, value in (("device", device), ("backend", backend), ("kind", kind)):
            if value is not None:
                query = query.where(t.c[column] == value)
        if clean_only:
            query = query.where((t.c.status == "ok") & (t.c.disturbed == sa.false()))
        with self._lock, self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_to_measurement(row._asdict()) for row in rows]

    def get(self, device: str, backend: str, key: str, kind: str = "op") -> Measurement | None:
        t = schema.measurements
        query = sa.select(*(t.c[c] for c in _COLUMNS)).where(
            (t.c.device == device) & (t.c.backend == backend) & (t.c.kind == kind) & (t.c.key == key)
        )
        with self._lock, self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _to_measurement(row._asdict()) if row else None

    def count(self) -> int:
        with self._lock, self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(schema.measurements)).scalar_one()

    # ----- export -----------------------------------------------------------
    def export(self, path: str | Path, fmt: str, **filters) -> int:
        """Write rows as CSV or JSON (a list of objects); returns the row count."""
        if fmt not in ("csv", "json"):
            raise ConfigError(f"unknown export format {fmt!r}; use csv or json")
        rows = list(_export_rows(self.measurements(**filters)))
        if fmt == "json":
            Path(path).write_text(json.dumps(rows, indent=1))
        else:
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(_COLUMNS))
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in row.items()})
        return len(rows)


def _settings_key(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def _lost_creation_race(exc: sa.exc.DBAPIError, waited_s: float) -> bool:
    """Errors a process sees while another creates the same new store. SQLite's switch to WAL
    can answer "database is locked" at once, without waiting out the busy timeout, when several
    processes open a new file together (seen 1 in 80 opens on a loaded 2-core CI machine); a lock
    that outlasted the busy timeout is someone else's and is reported."""
    message = str(exc.orig)
    if "database is locked" in message:
        return waited_s < 5
    return "already exists" in message or "UNIQUE" in message


def _reason(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)


def _export_rows(items: Iterable[Measurement]) -> Iterator[dict]:
    for m in items:
        values = {**asdict(m), **{name: getattr(m, name) for name in STATS}}
        yield {c: values[c] for c in _COLUMNS}


def _to_measurement(row: dict) -> Measurement:
    for column in JSON_COLUMNS:
        row[column] = json.loads(row[column])
    for derived in STATS:
        row.pop(derived)
    row["disturbed"] = bool(row["disturbed"])
    return Measurement(**row)
