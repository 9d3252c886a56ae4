"""The ``hwlat`` command: the one place that knows all four packages. Parse, call, print.

One module per command group (profile/measure, devices, table, train/predict/validate,
search/quickstart, db); options shared by several commands live in ``options``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hwlat.cli import db, devices, predictors, profile, search, tables
from hwlat.devices.connection import DeviceError
from hwlat.devices.inventory import InventoryError
from hwlat.profiler.backends import ArtifactError, UnknownBackendError
from hwlat.profiler.opspec import InvalidOpSpecError
from hwlat.profiler.progress import ProgressLogHandler
from hwlat.profiler.store import StoreError

USER_ERRORS = (
    InvalidOpSpecError,
    InventoryError,
    DeviceError,
    StoreError,
    UnknownBackendError,
    ArtifactError,
    FileNotFoundError,
    ValueError,
)
COMMAND_GROUPS = (profile, devices, tables, predictors, search, db)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="hwlat: %(message)s", handlers=[ProgressLogHandler(sys.stderr)]
    )
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("hwlat: interrupted; everything measured so far is stored", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"hwlat: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwlat",
        description="How long does this network take on that device? Measure ops and models on "
        "devices, build latency predictors, and search networks under latency budgets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser
