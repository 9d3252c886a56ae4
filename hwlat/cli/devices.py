"""``hwlat devices list`` and ``hwlat devices check``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hwlat.cli import options
from hwlat.cli.output import print_table
from hwlat.devices.inventory import load_inventory, resolve_device
from hwlat.errors import EXIT_FAILED
from hwlat.profiler.store import Store, default_db, is_url
from hwlat.profiler.store.leases import Lease, current_leases


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "devices",
        help="list devices or check that one is usable",
        description="The device inventory (devices.toml; the device 'local' always exists).",
    )
    dsub = p.add_subparsers(dest="devices_command", required=True)
    q = dsub.add_parser(
        "list",
        help="every device in the inventory (and local), and which campaign holds it now",
        description="The inventory's devices; with a store (--db, $HWLAT_DB or ./hwlat.db if it exists), "
        "also the campaign that holds each device's lease.",
    )
    options.add_inventory(q)
    options.add_db(q)
    q.set_defaults(func=cmd_devices_list)
    q = dsub.add_parser(
        "check",
        help="connect and report OS, CPU, Python and runtime versions",
        description="Connect as a campaign would and report what the device has, or one line naming "
        "what is wrong and how to fix it (exit 1).",
    )
    q.add_argument("name", help="device name")
    options.add_inventory(q)
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_devices_check)


def cmd_devices_list(args: argparse.Namespace) -> int:
    held = _leases(args.db)
    rows = []
    for d in load_inventory(args.inventory).values():
        where = "this machine" if d.is_local else f"{d.user + '@' if d.user else ''}{d.host}"
        where += f":{d.port}" if d.port and not d.is_local else ""
        if d.uses_tracker:
            tracker = f"tracker {d.tvm_tracker} key {d.tvm_key}"
            where = tracker if d.host is None else f"{where}, {tracker}"
        affinity = ",".join(map(str, d.cpu_affinity)) if d.cpu_affinity else "any"
        lease = held.pop(d.name, None)
        rows.append(
            (
                d.name,
                where,
                ",".join(d.backends),
                d.threads,
                affinity,
                ",".join(d.labels) or None,
                lease.describe() if lease else None,
            )
        )
    rows += [
        (name, "(not in the inventory)", None, None, None, None, lease.describe())
        for name, lease in held.items()
    ]
    print_table(("device", "where", "backends", "threads", "cpus", "labels", "held by"), rows)
    return 0


def _leases(db: str | None) -> dict[str, Lease]:
    """Current leases by device, read without writing; none when there is no store yet."""
    location = db or default_db()
    if not is_url(location) and not Path(location).exists():
        return {}
    with Store(location, readonly=True) as store:
        return {lease.device: lease for lease in current_leases(store.engine)}


def cmd_devices_check(args: argparse.Namespace) -> int:
    from hwlat.profiler.check import check_device

    device = resolve_device(args.name, args.inventory)
    report = check_device(device)
    if args.json:
        print(json.dumps(report))
    elif report["ok"]:
        for key, value in report.items():
            print(f"{key:16s} {value}")
    else:
        print(f"hwlat: {args.name}: {report['diagnosis']}", file=sys.stderr)
    return 0 if report["ok"] else EXIT_FAILED
