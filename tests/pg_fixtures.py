"""A private PostgreSQL server for the tests: initdb on a temp dir, a loopback port, trust auth.

It runs as the unprivileged ``postgres`` user that Debian's package creates (PostgreSQL refuses
to run as root). ``.ci/run`` installs the package; without it the tests that need a server
are skipped with the reason.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("HWLAT_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(argv: list[str]) -> list[str]:
    if getpass.getuser() == "root":
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def pg_available() -> str | None:
    """None if a server can be started here, else why not."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL is not installed ({PG_BIN}/initdb missing; apt-get install postgresql)"
    if getpass.getuser() == "root" and shutil.which("runuser") is None:
        return "runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """``fsync=False`` (the tests) trades durability for speed; benchmarks/bench_store.py keeps the
    server's default, durable commits, as SQLite's are."""

    def __init__(self, fsync: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hwlat-pg-"))
        self.port = _free_port()
        if getpass.getuser() == "root":
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        if not fsync:
            options += " -c fsync=off"
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(self.dir / "log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.data = data

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import sqlalchemy as sa

        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(
            self.url().replace("postgresql://", "postgresql+psycopg2://"), isolation_level="AUTOCOMMIT"
        )
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PrivatePostgres) -> str:
    """A fresh, empty database on the private server."""
    return postgres.create_database()
