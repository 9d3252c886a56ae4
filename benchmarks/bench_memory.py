"""Peak memory while serving, predicted against measured, on networks the model never saw (issue 11).

The memory model is fitted as ``hwlat train`` fits it: on its default calibration networks
(random networks 0-15 of ``hwlat.zoo.random_network`` and 8-bit versions of the first 8), each
measured by the agent's memory probe (a fresh process per model, glibc's allocator held
still), with footprints read as ``hwlat predict`` reads them (weights the runtime quantizes
itself counted at 8 bits). It is then judged on networks built otherwise: the published CNNs,
the CNN families outside the zoo, and ``bench_compressed``'s pruned and 8-bit MobileNetV2 and ResNet-18. No
random network reproduces a published one (``tests/test_zoo.py``).

Prints per group the share within +-10% of the measured serving peak, the RMSPE and signed
bias, and per network the weights, activation peak and simulated arena the model reads, the
measured load peak, resident-after-load and serving peak (each over the probe's baseline),
and the prediction.

    nice -n -15 python -m benchmarks.bench_memory --work /tmp/bench-mem [--no-arena]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from benchmarks.bench_compressed import build as build_compressed
from benchmarks.bench_generalisation import export, load
from hwlat.devices.device import local_device
from hwlat.predictors.building.training import TrainingConfig, quantized_networks, random_networks
from hwlat.predictors.kernels.fusion import FusionRules
from hwlat.predictors.kernels.splitter import ModelSplitter
from hwlat.predictors.metrics import memory_accuracy
from hwlat.predictors.models.memory import MemoryModel, onnx_footprint
from hwlat.profiler.campaign import Campaign, model_key
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

ACTIVATION_TYPE = "uint8"
CALIBRATION = "calibration (fitted on)"


def networks(work: Path) -> dict[str, list[Path]]:
    config = TrainingConfig()
    calibration = random_networks(config.calibration_networks)
    calibration += quantized_networks(
        calibration[: max(2, config.calibration_networks // 2)], ACTIVATION_TYPE
    )
    zoo_folders = export(work)
    compressed = build_compressed(work / "compressed", 3, ACTIVATION_TYPE)
    return {
        CALIBRATION: calibration,
        "published CNNs": sorted(zoo_folders["published"].glob("*.onnx")),
        "families outside the zoo": sorted(zoo_folders["families"].glob("*.onnx")),
        "pruned, float32": sorted(compressed["float32"].glob("*.onnx")),
        "pruned and 8-bit": sorted(compressed["8bit"].glob("*.onnx")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--no-arena", action="store_true", help="ORT's arena and memory patterns off")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started, load_before = time.monotonic(), load()
    groups = networks(args.work)
    device = dataclasses.replace(local_device(), memory_arena=not args.no_arena)
    measured = {}
    with Store(args.work / f"memory-arena{int(not args.no_arena)}.db") as store:
        campaign = Campaign(device, "ort", store, TimingProtocol.quick(), show_progress=False)
        for name, paths in groups.items():
            measured[name] = [
                store.get(device.name, "ort", model_key(p), kind="model") or campaign.measure_model(p)
                for p in paths
            ]
            print(f"measured {len(paths)} {name} ({(time.monotonic() - started) / 60:.1f} min)", flush=True)
    splitter = ModelSplitter(FusionRules("ort"), strict=False)
    feet = {
        p: onnx_footprint(p, splitter.split(p).eight_bit_nodes) for paths in groups.values() for p in paths
    }
    fitted = [
        (feet[p], m.model_rss_mb)
        for p, m in zip(groups[CALIBRATION], measured[CALIBRATION], strict=True)
        if m.model_rss_mb is not None
    ]
    memory = MemoryModel(arena=not args.no_arena).fit(*zip(*fitted, strict=True))
    arena = "off" if args.no_arena else "on"
    print(f"\nORT arena {arena}; memory model fitted on {memory.fitted_on} networks: {memory}\n")
    print("| group | networks | within +-10% | RMSPE | signed bias |\n|---|---:|---:|---:|---:|")
    rows = []
    for name, paths in groups.items():
        kept = [(p, m, feet[p]) for p, m in zip(paths, measured[name], strict=True) if m.model_rss_mb]
        report = memory_accuracy(
            [memory.predict_mb(f) for _, _, f in kept],
            [m.model_rss_mb for _, m, _ in kept],
            [p.stem for p, _, _ in kept],
        )
        print(
            f"| {name} | {report['n']} | {report['within_10']:.0%} | {report['rmspe']:.1f}% | "
            f"{report['bias_pct']:+.1f}% |"
        )
        rows += [(name, p.stem, f, m, memory.predict_mb(f)) for p, m, f in kept]
    columns = ("weights", "activations", "arena", "load peak", "loaded", "serving peak", "predicted")
    print("\n| group | network | " + " | ".join(f"{c} MB" for c in columns) + " | error |")
    print("|---|---|" + "---:|" * (len(columns) + 1))
    for name, stem, f, m, predicted in rows:
        err = 100 * (predicted - m.model_rss_mb) / m.model_rss_mb
        loaded = m.loaded_rss_mb - m.baseline_rss_mb
        values = (
            f.weights_mb,
            f.activations_mb,
            f.arena_mb,
            m.load_rss_mb,
            loaded,
            m.model_rss_mb,
            predicted,
        )
        print(f"| {name} | {stem} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {err:+.1f}% |")
    print(f"\n{load_before} before, {load()} after; {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
