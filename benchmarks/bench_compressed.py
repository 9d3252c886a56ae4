"""Pruned and 8-bit networks, predicted against measured: latency and peak memory (issue 11).

Builds, from code, MobileNetV2 and ResNet-18 (224x224) pruned with ``hwlat.compress.prune`` at
uniform keep ratios 0.25, 0.5, 0.75 and 1.0 and at random per-layer keep ratios drawn from
[0.25, 1.0] (``--random-policies`` per network), exports them, and quantizes each with
``hwlat.compress.quantize_model`` (QDQ, all layers 8-bit). The unpruned ones are also quantized
with half their layers left float32, in two ways: "half" leaves the second half of the network
(every quantizable node from its middle conv on) float32, a float32 region that ONNX Runtime runs
in float32; "alternate" excludes every other conv, which ORT quantizes itself all the same (each
reads and writes 8-bit tensors), so that network runs all 8-bit. Then, as a user would:

    hwlat validate --predictor FLOAT --models WORK/float32 --repeats 3 --lenient --json
    hwlat validate --predictor EIGHT_BIT --models WORK/8bit --repeats 3 --lenient --json

and prints per network the predicted and measured latency (the median clean pass of 3) and
peak memory (the model's own peak resident memory over the agent's baseline), the share within
+-10% of each, and the device-minutes the store spent on 8-bit kernels and calibration networks
(what adding 8 bits to an existing float32 predictor cost this device).

    nice -n -15 python -m benchmarks.bench_compressed --work /tmp/bench-cmp --db STORE \\
        --float-predictor P.json --eight-bit-predictor P8.json --activation-type uint8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_generalisation import hwlat, load

NETWORKS = ("mobilenet_v2", "resnet18")
UNIFORM_KEEP = (0.25, 0.5, 0.75, 1.0)
SHAPE = (1, 3, 224, 224)


def build(work: Path, random_policies: int, activation_type: str) -> dict[str, Path]:
    """The float32 and 8-bit folders, built once (a re-run reuses the files)."""
    import torch

    from hwlat import zoo
    from hwlat.compress import prunable_layers, prune, quantize_model
    from hwlat.profiler.onnx_models import save_once, torch_to_onnx

    folders = {"float32": work / "float32", "8bit": work / "8bit"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(*SHAPE)
    for name in NETWORKS:
        model = zoo.build(name)
        layers = prunable_layers(model, example)
        policies = {f"{name}_keep{keep:g}": [keep] * len(layers) for keep in UNIFORM_KEEP}
        for seed in range(random_policies):
            rng = np.random.default_rng(seed)
            policies[f"{name}_random{seed}"] = [float(r) for r in rng.uniform(0.25, 1.0, len(layers))]
        for stem, ratios in policies.items():
            path = save_once(
                folders["float32"] / f"{stem}.onnx",
                lambda m=model, r=ratios: torch_to_onnx(prune(m, r, example, round_to=8), SHAPE),
            )
            quantized = folders["8bit"] / f"{stem}_{activation_type}.onnx"
            if not quantized.exists():
                quantize_model(path, quantized, random_batches=8, activation_type=activation_type)
            if ratios == [1.0] * len(layers):
                for variant, exclude in (("half", float32_tail), ("alternate", every_other_conv)):
                    mixed = folders["8bit"] / f"{name}_{variant}_{activation_type}.onnx"
                    if not mixed.exists():
                        quantize_model(
                            path,
                            mixed,
                            random_batches=8,
                            activation_type=activation_type,
                            exclude=exclude(path),
                        )
    return folders


def _convs(path: Path) -> tuple[list[str], list[str]]:
    """The model's quantizable nodes in graph order, and which of them are convs."""
    import onnx

    from hwlat.compress import quantizable_nodes

    names = {n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"}
    nodes = quantizable_nodes(path)
    return nodes, [name for name in nodes if name in names]


def float32_tail(path: Path) -> list[str]:
    """Every quantizable node from the middle conv on stays float32."""
    nodes, convs = _convs(path)
    return nodes[nodes.index(convs[len(convs) // 2]) :]


def every_other_conv(path: Path) -> list[str]:
    """Every other conv is excluded (ORT quantizes them itself: ``SplitResult.eight_bit_nodes``)."""
    return _convs(path)[1][1::2]


def validate(predictor: Path, models: Path, db: Path, log: Path) -> dict:
    args = ["validate", "--predictor", str(predictor), "--models", str(models), "--db", str(db)]
    args += ["--repeats", "3", "--lenient", "--json", "--plot", str(models.with_suffix(".png"))]
    return json.loads(hwlat(*args, log=log).stdout)


def device_minutes_by_dtype(db: Path) -> dict[str, float]:
    """Device-minutes the store spent per kernel dtype (a kernel with a uint8 op counts as uint8,
    else with an int8 op, or a conv with dequantized int8 weights, as int8), and on the quantized
    calibration networks: what a float32 predictor does not need."""
    from hwlat.profiler.store import Store

    def dtype(key: str) -> str:
        if "w:dequantized" in key:  # an S8S8 conv ORT leaves float32: only int8 networks have it
            return "int8"
        return next((d for d in ("uint8", "int8") if f"dtype:{d}" in key), "float32")

    minutes = {"float32 kernels": 0.0, "int8 kernels": 0.0, "uint8 kernels": 0.0}
    with Store(db, readonly=True) as store:
        for m in store.measurements("local", "ort", "kernel"):
            minutes[f"{dtype(m.key)} kernels"] += (m.wall_s or 0) / 60
        minutes["8-bit calibration networks"] = sum(
            (m.wall_s or 0) / 60
            for m in store.measurements("local", "ort", "model")
            if ".int8" in m.key or ".uint8" in m.key
        )
    return minutes


def table(title: str, report: dict) -> str:
    memory = {row["name"]: row for row in report["memory"]["rows"]}
    lines = [
        f"### {title}",
        "",
        "| network | measured ms | predicted ms | error | measured MB | predicted MB | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(report["rows"], key=lambda r: r["name"]):
        mem = memory.get(row["name"])
        mem_cells = (
            f"{mem['measured_mb']:.1f} | {mem['predicted_mb']:.1f} | {100 * mem['error']:+.1f}%"
            if mem
            else "- | - | -"
        )
        lines.append(
            f"| {row['name']} | {row['measured_ms']:.3f} | {row['predicted_ms']:.3f} | "
            f"{100 * row['error']:+.1f}% | {mem_cells} |"
        )
    m = report["memory"]
    lines += [
        "",
        f"Latency: {report['n']} networks, within +-10% {report['within_10']:.0%}, "
        f"RMSPE {report['rmspe']:.1f}%, "
        f"signed bias {report['bias_pct']:+.1f}%, Spearman {report['spearman']:.3f}. "
        f"Peak memory: {m['n']} networks, within +-10% {m['within_10']:.0%}, RMSPE {m['rmspe']:.1f}%, "
        f"signed bias {m['bias_pct']:+.1f}%.",
    ]
    if report["skipped"]:
        lines.append("Left out: " + "; ".join(report["skipped"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--db", type=Path, required=True, help="the store the predictors were trained on")
    parser.add_argument("--float-predictor", type=Path, required=True)
    parser.add_argument("--eight-bit-predictor", type=Path, required=True)
    parser.add_argument("--activation-type", choices=("int8", "uint8"), default="int8")
    parser.add_argument("--random-policies", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "commands.log"
    started, load_before = time.monotonic(), load()
    folders = build(args.work, args.random_policies, args.activation_type)
    sections = [
        table("float32, pruned", validate(args.float_predictor, folders["float32"], args.db, log)),
        table(
            f"8-bit ({args.activation_type} activations), pruned, and with half the layers left float32",
            validate(args.eight_bit_predictor, folders["8bit"], args.db, log),
        ),
    ]
    minutes = device_minutes_by_dtype(args.db)
    sections.append(
        "### Device time\n\n" + "\n".join(f"- {k}: {v:.1f} device-minutes" for k, v in minutes.items())
    )
    print("\n\n".join(sections))
    print(f"\n{load_before} before, {load()} after; {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
