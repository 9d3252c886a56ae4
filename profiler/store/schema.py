"""The one database schema of hwlat, its version, and the migrations that bring an older store up.

Every table lives in one database, SQLite or PostgreSQL, so that a search's study sits next
to the measurements it was verified with and any machine can resume or inspect it:

  measurements      one row per (device, backend, kind, key); columns derived from Measurement
  canary_reference  the fastest canary time ever seen per device setting
  leases            who is timing on which device now (profiler/store/leases.py)
  studies, trials   search studies and their finished trials (search/storage.py)
  trial_claims      trials a search worker has asked for and is evaluating
  hwlat_meta        ``schema_version`` and the like

Versions: 1 is hwlat 0.1 (SQLite only, no hwlat_meta; the measurement and the search files
were separate); 4 added a whole model's memory by phase (``load_peak_rss_mb``,
``loaded_rss_mb``). Every change since 1 has been additive (new tables, new columns with
defaults), so ``migrate`` adds what is missing and moves values that older versions kept in ``extra``.
A store is migrated only by a command that writes to it.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

import sqlalchemy as sa

from hwlat.profiler.measurement import Measurement

SCHEMA_VERSION = 4
STATS = ("median_ms", "p10_ms", "p90_ms", "cv")  # derived from samples_ms, stored for queries and exports
# Kept in the extra JSON by version 1; their own columns since.
MOVED_FROM_EXTRA = ("repeats", "wall_s", "peak_rss_mb", "baseline_rss_mb")

_TYPES = {"str": sa.Text, "int": sa.Integer, "float": sa.Double, "bool": sa.Boolean}

metadata = sa.MetaData()


def _measurement_columns() -> list[sa.Column]:
    """One column per Measurement field (lists and dicts as JSON text), plus the derived stats."""
    columns = []
    for f in fields(Measurement):
        base, _, none = str(f.type).partition(" | ")
        if base.startswith(("list", "dict")):
            columns.append(sa.Column(f.name, sa.Text, nullable=False))
        else:
            default = None if f.default in (MISSING, None) else f.default
            server_default = None
            if isinstance(default, bool):
                server_default = sa.true() if default else sa.false()  # 1/0 in SQLite, true/false in PG
            elif default is not None:
                server_default = sa.text(str(default) if isinstance(default, int) else repr(default))
            columns.append(
                sa.Column(f.name, _TYPES[base], nullable=bool(none), server_default=server_default)
            )
        if f.name == "error_msg":
            columns += [sa.Column(name, sa.Double) for name in STATS]
    return columns


measurements = sa.Table(
    "measurements",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    *_measurement_columns(),
    sa.UniqueConstraint("device", "backend", "kind", "key"),
)
JSON_COLUMNS = tuple(f.name for f in fields(Measurement) if str(f.type).startswith(("list", "dict")))

canary_reference = sa.Table(
    "canary_reference",
    metadata,
    sa.Column("device", sa.Text, primary_key=True),
    sa.Column("backend", sa.Text, primary_key=True),
    sa.Column("settings", sa.Text, primary_key=True),
    sa.Column("reference_ms", sa.Double, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("device", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("command", sa.Text, nullable=False, server_default=sa.text("''")),
    sa.Column("acquired_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

trials = sa.Table(
    "trials",
    metadata,
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Column("arch", sa.Text, nullable=False),
    sa.Column("values", sa.Text, nullable=False),
    sa.Column("feasible", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("worker", sa.Text, nullable=False, server_default=sa.text("''")),
)

trial_claims = sa.Table(
    "trial_claims",
    metadata,
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Column("arch", sa.Text, nullable=False),
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("heartbeat_at", sa.Double, nullable=False),
)

meta = sa.Table(
    "hwlat_meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

HWLAT_TABLES = {t.name for t in metadata.sorted_tables}
# What marks a version-1 store: the measurement table, or the search file's study table.
_V1_MARKERS = {"measurements": {"key", "samples_ms", "settings"}, "studies": {"name", "config"}}


def stored_version(conn: sa.Connection) -> int | None:
    """The store's schema version; 0 for an empty database; None when it is not an hwlat store."""
    inspector = sa.inspect(conn)
    names = set(inspector.get_table_names())
    if "hwlat_meta" in names:
        value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        return int(value) if isinstance(value, str) and value.isdigit() else None
    if not names:
        return 0
    for table, needed in _V1_MARKERS.items():
        if table in names and needed <= {c["name"] for c in inspector.get_columns(table)}:
            return 1
    return None


def create(conn: sa.Connection) -> None:
    metadata.create_all(conn)
    conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))


def migrate(conn: sa.Connection) -> None:
    """Bring a store of an older version up to SCHEMA_VERSION: add the tables and columns it lacks
    and move the values version 1 kept in ``extra`` into their columns."""
    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names())
    added: dict[str, set[str]] = {}
    for table in metadata.sorted_tables:
        if table.name not in present:
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
                added.setdefault(table.name, set()).add(column.name)
    metadata.create_all(conn)  # the tables it lacks
    for name in MOVED_FROM_EXTRA:
        if name in added.get("measurements", ()):
            _move_from_extra(conn, name)
    conn.execute(sa.delete(meta).where(meta.c.key == "schema_version"))
    conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))


def _move_from_extra(conn: sa.Connection, name: str) -> None:
    """Version 1 kept ``name`` in the extra JSON; move it into its column (row by row: portable)."""
    import json

    rows = conn.execute(sa.select(measurements.c.id, measurements.c.extra)).all()
    for row_id, extra_text in rows:
        extra = json.loads(extra_text)
        if name in extra:
            value = extra.pop(name)
            conn.execute(
                sa.update(measurements)
                .where(measurements.c.id == row_id)
                .values({name: value, "extra": json.dumps(extra)})
            )
