"""The ``hwlat`` command: the one place that knows all four packages. Parse, call, print."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devices.connection import DeviceError
from devices.device import Device
from devices.inventory import InventoryError, devices_with_label, load_inventory, resolve_device
from profiler.backends import ArtifactError, UnknownBackendError
from profiler.campaign import Campaign, CampaignReport
from profiler.opspec import InvalidOpSpecError, OpSpec, read_jsonl
from profiler.protocol import TimingProtocol
from profiler.store import Store, StoreError, default_db_path

USER_ERRORS = (InvalidOpSpecError, InventoryError, DeviceError, StoreError, UnknownBackendError,
               ArtifactError, FileNotFoundError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="hwlat: %(message)s")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("hwlat: interrupted; everything measured so far is stored", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"hwlat: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwlat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="measure single ops on one or more devices into the store")
    _device_args(p, many=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ops", type=Path, help="JSONL file, one OpSpec per line")
    src.add_argument("--space", help="measure every unique op of a search space")
    p.add_argument("--resolution", type=int, action="append",
                   help="with --space: only these input resolutions (repeatable)")
    p.add_argument("--force", action="store_true", help="re-measure ops already stored")
    _protocol_args(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("measure", help="measure a whole ONNX model end to end")
    p.add_argument("model", type=Path)
    _device_args(p, many=False)
    _protocol_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("devices", help="list devices or check that one is usable")
    dsub = p.add_subparsers(dest="devices_command", required=True)
    q = dsub.add_parser("list", help="every device in the inventory (and local)")
    q.add_argument("--inventory", type=Path)
    q.set_defaults(func=cmd_devices_list)
    q = dsub.add_parser("check", help="connect and report OS, CPU, Python and runtime versions")
    q.add_argument("name")
    q.add_argument("--inventory", type=Path)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_devices_check)

    p = sub.add_parser("db", help="inspect or export the measurement database")
    dsub = p.add_subparsers(dest="db_command", required=True)
    q = dsub.add_parser("export", help="write measurements as CSV or JSON")
    q.add_argument("--db", type=Path)
    q.add_argument("--format", choices=("csv", "json"), default="csv")
    q.add_argument("--device")
    q.add_argument("--backend")
    q.add_argument("-o", "--output", type=Path, required=True)
    q.set_defaults(func=cmd_db_export)
    return parser


def _device_args(p: argparse.ArgumentParser, many: bool) -> None:
    if many:
        p.add_argument("--device", action="append", help="device name (repeatable; default local)")
        p.add_argument("--label", help="every device carrying this inventory label")
    else:
        p.add_argument("--device", default="local", help="device name (default local)")
    p.add_argument("--backend", default="ort", help="ort (ONNX Runtime) or tvm (default ort)")
    p.add_argument("--inventory", type=Path, help="device inventory (default ./devices.toml)")
    p.add_argument("--db", type=Path, help=f"SQLite database (default $HWLAT_DB or {default_db_path()})")


def _protocol_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("timing protocol")
    g.add_argument("--repeat", type=int, help="repeats per op (default 9)")
    g.add_argument("--min-repeat-ms", type=float, help="minimum length of one repeat (default 20)")
    g.add_argument("--cooldown-ms", type=float, help="pause after each op (default 0)")
    g.add_argument("--quick", action="store_true", help="a short, less precise protocol for smoke runs")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _protocol(args: argparse.Namespace) -> TimingProtocol:
    base = TimingProtocol.quick() if args.quick else TimingProtocol()
    overrides = {k: v for k, v in (("repeat", args.repeat), ("min_repeat_ms", args.min_repeat_ms),
                                   ("cooldown_ms", args.cooldown_ms)) if v is not None}
    return TimingProtocol(**{**base.to_dict(), **overrides})


def _devices(args: argparse.Namespace) -> list[Device]:
    if args.label:
        found = devices_with_label(args.label, args.inventory)
        return found + [resolve_device(n, args.inventory) for n in args.device or []
                        if n not in {d.name for d in found}]
    return [resolve_device(n, args.inventory) for n in dict.fromkeys(args.device or ["local"])]


def _space_ops(name: str, resolutions: list[int] | None) -> list[OpSpec]:
    from search.spaces import get_space

    return list(get_space(name).unique_ops(resolutions=resolutions))


def cmd_profile(args: argparse.Namespace) -> int:
    specs = read_jsonl(args.ops) if args.ops else _space_ops(args.space, args.resolution)
    devices = _devices(args)
    protocol = _protocol(args)
    with Store(args.db) as store:
        campaigns = [Campaign(d, args.backend, store, protocol, show_progress=not args.no_progress)
                     for d in devices]

        def run(campaign: Campaign) -> CampaignReport | Exception:
            try:
                return campaign.run(specs, force=args.force)
            except (DeviceError, ArtifactError) as exc:
                return exc

        with ThreadPoolExecutor(max_workers=len(campaigns)) as pool:
            results = list(pool.map(run, campaigns))
    status = 0
    for campaign, result in zip(campaigns, results):
        if isinstance(result, Exception):
            print(f"{campaign.device.name}: FAILED: {result}", file=sys.stderr)
            status = 1
            continue
        print(result.summary())
        for line in result.failures[:10]:
            print(f"  failed {line}")
    print(f"database: {store.path}")
    return status


def cmd_measure(args: argparse.Namespace) -> int:
    if not args.model.exists():
        raise FileNotFoundError(f"model {args.model} does not exist")
    device = resolve_device(args.device, args.inventory)
    with Store(args.db) as store:
        m = Campaign(device, args.backend, store, _protocol(args), show_progress=False
                     ).measure_model(args.model)
    if not m.ok:
        print(f"hwlat: error: measuring {args.model} failed: {m.error_msg}", file=sys.stderr)
        return 1
    out = {"model": str(args.model), "device": m.device, "backend": m.backend,
           "backend_version": m.backend_version, "latency_ms": m.median_ms, "p10_ms": m.p10_ms,
           "p90_ms": m.p90_ms, "cv": m.cv, "samples_ms": m.samples_ms, "disturbed": m.disturbed,
           "disturbance": m.disturbance, "threads": m.settings.get("threads"),
           "cpu_affinity": m.settings.get("cpu_affinity"),
           "model_bytes": m.extra["model_bytes"], "params": m.extra["params"],
           "peak_rss_mb": m.extra.get("peak_rss_mb"), "baseline_rss_mb": m.extra.get("baseline_rss_mb")}
    if out["peak_rss_mb"] is not None:
        out["model_rss_mb"] = out["peak_rss_mb"] - out["baseline_rss_mb"]
    if args.json:
        print(json.dumps(out))
    else:
        flag = f"  (DISTURBED: {m.disturbance})" if m.disturbed else ""
        print(f"{args.model}: {m.median_ms:.3f} ms median (p10 {m.p10_ms:.3f}, p90 {m.p90_ms:.3f}) "
              f"on {m.device}/{m.backend} {m.backend_version}, {out['params']:,} params, "
              f"peak RSS {out['peak_rss_mb']:.0f} MB{flag}")
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    for d in load_inventory(args.inventory).values():
        where = "this machine" if d.is_local else f"{d.user + '@' if d.user else ''}{d.host}:{d.port}"
        print(f"{d.name:16s} {where:32s} backends={','.join(d.backends)} threads={d.threads} "
              f"affinity={list(d.cpu_affinity) if d.cpu_affinity else 'any'} "
              f"labels={','.join(d.labels) or '-'}")
    return 0


def cmd_devices_check(args: argparse.Namespace) -> int:
    from profiler.check import check_device

    device = resolve_device(args.name, args.inventory)
    report = check_device(device)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:20s} {value}")
    return 0 if report.get("ok") else 1


def cmd_db_export(args: argparse.Namespace) -> int:
    with Store(args.db) as store:
        n = store.export(args.output, args.format, device=args.device, backend=args.backend)
    print(f"wrote {n} measurements to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
