"""Per-layer cost tables in the forms compression code reads: HAQ's and AMC's.

HAQ (mixed-precision search) loads a numpy array ``table[layer, w_bit - 1, a_bit - 1]`` of
latencies (ms) and sums one entry per layer for a policy. A CPU runtime executes 8-bit
weights with 8-bit activations (ONNX Runtime's QLinear kernels) and float32, nothing in
between, so only ``[layer, 7, 7]`` (int8) is filled; every other bit-width is NaN (absent,
never invented), and the float32 cost of each layer goes to the sidecar JSON, next to the
layer names and how each number was obtained.

AMC (channel pruning) needs each layer's latency as a function of how many output channels
it keeps, per dtype: rows of (layer, keep ratio, dtype, latency_ms), with the layer's input
channels as in the unpruned network.

A "layer" is a conv or gemm of the network in execution order, costed as its own kernel on the
device (what the predictor gives for it, from the device's table or its kernel regressor).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hwlat.predictors.kernels.splitter import ModelSplitter
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.onnx_models import load_model
from hwlat.profiler.opspec import OpSpec

HAQ_BITS = 8  # the table's last two axes: 1..8 bits
DEFAULT_KEEP_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass(frozen=True)
class Layer:
    index: int
    nodes: tuple[str, ...]
    spec: OpSpec  # the float32 conv or gemm


def network_layers(predictor, model) -> list[Layer]:
    """The convs and gemms of ``model`` in execution order, as the predictor's splitter sees them."""
    split = ModelSplitter(predictor.fusion_rules).split(load_model(model))
    layers = []
    for item in split.kernels:
        head = item.kernel.head
        if head.op in ("conv", "gemm") and head.dtype == "float32":
            layers.append(Layer(len(layers), item.nodes, head))
    return layers


def haq_table(predictor, model) -> tuple[np.ndarray, dict]:
    """``(layers, 8, 8)`` latencies (ms) with only the 8-bit/8-bit cell filled, and the sidecar."""
    layers = network_layers(predictor, model)
    table = np.full((len(layers), HAQ_BITS, HAQ_BITS), np.nan)
    fp32 = predictor.kernel_latency_ms([Kernel((layer.spec,)) for layer in layers]) if layers else []
    int8 = []
    if "int8" in predictor.dtypes:
        int8 = predictor.kernel_latency_ms([Kernel((layer.spec.as_dtype("int8"),)) for layer in layers])
        table[:, HAQ_BITS - 1, HAQ_BITS - 1] = int8
    sidecar = {
        "format": "haq latency table: table[layer, w_bit - 1, a_bit - 1] in ms; NaN = not executable",
        "device": predictor.device,
        "backend": predictor.backend,
        "executable_bits": [[8, 8]] if len(int8) else [],
        "layers": [
            {
                "index": layer.index,
                "nodes": list(layer.nodes),
                "kernel": layer.spec.key,
                "float32_ms": float(fp32[i]),
                "int8_ms": float(int8[i]) if len(int8) else None,
            }
            for i, layer in enumerate(layers)
        ],
    }
    return table, sidecar


def amc_rows(predictor, model, keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS) -> list[dict]:
    """(layer, keep ratio, dtype, latency_ms) for every layer, ratio and dtype the predictor knows."""
    rows, kernels = [], []
    for layer in network_layers(predictor, model):
        for ratio in keep_ratios:
            pruned = _keep(layer.spec, ratio)
            for dtype in predictor.dtypes:
                kernels.append(Kernel((pruned.as_dtype(dtype),)))
                rows.append(
                    {
                        "layer": layer.index,
                        "nodes": " ".join(layer.nodes),
                        "keep_ratio": ratio,
                        "out_channels": pruned.out_channels,
                        "dtype": dtype,
                    }
                )
    for row, ms in zip(rows, predictor.kernel_latency_ms(kernels) if kernels else [], strict=True):
        row["latency_ms"] = float(ms)
    return rows


def _keep(spec: OpSpec, ratio: float) -> OpSpec:
    """The layer keeping ``ratio`` of its output channels (a depthwise conv keeps as many inputs;
    a grouped conv keeps a multiple of its groups)."""
    n, cin, *hw = spec.input_shape
    if spec.op == "conv" and spec.groups == cin == spec.out_channels > 1:
        c = max(1, round(cin * ratio))
        return replace(spec, input_shape=(n, c, *hw), out_channels=c, groups=c)
    step = spec.groups if spec.op == "conv" else 1
    return replace(spec, out_channels=max(step, round(spec.out_channels * ratio / step) * step))


def write_haq(predictor, model, path: str | Path) -> tuple[Path, Path]:
    """``path`` (.npy) and its sidecar ``path.json``."""
    table, sidecar = haq_table(predictor, model)
    path = Path(path)
    with open(path, "wb") as fh:
        np.save(fh, table)
    side = path.with_suffix(path.suffix + ".json")
    side.write_text(json.dumps(sidecar, indent=1))
    return path, side


def write_amc(predictor, model, path: str | Path) -> int:
    rows = amc_rows(predictor, model)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=["layer", "nodes", "keep_ratio", "out_channels", "dtype", "latency_ms"]
        )
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
