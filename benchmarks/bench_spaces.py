"""Search-space tables on local ONNX Runtime: their size, their cost, and how additive they are.

For each space:
1. unique ops (all resolutions, and the one resolution measured here);
2. minutes to measure that resolution's unique ops with the default protocol (a fresh
   store, so nothing is skipped), extrapolated to all resolutions by op count;
3. additivity: N sampled architectures at that resolution, exported to ONNX and timed end
   to end (``Campaign.measure_model``), against the sum of their ops' stored medians.
   gap = table sum / measured - 1 (positive: the table overestimates).

Usage: nice -n 10 python -m benchmarks.bench_spaces [--spaces proxyless nb201] [--archs 100]
       [--db PATH (reuse measured ops)] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from scipy.stats import kendalltau, spearmanr

from hwlat.devices.device import local_device
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from hwlat.search.spaces import get_space

ROOT = Path(__file__).resolve().parents[1]

MEASURED_RESOLUTION = {"proxyless": 224, "ofa_mbv3": 224, "nb201": 32, "fbnet": 224}


def table_minutes(store: Store, name: str, resolution: int) -> dict:
    """Measure the space's unique ops at one resolution; minutes spent and op counts."""
    space = get_space(name)
    all_ops = list(space.unique_ops())
    ops = list(space.unique_ops([resolution]))
    campaign = Campaign(local_device(), "ort", store, TimingProtocol(), show_progress=True)
    report = campaign.run(ops)
    stored = {m.key: m for m in store.measurements(device="local", backend="ort", kind="op")}
    # Device time: the agent's time per op, whether measured now or by an earlier space that
    # shares the op (a campaign's wall time would count only the ops it measured itself).
    minutes = sum(stored[op.key].wall_s for op in ops) / 60
    return {
        "unique_ops_all": len(all_ops),
        "unique_ops_measured": len(ops),
        "resolutions": len(space.resolutions),
        "minutes": minutes,
        "minutes_all_extrapolated": minutes * len(all_ops) / len(ops),
        "campaign_wall_minutes": report.wall_s / 60,
        "ops_failed": report.failed,
        "ops_disturbed": sum(stored[op.key].disturbed for op in ops),
    }


def additivity(store: Store, name: str, resolution: int, n_archs: int, workdir: Path) -> dict:
    space = get_space(name, resolutions=(resolution,))
    medians = {
        m.key: m.median_ms for m in store.measurements(device="local", backend="ort", kind="op") if m.ok
    }
    rng = np.random.default_rng(2026)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(n_archs)))
    campaign = Campaign(local_device(), "ort", store, TimingProtocol(), show_progress=False)
    rows = []
    started = time.monotonic()
    for i, arch in enumerate(archs):
        path = workdir / f"{name}-{i}.onnx"
        onnx.save(space.to_onnx(arch), path)
        m = campaign.measure_model(path)
        if not m.ok:
            print(f"  {name} arch {i}: measuring failed: {m.error_msg}", file=sys.stderr)
            continue
        predicted = sum(medians[op.key] for op in space.ops(arch))
        rows.append(
            {
                "arch": list(arch),
                "predicted_ms": predicted,
                "measured_ms": m.median_ms,
                "disturbed": m.disturbed,
            }
        )
        print(
            f"  {name} {i + 1}/{len(archs)}: table {predicted:.3f} ms, measured {m.median_ms:.3f} ms"
            f"{' (disturbed)' if m.disturbed else ''}",
            file=sys.stderr,
        )
    return {
        "archs": len(rows),
        "models_disturbed": sum(r["disturbed"] for r in rows),
        **gap_stats(rows),
        "clean": gap_stats([r for r in rows if not r["disturbed"]]),
        "additivity_minutes": (time.monotonic() - started) / 60,
        "rows": rows,
    }


def gap_stats(rows: list[dict]) -> dict:
    """How far table sums are from measured latencies, and whether they rank networks alike."""
    if len(rows) < 3:
        return {"n": len(rows)}
    predicted = np.array([r["predicted_ms"] for r in rows])
    measured = np.array([r["measured_ms"] for r in rows])
    gap = predicted / measured - 1
    return {
        "n": len(rows),
        "measured_ms_min": float(measured.min()),
        "measured_ms_max": float(measured.max()),
        "gap_mean": float(gap.mean()),
        "gap_median": float(np.median(gap)),
        "gap_min": float(gap.min()),
        "gap_max": float(gap.max()),
        "abs_gap_mean": float(np.abs(gap).mean()),
        "kendall_tau": float(kendalltau(predicted, measured)[0]),
        "spearman": float(spearmanr(predicted, measured)[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=list(MEASURED_RESOLUTION))
    parser.add_argument("--archs", type=int, default=100)
    parser.add_argument("--db", type=Path, help="store to use (default: a fresh temporary one)")
    parser.add_argument("--json", type=Path, help="write every number (and per-arch rows) here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hwlat-bench-spaces-"))
    db = args.db or tmp / "spaces.db"
    load_before = os.getloadavg()
    results = {}
    with Store(db) as store:
        for name in args.spaces:
            res = MEASURED_RESOLUTION[name]
            print(f"{name}: measuring unique ops at {res}", file=sys.stderr)
            results[name] = {"resolution": res, **table_minutes(store, name, res)}
            print(f"{name}: additivity over {args.archs} architectures", file=sys.stderr)
            results[name].update(additivity(store, name, res, args.archs, tmp))
    load_after = os.getloadavg()

    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(1-minute); {os.cpu_count()} CPUs; database {db}\n"
    )
    print(
        "| space | res | unique ops (all res) | unique ops (res) | table device-minutes (res) | "
        "minutes all res (extrapolated) | archs (disturbed) | measured ms (min-max) | gap mean | "
        "gap median | gap min..max | mean abs gap | Kendall tau | clean only: n, gap mean, tau |"
    )
    print("|" + "---|" * 14)
    for name, r in results.items():
        c = r["clean"]
        clean = f"{c['n']}, {c['gap_mean']:+.1%}, {c['kendall_tau']:.3f}" if "gap_mean" in c else f"{c['n']}"
        print(
            f"| {name} | {r['resolution']} | {r['unique_ops_all']} | {r['unique_ops_measured']} | "
            f"{r['minutes']:.1f} | {r['minutes_all_extrapolated']:.1f} | {r['archs']} "
            f"({r['models_disturbed']}) | {r['measured_ms_min']:.2f}-{r['measured_ms_max']:.2f} | "
            f"{r['gap_mean']:+.1%} | {r['gap_median']:+.1%} | {r['gap_min']:+.1%}..{r['gap_max']:+.1%} | "
            f"{r['abs_gap_mean']:.1%} | {r['kendall_tau']:.3f} | {clean} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"load_before": load_before, "load_after": load_after, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
