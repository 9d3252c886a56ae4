"""``hwlat train``, ``hwlat predict`` and ``hwlat validate``: build, use and check a latency predictor."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hwlat.cli import options
from hwlat.devices.inventory import resolve_device
from hwlat.errors import EXIT_FAILED, ConfigError, HwlatError
from hwlat.profiler.onnx_models import load_model
from hwlat.profiler.protocol import TimingProtocol


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="profile kernels in context and build a latency predictor",
        description="Probe fusions, measure kernels (a space's cells and a training "
        "set for the kernel regressor), calibrate on networks measured end to end, and "
        "save the predictor (JSON). Re-running resumes from the store.",
    )
    options.add_device(p)
    p.add_argument(
        "--backend",
        default="ort",
        help="ort (default; kernels are read from its profiler), tvm (TVM, every kernel tuned: "
        "--tune-trials) or tvm-untuned (TVM's default schedules); TVM kernels are compiled alone "
        "and timed end to end",
    )
    p.add_argument(
        "--tune-trials",
        type=options.integer(1),
        metavar="N",
        help="with --backend tvm: MetaSchedule candidates per kernel, timed on the device "
        f"(default {options.DEFAULT_TUNE_TRIALS})",
    )
    p.add_argument("--space", help="search space whose cells go into the table exactly")
    p.add_argument(
        "--kind",
        choices=("lut", "gbdt"),
        default="lut",
        help="lut: measured kernels looked up, regressor for the rest (default); "
        "gbdt: the kernel regressor predicts every kernel",
    )
    options.add_out(p, "predictor file to write")
    p.add_argument(
        "--sampled-kernels",
        type=options.integer(0),
        default=600,
        help="random kernel configurations measured for the regressor (default 600)",
    )
    p.add_argument(
        "--random-networks",
        type=options.integer(0),
        default=30,
        help="random networks whose kernels are measured for the regressor (default 30)",
    )
    p.add_argument(
        "--calibration-networks",
        type=options.integer(1),
        default=16,
        help="networks measured end to end to fit the overhead (default 16)",
    )
    p.add_argument(
        "--passes",
        type=options.integer(0),
        default=3,
        help="re-measure disturbed rows up to N times (default 3)",
    )
    p.add_argument(
        "--exclude-kernels-of",
        type=Path,
        nargs="+",
        default=[],
        metavar="MODEL",
        help="ONNX models (files or folders) held out: no kernel sharing an op with them is trained "
        "on, so that validating on them is a true never-seen result",
    )
    options.add_dtypes(p)
    options.add_db(p)
    options.add_wait(p)
    options.add_protocol(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "predict",
        help="predict the latency of an ONNX model with a trained predictor",
        description="Split the model into the kernels the runtime runs and sum their predicted cost.",
    )
    p.add_argument("model", type=Path, help="the .onnx file")
    p.add_argument("--predictor", type=Path, required=True, help="predictor file (hwlat train -o)")
    p.add_argument(
        "--lenient",
        action="store_true",
        help="estimate ops the splitter does not know on the device's roofline (listed in "
        "unsupported_ops) instead of failing",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (latency_ms, kernels, ...)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "validate",
        help="measure ONNX models end to end and compare with a predictor",
        description="Measure every model of a folder on the device and report the predictor's "
        "accuracy (RMSE, RMSPE, share within 5%%/10%%, Spearman) with a plot, and its peak-memory "
        "accuracy (share within 10%%, signed bias).",
    )
    p.add_argument("--predictor", type=Path, required=True, help="predictor file (hwlat train -o)")
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
        type=options.integer(1),
        default=3,
        help="measure each model N times, in passes apart in time, and keep the median clean pass "
        "(the steady-state latency a plain runtime loop reports; default 3)",
    )
    p.add_argument(
        "--include-disturbed",
        action="store_true",
        help="count measurements flagged as disturbed (default: listed, left out)",
    )
    p.add_argument(
        "--lenient",
        action="store_true",
        help="predict models with ops the splitter does not know (estimated on the device's roofline, "
        "listed) instead of leaving the models out",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    options.add_inventory(p)
    options.add_db(p)
    options.add_wait(p)
    options.add_protocol(p)
    p.set_defaults(func=cmd_validate)


def cmd_train(args: argparse.Namespace) -> int:
    from hwlat.predictors.building import TrainingConfig, train_predictor

    device = resolve_device(args.device, args.inventory)
    space = options.space(args.space) if args.space else None
    config = TrainingConfig(
        exclude_ops=_held_out_ops(args.exclude_kernels_of, args.backend),
        kind=args.kind,
        sampled_kernels=args.sampled_kernels,
        random_networks=args.random_networks,
        calibration_networks=args.calibration_networks,
        passes=args.passes,
        dtypes=options.dtypes(args),
        tune_trials=args.tune_trials,
        kernel_protocol=TimingProtocol.quick() if args.quick else None,
        model_protocol=options.protocol(args),
    )
    with options.open_store(args) as store:
        predictor = train_predictor(device, store, config, space, args.backend)
    predictor.save(args.out)
    t = predictor.meta["training"]
    compiled = f", {t['compile_seconds'] / 60:.1f} compile-minutes" if t["compile_seconds"] else ""
    tuned = f", {t['tune_seconds'] / 60:.1f} tuning-minutes" if t["tune_seconds"] else ""
    print(
        f"wrote {args.out}: {predictor.kind} predictor for {device.name}/{args.backend}, "
        f"{len(predictor.table)} table entries, regressor on {t['kernels']} kernels, overhead fitted on "
        f"{predictor.table.overhead.fitted_on} networks, {t['kernel_device_seconds'] / 60:.1f} "
        f"device-minutes of kernel profiling{compiled}{tuned}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hwlat.predictors import LatencyPredictor

    model = load_model(args.model)
    predictor = LatencyPredictor.load(args.predictor)
    pred = predictor.predict(model, strict=not args.lenient)
    if args.json:
        meta = {"model": str(args.model), "device": predictor.device, "backend": predictor.backend}
        print(json.dumps({**meta, "kind": predictor.kind, **pred.to_dict()}))
        return 0
    print(
        f"{args.model}: {pred.latency_ms:.3f} ms predicted on {predictor.device}/{predictor.backend} "
        f"({len(pred.kernels)} kernels, {pred.overhead_ms:.3f} ms fixed overhead); peak memory "
        f"{pred.peak_memory_mb:.1f} MB ({pred.weights_mb:.1f} MB weights, {pred.activations_mb:.1f} MB "
        f"activations at their peak, {pred.arena_mb:.1f} MB in ORT's arena after runs)"
    )
    for k in sorted(pred.kernels, key=lambda k: -k.latency_ms)[:10]:
        print(f"  {k.latency_ms:8.3f} ms  {k.source:9s} {k.key[:90]}")
    if pred.fallbacks:
        print(f"  {len(pred.fallbacks)} kernels are not in the table: predicted by the kernel regressor")
    if pred.unsupported_ops:
        estimated_ms = sum(u["latency_ms"] for u in pred.unsupported_ops)
        print(
            f"  {len(pred.unsupported_ops)} unsupported nodes estimated on the device's roofline: "
            f"{estimated_ms:.3f} ms of the total"
        )
    for w in pred.warnings:
        print(f"  warning: {w}", file=sys.stderr)
    if pred.extrapolated_kernels:
        print(f"  warning: {extrapolation_note(pred.extrapolated_kernels)}", file=sys.stderr)
    return 0


def extrapolation_note(extrapolated: list[dict]) -> str:
    """One line: how many kernels the regressor extrapolates, with the first one's reason."""
    first = extrapolated[0]
    name, r = next(iter(first["features"].items()))
    side = f"> {r['max']:g}" if r["value"] > r["max"] else f"< {r['min']:g}"
    return (
        f"{len(extrapolated)} kernels lie outside the range the kernel regressor was trained on, so "
        f"their latency is extrapolated (e.g. {first['key'][:60]}: {name} {r['value']:g} {side}); "
        "profile such kernels (hwlat profile) and train again to cover them"
    )


def _held_out_ops(paths: list[Path], backend: str) -> frozenset[str]:
    from hwlat.predictors import FusionRules
    from hwlat.predictors.building.training import network_ops

    models = [m for p in paths for m in (sorted(p.glob("*.onnx")) if p.is_dir() else [p])]
    missing = [str(m) for m in models if not m.is_file()]
    if missing or (paths and not models):
        raise ConfigError(
            f"--exclude-kernels-of: no such ONNX model {', '.join(missing) or paths[0]}",
            "pass .onnx files or folders holding them",
        )
    return network_ops(models, FusionRules(backend, {})) if models else frozenset()


def cmd_validate(args: argparse.Namespace) -> int:
    from hwlat.predictors import LatencyPredictor
    from hwlat.predictors.building import KernelProfiler
    from hwlat.predictors.metrics import accuracy, memory_accuracy, memory_summary, plot

    predictor = LatencyPredictor.load(args.predictor)
    if not args.models.is_dir():
        raise ConfigError(f"{args.models} is not a folder", "pass a folder of exported .onnx models")
    paths = sorted(args.models.glob("*.onnx"))
    if not paths:
        raise ConfigError(f"no .onnx files in {args.models}", "pass a folder of exported models")
    # Predict first: a model that cannot be read or predicted costs no device time and does not
    # stop the others (every measurement taken is stored as it is taken).
    predicted, skipped = {}, []
    for path in paths:
        try:
            predicted[path] = predictor.predict(path, strict=not args.lenient)
        except HwlatError as exc:
            skipped.append(f"{path.name}: {exc}")
    paths = list(predicted)
    device = resolve_device(args.device or predictor.device, args.inventory)
    backend = args.backend or predictor.backend
    if device.name != predictor.device or backend != predictor.backend:
        print(
            f"hwlat: warning: the predictor was trained for {predictor.device}/{predictor.backend}, "
            f"measuring on {device.name}/{backend}",
            file=sys.stderr,
        )
    measured = []
    if paths:
        # tuned TVM: the models are tuned with the predictor's budget (its kernels' schedules
        # are in the shared database already)
        trials = predictor.meta.get("training", {}).get("tune_trials") if backend == "tvm" else None
        with options.open_store(args) as store:
            profiler = KernelProfiler(device, store, backend=backend, tune_trials=trials)
            measured = profiler.measure_models(
                paths, options.protocol(args), force=args.force, repeats=args.repeats
            )
    names, pred_ms, meas_ms = [], [], []
    memory_names, pred_mb, meas_mb = [], [], []
    for path, m in zip(paths, measured, strict=True):
        peak_mb = predicted[path].peak_memory_mb
        if peak_mb is not None and m.model_rss_mb is not None:
            # memory does not depend on contention: disturbed runs count here
            memory_names.append(path.stem)
            pred_mb.append(peak_mb)
            meas_mb.append(m.model_rss_mb)
        if not m.ok or (m.disturbed and not args.include_disturbed):
            skipped.append(f"{path.name}: {m.error_msg or m.disturbance}")
            continue
        names.append(path.stem)
        pred_ms.append(predicted[path].latency_ms)
        meas_ms.append(m.median_ms)
    if not names:
        print("hwlat: error: no model was measured cleanly:\n  " + "\n  ".join(skipped), file=sys.stderr)
        return EXIT_FAILED
    report = accuracy(pred_ms, meas_ms, names)
    memory = memory_accuracy(pred_mb, meas_mb, memory_names)
    plot(report, args.plot, f"{predictor.device}/{predictor.backend}: {report.summary()}")
    if args.json:
        print(json.dumps({**report.to_dict(), "memory": memory, "skipped": skipped, "plot": str(args.plot)}))
        return 0
    mb = {row["name"]: row for row in memory["rows"]}
    for n, p, m in zip(names, pred_ms, meas_ms, strict=True):
        row = mb.get(n)
        peak = (
            f"  peak {row['predicted_mb']:6.1f} MB vs {row['measured_mb']:6.1f} MB"
            f" {100 * row['error']:+6.1f}%"
            if row
            else ""
        )
        print(f"  {n:32s} predicted {p:9.3f} ms  measured {m:9.3f} ms  {100 * (p / m - 1):+6.1f}%{peak}")
    for line in skipped:
        print(f"  left out {line}")
    print(report.summary())
    print(memory_summary(memory))
    print(f"plot: {args.plot}")
    return 0
