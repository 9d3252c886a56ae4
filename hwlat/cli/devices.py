"""``hwlat devices list`` and ``hwlat devices check``."""

from __future__ import annotations

import argparse
import json
import sys

from hwlat.cli import options
from hwlat.cli.output import print_table
from hwlat.devices.inventory import load_inventory, resolve_device
from hwlat.errors import EXIT_FAILED


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "devices",
        help="list devices or check that one is usable",
        description="The device inventory (devices.toml; the device 'local' always exists).",
    )
    dsub = p.add_subparsers(dest="devices_command", required=True)
    q = dsub.add_parser("list", help="every device in the inventory (and local)")
    options.add_inventory(q)
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
    rows = []
    for d in load_inventory(args.inventory).values():
        where = "this machine" if d.is_local else f"{d.user + '@' if d.user else ''}{d.host}"
        where += f":{d.port}" if d.port and not d.is_local else ""
        affinity = ",".join(map(str, d.cpu_affinity)) if d.cpu_affinity else "any"
        rows.append((d.name, where, ",".join(d.backends), d.threads, affinity, ",".join(d.labels) or None))
    print_table(("device", "where", "backends", "threads", "cpus", "labels"), rows)
    return 0


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
