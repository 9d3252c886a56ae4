"""Latency and memory of compressed networks on one device, behind one small interface.

``CostModel`` is everything a compression search asks of a device: the prediction of a whole
(compressed, possibly int8 QDQ) ONNX model, the cost of single kernels at a layer dtype, and
the memory model. ``PredictorCostModel`` answers with a trained ``LatencyPredictor``; a test
or a future backend can inject another. Nothing else in the search touches a predictor, so an
int8-capable predictor changes nothing outside this module.

int8 support is detected, not assumed (``PredictorCostModel.dtypes``): a predictor supports
int8 when it can cost an int8 conv kernel (``OpSpec(..., dtype="int8")``; until int8 kernels
land in the predictor such an OpSpec raises ``InvalidOpSpecError``) *and* it was trained with
int8 kernels (int8 keys in its table, or int8 in its regressor's families or training record);
a predictor that would only extrapolate from float32 kernels does not count.

``CostEstimator`` is the per-layer cost table of the action wall. It splits the original
float network once with the cost model (each kernel with its ONNX nodes), and rebuilds every
kernel for any choice of kept channels per pruning group and dtype per layer: the channel
counts come from ``ModelAnalysis`` sources, so a conv's input channels follow the group that
produced its input and its output channels its own group (a depthwise conv's groups follow
both). Kernel costs come from ``kernel_latency_ms`` and are cached by (kernel, channels,
dtype). The estimate is the sum of the rebuilt kernels plus what does not depend on the
choice (the intercept, glue nodes, kernels it cannot rebuild, which keep their full cost and
so err on the slow side). For float32 policies it equals ``predict`` of the really pruned
network, since pruning keeps the graph's structure (tests/test_compression.py checks). The
memory estimate is the footprint ``onnx_footprint`` computes (weights + the liveness peak of
activations), with each tensor resized by its group, through the device's memory model.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from hwlat.errors import HwlatError
from hwlat.predictors.models.memory import Footprint, execution_steps, footprint_of, onnx_footprint
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.opspec import InvalidOpSpecError
from hwlat.search.compression.model import ModelAnalysis, Source

FLOAT = "float32"
INT8 = "int8"
LAYER_OP_TYPES = ("conv", "gemm")  # the OpSpecs whose dtype follows their layer's
# Bytes per weight and per output channel (int32 bias, float32 scale, int8 zero point) of a layer.
WEIGHT_BYTES = {FLOAT: 4, INT8: 1}
CHANNEL_BYTES = {FLOAT: 4, INT8: 4 + 4 + 1}


@dataclass(frozen=True)
class Cost:
    """Predicted latency and peak memory of one network."""

    latency_ms: float
    memory_mb: float


class CostModel(ABC):
    """What a compression search needs from a device's latency and memory predictor."""

    device: str = "device"
    backend: str = "ort"
    # The activations of an "int8" layer: int8 (S8S8) or uint8 (U8S8); its weights are int8 either way.
    activation_type: str = INT8

    @abstractmethod
    def predict(self, model: onnx.ModelProto) -> Any:
        """A ``Prediction`` of a whole ONNX model (float or int8 QDQ): ``latency_ms``,
        ``peak_memory_mb`` and ``kernels`` (``KernelCost`` with ``key``, ``latency_ms``, ``nodes``)."""

    @abstractmethod
    def kernel_latency_ms(self, kernels: Sequence[Kernel], dtypes: Sequence[str]) -> np.ndarray:
        """What each float32 kernel adds to a network's latency when its layer ops (conv, gemm)
        run at the matching dtype."""

    @abstractmethod
    def memory_mb(self, footprint: Footprint) -> float:
        """Predicted peak memory of a network with this footprint."""

    def dtypes(self) -> tuple[str, ...]:
        """Layer dtypes the device's runtime executes and this model can cost, most compressed first."""
        return (FLOAT,)

    def cost(self, model: onnx.ModelProto) -> Cost:
        prediction = self.predict(model)
        memory = prediction.peak_memory_mb
        return Cost(float(prediction.latency_ms), float(memory) if memory is not None else math.nan)

    def describe(self) -> dict:
        return {
            "device": self.device,
            "backend": self.backend,
            "dtypes": list(self.dtypes()),
            "activation_type": self.activation_type,
        }


def with_dtype(kernel: Kernel, dtype: str) -> Kernel:
    """``kernel`` as an 8-bit layer runs it: each op's ``dtype`` kernel where it has one (a ReLU
    or ReLU6 folds into the quantization range); an op without one (a hardswish) stays float32,
    an approximation the search's safety margin absorbs."""
    if dtype == FLOAT:
        return kernel
    ops = []
    for op in kernel.ops:
        try:
            ops.append(op.as_dtype(dtype))
        except InvalidOpSpecError:
            if op.op in LAYER_OP_TYPES:  # the activation is what has no 8-bit kernel
                ops.append(dataclasses.replace(op, activation="none").as_dtype(dtype))
            else:
                ops.append(op)
    return Kernel(tuple(ops))


class PredictorCostModel(CostModel):
    """A ``LatencyPredictor`` (``hwlat train``) as the cost model of one device."""

    def __init__(self, predictor: Any, dtypes: Sequence[str] | None = None) -> None:
        self.predictor = predictor
        self.device = str(getattr(predictor, "device", "device"))
        self.backend = str(getattr(predictor, "backend", "ort"))
        self._dtypes = tuple(dtypes) if dtypes is not None else None
        # a predictor trained on U8S8 kernels (hwlat train --dtypes float32,uint8) costs "int8"
        # layers as U8S8, and the search quantizes them so
        trained = getattr(predictor, "dtypes", (FLOAT,))
        self.activation_type = "uint8" if "uint8" in trained and INT8 not in trained else INT8

    @classmethod
    def load(cls, path: Any, dtypes: Sequence[str] | None = None) -> PredictorCostModel:
        from hwlat.predictors import LatencyPredictor

        return cls(LatencyPredictor.load(path), dtypes)

    def predict(self, model: onnx.ModelProto) -> Any:
        return self.predictor.predict(model)

    def kernel_latency_ms(self, kernels: Sequence[Kernel], dtypes: Sequence[str]) -> np.ndarray:
        typed = [
            with_dtype(k, self.activation_type if d == INT8 else d)
            for k, d in zip(kernels, dtypes, strict=True)
        ]
        return np.asarray(self.predictor.kernel_latency_ms(typed), dtype=float)

    def memory_mb(self, footprint: Footprint) -> float:
        return float(self.predictor.memory.predict_mb(footprint))

    def dtypes(self) -> tuple[str, ...]:
        if self._dtypes is None:
            self._dtypes = (INT8, FLOAT) if self.supports(INT8) else (FLOAT,)
        return self._dtypes

    def supports(self, dtype: str) -> bool:
        """Can this predictor cost layers at ``dtype``: was it trained on such kernels
        (``hwlat train --dtypes float32,int8``, or ``uint8`` for U8S8 "int8" layers)?"""
        kernel_dtype = self.activation_type if dtype == INT8 else dtype
        return dtype == FLOAT or kernel_dtype in getattr(self.predictor, "dtypes", (FLOAT,))


# ----- the per-layer cost table of the action wall ---------------------------------------------


@dataclass(frozen=True)
class _Recipe:
    """How to rebuild one kernel of the original network for other channel counts."""

    kernel: Kernel
    input_source: Source | None  # of the kernel's first input
    layers: tuple[int, ...]  # the layers of its conv/gemm ops, in op order
    groups: tuple[int, ...]  # every pruning group its shape depends on
    fixed: bool  # cannot be rebuilt: costs what it costs in the original network


class CostEstimator:
    """Latency and memory of a policy (kept channels per group, dtype per layer) without exporting it."""

    def __init__(self, analysis: ModelAnalysis, cost_model: CostModel) -> None:
        self.analysis = analysis
        self.cost_model = cost_model
        prediction = cost_model.predict(analysis.onnx)
        self.reference = prediction
        self.full_keep = tuple(g.channels for g in analysis.groups)
        self._cache: dict[Hashable, float] = {}
        self.recipes: list[_Recipe] = []
        self.kernel_layer: list[int | None] = []  # the layer whose dtype a kernel takes
        rebuilt_ms = 0.0
        for item in prediction.kernels:
            if item.source == "glue" or item.key == "glue":
                continue
            recipe = self._recipe(Kernel.from_key(item.key), item.nodes)
            self.recipes.append(recipe)
            self.kernel_layer.append(recipe.layers[0] if recipe.layers else None)
            rebuilt_ms += float(item.latency_ms)
        # the intercept, glue nodes: what no choice changes
        self.fixed_ms = float(prediction.latency_ms) - rebuilt_ms
        self.reference_ms = float(prediction.latency_ms)
        self._memory = _MemoryLayout(analysis)

    # ----- kernels ----------------------------------------------------------------------
    def _recipe(self, kernel: Kernel, nodes: Sequence[str]) -> _Recipe:
        a = self.analysis
        layers = tuple(a.node_layer[n] for n in nodes if n in a.node_layer)
        source = a.node_input_source(nodes[0]) if nodes else None
        groups = {s for s in [source.group if source else None] if s is not None}
        groups |= {a.layers[i].group for i in layers if a.layers[i].group is not None}
        recipe = _Recipe(kernel, source, layers, tuple(sorted(groups)), False)
        n_layer_ops = sum(op.op in LAYER_OP_TYPES for op in kernel.ops)
        if n_layer_ops != len(layers) or source is None:
            return dataclasses.replace(recipe, fixed=True)
        try:
            self._rebuild(recipe, self.full_keep)
            self._rebuild(recipe, tuple(max(1, c // 3) for c in self.full_keep))
        except (HwlatError, ValueError):
            return dataclasses.replace(recipe, fixed=True)
        return recipe

    def _rebuild(self, recipe: _Recipe, keep: Sequence[int]) -> Kernel:
        if recipe.fixed:
            return recipe.kernel
        a = self.analysis
        assert recipe.input_source is not None
        first = recipe.input_source.count(keep)
        current = first
        layer_iter = iter(recipe.layers)
        ops = []
        last = len(recipe.kernel.ops) - 1
        for j, op in enumerate(recipe.kernel.ops):
            shape = list(op.input_shape)
            if op.op in LAYER_OP_TYPES:
                layer = a.layers[next(layer_iter)]
                out = keep[layer.group] if layer.group is not None else layer.out_channels
                shape[1] = current
                groups = op.groups
                if op.op == "conv" and op.groups > 1:
                    if not (op.groups == op.input_shape[1] == op.out_channels):
                        raise ValueError("grouped (not depthwise) convs are not rebuilt")
                    if current != out:
                        raise ValueError("a depthwise conv whose input and output counts differ")
                    groups = current
                if op.op == "gemm" and op.input_shape[1] != layer.in_channels:
                    raise ValueError("a gemm whose input is not its layer's input")
                ops.append(dataclasses.replace(op, input_shape=tuple(shape), out_channels=out, groups=groups))
                current = out
            elif op.op in ("add", "mul", "act", "maxpool", "avgpool", "globalavgpool"):
                shape[1] = first if (recipe.kernel.is_se and j == last) else current
                ops.append(dataclasses.replace(op, input_shape=tuple(shape)))
            else:
                raise ValueError(f"{op.op} kernels are not rebuilt")
        return Kernel(tuple(ops))

    def _key(self, i: int, keep: Sequence[int], dtypes: Sequence[str]) -> tuple:
        recipe = self.recipes[i]
        layer = self.kernel_layer[i]
        dtype = dtypes[layer] if layer is not None else FLOAT
        if recipe.fixed:
            return (i, (), dtype)
        return (i, tuple(keep[g] for g in recipe.groups), dtype)

    def prefetch(self, policies: Sequence[tuple[Sequence[int], Sequence[str]]]) -> None:
        """Cost every kernel the policies need and the cache lacks, in one call."""
        missing: dict[tuple, tuple[Kernel, str]] = {}
        for keep, dtypes in policies:
            for i in range(len(self.recipes)):
                key = self._key(i, keep, dtypes)
                if key not in self._cache and key not in missing:
                    missing[key] = (self._rebuild(self.recipes[i], keep), key[2])
        if missing:
            costs = self.cost_model.kernel_latency_ms(
                [k for k, _ in missing.values()], [d for _, d in missing.values()]
            )
            for key, ms in zip(missing, costs, strict=True):
                self._cache[key] = float(ms)

    def kernel_costs(self, keep: Sequence[int], dtypes: Sequence[str]) -> np.ndarray:
        self.prefetch([(keep, dtypes)])
        return np.array([self._cache[self._key(i, keep, dtypes)] for i in range(len(self.recipes))])

    def latency_ms(self, keep: Sequence[int], dtypes: Sequence[str]) -> float:
        return self.fixed_ms + float(self.kernel_costs(keep, dtypes).sum())

    def layer_latency_ms(self, keep: Sequence[int], dtypes: Sequence[str]) -> np.ndarray:
        """Each layer's share: the kernels its conv/gemm heads (with what is fused into them)."""
        per_layer = np.zeros(len(self.analysis.layers))
        for ms, layer in zip(self.kernel_costs(keep, dtypes), self.kernel_layer, strict=True):
            if layer is not None:
                per_layer[layer] += ms
        return per_layer

    # ----- memory -----------------------------------------------------------------------
    def footprint(self, keep: Sequence[int], dtypes: Sequence[str]) -> Footprint:
        return self._memory.footprint(keep, dtypes)

    def memory_mb(self, keep: Sequence[int], dtypes: Sequence[str]) -> float:
        return self.cost_model.memory_mb(self.footprint(keep, dtypes))


class _MemoryLayout:
    """``onnx_footprint`` of the original graph with every tensor and weight resized by a policy.

    The steps are ``onnx_footprint``'s (``execution_steps``) on the float32 graph, so
    activations are counted at float32 and without an 8-bit kernel's scratch: for an 8-bit
    layer, whose fused kernel reads and writes 8-bit tensors, the first over-counts what the
    second leaves out (``onnx_footprint`` of the quantized graph counts both as they are).
    Weights shrink to one byte at int8 plus an int32 bias, a scale and a zero point per
    output channel."""

    def __init__(self, analysis: ModelAnalysis) -> None:
        self.analysis = analysis
        g = analysis.graph
        static = g.static
        reference = onnx_footprint(analysis.onnx)
        self.reference = reference
        self.other_weight_bytes = reference.weight_bytes - sum(
            layer.params * WEIGHT_BYTES[FLOAT] for layer in analysis.layers
        )
        # per tensor: bytes per channel (float32) and its source
        self.tensors: dict[str, tuple[float, Source]] = {}
        for name, shape in g.shapes.items():
            if name in static:
                continue
            src = analysis.sources.get(name)
            if src is None:
                src = Source(None, 1, int(shape[1]) if len(shape) > 1 else 1)
            numel = math.prod(int(d) for d in shape)
            self.tensors[name] = (numel * 4 / max(1, src.channels), src)
        plan = execution_steps(analysis.onnx, g)  # every tensor counted at float32, as above
        self.steps, self.inputs, self.outputs = plan.steps, plan.inputs, plan.outputs

    def footprint(self, keep: Sequence[int], dtypes: Sequence[str]) -> Footprint:
        a = self.analysis
        weights = float(self.other_weight_bytes)
        for layer in a.layers:
            src = a.input_sources[layer.index]
            cin = src.count(keep) if src is not None else layer.in_channels
            cout = keep[layer.group] if layer.group is not None else layer.out_channels
            groups = cin if layer.kind == "depthwise" else layer.groups
            n_weights = cout * (cin // max(1, groups)) * layer.kernel * layer.kernel
            dtype = dtypes[layer.index]
            per_channel = CHANNEL_BYTES[dtype] if dtype != FLOAT or layer.bias else 0
            weights += n_weights * WEIGHT_BYTES[dtype] + cout * per_channel
        sizes = {name: per * src.count(keep) for name, (per, src) in self.tensors.items()}
        return footprint_of(int(weights), self.steps, sizes, self.inputs, self.outputs)
