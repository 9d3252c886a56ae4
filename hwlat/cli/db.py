"""``hwlat db export``: the raw measurements as CSV or JSON."""

from __future__ import annotations

import argparse

from hwlat.cli import options
from hwlat.profiler.store import SCHEMA_VERSION, Store


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="inspect or export the measurement database")
    dsub = p.add_subparsers(dest="db_command", required=True)
    q = dsub.add_parser(
        "export",
        help="write measurements as CSV or JSON",
        description="Every stored measurement (raw samples, statistics, settings, protocol, host) as "
        "CSV or a JSON list, optionally for one device or backend.",
    )
    options.add_db(q)
    q.add_argument("--format", choices=("csv", "json"), default="csv", help="file format (default csv)")
    q.add_argument("--device", help="only this device")
    q.add_argument("--backend", help="only this backend")
    options.add_out(q, "file to write")
    q.set_defaults(func=cmd_db_export)
    q = dsub.add_parser(
        "migrate",
        help="bring a store written by an older hwlat to this version's schema",
        description="Commands that write migrate a store by themselves; commands that only read refuse "
        "an older store and point here.",
    )
    options.add_db(q)
    q.set_defaults(func=cmd_db_migrate)


def cmd_db_export(args: argparse.Namespace) -> int:
    with Store(args.db, readonly=True) as store:
        n = store.export(args.out, args.format, device=args.device, backend=args.backend)
    print(f"wrote {n} measurements to {args.out}")
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    with Store(args.db) as store:  # opening for writing migrates (and says so)
        print(f"{store.location} is at schema version {SCHEMA_VERSION}")
    return 0
