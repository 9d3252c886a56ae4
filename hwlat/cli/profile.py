"""``hwlat profile`` (ops, a space's ops, or adaptive kernel sampling) and ``hwlat measure``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hwlat.cli import options
from hwlat.devices.connection import DeviceError
from hwlat.devices.inventory import resolve_device
from hwlat.errors import EXIT_FAILED, ConfigError
from hwlat.profiler.backends import ArtifactError
from hwlat.profiler.campaign import Campaign, CampaignReport
from hwlat.profiler.onnx_models import load_model
from hwlat.profiler.opspec import InvalidOpSpecError, read_jsonl
from hwlat.profiler.protocol import TimingProtocol


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure single ops on one or more devices into the store",
        description="Measure ops (a JSONL file, or every unique op of a search space) on one or more "
        "devices in parallel, or sample kernels adaptively for a kernel regressor. Every measurement "
        "is stored as it arrives; re-running the command skips what is stored.",
    )
    options.add_device(p, many=True)
    options.add_backend(p)
    options.add_db(p)
    options.add_wait(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ops", type=Path, help="JSONL file, one OpSpec per line")
    src.add_argument("--space", help="measure every unique op of a search space")
    src.add_argument(
        "--adaptive",
        action="store_true",
        help="sample kernel configurations for a kernel regressor, measuring more where "
        "it is least sure, until it predicts held-out kernels well or the budget ends",
    )
    p.add_argument(
        "--budget-minutes",
        type=options.number(0),
        default=10.0,
        help="with --adaptive: wall-clock budget in minutes (default 10)",
    )
    p.add_argument(
        "--resolution",
        type=options.integer(1),
        action="append",
        help="with --space: input resolutions (repeatable; default the space's own)",
    )
    p.add_argument("--force", action="store_true", help="re-measure ops already stored")
    options.add_dtypes(p)
    options.add_protocol(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "measure",
        help="measure a whole ONNX model end to end",
        description="Time a whole ONNX model on a device under the timing protocol, with its memory: "
        "read in a fresh process, the peak while it loads and the peak while it runs (model_rss_mb, "
        "over the process's baseline).",
    )
    p.add_argument("model", type=Path, help="the .onnx file")
    options.add_device(p)
    options.add_backend(p)
    options.add_db(p)
    options.add_wait(p)
    options.add_protocol(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--no-arena",
        action="store_true",
        help="ONNX Runtime without its memory arena and memory patterns: peak memory is the model's own "
        "need, not the arena's growth (default: the device's memory_arena setting)",
    )
    p.set_defaults(func=cmd_measure)


def cmd_profile(args: argparse.Namespace) -> int:
    if args.adaptive:
        return cmd_profile_adaptive(args)
    invalid: list[str] = []
    specs = (
        read_jsonl(args.ops, invalid)
        if args.ops
        else list(options.space(args.space, args.resolution).unique_ops())
    )
    if not specs:
        more = f" (and {len(invalid) - 1} more bad lines)" if len(invalid) > 1 else ""
        raise InvalidOpSpecError((invalid[0] if invalid else f"{args.ops} holds no op") + more)
    for problem in invalid:  # a bad line is reported and skipped; the rest is measured
        print(f"hwlat: skipped {problem}", file=sys.stderr)
    devices = options.devices(args)
    protocol = options.protocol(args)
    with options.open_store(args) as store:
        campaigns = [
            Campaign(d, options.backend(args, d), store, protocol, show_progress=not args.no_progress)
            for d in devices
        ]

        def run(campaign: Campaign) -> CampaignReport | Exception:
            try:
                return campaign.run(specs, force=args.force)
            except (DeviceError, ArtifactError) as exc:
                return exc

        with ThreadPoolExecutor(max_workers=len(campaigns)) as pool:
            futures = [pool.submit(run, c) for c in campaigns]
            try:
                results = [f.result() for f in futures]
            except KeyboardInterrupt:  # only this thread sees Ctrl-C: stop every campaign's agent
                for campaign in campaigns:
                    campaign.stop()
                raise
    if len(results) == 1 and isinstance(results[0], Exception):
        raise results[0]  # one device: its error is the command's error
    status = EXIT_FAILED if invalid else 0
    for campaign, result in zip(campaigns, results, strict=True):
        if isinstance(result, Exception):
            print(f"{campaign.device.name}: FAILED: {result}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        print(result.summary())
        for line in result.failures[:10]:
            print(f"  failed {line}")
        if result.failed:
            status = EXIT_FAILED
    print(f"database: {store.location}")
    return status


def cmd_profile_adaptive(args: argparse.Namespace) -> int:
    from hwlat.predictors.building import KernelProfiler, adaptive_profile, fusion_rules

    devices = options.devices(args)
    if len(devices) != 1:
        raise ConfigError("--adaptive profiles one device at a time; give one --device")
    with options.open_store(args) as store:
        profiler = KernelProfiler(
            devices[0],
            store,
            TimingProtocol.quick() if args.quick else None,
            args.backend,
            show_progress=not args.no_progress,
            tune_trials=args.tune_trials,
        )
        dtypes = options.dtypes(args)
        rules = fusion_rules(profiler, dtypes=dtypes)
        report = adaptive_profile(profiler, rules, args.budget_minutes, dtypes=dtypes)
    for warning in profiler.probe_warnings:
        print(f"warning: {warning}")
    print(report.summary())
    print(f"database: {store.location}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    load_model(args.model)  # a clear error for a missing, empty or broken file, before any device time
    device = resolve_device(args.device, args.inventory)
    if args.no_arena:
        device = dataclasses.replace(device, memory_arena=False)
    with options.open_store(args) as store:
        m = Campaign(
            device, options.backend(args, device), store, options.protocol(args), show_progress=False
        ).measure_model(args.model)
    if not m.ok:
        reason = " ".join(m.error_msg.split())  # the runtime's message may span lines
        print(f"hwlat: error: measuring {args.model} failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    out = {
        "model": str(args.model),
        "device": m.device,
        "backend": m.backend,
        "backend_version": m.backend_version,
        "latency_ms": m.median_ms,
        "p10_ms": m.p10_ms,
        "p90_ms": m.p90_ms,
        "cv": m.cv,
        "samples_ms": m.samples_ms,
        "disturbed": m.disturbed,
        "disturbance": m.disturbance,
        "threads": m.settings.get("threads"),
        "cpu_affinity": m.settings.get("cpu_affinity"),
        "memory_arena": m.settings.get("memory_arena"),
        "model_bytes": m.extra["model_bytes"],
        "params": m.extra["params"],
        "baseline_rss_mb": m.baseline_rss_mb,
        "load_peak_rss_mb": m.load_peak_rss_mb,
        "loaded_rss_mb": m.loaded_rss_mb,
        "peak_rss_mb": m.peak_rss_mb,
    }
    if m.model_rss_mb is not None:
        out["model_rss_mb"] = m.model_rss_mb
        out["load_rss_mb"] = m.load_rss_mb
    if "memory_error" in m.extra:
        out["memory_error"] = m.extra["memory_error"]
    if args.json:
        print(json.dumps(out))
    else:
        flag = f"  (DISTURBED: {m.disturbance})" if m.disturbed else ""
        rss = (
            f", {m.model_rss_mb:.0f} MB while it runs ({m.load_rss_mb:.0f} MB while it loads)"
            if m.model_rss_mb is not None
            else ""
        )
        print(
            f"{args.model}: {m.median_ms:.3f} ms median (p10 {m.p10_ms:.3f}, p90 {m.p90_ms:.3f}) "
            f"on {m.device}/{m.backend} {m.backend_version}, {out['params']:,} params{rss}{flag}"
        )
    return 0
