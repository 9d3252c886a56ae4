"""TVM predictor benchmark: networks predicted from kernels compiled alone by TVM vs measured with TVM.

1. train   - ``train_predictor(backend=...)``: the kernels of --random-train random networks and
             --sampled kernels of the sampler, each compiled alone by TVM and timed end to end
             (less the VM's per-call overhead), a gbdt regressor fitted on them, the overhead
             calibrated on --calibration random networks measured end to end.
2. measure - evaluation networks (published CNNs from hwlat.zoo at --resolution, and
             --eval-random random networks at their own resolution capped to --max-resolution),
             never part of training, each compiled whole by TVM and timed end to end.
3. predict - two predictors on the same networks:
             * ``table``: the evaluation networks' own kernels measured (compiled alone) and
               looked up: how well kernel times add up to a network's (the decomposition);
             * ``gbdt``: the regressor alone, on kernels it never saw (the generalisation).

4. decomp  - (--decomposition-rounds R) the same check without the agent and its store, in this
             process: each network and each of its kernels (compiled alone) timed R times,
             interleaved, the fastest of each kept (contention only adds time), so that the
             kernels' sum and the network are compared under the same machine state; networks
             slower than --decomposition-max-ms are left out.

Prints a table (predicted vs measured per network, % within +-10%, RMSPE) and the cost:
device-minutes of timing and host minutes of TVM compiling (and tuning with --backend tvm).
The machine is shared: --lenient keeps timings the canary flags as disturbed (else a loaded
2-core box leaves almost nothing clean); the load average is printed with every number.

    nice -n 10 python -m benchmarks.bench_tvm_predictor --work /tmp/tvm/bench --lenient
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from hwlat import zoo
from hwlat.devices.device import local_device
from hwlat.predictors import LatencyPredictor, LatencyTable
from hwlat.predictors.building.profiling import CALL_PROBE, KernelProfiler, device_seconds
from hwlat.predictors.building.training import TrainingConfig, train_predictor
from hwlat.predictors.kernels.splitter import ModelSplitter
from hwlat.predictors.metrics import accuracy
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

PUBLISHED = (
    "mobilenet_v2_0.5",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mnasnet_a1",
    "efficientnet_b0",
    "shufflenet_v2",
    "squeezenet_1_1",
    "resnet18",
)
# Timings the canary may flag as disturbed are kept (a loaded shared machine); few repeats.
LENIENT = TimingProtocol(
    warmup_ms=5.0, warmup_runs=1, min_repeat_ms=5.0, repeat=5, canary_repeat=1, canary_min_repeat_ms=2.0,
    max_retries=0, canary_tolerance=100.0, max_cv=100.0,
)  # fmt: skip


def load() -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg())


def eval_networks(
    work: Path, names: list[str], resolution: int, random_count: int, max_res: int
) -> list[Path]:
    """Published CNNs at ``resolution`` and random networks (seeds 1000+, never trained on)."""
    directory = work / "eval"
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / f"{name}_{resolution}.onnx"
        if not path.exists():
            zoo.export_onnx(zoo.build(name), path, resolution)
        paths.append(path)
    for seed in range(1000, 1000 + random_count):
        path = directory / f"random_{seed}.onnx"
        if not path.exists():
            module, res = zoo.random_network(seed)
            zoo.export_onnx(module, path, min(res, max_res))
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-tvm-predictor"))
    ap.add_argument("--backend", default="tvm-untuned", choices=("tvm-untuned", "tvm"))
    ap.add_argument("--tune-trials", type=int, help="with --backend tvm")
    ap.add_argument("--networks", default=",".join(PUBLISHED), help="zoo names, comma-separated")
    ap.add_argument("--resolution", type=int, default=96, help="input resolution of the zoo networks")
    ap.add_argument("--eval-random", type=int, default=4, help="random evaluation networks")
    ap.add_argument("--max-resolution", type=int, default=128, help="cap on random networks' resolution")
    ap.add_argument("--random-train", type=int, default=6, help="random networks whose kernels train")
    ap.add_argument("--sampled", type=int, default=400, help="sampled kernels for training")
    ap.add_argument("--calibration", type=int, default=3, help="random networks calibrating the overhead")
    ap.add_argument("--repeats", type=int, default=1, help="end-to-end passes per evaluation network")
    ap.add_argument("--lenient", action="store_true", help="keep timings flagged as disturbed")
    ap.add_argument("--decomposition-rounds", type=int, default=0, help="in-process check (stage 4)")
    ap.add_argument("--decomposition-max-ms", type=float, default=2000.0)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    device = local_device()
    protocol = LENIENT if args.lenient else None
    results: dict = {"backend": args.backend, "load_start": load(), "lenient": args.lenient}
    print(f"{args.backend} on {device.name}; {results['load_start']}")
    # Two stores: the regressor is fitted on every kernel row of its store, so the evaluation
    # networks' kernels (for the table) must not land there.
    with Store(args.work / "hwlat.db") as store, Store(args.work / "eval.db") as eval_store:
        started = time.monotonic()
        config = TrainingConfig(
            kind="gbdt",
            sampled_kernels=args.sampled,
            random_networks=args.random_train,
            calibration_networks=args.calibration,
            model_repeats=1,
            tune_trials=args.tune_trials,
            kernel_protocol=protocol,
            model_protocol=protocol,
        )
        gbdt = train_predictor(device, store, config, backend=args.backend)
        training = gbdt.meta["training"]
        results["train"] = {**training, "wall_s": round(time.monotonic() - started, 1), "load": load()}
        print(f"trained on {training['kernels']} kernels; {load()}")

        paths = eval_networks(
            args.work,
            [n for n in args.networks.split(",") if n],
            args.resolution,
            args.eval_random,
            args.max_resolution,
        )
        profiler = KernelProfiler(device, eval_store, protocol, args.backend, tune_trials=args.tune_trials)
        started = time.monotonic()
        models = profiler.measure_models(paths, protocol, repeats=args.repeats)
        kept = [(p, m.median_ms) for p, m in zip(paths, models, strict=True) if m.median_ms and m.ok]
        results["measure"] = {
            "networks": len(kept),
            "failed": len(paths) - len(kept),
            "disturbed": sum(not m.clean for m in models),
            "device_s": round(device_seconds(models), 1),
            "wall_s": round(time.monotonic() - started, 1),
            "load": load(),
        }
        print(f"measured {len(kept)} networks end to end; {load()}")

        splitter = ModelSplitter(gbdt.fusion_rules)
        kernels = list(dict.fromkeys(s.kernel for p, _ in kept for s in splitter.split(p).kernels))
        started = time.monotonic()
        report = profiler.measure(kernels)
        keys = [CALL_PROBE.key, *(k.key for k in kernels)]
        rows = profiler.rows()
        results["eval_kernels"] = {
            "kernels": len(kernels),
            "failed": report.failed,
            "device_s": round(device_seconds(rows[k] for k in keys if k in rows), 1),
            "wall_s": round(time.monotonic() - started, 1),
            "load": load(),
        }
        results["eval_build"] = profiler.build_seconds()
        table = LatencyPredictor(
            LatencyTable(profiler.costs(kernels), gbdt.regressor, gbdt.table.overhead),
            gbdt.fusion_rules,
            gbdt.device,
            gbdt.backend,
            "lut",
            gbdt.meta,
        )

    names = [p.stem for p, _ in kept]
    measured = [ms for _, ms in kept]
    predictions = {
        kind: [pr.predict(p).latency_ms for p, _ in kept] for kind, pr in (("table", table), ("gbdt", gbdt))
    }
    reports = {kind: accuracy(pred, measured, names) for kind, pred in predictions.items()}
    results["accuracy"] = {kind: r.to_dict() for kind, r in reports.items()}
    results["load_end"] = load()

    print("\n| network | measured ms | table ms | table err | gbdt ms | gbdt err |")
    print("|---|---:|---:|---:|---:|---:|")
    for i, name in enumerate(names):
        t, g = predictions["table"][i], predictions["gbdt"][i]
        print(
            f"| {name} | {measured[i]:.2f} | {t:.2f} | {100 * (t / measured[i] - 1):+.1f}% "
            f"| {g:.2f} | {100 * (g / measured[i] - 1):+.1f}% |"
        )
    print(
        "\n| predictor | n | within +-10% | within +-5% | RMSPE | Spearman |\n|---|---:|---:|---:|---:|---:|"
    )
    for kind, r in reports.items():
        print(
            f"| {kind} | {len(r.names)} | {100 * r.within_10:.0f}% | {100 * r.within_5:.0f}% "
            f"| {r.rmspe:.1f}% | {r.spearman:.3f} |"
        )
    t, m, e, b = results["train"], results["measure"], results["eval_kernels"], results["eval_build"]
    print(
        f"\ncost: training {t['kernel_device_seconds'] / 60:.1f} device-min (kernels), "
        f"{t['compile_seconds'] / 60:.1f} compile-min, {t['tune_seconds'] / 60:.1f} tune-min, "
        f"{t['wall_s'] / 60:.1f} min wall; evaluation networks {m['device_s'] / 60:.1f} device-min; "
        f"their kernels {e['device_s'] / 60:.1f} device-min; evaluation compiles "
        f"{b['compile_seconds'] / 60:.1f} min; {results['load_end']}"
    )
    if args.decomposition_rounds:
        slow = {p.stem for p, ms in kept if ms > args.decomposition_max_ms}
        rows = decomposition(
            [p for p, _ in kept if p.stem not in slow], gbdt.fusion_rules, args, device.threads
        )
        results["decomposition"] = {"rows": rows, "left_out": sorted(slow), "load": load()}
        print(f"\nin-process, fastest of {args.decomposition_rounds} interleaved rounds ({load()}):")
        print("| network | network ms | kernels | kernels' sum ms | sum / network - 1 |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['name']} | {r['network_ms']:.2f} | {r['kernels']} | {r['kernels_ms']:.2f} "
                f"| {100 * r['error']:+.1f}% |"
            )
        errors = [abs(r["error"]) for r in rows]
        if errors:
            within = sum(e <= 0.10 for e in errors)
            print(f"{within}/{len(errors)} within +-10%; left out (slower than the cap): {sorted(slow)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def decomposition(paths: list[Path], rules, args: argparse.Namespace, threads: int) -> list[dict]:
    """Each network's fastest time against the sum of its kernels' fastest times (less the VM's
    per-call overhead), all timed interleaved in this process with TVM's time_evaluator."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    from hwlat.profiler.backends import get_backend
    from hwlat.profiler.backends.tvm.tune import load_tvm

    tvm = load_tvm()
    backend = get_backend(
        args.backend, local_device(), **({"tune_trials": args.tune_trials} if args.tune_trials else {})
    )
    dev = tvm.cpu()

    def timer(library: Path):
        vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev)
        inputs = vm["hwlat_example_inputs"]()
        f = vm.time_evaluator("main", dev, number=1, repeat=3, min_repeat_ms=10)
        return lambda: f(*inputs).median * 1e3

    probe = timer(backend.artifact(CALL_PROBE))
    splitter = ModelSplitter(rules)
    rows = []
    for path in paths:
        kernels = [s.kernel for s in splitter.split(path).kernels]
        timers = [timer(backend.model_artifact(path)), probe, *(timer(backend.artifact(k)) for k in kernels)]
        best = [float("inf")] * len(timers)
        for _ in range(args.decomposition_rounds):
            best = [min(b, t()) for b, t in zip(best, timers, strict=True)]
        network_ms, probe_ms, kernel_ms = best[0], best[1], best[2:]
        total = sum(max(0.1 * k, k - probe_ms) for k in kernel_ms)
        rows.append(
            {
                "name": path.stem,
                "network_ms": network_ms,
                "kernels": len(kernels),
                "kernels_ms": total,
                "error": total / network_ms - 1,
            }  # fmt: skip
        )
    return rows


if __name__ == "__main__":
    main()
