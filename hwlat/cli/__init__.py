"""The ``hwlat`` command: the one place that knows all four packages. Parse, call, print."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hwlat.devices.connection import DeviceError
from hwlat.devices.device import Device
from hwlat.devices.inventory import InventoryError, devices_with_label, load_inventory, resolve_device
from hwlat.profiler.backends import ArtifactError, HostBackend, UnknownBackendError, get_backend
from hwlat.profiler.backends.tvm import DEFAULT_TUNE_TRIALS
from hwlat.profiler.campaign import Campaign, CampaignReport
from hwlat.profiler.opspec import InvalidOpSpecError, OpSpec, read_jsonl
from hwlat.profiler.progress import ProgressLogHandler
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store, StoreError, default_db_path

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    parser = argparse.ArgumentParser(prog="hwlat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="measure single ops on one or more devices into the store")
    _device_args(p, many=True)
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
        type=float,
        default=10.0,
        help="with --adaptive: wall-clock budget in minutes (default 10)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        action="append",
        help="with --space: input resolutions (repeatable; default the space's own)",
    )
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

    p = sub.add_parser(
        "quickstart",
        help="profile, train, search and verify on one device (~10 min)",
        description="The whole toolkit once: profile the space's kernels, train a "
        "predictor, search under a latency budget, measure the winners, write a report.",
    )
    p.add_argument("--device", default="local", help="device name (default local)")
    p.add_argument("--backend", default="ort", help="ort (default)")
    p.add_argument("--space", default="proxyless", help="search space (default proxyless)")
    p.add_argument("--resolution", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--latency-ms", type=float, help="latency budget (default: chosen from the space)")
    p.add_argument("--evaluations", type=int, default=2000, help="architectures searched (default 2000)")
    p.add_argument("--verify", type=int, default=5, help="winners measured on the device (default 5)")
    p.add_argument("--out", type=Path, default=Path("hwlat-report"), help="report folder")
    p.add_argument("--inventory", type=Path, help="device inventory (default ./devices.toml)")
    p.add_argument("--db", type=Path, help=f"SQLite database (default $HWLAT_DB or {default_db_path()})")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("db", help="inspect or export the measurement database")
    dsub = p.add_subparsers(dest="db_command", required=True)
    q = dsub.add_parser("export", help="write measurements as CSV or JSON")
    q.add_argument("--db", type=Path)
    q.add_argument("--format", choices=("csv", "json"), default="csv")
    q.add_argument("--device")
    q.add_argument("--backend")
    q.add_argument("-o", "--output", type=Path, required=True)
    q.set_defaults(func=cmd_db_export)

    _add_search_parser(sub)
    _add_table_parser(sub)
    _add_predictor_parsers(sub)
    return parser


def _device_args(p: argparse.ArgumentParser, many: bool) -> None:
    if many:
        p.add_argument("--device", action="append", help="device name (repeatable; default local)")
        p.add_argument("--label", help="every device carrying this inventory label")
    else:
        p.add_argument("--device", default="local", help="device name (default local)")
    p.add_argument(
        "--backend", default="ort", help="ort (ONNX Runtime), tvm (TVM, tuned) or tvm-untuned (default ort)"
    )
    p.add_argument(
        "--tune-trials",
        type=int,
        metavar="N",
        help=f"with --backend tvm: MetaSchedule candidates per kernel, timed on the device "
        f"(default {DEFAULT_TUNE_TRIALS})",
    )
    p.add_argument("--inventory", type=Path, help="device inventory (default ./devices.toml)")
    p.add_argument("--db", type=Path, help=f"SQLite database (default $HWLAT_DB or {default_db_path()})")


def _backend(args: argparse.Namespace, device: Device) -> HostBackend:
    options = {"tune_trials": args.tune_trials} if args.tune_trials is not None else {}
    if options and args.backend != "tvm":
        raise ValueError(f"--tune-trials applies to --backend tvm, not {args.backend!r}")
    return get_backend(args.backend, device, **options)


def _protocol_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("timing protocol")
    g.add_argument("--repeat", type=int, help="repeats per op (default 9)")
    g.add_argument("--min-repeat-ms", type=float, help="minimum length of one repeat (default 20)")
    g.add_argument("--cooldown-ms", type=float, help="pause after each op (default 0)")
    g.add_argument("--quick", action="store_true", help="a short, less precise protocol for smoke runs")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _protocol(args: argparse.Namespace) -> TimingProtocol:
    base = TimingProtocol.quick() if args.quick else TimingProtocol()
    overrides = {
        k: v
        for k, v in (
            ("repeat", args.repeat),
            ("min_repeat_ms", args.min_repeat_ms),
            ("cooldown_ms", args.cooldown_ms),
        )
        if v is not None
    }
    return TimingProtocol(**{**base.to_dict(), **overrides})


def _devices(args: argparse.Namespace) -> list[Device]:
    if args.label:
        found = devices_with_label(args.label, args.inventory)
        return found + [
            resolve_device(n, args.inventory) for n in args.device or [] if n not in {d.name for d in found}
        ]
    return [resolve_device(n, args.inventory) for n in dict.fromkeys(args.device or ["local"])]


def _space_ops(name: str, resolutions: list[int] | None) -> list[OpSpec]:
    return list(_space(name, resolutions).unique_ops())


def _space(name: str, resolutions: list[int] | None):
    """The space, built for the given input resolutions (default: the space's own set)."""
    from hwlat.search.spaces import get_space

    return get_space(name, resolutions=tuple(resolutions)) if resolutions else get_space(name)


def cmd_profile(args: argparse.Namespace) -> int:
    if args.adaptive:
        return cmd_profile_adaptive(args)
    specs = read_jsonl(args.ops) if args.ops else _space_ops(args.space, args.resolution)
    devices = _devices(args)
    protocol = _protocol(args)
    with Store(args.db) as store:
        campaigns = [
            Campaign(d, _backend(args, d), store, protocol, show_progress=not args.no_progress)
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
    status = 0
    for campaign, result in zip(campaigns, results, strict=True):
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
        m = Campaign(
            device, _backend(args, device), store, _protocol(args), show_progress=False
        ).measure_model(args.model)
    if not m.ok:
        print(f"hwlat: error: measuring {args.model} failed: {m.error_msg}", file=sys.stderr)
        return 1
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
        "model_bytes": m.extra["model_bytes"],
        "params": m.extra["params"],
        "peak_rss_mb": m.extra.get("peak_rss_mb"),
        "baseline_rss_mb": m.extra.get("baseline_rss_mb"),
    }
    if out["peak_rss_mb"] is not None:
        out["model_rss_mb"] = out["peak_rss_mb"] - out["baseline_rss_mb"]
    if args.json:
        print(json.dumps(out))
    else:
        flag = f"  (DISTURBED: {m.disturbance})" if m.disturbed else ""
        print(
            f"{args.model}: {m.median_ms:.3f} ms median (p10 {m.p10_ms:.3f}, p90 {m.p90_ms:.3f}) "
            f"on {m.device}/{m.backend} {m.backend_version}, {out['params']:,} params, "
            f"peak RSS {out['peak_rss_mb']:.0f} MB{flag}"
        )
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    for d in load_inventory(args.inventory).values():
        where = (
            "this machine"
            if d.is_local
            else (f"{d.user + '@' if d.user else ''}{d.host}{f':{d.port}' if d.port else ''}")
        )
        print(
            f"{d.name:16s} {where:32s} backends={','.join(d.backends)} threads={d.threads} "
            f"affinity={list(d.cpu_affinity) if d.cpu_affinity else 'any'} "
            f"labels={','.join(d.labels) or '-'}"
        )
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
    return 0 if report["ok"] else 1


def cmd_quickstart(args: argparse.Namespace) -> int:
    from hwlat.search.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(
        space=args.space,
        resolution=args.resolution,
        backend=args.backend,
        evaluations=args.evaluations,
        verify=args.verify,
        latency_ms=args.latency_ms,
    )
    device = resolve_device(args.device, args.inventory)
    with Store(args.db) as store:
        summary = run_quickstart(device, store, args.out, config)
    return 0 if summary["winners_measured"] else 1


def cmd_db_export(args: argparse.Namespace) -> int:
    with Store(args.db) as store:
        n = store.export(args.output, args.format, device=args.device, backend=args.backend)
    print(f"wrote {n} measurements to {args.output}")
    return 0


def _add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="find the best networks of a space under latency budgets",
        description="Search a space with a latency predictor per device; writes the "
        "Pareto front (JSON, PNG), hypervolume, all trials and the winners' ONNX to "
        "--out. Re-running the same command resumes an interrupted search.",
    )
    p.add_argument("--space", required=True, help="search space: proxyless, ofa_mbv3, nb201 or fbnet")
    p.add_argument(
        "--predictor",
        type=Path,
        action="append",
        required=True,
        help="trained latency predictor (repeatable: one per device)",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        action="append",
        required=True,
        help="latency budget, one per --predictor in the same order",
    )
    p.add_argument(
        "--strategy", default="evolution", help="evolution, nsga2, rl or random (default evolution)"
    )
    p.add_argument("--budget", type=int, default=1000, help="architectures to evaluate (default 1000)")
    p.add_argument(
        "--objective",
        default="flops",
        help="accuracy proxy to maximise: flops, params, naswot or synflow (default flops)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (holds the resumable study)")
    p.add_argument("--seed", type=int, default=0, help="strategy seed (default 0)")
    p.add_argument("--batch-size", type=int, help="architectures per step (default: the strategy's)")
    p.add_argument("--top", type=int, default=5, help="winners exported as ONNX (default 5)")
    g = p.add_argument_group("verification on the device")
    g.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="K",
        help="measure the top K winners on the device and compare with the prediction",
    )
    g.add_argument(
        "--device",
        action="append",
        help="device to verify on, one per --predictor (default: the predictor's device)",
    )
    g.add_argument(
        "--noise-band",
        type=float,
        default=0.05,
        help="measured latency up to budget x (1 + band) still passes (default 0.05)",
    )
    g.add_argument(
        "--verify-repeats",
        type=int,
        default=3,
        help="times each winner is measured; the fastest clean time is kept (default 3)",
    )
    g.add_argument("--backend", default="ort", help="ort (ONNX Runtime) or tvm (default ort)")
    g.add_argument("--inventory", type=Path, help="device inventory (default ./devices.toml)")
    g.add_argument("--db", type=Path, help=f"measurement database (default {default_db_path()})")
    _protocol_args(p)
    p.set_defaults(func=cmd_search)


def _load_predictor(path: Path):
    from hwlat.predictors import LatencyPredictor

    return LatencyPredictor.load(path)


def cmd_search(args: argparse.Namespace) -> int:
    from hwlat.search.objectives import LatencyObjective
    from hwlat.search.proxies import get_proxy
    from hwlat.search.runner import run_search
    from hwlat.search.spaces import get_space
    from hwlat.search.strategies import get_strategy
    from hwlat.search.verify import format_verification, verify_winners

    if len(args.latency_ms) != len(args.predictor):
        raise ValueError(
            f"{len(args.predictor)} --predictor but {len(args.latency_ms)} --latency-ms; "
            "give one latency budget per predictor, in the same order"
        )
    if args.device and len(args.device) != len(args.predictor):
        raise ValueError("give one --device per --predictor, or none to verify on each predictor's device")
    space = get_space(args.space)
    predictors = [_load_predictor(path) for path in args.predictor]
    latencies = [LatencyObjective(p, budget) for p, budget in zip(predictors, args.latency_ms, strict=True)]
    strategy = get_strategy(args.strategy, random_state=args.seed)
    print(
        f"searching {space.name} ({space.size():.3g} networks) with {strategy.name}, {args.budget} "
        f"evaluations, maximising {args.objective} under "
        + ", ".join(f"{o.name} <= {o.budget:g}" for o in latencies)
    )
    study, report = run_search(
        space,
        [get_proxy(args.objective), *latencies],
        strategy,
        args.budget,
        args.out,
        batch_size=args.batch_size,
        top_k=max(args.top, args.verify),
        show_progress=not args.no_progress,
    )
    for name, minimum in study.minima.items():
        print(f"fastest network found for {name}: {minimum.value:.3f} ms")
    print(report.summary())
    if not report.front:
        print(
            "hwlat: no evaluated network met every budget; raise --budget or the latency budgets",
            file=sys.stderr,
        )
        return 1
    if not args.verify:
        return 0
    status = 0
    names = args.device or [o.device for o in latencies]
    with Store(args.db) as store:
        for objective, name in zip(latencies, names, strict=True):
            device = resolve_device(name, args.inventory)
            results = verify_winners(
                study,
                objective,
                device,
                store,
                args.verify,
                args.out,
                backend=args.backend,
                protocol=_protocol(args),
                noise_band=args.noise_band,
                repeats=args.verify_repeats,
            )
            print(f"verified on {device.name}/{args.backend} (predicted vs measured):")
            print(format_verification(results))
            if not all(r.meets_budget_within_noise for r in results):
                status = 1
    return status


def _add_table_parser(sub: argparse._SubParsersAction) -> None:
    from hwlat.predictors.formats.lut_files import FORMATS

    p = sub.add_parser("table", help="export a search space's latency lookup table, or import one")
    tsub = p.add_subparsers(dest="table_command", required=True)
    q = tsub.add_parser(
        "export",
        help="write the table of a space from the store (ofa-yaml is what ProxylessNAS/OFA code loads)",
    )
    q.add_argument("--space", required=True, help="search space (proxyless, ofa_mbv3, nb201, fbnet)")
    q.add_argument("--device", default="local", help="device name in the store (default local)")
    q.add_argument("--backend", default="ort", help="backend in the store (default ort)")
    q.add_argument("--format", choices=FORMATS, default="ofa-yaml")
    q.add_argument(
        "--resolution",
        type=int,
        action="append",
        help="input resolutions (repeatable; default the space's own, e.g. 224 for proxyless)",
    )
    q.add_argument("-o", "--output", type=Path, required=True)
    q.add_argument("--db", type=Path, help=f"SQLite database (default $HWLAT_DB or {default_db_path()})")
    q.set_defaults(func=cmd_table_export)
    q = tsub.add_parser(
        "import", help="store a table file's blocks for a device (any name, reachable or not)"
    )
    q.add_argument("file", type=Path, help=".yaml (ofa-yaml), .csv or .json")
    q.add_argument("--device", required=True, help="device name to store the blocks under")
    q.add_argument("--backend", default="ort", help="backend name to store them under (default ort)")
    q.add_argument("--format", choices=FORMATS, help="default: from the file extension")
    q.add_argument("--space", help="also report keys that this space has no cell for")
    q.add_argument("--db", type=Path, help=f"SQLite database (default $HWLAT_DB or {default_db_path()})")
    q.set_defaults(func=cmd_table_import)


def cmd_table_export(args: argparse.Namespace) -> int:
    from hwlat.predictors.formats.lut_files import write_table
    from hwlat.predictors.formats.lut_store import table_from_store

    space = _space(args.space, args.resolution)
    with Store(args.db) as store:
        build = table_from_store(space, store, args.device, args.backend)
    header = {"space": space.name, "device": args.device, "backend": args.backend}
    n = write_table(build.entries, args.output, args.format, header)
    print(
        f"wrote {n} entries to {args.output} ({build.from_blocks} from imported blocks, "
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
        return 1
    return 0


def cmd_table_import(args: argparse.Namespace) -> int:
    from hwlat.predictors.formats.lut_files import read_table
    from hwlat.predictors.formats.lut_store import import_table

    entries = read_table(args.file, args.format)
    with Store(args.db) as store:
        n = import_table(entries, store, args.device, args.backend, source=str(args.file))
    print(f"imported {n} blocks from {args.file} for {args.device}/{args.backend}")
    if args.space:
        from hwlat.search.spaces import get_space

        known = set(get_space(args.space).cell_keys())
        unknown = [e.key for e in entries if e.key not in known]
        if unknown:
            print(
                f"hwlat: {len(unknown)} keys are not cells of {args.space} (first: {unknown[0]})",
                file=sys.stderr,
            )
    return 0


# ----- predictors: train, predict, validate, adaptive profiling --------------------------------
def _add_predictor_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="profile kernels in context and build a latency predictor",
        description="Probe fusions, measure kernels (a space's cells and a training "
        "set for the kernel regressor), calibrate on networks measured end to end, and "
        "save the predictor (JSON). Re-running resumes from the store.",
    )
    p.add_argument("--device", default="local", help="device name (default local)")
    p.add_argument("--backend", default="ort", help="ort (default; kernels are read from its profiler)")
    p.add_argument("--space", help="search space whose cells go into the table exactly")
    p.add_argument(
        "--kind",
        choices=("lut", "gbdt"),
        default="lut",
        help="lut: measured kernels looked up, regressor for the rest (default); "
        "gbdt: the kernel regressor predicts every kernel",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="predictor file to write")
    p.add_argument(
        "--sampled-kernels",
        type=int,
        default=600,
        help="random kernel configurations measured for the regressor (default 600)",
    )
    p.add_argument(
        "--random-networks",
        type=int,
        default=30,
        help="random networks whose kernels are measured for the regressor (default 30)",
    )
    p.add_argument(
        "--calibration-networks",
        type=int,
        default=16,
        help="networks measured end to end to fit the overhead (default 16)",
    )
    p.add_argument("--passes", type=int, default=3, help="re-measure disturbed rows up to N times")
    p.add_argument("--inventory", type=Path, help="device inventory (default ./devices.toml)")
    p.add_argument("--db", type=Path, help=f"SQLite database (default $HWLAT_DB or {default_db_path()})")
    _protocol_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict the latency of an ONNX model with a trained predictor")
    p.add_argument("model", type=Path)
    p.add_argument("--predictor", type=Path, required=True)
    p.add_argument(
        "--lenient",
        action="store_true",
        help="leave ops the splitter does not know out (listed as warnings) instead of failing",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (latency_ms, kernels, ...)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("validate", help="measure ONNX models end to end and compare with a predictor")
    p.add_argument("--predictor", type=Path, required=True)
    p.add_argument("--models", type=Path, required=True, help="folder of .onnx files")
    p.add_argument("--device", help="device to measure on (default: the predictor's device)")
    p.add_argument("--backend", help="backend (default: the predictor's backend)")
    p.add_argument(
        "--plot",
        type=Path,
        default=Path("hwlat-validate.png"),
        help="predicted-vs-measured PNG (default hwlat-validate.png)",
    )
    p.add_argument("--force", action="store_true", help="re-measure models already in the store")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measure each model N times, minutes apart, and keep the fastest clean time "
        "(contention only adds time; default 3)",
    )
    p.add_argument(
        "--include-disturbed",
        action="store_true",
        help="count measurements flagged as disturbed (default: listed, left out)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--inventory", type=Path, help="device inventory (default ./devices.toml)")
    p.add_argument("--db", type=Path, help=f"SQLite database (default $HWLAT_DB or {default_db_path()})")
    _protocol_args(p)
    p.set_defaults(func=cmd_validate)


def cmd_train(args: argparse.Namespace) -> int:
    from hwlat.predictors.building.training import NotEnoughDataError, TrainingConfig, train_predictor

    device = resolve_device(args.device, args.inventory)
    space = None
    if args.space:
        from hwlat.search.spaces import get_space

        space = get_space(args.space)
    config = TrainingConfig(
        kind=args.kind,
        sampled_kernels=args.sampled_kernels,
        random_networks=args.random_networks,
        calibration_networks=args.calibration_networks,
        passes=args.passes,
        kernel_protocol=TimingProtocol.quick() if args.quick else None,
        model_protocol=_protocol(args),
    )
    with Store(args.db) as store:
        try:
            predictor = train_predictor(device, store, config, space, args.backend)
        except NotEnoughDataError as exc:
            print(f"hwlat: error: {exc}", file=sys.stderr)
            return 1
    predictor.save(args.output)
    t = predictor.meta["training"]
    print(
        f"wrote {args.output}: {predictor.kind} predictor for {device.name}/{args.backend}, "
        f"{len(predictor.table)} table entries, regressor on {t['kernels']} kernels, overhead fitted on "
        f"{predictor.table.overhead.fitted_on} networks, {t['kernel_device_seconds'] / 60:.1f} "
        f"device-minutes of kernel profiling"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hwlat.predictors import LatencyPredictor, MissingKernelError

    if not args.model.exists():
        raise FileNotFoundError(f"model {args.model} does not exist")
    predictor = LatencyPredictor.load(args.predictor)
    try:
        pred = predictor.predict(args.model, strict=not args.lenient)
    except MissingKernelError as exc:
        print(f"hwlat: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(args.model),
                    "device": predictor.device,
                    "backend": predictor.backend,
                    "kind": predictor.kind,
                    **pred.to_dict(),
                }
            )
        )
        return 0
    print(
        f"{args.model}: {pred.latency_ms:.3f} ms predicted on {predictor.device}/{predictor.backend} "
        f"({len(pred.kernels)} kernels, {pred.overhead_ms:.3f} ms fixed overhead)"
    )
    for k in sorted(pred.kernels, key=lambda k: -k.latency_ms)[:10]:
        print(f"  {k.latency_ms:8.3f} ms  {k.source:9s} {k.key[:90]}")
    if pred.fallbacks:
        print(f"  {len(pred.fallbacks)} kernels are not in the table: predicted by the kernel regressor")
    for w in pred.warnings:
        print(f"  warning: {w}", file=sys.stderr)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from hwlat.predictors import LatencyPredictor
    from hwlat.predictors.building.profiling import KernelProfiler
    from hwlat.predictors.metrics import accuracy, plot

    predictor = LatencyPredictor.load(args.predictor)
    paths = sorted(args.models.glob("*.onnx"))
    if not paths:
        raise FileNotFoundError(f"no .onnx files in {args.models}")
    device = resolve_device(args.device or predictor.device, args.inventory)
    backend = args.backend or predictor.backend
    if device.name != predictor.device or backend != predictor.backend:
        print(
            f"hwlat: warning: the predictor was trained for {predictor.device}/{predictor.backend}, "
            f"measuring on {device.name}/{backend}",
            file=sys.stderr,
        )
    with Store(args.db) as store:
        profiler = KernelProfiler(device, store, backend=backend)
        measured = profiler.measure_models(paths, _protocol(args), force=args.force, repeats=args.repeats)
    names, pred_ms, meas_ms, skipped = [], [], [], []
    for path, m in zip(paths, measured, strict=True):
        if not m.ok or (m.disturbed and not args.include_disturbed):
            skipped.append(f"{path.name}: {m.error_msg or m.disturbance}")
            continue
        names.append(path.stem)
        pred_ms.append(predictor.predict(path).latency_ms)
        meas_ms.append(m.median_ms)
    if not names:
        print("hwlat: error: no model was measured cleanly:\n  " + "\n  ".join(skipped), file=sys.stderr)
        return 1
    report = accuracy(pred_ms, meas_ms, names)
    plot(report, args.plot, f"{predictor.device}/{predictor.backend}: {report.summary()}")
    if args.json:
        print(json.dumps({**report.to_dict(), "skipped": skipped, "plot": str(args.plot)}))
        return 0
    for n, p, m in zip(names, pred_ms, meas_ms, strict=True):
        print(f"  {n:32s} predicted {p:9.3f} ms  measured {m:9.3f} ms  {100 * (p / m - 1):+6.1f}%")
    for line in skipped:
        print(f"  left out {line}")
    print(report.summary())
    print(f"plot: {args.plot}")
    return 0


def cmd_profile_adaptive(args: argparse.Namespace) -> int:
    from hwlat.predictors.building.profiling import KernelProfiler
    from hwlat.predictors.building.training import NotEnoughDataError, adaptive_profile, fusion_rules

    devices = _devices(args)
    if len(devices) != 1:
        raise ValueError("--adaptive profiles one device at a time; give one --device")
    with Store(args.db) as store:
        profiler = KernelProfiler(
            devices[0],
            store,
            TimingProtocol.quick() if args.quick else None,
            args.backend,
            show_progress=not args.no_progress,
        )
        try:
            report = adaptive_profile(profiler, fusion_rules(profiler), args.budget_minutes)
        except NotEnoughDataError as exc:
            print(f"hwlat: error: {exc}", file=sys.stderr)
            return 1
    print(report.summary())
    print(f"database: {store.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
