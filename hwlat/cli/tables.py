"""``hwlat table export`` and ``hwlat table import``: latency lookup tables of search spaces."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hwlat.cli import options
from hwlat.errors import EXIT_FAILED, ConfigError
from hwlat.predictors.formats import FORMATS
from hwlat.profiler.store import Store


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="export a search space's latency lookup table, or import one")
    tsub = p.add_subparsers(dest="table_command", required=True)
    q = tsub.add_parser(
        "export",
        help="write a space's latency table (ofa-yaml is what ProxylessNAS/OFA code loads), or a network's "
        "per-layer table for compression code (haq, amc)",
        description="With --space: one entry per cell of the space, from imported blocks or summed from "
        "measured ops. With --model and --predictor: the network's per-layer costs on the predictor's "
        "device, as HAQ's [layer, w_bit, a_bit] numpy table (only what the runtime executes; the rest NaN) "
        "or AMC's (layer, keep ratio, dtype) CSV.",
    )
    q.add_argument("--space", help="search space (proxyless, ofa_mbv3, nb201, fbnet)")
    q.add_argument("--model", type=Path, help="with --format haq|amc: the network (ONNX)")
    q.add_argument("--predictor", type=Path, help="with --format haq|amc: the device's predictor")
    q.add_argument("--device", default="local", help="device name in the store (default local)")
    q.add_argument("--backend", default="ort", help="backend in the store (default ort)")
    q.add_argument(
        "--format",
        choices=(*FORMATS, *LAYER_FORMATS),
        default="ofa-yaml",
        help="file format (default ofa-yaml)",
    )
    q.add_argument(
        "--resolution",
        type=options.integer(1),
        action="append",
        help="input resolutions (repeatable; default the space's own, e.g. 224 for proxyless)",
    )
    options.add_out(q, "table file to write")
    options.add_db(q)
    q.set_defaults(func=cmd_table_export)
    q = tsub.add_parser(
        "import",
        help="store a table file's blocks for a device (any name, reachable or not)",
        description="Store the entries of a lookup-table file as block rows of a device, so that "
        "tables measured elsewhere can be exported, compared and used by predictors.",
    )
    q.add_argument("file", type=Path, help=".yaml (ofa-yaml), .csv or .json")
    q.add_argument("--device", required=True, help="device name to store the blocks under")
    q.add_argument("--backend", default="ort", help="backend name to store them under (default ort)")
    q.add_argument("--format", choices=FORMATS, help="default: from the file extension")
    q.add_argument("--space", help="also report keys that this space has no cell for")
    options.add_db(q)
    q.set_defaults(func=cmd_table_import)


def cmd_table_export(args: argparse.Namespace) -> int:
    from hwlat.predictors.formats import table_from_store, write_table

    if args.format in LAYER_FORMATS:
        return _layer_table(args)
    if not args.space:
        raise ConfigError(f"--format {args.format} exports a space's table", "give --space NAME")

    space = options.space(args.space, args.resolution)
    with Store(args.db, readonly=True) as store:
        build = table_from_store(space, store, args.device, args.backend)
    header = {"space": space.name, "device": args.device, "backend": args.backend}
    n = write_table(build.entries, args.out, args.format, header)
    print(
        f"wrote {n} entries to {args.out} ({build.from_blocks} from imported blocks, "
        f"{n - build.from_blocks} summed from measured ops)"
    )
    if build.with_disturbed_ops:
        print(
            f"hwlat: {build.with_disturbed_ops} entries include an op measured only under "
            f"disturbance; re-run hwlat profile --space {space.name} to re-measure those ops",
            file=sys.stderr,
        )
    if build.missing:
        narrowed = "".join(f" --resolution {r}" for r in args.resolution or [])
        print(
            f"hwlat: {len(build.missing)} cells have no measurements and are not in the table "
            f"(first: {build.missing[0]}); run hwlat profile --space {space.name}{narrowed} "
            f"--device {args.device} --backend {args.backend}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def cmd_table_import(args: argparse.Namespace) -> int:
    from hwlat.predictors.formats import import_table, read_table

    entries = read_table(args.file, args.format)
    with options.open_store(args) as store:
        n = import_table(entries, store, args.device, args.backend, source=str(args.file))
    print(f"imported {n} blocks from {args.file} for {args.device}/{args.backend}")
    if args.space:
        known = set(options.space(args.space).cell_keys())
        unknown = [e.key for e in entries if e.key not in known]
        if unknown:
            print(
                f"hwlat: {len(unknown)} keys are not cells of {args.space} (first: {unknown[0]})",
                file=sys.stderr,
            )
    return 0


LAYER_FORMATS = ("haq", "amc")


def _layer_table(args: argparse.Namespace) -> int:
    from hwlat.predictors import LatencyPredictor
    from hwlat.predictors.formats.layer_tables import write_amc, write_haq

    if args.model is None or args.predictor is None:
        raise ConfigError(
            f"--format {args.format} tabulates a network's layers", "give --model and --predictor"
        )
    predictor = LatencyPredictor.load(args.predictor)
    if args.format == "haq":
        table, sidecar = write_haq(predictor, args.model, args.out)
        if "int8" not in predictor.dtypes:
            print(
                "hwlat: the predictor has no int8 kernels: every bit-width is NaN (train with --dtypes "
                "float32,int8)",
                file=sys.stderr,
            )
        print(
            f"wrote {table} (layers x 8 x 8, ms; only [layer, 7, 7] = int8 is executable here) and {sidecar}"
        )
        return 0
    n = write_amc(predictor, args.model, args.out)
    print(f"wrote {n} rows (layer, keep ratio, dtype, latency_ms) to {args.out}")
    return 0
