"""Does a predictor built from a fresh store hold on networks nobody designed it for?

Everything runs through the CLI, as a new user would run it, on one fresh store (``--work``):

  1. ``hwlat profile --adaptive --budget-minutes B --device local --backend ort``
  2. ``hwlat train --kind gbdt`` (the normal predictor), and again with
     ``--exclude-kernels-of`` every evaluated network (the leak-free predictor: no kernel that
     shares an op with an evaluated network is trained on; its measurements are reused)
  3. ``hwlat validate --repeats 3 --lenient`` of each predictor on the published CNNs of the zoo
     (and their width/resolution variants) and on the CNN families outside the zoo
     (hwlat.zoo.families, written from their papers): measured end to end, the median clean
     pass of 3 (the steady-state median a plain runtime loop reports), against the prediction.

It prints, per network, measured and predicted latency and the overlap with the training set
(the share of the network's kernels and ops that the normal predictor's training rows hold),
then per group: within +-10%, RMSPE, signed bias, and the device-minutes spent.

    nice -n 10 python -m benchmarks.bench_generalisation --work /tmp/bench-gen --budget-minutes 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hwlat import zoo
from hwlat.predictors import LatencyPredictor
from hwlat.predictors.kernels.splitter import ModelSplitter
from hwlat.profiler.kernel import InvalidKernelError, Kernel
from hwlat.profiler.store import Store

GROUPS = ("published", "families")
PREDICTORS = {"normal": "gbdt.json", "leak-free": "gbdt-leakfree.json"}


def load() -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg())


def hwlat(*args: str, log: Path, failed_ok: bool = False) -> subprocess.CompletedProcess:
    """Run one hwlat command as a user would; its output is appended to ``log``. Exit code 1
    (done, with a failed result) is accepted only where ``failed_ok``."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hwlat.cli", *args], capture_output=True, text=True)
    with log.open("a") as f:
        f.write(f"$ hwlat {' '.join(args)}  ({time.monotonic() - started:.0f} s, rc {proc.returncode})\n")
        f.write(proc.stdout + proc.stderr + "\n")
    if proc.returncode not in ((0, 1) if failed_ok else (0,)):
        sys.exit(f"hwlat {args[0]} failed (rc {proc.returncode}); see {log}:\n{proc.stderr[-2000:]}")
    return proc


def export(work: Path) -> dict[str, Path]:
    folders = {g: work / g for g in GROUPS}
    if not any(folders["published"].glob("*.onnx")):
        zoo.export_all(folders["published"])
    folders["families"].mkdir(parents=True, exist_ok=True)
    for name in zoo.FAMILIES:
        path = folders["families"] / f"{name}.onnx"
        if not path.exists():
            zoo.export_family(name, path)
    return folders


def trained_keys(db: Path, predictor: LatencyPredictor) -> tuple[set[str], set[str]]:
    """The kernel keys and op keys of the store's clean kernel rows (what training reads)."""
    with Store(db, readonly=True) as store:
        rows = store.measurements(predictor.device, predictor.backend, "kernel", clean_only=True)
    kernels, ops = set(), set()
    for m in rows:
        try:
            kernel = Kernel.from_key(m.key)
        except InvalidKernelError:
            continue
        kernels.add(kernel.key)
        ops.update(o.key for o in kernel.ops)
    return kernels, ops


def overlap(
    trained: tuple[set[str], set[str]], predictor: LatencyPredictor, path: Path
) -> tuple[float, float]:
    """Shares of the network's kernels (by key) and ops that the training rows hold."""
    split = ModelSplitter(predictor.fusion_rules, strict=False).split(path)
    kernels, ops = split.network[0], split.ops
    return (
        sum(k.key in trained[0] for k in kernels) / max(1, len(kernels)),
        sum(o.key in trained[1] for o in ops) / max(1, len(ops)),
    )


def device_minutes(db: Path) -> dict[str, float]:
    with Store(db, readonly=True) as store:
        return {
            kind: sum(m.wall_s or 0.0 for m in store.measurements("local", "ort", kind)) / 60
            for kind in ("kernel", "model")
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/bench-gen"), help="fresh folder: store, models"
    )
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="adaptive profiling budget")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end passes per network (median kept)")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    db, log = work / "hwlat.db", work / "commands.log"
    common = ["--device", "local", "--backend", "ort", "--db", str(db)]
    print(f"work folder {work}; {load()} at start")

    folders = export(work)
    timings: dict[str, float] = {}
    leak_free = ["--exclude-kernels-of", *(str(f) for f in folders.values())]
    steps = [  # (name, the file that says it is done, command): a re-run resumes
        (
            "profile",
            work / "profiled.log",
            ["profile", "--adaptive", "--budget-minutes", str(args.budget_minutes)],
        ),
        (
            "train",
            work / PREDICTORS["normal"],
            ["train", "--kind", "gbdt", "-o", str(work / PREDICTORS["normal"])],
        ),
        (
            "train leak-free",
            work / PREDICTORS["leak-free"],
            ["train", "--kind", "gbdt", "-o", str(work / PREDICTORS["leak-free"]), *leak_free],
        ),
    ]
    for name, done, argv in steps:
        if done.exists():
            continue
        started = time.monotonic()
        proc = hwlat(*argv, *common, log=log)
        timings[name] = time.monotonic() - started
        last = [line for line in proc.stdout.splitlines() if line.strip()][-1:]
        print(f"{name}: {timings[name] / 60:.1f} min wall; {last[0] if last else ''}  ({load()})")
        if name == "profile":
            done.write_text(proc.stdout)

    results: dict[tuple[str, str], dict] = {}
    for pname, file in PREDICTORS.items():
        for group, folder in folders.items():
            argv = ["validate", "--predictor", str(work / file), "--models", str(folder), "--lenient"]
            argv += ["--repeats", str(args.repeats), "--json", "--db", str(db)]
            argv += ["--plot", str(work / f"validate-{pname}-{group}.png")]
            proc = hwlat(*argv, log=log, failed_ok=True)
            results[pname, group] = json.loads(proc.stdout) if proc.returncode == 0 else {"rows": []}
            print(f"validated {pname} on {group} ({load()})")

    normal = LatencyPredictor.load(work / PREDICTORS["normal"])
    leakfree = LatencyPredictor.load(work / PREDICTORS["leak-free"])
    trained = trained_keys(db, normal)
    print(f"\n## Per network ({load()})\n")
    print(
        "| group | network | measured ms | normal ms | err % | leak-free ms | err % "
        "| kernels seen | ops seen |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for group, folder in folders.items():
        leak_rows = {r["name"]: r for r in results["leak-free", group]["rows"]}
        for row in results["normal", group]["rows"]:
            other = leak_rows.get(row["name"])
            kernels_seen, ops_seen = overlap(trained, normal, folder / f"{row['name']}.onnx")
            leak = f"{other['predicted_ms']:.2f} | {100 * other['error']:+.1f}" if other else "- | -"
            print(
                f"| {group} | {row['name']} | {row['measured_ms']:.2f} | {row['predicted_ms']:.2f} | "
                f"{100 * row['error']:+.1f} | {leak} | {kernels_seen:.0%} | {ops_seen:.0%} |"
            )

    minutes = device_minutes(db)
    print(f"\n## Summary ({load()})\n")
    print(
        "| predictor | group | networks | within +-10% | within +-5% | RMSPE % | signed bias % | left out |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (pname, group), r in results.items():
        if not r["rows"]:
            print(f"| {pname} | {group} | 0 | - | - | - | - | all |")
            continue
        print(
            f"| {pname} | {group} | {r['n']} | {r['within_10']:.0%} | {r['within_5']:.0%} | "
            f"{r['rmspe']:.1f} | {r['bias_pct']:+.1f} | {len(r['skipped'])} |"
        )
    for pname, predictor in (("normal", normal), ("leak-free", leakfree)):
        t = predictor.meta["training"]
        print(
            f"\n{pname}: {t['kernels']} kernels trained on ({t.get('excluded_ops', 0)} held-out ops), "
            f"{t['calibration_networks']} calibration networks, safety margin "
            f"{predictor.safety_margin_pct():.1f}%"
        )
    print(
        f"\ndevice-minutes in the store: kernels {minutes['kernel']:.1f}, "
        f"whole models {minutes['model']:.1f}; "
        + ", ".join(f"{k} {v / 60:.1f} min wall" for k, v in timings.items())
    )


if __name__ == "__main__":
    main()
