"""Foundations benchmark: is the local ONNX Runtime profiler trustworthy?

1. Drift: the same ops measured in two passes; per-op median drift (ops >= 0.1 ms).
2. Contention: a third pass with a CPU hog started half-way; which ops were flagged.
3. ORT's own profiler (enable_profiling) per node vs our standalone per-op medians,
   for a small multi-op model built from the same OpSpecs.
4. ``hwlat measure`` vs a plain onnxruntime timing loop on exported CNNs.

Usage: python -m benchmarks.bench_foundations [--out benchmarks/RESULTS-foundations.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from hwlat.devices.device import local_device
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.onnx_models import OPSET, build_model, random_inputs
from hwlat.profiler.opspec import OpSpec
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

ROOT = Path(__file__).resolve().parents[1]


def op_set() -> list[OpSpec]:
    """56 ops from MobileNet-style networks: 1x1, depthwise and full convs, SE parts, pooling, fc."""
    specs = []
    for res, cin, cout in ((112, 16, 24), (56, 24, 32), (28, 40, 80), (14, 96, 160)):
        mid = cin * 6
        specs += [
            OpSpec("conv", (1, cin, res, res), out_channels=mid, activation="relu6"),
            OpSpec("conv", (1, mid, res, res), out_channels=cout),
        ]
        for k in (3, 5, 7):
            specs.append(
                OpSpec(
                    "conv",
                    (1, mid, res, res),
                    out_channels=mid,
                    kernel=k,
                    padding=k // 2,
                    groups=mid,
                    activation="relu6",
                )
            )
            specs.append(
                OpSpec(
                    "conv",
                    (1, mid, res, res),
                    out_channels=mid,
                    kernel=k,
                    stride=2,
                    padding=k // 2,
                    groups=mid,
                    activation="hardswish",
                )
            )
        specs += [
            OpSpec("conv", (1, cin, res, res), out_channels=cin, kernel=3, padding=1, activation="relu"),
            OpSpec("add", (1, cout, res, res)),
            OpSpec("mul", (1, mid, res, res), broadcast="channel"),
            OpSpec("globalavgpool", (1, mid, res, res)),
            OpSpec("act", (1, mid, res, res), activation="hardswish"),
        ]
    specs += [
        OpSpec("gemm", (1, 1280), out_channels=1000),
        OpSpec("gemm", (1, 960), out_channels=1280),
        OpSpec("maxpool", (1, 64, 112, 112), kernel=3, stride=2, padding=1),
        OpSpec("concat", (1, 232, 14, 14), parts=(116, 116)),
        OpSpec("shuffle", (1, 232, 14, 14), groups=2),
        OpSpec("split", (1, 232, 14, 14), parts=(116, 116)),
        OpSpec("conv", (1, 3, 224, 224), out_channels=32, kernel=3, stride=2, padding=1, activation="relu6"),
        OpSpec("conv", (1, 64, 56, 56), out_channels=64, kernel=3, padding=1),
    ]
    return specs


def run_pass(store: Store, name: str, specs: list[OpSpec], during=None) -> dict[str, object]:
    device = replace(local_device(), name=name)
    campaign = Campaign(device, "ort", store, TimingProtocol(), show_progress=True)
    if during:
        threading.Thread(target=during, args=(store, name), daemon=True).start()
    campaign.run(specs, force=True)
    return {m.key: m for m in store.measurements(device=name)}


def drift_table(a: dict, b: dict, min_ms: float = 0.1) -> dict:
    drifts = [
        abs(b[k].median_ms / a[k].median_ms - 1)
        for k in a
        if a[k].median_ms >= min_ms and a[k].clean and b[k].clean
    ]
    return {
        "ops": len(drifts),
        "median": statistics.median(drifts),
        "p90": float(np.percentile(drifts, 90)),
        "max": max(drifts),
        "share_le_3pct": sum(d <= 0.03 for d in drifts) / len(drifts),
    }


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x" if values else "-"


def hog_half_way(n_ops: int, hog: dict):
    """Start one busy loop per CPU half-way, so the core that times ops is contended whichever
    it is (one hog on a 2-core machine runs on the idle core and disturbs nothing)."""

    def watch(store: Store, name: str) -> None:
        while len(store.measurements(device=name)) < n_ops // 2:
            time.sleep(0.05)
        hog["procs"] = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)
        ]
        hog["started"] = len(store.measurements(device=name))

    return watch


def chain_model(specs: list[OpSpec]) -> onnx.ModelProto:
    """Chain single-input ops: op i's y0 feeds op i+1's x0 (names keep the op index)."""
    nodes, inits = [], []
    prev = "input"
    for i, spec in enumerate(specs):
        g = build_model(spec).graph
        rename = {"x0": prev, "y0": f"t{i}"}
        for node in g.node:
            node.name = f"op{i}_{node.op_type}"
            node.input[:] = [rename.get(n, f"op{i}_{n}") for n in node.input]
            node.output[:] = [rename.get(n, f"op{i}_{n}") for n in node.output]
            nodes.append(node)
        for init in g.initializer:
            init.name = f"op{i}_{init.name}"
            inits.append(init)
        prev = f"t{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, list(specs[0].input_shape))],
        [helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, list(specs[-1].output_shapes[0]))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def profiler_vs_ours(store: Store, name: str) -> list[tuple]:
    chain = [
        OpSpec("conv", (1, 32, 28, 28), out_channels=192, activation="relu6"),
        OpSpec(
            "conv", (1, 192, 28, 28), out_channels=192, kernel=3, padding=1, groups=192, activation="relu6"
        ),
        OpSpec("conv", (1, 192, 28, 28), out_channels=32),
        OpSpec("conv", (1, 32, 28, 28), out_channels=32, kernel=3, padding=1, activation="relu"),
        OpSpec("act", (1, 32, 28, 28), activation="hardswish"),
        OpSpec("globalavgpool", (1, 32, 28, 28)),
    ]
    ours = run_pass(store, name, chain)
    model = chain_model(chain)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = random_inputs(model)
    for _ in range(300):
        sess.run(None, feeds)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_node.setdefault(ev["name"][: -len("_kernel_time")], []).append(ev["dur"] / 1e3)

    # With ORT_ENABLE_ALL, fused nodes are renamed after their output tensor (t<i>_nchwc).
    def owner(node: str) -> int | None:
        for i in range(len(chain)):
            if node.startswith((f"t{i}_", f"op{i}_")) or node == f"t{i}":
                return i
        return None

    table = []
    for i, spec in enumerate(chain):
        prof = sum(statistics.median(v) for k, v in per_node.items() if owner(k) == i)
        table.append((spec.key, ours[spec.key].median_ms, prof))
    for k, v in sorted(per_node.items()):
        if owner(k) is None:
            table.append((f"{k} (inserted by ORT)", None, statistics.median(v)))
    return table


def measure_vs_plain_loop(tmpdir: Path) -> list[tuple]:
    from hwlat.zoo import build, export_onnx

    rows = []
    for name in ("mobilenet_v2", "resnet18", "shufflenet_v2"):
        path = export_onnx(build(name), tmpdir / f"{name}.onnx")
        out = subprocess.run(
            [sys.executable, "-m", "hwlat.cli", "measure", str(path), "--json", "--db", str(tmpdir / "m.db")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        ours = json.loads(out.stdout)["latency_ms"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = {"input": np.random.randn(1, 3, 224, 224).astype(np.float32)}
        for _ in range(10):
            sess.run(None, x)
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            sess.run(None, x)
            times.append((time.perf_counter() - t0) * 1e3)
        plain = statistics.median(times)
        rows.append((name, ours, plain, ours / plain - 1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS-foundations.md")
    args = parser.parse_args()
    specs = op_set()
    lines = [
        f"# Foundations benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Machine: {os.cpu_count()} cores, load average before the run {os.getloadavg()}; "
        f"onnxruntime {ort.__version__}, 1 thread, ORT_ENABLE_ALL, default TimingProtocol.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.db") as store:
        os.environ.setdefault("HWLAT_CACHE", str(Path(tmp) / "cache"))
        t0 = time.monotonic()
        a = run_pass(store, "pass1", specs)
        b = run_pass(store, "pass2", specs)
        wall = time.monotonic() - t0
        d = drift_table(a, b)
        lines += [
            "## 1. Drift between two passes (ops with median >= 0.1 ms, both passes clean)",
            "",
            "| ops | median drift | p90 drift | max drift | share <= 3% |",
            "|---|---|---|---|---|",
            f"| {d['ops']} of {len(specs)} | {d['median']:.2%} | {d['p90']:.2%} | {d['max']:.2%} "
            f"| {d['share_le_3pct']:.0%} |",
            "",
            f"Two passes took {wall:.0f} s; flagged disturbed: pass 1 "
            f"{sum(m.disturbed for m in a.values())}, pass 2 {sum(m.disturbed for m in b.values())}.",
            "",
        ]
        hog: dict = {}
        try:
            c = run_pass(store, "pass3-hog", specs, during=hog_half_way(len(specs), hog))
        finally:
            for proc in hog.get("procs", []):
                proc.kill()
        order = [s.key for s in specs]
        started = hog.get("started", len(order))
        before, after = order[:started], order[started:]
        slow_flagged = [c[k].median_ms / a[k].median_ms for k in after if c[k].disturbed]
        slow_clean = [c[k].median_ms / a[k].median_ms for k in after if not c[k].disturbed]
        lines += [
            f"## 2. CPU hogs (`while True: pass`, one per CPU: {os.cpu_count()}) started half-way "
            "through a third pass",
            "",
            "| ops | flagged disturbed | median slowdown vs pass 1 (flagged) "
            "| median slowdown vs pass 1 (not flagged) |",
            "|---|---|---|---|",
            f"| before the hog: {len(before)} | {sum(c[k].disturbed for k in before)} | - | - |",
            f"| with the hog: {len(after)} | {len(slow_flagged)} | "
            f"{_ratio(slow_flagged)} | {_ratio(slow_clean)} |",
            "",
        ]
        prof = profiler_vs_ours(store, "chain")
        lines += [
            "## 3. ORT's profiler (per node, inside one model) vs our standalone per-op medians",
            "",
            "| op | ours standalone (ms) | ORT profiler in model (ms) |",
            "|---|---|---|",
        ]
        lines += [
            f"| `{k}` | {o:.4f} | {p:.4f} |" if o is not None else f"| {k} | - | {p:.4f} |"
            for k, o, p in prof
        ]
        lines.append("")
        rows = measure_vs_plain_loop(Path(tmp))
        lines += [
            "## 4. `hwlat measure` vs a plain onnxruntime loop (same machine, 1 thread)",
            "",
            "| model | hwlat measure (ms) | plain loop median (ms) | difference |",
            "|---|---|---|---|",
        ]
        lines += [f"| {n} | {o:.3f} | {p:.3f} | {r:+.1%} |" for n, o, p, r in rows]
        lines.append("")
    lines.append(f"Load average after the run: {os.getloadavg()}.")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
