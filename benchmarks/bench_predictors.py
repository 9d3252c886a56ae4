"""Predictor benchmarks: accuracy, profiling cost, query speed, few-shot transfer.

Stages (``--stages``, comma-separated; every measurement goes to ``--db`` first, so a re-run
resumes and only new stages measure):
  train     profile kernels in context, fit the kernel regressor and overhead (general predictor)
  zoo       published CNNs and variants, never seen in training: measured end to end vs predicted
  curve     zoo accuracy of regressors fitted on the first 10/25/50/100% of the kernel rows
            (in measurement order) against the device-minutes those rows took
  spaces    per search space: a table predictor with the space's kernels, then --archs random
            architectures measured end to end vs predicted
  query     time of one (space, arch) prediction and batch throughput
  fewshot   ArchLatencyRegressor with 10 and 20 target-device samples, the other local
            configurations as reference devices (threads 1/2, ORT optimisation levels)

    nice -n 10 python -m benchmarks.bench_predictors --work /tmp/bench-pred --stages train,zoo

The machine is shared: every table states the load average, and measurements the canary
flags as disturbed are left out and counted. Networks are measured end to end several times
(``--repeats``-style, minutes apart) and the fastest clean time is kept, since contention only
ever adds time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from hwlat import zoo
from hwlat.devices.device import local_device
from hwlat.predictors import ArchLatencyRegressor, KernelRegressor, LatencyPredictor, LatencyTable
from hwlat.predictors.building.profiling import KernelProfiler, device_seconds
from hwlat.predictors.building.training import (
    TrainingConfig,
    fit_overhead,
    measured_kernels,
    random_networks,
    space_kernels,
    space_networks,
    train_predictor,
)
from hwlat.predictors.metrics import accuracy, plot
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

SPACES = ("proxyless", "ofa_mbv3", "fbnet", "nb201")


def load() -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg())


def stage_train(ctx: dict) -> dict:
    predictor = train_predictor(ctx["device"], ctx["store"], TrainingConfig(kind="lut"), log=ctx["log"])
    predictor.save(ctx["work"] / "general-lut.json")
    gbdt = LatencyPredictor(
        LatencyTable({}, predictor.regressor, predictor.table.overhead),
        predictor.fusion_rules,
        predictor.device,
        predictor.backend,
        "gbdt",
        predictor.meta,
    )
    gbdt.save(ctx["work"] / "general-gbdt.json")
    return {
        "training": predictor.meta["training"],
        "fusion_rules": predictor.fusion_rules.fused,
        "overhead": predictor.table.overhead.to_dict(),
        "table_entries": len(predictor.table),
    }


def _zoo_paths(ctx: dict) -> list[Path]:
    directory = ctx["work"] / "zoo"
    names = [*zoo.ZOO, *zoo.VARIANTS]
    missing = [n for n in names if not (directory / f"{n}.onnx").exists()]
    if missing:
        zoo.export_all(directory, missing)
    return [directory / f"{n}.onnx" for n in names]


def _measure(ctx: dict, paths: list[Path], repeats: int = 3) -> tuple[list[Path], list[float], int]:
    """Clean end-to-end times (fastest of ``repeats``, minutes apart); disturbed ones left out."""
    rows = KernelProfiler(ctx["device"], ctx["store"]).measure_models(paths, repeats=repeats)
    kept = [(p, m.median_ms) for p, m in zip(paths, rows, strict=True) if m.clean]
    return [p for p, _ in kept], [ms for _, ms in kept], len(paths) - len(kept)


def stage_zoo(ctx: dict) -> dict:
    paths, measured, disturbed = _measure(ctx, _zoo_paths(ctx))
    out = {"disturbed_left_out": disturbed, "load": load()}
    for kind in ("lut", "gbdt"):
        predictor = LatencyPredictor.load(ctx["work"] / f"general-{kind}.json")
        predicted = [predictor.predict(p).latency_ms for p in paths]
        report = accuracy(predicted, measured, [p.stem for p in paths])
        plot(report, ctx["work"] / f"zoo-{kind}.png", f"never-seen CNNs, {kind}: {report.summary()}")
        out[kind] = report.to_dict()
        ctx["log"](f"zoo ({kind}): {report.summary()}")
    return out


def stage_curve(ctx: dict) -> dict:
    """Zoo accuracy against the device-minutes of kernel profiling behind the regressor."""
    base = LatencyPredictor.load(ctx["work"] / "general-lut.json")
    profiler = KernelProfiler(ctx["device"], ctx["store"])
    rows = sorted(profiler.rows().values(), key=lambda m: m.created_at)
    paths, measured, _ = _measure(ctx, _zoo_paths(ctx))
    calibration = random_networks(16)
    points = []
    for share in (0.1, 0.25, 0.5, 1.0):
        subset = rows[: max(30, int(share * len(rows)))]
        keys = {m.key for m in subset}
        kernels, ms = measured_kernels(profiler)
        pick = [i for i, k in enumerate(kernels) if k.key in keys]
        regressor = KernelRegressor().fit([kernels[i] for i in pick], ms[pick])
        table = LatencyTable({}, regressor)
        fit_overhead(table, profiler, calibration, base.fusion_rules, log=lambda s: None)
        predictor = LatencyPredictor(table, base.fusion_rules, base.device, base.backend, "gbdt")
        report = accuracy([predictor.predict(p).latency_ms for p in paths], measured)
        minutes = device_seconds(subset) / 60
        points.append(
            {
                "kernels": len(subset),
                "device_minutes": round(minutes, 1),
                "within_10": report.within_10,
                "within_5": report.within_5,
                "rmspe": report.rmspe,
            }
        )
        ctx["log"](f"curve: {len(subset)} kernels, {minutes:.1f} device-min -> {report.summary()}")
    return {"points": points}


def stage_spaces(ctx: dict) -> dict:
    from hwlat.search.spaces import get_space

    results = {}
    for name in ctx["spaces"]:
        kwargs = {"resolutions": (224,)} if name == "ofa_mbv3" else {}
        space = get_space(name, **kwargs)
        path = ctx["work"] / f"{name}-lut.json"
        if not path.exists():
            config = TrainingConfig(kind="lut", sampled_kernels=0, random_networks=0, calibration_networks=16)
            base = LatencyPredictor.load(ctx["work"] / "general-lut.json")
            profiler = KernelProfiler(ctx["device"], ctx["store"])
            wanted = space_kernels(space, base.fusion_rules)
            for _ in range(3):
                if profiler.measure(wanted).disturbed == 0:
                    break
            kernels, ms = measured_kernels(profiler)
            table = LatencyTable(dict(zip((k.key for k in kernels), ms, strict=True)), base.regressor)
            fit_overhead(
                table,
                profiler,
                space_networks(space, config.calibration_networks, seed=1),
                base.fusion_rules,
                log=ctx["log"],
            )
            LatencyPredictor(
                table, base.fusion_rules, base.device, base.backend, "lut", {**base.meta, "space": name}
            ).save(path)
        predictor = LatencyPredictor.load(path)
        n_archs = ctx["archs"].get(name, ctx["archs"]["default"])
        archs_paths = space_networks(space, n_archs, seed=2)
        paths, measured, disturbed = _measure(ctx, archs_paths, repeats=2)
        rng = np.random.default_rng(2)
        archs = [space.sample(rng) for _ in range(n_archs)]
        by_path = dict(zip(archs_paths, archs, strict=True))
        predicted = predictor.predict_batch(space, [by_path[p] for p in paths])
        report = accuracy(predicted, measured, [p.stem for p in paths])
        plot(report, ctx["work"] / f"space-{name}.png", f"{name}: {report.summary()}")
        fallbacks = sum(len(predictor.predict((space, by_path[p])).fallbacks) > 0 for p in paths)
        results[name] = {
            **report.to_dict(),
            "disturbed_left_out": disturbed,
            "load": load(),
            "archs_with_fallback_kernels": fallbacks,
        }
        ctx["log"](f"space {name}: {report.summary()} ({disturbed} disturbed left out)")
    return results


def stage_query(ctx: dict) -> dict:
    from hwlat.search.spaces import get_space

    predictor = LatencyPredictor.load(ctx["work"] / "general-gbdt.json")
    out = {}
    for name in ("proxyless", "ofa_mbv3"):
        space = get_space(name)
        rng = np.random.default_rng(0)
        archs = [space.sample(rng) for _ in range(100_000)]
        predictor.predict_batch(space, archs[:10])  # builds the per-cell tables once
        t = time.perf_counter()
        for a in archs[:20000]:
            predictor.latency_ms(space, a)
        one_us = (time.perf_counter() - t) / 20000 * 1e6
        t = time.perf_counter()
        for a in archs[:2000]:
            predictor.predict_batch(space, [a])
        one_batch_us = (time.perf_counter() - t) / 2000 * 1e6
        t = time.perf_counter()
        predictor.predict_batch(space, archs)
        batch = len(archs) / (time.perf_counter() - t)
        array = np.asarray(archs)
        rates = []
        for _ in range(5):
            t = time.perf_counter()
            predictor.predict_batch(space, array)
            rates.append(len(archs) / (time.perf_counter() - t))
        batch_array = float(np.median(rates))
        idx = space.cell_indices_batch(archs)
        vector = predictor.cell_latency_ms(space)
        t = time.perf_counter()
        for _ in range(5):
            vector.take(idx).sum(axis=1)
        gather = 5 * len(archs) / (time.perf_counter() - t)
        t = time.perf_counter()
        predictor.predict((space, archs[0]))
        breakdown_ms = (time.perf_counter() - t) * 1e3
        out[name] = {
            "one_arch_us": round(one_us, 1),
            "one_arch_via_batch_us": round(one_batch_us, 1),
            "batch_archs_per_s": round(batch),
            "batch_array_archs_per_s": round(batch_array),
            "gather_sum_archs_per_s": round(gather),
            "with_breakdown_ms": round(breakdown_ms, 2),
            "cells": len(vector),
            "cells_per_arch": int(idx.shape[1]),
        }
        ctx["log"](f"query {name}: {out[name]}")
    out["load"] = load()
    return out


def stage_fewshot(ctx: dict) -> dict:
    """Latency of the same architectures under several local configurations ("devices")."""
    from hwlat.search.spaces import get_space

    space = get_space("proxyless")
    paths = space_networks(space, 60, seed=3)
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(60)]
    base = local_device()
    configs = {
        "ort-1t": base,
        "ort-2t": dataclasses.replace(base, name="local-2t", threads=2),
        "ort-basic": dataclasses.replace(base, name="local-basic", graph_optimization="basic"),
        "ort-noopt": dataclasses.replace(base, name="local-noopt", graph_optimization="disable"),
    }
    latency = {}
    for label, device in configs.items():
        rows = KernelProfiler(device, ctx["store"]).measure_models(paths)
        latency[label] = np.array([m.median_ms if m.ok else np.nan for m in rows])
        ctx["log"](f"fewshot: measured {label}")
    ok = np.all([np.isfinite(v) for v in latency.values()], axis=0)
    X = np.stack([space.encode(a) for a in archs])[ok]
    results = {}
    for target in configs:
        refs = [c for c in configs if c != target]
        y = latency[target][ok]
        R = np.column_stack([latency[c][ok] for c in refs])
        for n in (10, 20):
            with_ref, without = [], []
            for seed in range(10):
                order = np.random.default_rng(seed).permutation(len(y))
                train, test = order[:n], order[n:]
                from scipy.stats import spearmanr

                m = ArchLatencyRegressor(reference=len(refs)).fit(np.column_stack([X, R])[train], y[train])
                with_ref.append(spearmanr(m.predict(np.column_stack([X, R])[test]), y[test]).statistic)
                m = ArchLatencyRegressor().fit(X[train], y[train])
                without.append(spearmanr(m.predict(X[test]), y[test]).statistic)
            results[f"{target}/n={n}"] = {
                "spearman_with_references": round(float(np.mean(with_ref)), 3),
                "spearman_encoding_only": round(float(np.mean(without)), 3),
            }
            ctx["log"](f"fewshot {target} n={n}: {results[f'{target}/n={n}']}")
    return {"archs": int(ok.sum()), "results": results, "load": load()}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(*names), "|" + "---|" * len(names)]


def _accuracy_cells(r: dict) -> list[str]:
    return [
        r["n"],
        f"{r['rmse_ms']:.3f}",
        f"{r['rmspe']:.1f}",
        _pct(r["within_5"]),
        _pct(r["within_10"]),
        f"{r['spearman']:.3f}",
    ]


def markdown(results: dict) -> str:
    """The results as the tables of RESULTS-predictors.md (``--markdown`` prints them)."""
    out = []
    accuracy_columns = ("n", "RMSE ms", "RMSPE %", "within 5%", "within 10%", "Spearman")
    if "train" in results:
        t = results["train"]
        out += [
            "## Training (general predictor)",
            "",
            f"Kernel rows {t['training'].get('kernels')}, table entries {t['table_entries']}; "
            f"overhead model {t['overhead']}; fusion rules {t['fusion_rules']}.",
            "",
        ]
    if "zoo" in results:
        z = results["zoo"]
        out += [
            "## Published CNNs never seen in training",
            "",
            f"{z['load']}; {z['disturbed_left_out']} networks left out as disturbed.",
            "",
            *_header("predictor", *accuracy_columns),
        ]
        out += [_row(kind, *_accuracy_cells(z[kind])) for kind in ("lut", "gbdt")]
        out += ["", *_header("network", "measured ms", "lut ms", "lut error", "gbdt ms", "gbdt error")]
        for a, b in zip(z["lut"]["rows"], z["gbdt"]["rows"], strict=True):
            out.append(
                _row(
                    a["name"],
                    f"{a['measured_ms']:.3f}",
                    f"{a['predicted_ms']:.3f}",
                    f"{a['error']:+.1%}",
                    f"{b['predicted_ms']:.3f}",
                    f"{b['error']:+.1%}",
                )
            )
        out.append("")
    if "spaces" in results:
        out += [
            "## Random architectures of each space (table predictor of the space)",
            "",
            *_header(
                "space",
                *accuracy_columns,
                "worst error",
                "disturbed left out",
                "with fallback kernels",
                "load",
            ),
        ]
        for name, r in results["spaces"].items():
            if isinstance(r, dict) and "rows" in r:
                worst = max((row["error"] for row in r["rows"]), key=abs)
                out.append(
                    _row(
                        name,
                        *_accuracy_cells(r),
                        f"{worst:+.1%}",
                        r["disturbed_left_out"],
                        r["archs_with_fallback_kernels"],
                        r["load"],
                    )
                )
        out.append("")
    if "query" in results:
        out += [
            "## Query speed",
            "",
            results["query"]["load"],
            "",
            *_header(
                "space",
                "one arch, latency_ms (us)",
                "one arch, predict_batch (us)",
                "batch of tuples, archs/s",
                "batch as int array, archs/s",
                "bare gather-and-sum of precomputed cell indices, archs/s",
                "with breakdown (ms)",
                "cells per arch",
            ),
        ]
        for name, r in results["query"].items():
            if isinstance(r, dict):
                out.append(
                    _row(
                        name,
                        r["one_arch_us"],
                        r.get("one_arch_via_batch_us", ""),
                        f"{r['batch_archs_per_s']:,}",
                        f"{r.get('batch_array_archs_per_s', 0):,}",
                        f"{r['gather_sum_archs_per_s']:,}",
                        r["with_breakdown_ms"],
                        r["cells_per_arch"],
                    )
                )
        out.append("")
    if "curve" in results:
        out += [
            "## Profiling cost against accuracy (published CNNs, gbdt)",
            "",
            *_header("kernel rows", "device-minutes", "within 10%", "within 5%", "RMSPE %"),
        ]
        out += [
            _row(
                pt["kernels"],
                pt["device_minutes"],
                _pct(pt["within_10"]),
                _pct(pt["within_5"]),
                f"{pt['rmspe']:.1f}",
            )
            for pt in results["curve"]["points"]
        ]
        out.append("")
    if "fewshot" in results:
        f = results["fewshot"]
        out += [
            '## Few-shot: ArchLatencyRegressor on a new "device"',
            "",
            f"{f['archs']} proxyless architectures measured under four local configurations; "
            f"mean Spearman over 10 random splits; {f['load']}.",
            "",
            *_header("target / samples", "with the other configurations as references", "encoding only"),
        ]
        out += [
            _row(key, r["spearman_with_references"], r["spearman_encoding_only"])
            for key, r in f["results"].items()
        ]
        out.append("")
    return "\n".join(out)


STAGES = {
    "train": stage_train,
    "zoo": stage_zoo,
    "curve": stage_curve,
    "spaces": stage_spaces,
    "query": stage_query,
    "fewshot": stage_fewshot,
}


def _archs_per_space(text: str) -> dict:
    """``200`` or ``60,proxyless=200`` -> {"default": ..., space: ...}."""
    out = {"default": 200}
    for part in text.split(","):
        name, _, count = part.rpartition("=")
        out[name or "default"] = int(count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-predictors"))
    parser.add_argument("--db", type=Path, help="store (default WORK/hwlat.db)")
    parser.add_argument("--stages", default="train,zoo,curve,spaces,query,fewshot")
    parser.add_argument("--spaces", default=",".join(SPACES))
    parser.add_argument(
        "--archs", default="200", help="random architectures per space: N, or N,SPACE=N,... (default 200)"
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print WORK/results.json as markdown tables and exit (measures nothing)",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.markdown:
        print(markdown(results))
        return
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.0f}s, {load()}] {msg}", flush=True)

    with Store(args.db or args.work / "hwlat.db") as store:
        ctx = {
            "device": local_device(),
            "store": store,
            "work": args.work,
            "log": log,
            "spaces": args.spaces.split(","),
            "archs": _archs_per_space(args.archs),
            "protocol": TimingProtocol(),
        }
        for stage in args.stages.split(","):
            log(f"stage {stage}")
            results[stage] = {**STAGES[stage](ctx), "finished_at": time.ctime(), "load_after": load()}
            results_path.write_text(json.dumps(results, indent=1))
    log(f"results in {results_path}")


if __name__ == "__main__":
    main()
