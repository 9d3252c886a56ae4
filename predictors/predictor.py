"""LatencyPredictor: "how long does this network take on that device?"

``predict(model)`` takes an ONNX path or ModelProto, a ``torch.nn.Module`` with
``input_shape=``, or a ``(space, arch)`` pair, and returns a ``Prediction`` (latency in ms
and the per-kernel breakdown). ``predict_batch(space, archs)`` answers a whole batch of a
search space's architectures with one gather and sum over the space's lookup-table layout.

The saved file (``save``/``load``) is JSON, no pickle, so it loads with any later
scikit-learn or numpy::

    {"format": "hwlat-latency-predictor", "version": 1,
     "kind": "lut" | "gbdt",               # table lookups first, or the regressor for everything
     "device": ..., "backend": ..., "backend_version": ..., "settings": {...}, "host": {...},
     "created_at": <unix time>, "training": {...counts, device seconds...},
     "roofline": {"gflops", "gbps", "fitted_on"},  # estimates for unsupported nodes (--lenient)
     "calibration": {"residuals_pct": [...]},  # leave-one-out, for a search's safety margin
     "fusion_rules": {"version": 1, "backend": ..., "fused": {"conv>add": true, ...},
                      "evidence": [{"rule", "a", "b", "a_ms", "b_ms", "ab_ms", ...}]},
     "table": {"entries": {<kernel key>: <ms>}, "overhead": {"intercept_ms", "per_kernel_ms",
               "compute_scale", "memory_scale", "fitted_on"}},
     "regressor": {"version": 1, "params": {...}, "features": [...], "n_samples": {...},
                   "models": {<family>: {"cols", "coef", "trees": {"baseline", "n_features",
                              "trees": [{"feature", "threshold", "left", "right",
                                         "missing_left", "value"}]}}}} | null}

Kernel keys are OpSpec keys joined by ``|`` (profiler/kernel.py). Trees are evaluated
as in predictors/models/trees.py; a loaded predictor gives bit-identical predictions.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hwlat.errors import HwlatError, PredictorFormatError
from hwlat.predictors.formats.predictor_schema import RETRAIN, check_predictor_dict
from hwlat.predictors.kernels.fusion import FusionRules
from hwlat.predictors.kernels.splitter import ModelSplitter
from hwlat.predictors.models.kernel_regressor import KernelRegressor
from hwlat.predictors.models.memory import Footprint, MemoryModel, onnx_footprint
from hwlat.predictors.models.overhead import OverheadModel
from hwlat.predictors.models.roofline import Roofline
from hwlat.predictors.models.table import LatencyTable
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.onnx_models import is_torch_module, load_model, torch_to_onnx

FORMAT = "hwlat-latency-predictor"
FORMAT_VERSION = 1
KINDS = ("lut", "gbdt")
SAFETY_QUANTILE = 90  # of the calibration residuals, for a search's safety margin


class PredictorScopeError(HwlatError):
    """A model with kernels the predictor was not trained for (e.g. int8 kernels, float32 predictor)."""


@dataclass
class KernelCost:
    key: str
    op: str
    latency_ms: float  # what the kernel adds end to end (scaled, with per-kernel overhead)
    source: str  # "table", "regressor", "glue" or "roofline" (a node no kernel describes)
    nodes: tuple[str, ...] = ()


@dataclass
class Prediction:
    latency_ms: float
    kernels: list[KernelCost]
    overhead_ms: float
    fallbacks: list[str] = field(default_factory=list)  # keys predicted because the table lacks them
    warnings: list[str] = field(default_factory=list)
    peak_memory_mb: float | None = None  # weights + live activations + the device's runtime terms
    weights_mb: float | None = None
    activations_mb: float | None = None  # the largest set of activations alive at once
    arena_mb: float | None = None  # what ORT's arena holds for them after runs (simulated)
    unsupported_ops: list[dict] = field(default_factory=list)  # estimated on the roofline (lenient)
    # Regressor-predicted kernels with features outside its training range ({"key", "features":
    # {name: {"value", "min", "max"}}}); None when the predictor file does not record the ranges.
    extrapolated_kernels: list[dict] | None = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class LatencyPredictor:
    """Splitter + fusion rules + table (with regressor fallback) + overhead, for one device."""

    def __init__(
        self,
        table: LatencyTable,
        fusion_rules: FusionRules,
        device: str,
        backend: str,
        kind: str = "lut",
        meta: dict | None = None,
        memory: MemoryModel | None = None,
    ) -> None:
        if kind not in KINDS:
            raise PredictorFormatError(f"unknown predictor kind {kind!r}; use one of {', '.join(KINDS)}")
        if kind == "gbdt" and table.fallback is None:
            raise PredictorFormatError(
                "a gbdt predictor needs a fitted KernelRegressor as the table's fallback"
            )
        self.table = table
        self.fusion_rules = fusion_rules
        self.device = device
        self.backend = backend
        self.kind = kind
        self.meta = dict(meta or {})
        self.dtypes = tuple(self.meta.get("training", {}).get("dtypes", ("float32",)))
        self._fingerprint: str | None = None
        self.memory = memory or MemoryModel()
        roofline = self.meta.get("roofline")
        self.roofline = Roofline.from_dict(roofline) if roofline else None
        self._space_cache: dict[int, tuple[Any, np.ndarray, Any]] = {}

    @property
    def fingerprint(self) -> str:
        """A hash of what the predictor predicts with (not when or where it was saved)."""
        if self._fingerprint is None:
            data = {k: v for k, v in self.to_dict().items() if k != "created_at"}
            text = json.dumps(data, sort_keys=True, separators=(",", ":"))
            self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._fingerprint

    @property
    def regressor(self) -> KernelRegressor | None:
        return self.table.fallback

    def safety_margin_pct(self, quantile: float = SAFETY_QUANTILE) -> float:
        """How much slower than predicted the calibration networks ran at this quantile of their
        leave-one-out residuals (0 when the predictor errs on the slow side or has none): the
        margin a search takes off its budget so that winners meet the budget itself."""
        residuals = self.meta.get("calibration", {}).get("residuals_pct", [])
        return max(0.0, float(np.percentile(residuals, quantile))) if residuals else 0.0

    # ----- single models --------------------------------------------------------------
    def predict(
        self, model: Any, input_shape: Sequence[int] | None = None, strict: bool = True
    ) -> Prediction:
        """Latency of one network: ONNX path/ModelProto, torch module (+ input_shape), or (space, arch)."""
        if isinstance(model, tuple) and len(model) == 2 and hasattr(model[0], "ops"):
            return self._predict_arch(*model)
        if is_torch_module(model):
            if input_shape is None:
                raise ValueError("a torch.nn.Module needs input_shape=(N, C, H, W) to be traced")
            model = torch_to_onnx(model, tuple(input_shape))
        elif not isinstance(model, (onnx.ModelProto, str, Path)):
            raise TypeError(
                f"cannot predict a {type(model).__name__}: pass an ONNX path or ModelProto, "
                "a torch.nn.Module with input_shape, or a (space, arch) pair"
            )
        model = load_model(model)
        split = ModelSplitter(self.fusion_rules, strict=strict).split(model)
        kernels = [s.kernel for s in split.kernels]
        untrained = sorted({o.dtype for k in kernels for o in k.ops} - set(self.dtypes))
        if untrained:
            raise PredictorScopeError(
                f"the model runs {', '.join(untrained)} kernels, and this predictor was trained for "
                f"{', '.join(self.dtypes)} only",
                f"train one with hwlat train --dtypes {','.join([*self.dtypes, *untrained])}",
            )
        costs = self._costs(kernels)
        items = [
            KernelCost(k.key, k.op, float(ms), self._source(fb), s.nodes)
            for k, s, ms, fb in zip(kernels, split.kernels, costs.latency_ms, costs.fallback, strict=True)
        ]
        items += [
            KernelCost("glue", "glue", self.table.overhead.per_kernel_ms, "glue", (n,))
            for n in split.glue_nodes
        ]
        estimated = self._roofline_costs(split.fallback)
        items += estimated
        footprint = onnx_footprint(model, split.eight_bit_nodes)
        prediction = self._prediction(items, costs, kernels, split.warnings, footprint)
        prediction.unsupported_ops = [
            {"node": f.node, "op_type": f.op_type, "reason": f.reason, "latency_ms": c.latency_ms}
            for f, c in zip(split.fallback, estimated, strict=True)
        ]
        return prediction

    def _roofline_costs(self, nodes: Sequence[Any]) -> list[KernelCost]:
        """Nodes no kernel describes, each at its roofline time plus the per-kernel overhead."""
        if not nodes:
            return []
        if self.roofline is None:
            raise PredictorScopeError(
                f"the model has {len(nodes)} nodes no kernel describes, and this predictor has no "
                "roofline to estimate them",
                "train it again with this hwlat version (hwlat train), or remove those ops",
            )
        raw = np.array([self.roofline.latency_ms(f.flops, f.bytes_moved) for f in nodes])
        added = self.table.overhead.kernel_ms(raw, np.zeros(len(nodes), bool), np.zeros(len(nodes)))
        return [
            KernelCost(f"unsupported:{f.op_type}", f.op_type, float(ms), "roofline", (f.node,))
            for f, ms in zip(nodes, added, strict=True)
        ]

    def _predict_arch(self, space: Any, arch: Any) -> Prediction:
        kernels = self._arch_kernels(space, arch)
        costs = self._costs(kernels)
        items = [
            KernelCost(k.key, k.op, float(ms), self._source(fb))
            for k, ms, fb in zip(kernels, costs.latency_ms, costs.fallback, strict=True)
        ]
        footprint = space.footprint(arch) if hasattr(space, "footprint") else None
        return self._prediction(items, costs, kernels, [], footprint)

    def kernel_latency_ms(self, kernels: Sequence[Kernel]) -> np.ndarray:
        """What each kernel adds to a network's latency on this device (ms), as ``predict`` sums it:
        for per-layer cost tables (compression search) without exporting whole networks."""
        return np.asarray(self._costs(list(kernels)).latency_ms, dtype=float)

    def _source(self, fallback: bool) -> str:
        return "regressor" if fallback or self.kind == "gbdt" else "table"

    def _costs(self, kernels: list[Kernel]):
        if self.kind == "gbdt":
            table = LatencyTable({}, self.table.fallback, self.table.overhead)
            costs = table.costs(kernels)
            costs.fallback[:] = False  # the regressor is the model here, not a fallback
        else:
            costs = self.table.costs(kernels)
        if not np.all(np.isfinite(costs.latency_ms)):
            bad = kernels[int(np.flatnonzero(~np.isfinite(costs.latency_ms))[0])].key
            raise PredictorFormatError(
                f"the predictor's numbers give kernel {bad} a latency of "
                f"{costs.latency_ms[~np.isfinite(costs.latency_ms)][0]} ms (its file was edited or damaged)",
                RETRAIN,
            )
        return costs

    def _prediction(
        self,
        items: list[KernelCost],
        costs,
        kernels: list[Kernel],
        warnings: list[str],
        footprint: Footprint | None,
    ) -> Prediction:
        intercept = self.table.overhead.intercept_ms
        total = intercept + float(sum(i.latency_ms for i in items))
        fallbacks = list(dict.fromkeys(k.key for k, fb in zip(kernels, costs.fallback, strict=True) if fb))
        memory = {}
        if footprint is not None:
            memory = {
                "peak_memory_mb": self.memory.predict_mb(footprint),
                "weights_mb": footprint.weights_mb,
                "activations_mb": footprint.activations_mb,
                "arena_mb": footprint.arena_mb,
            }
        prediction = Prediction(total, items, intercept, fallbacks, list(warnings), **memory)
        prediction.extrapolated_kernels = self._extrapolated(kernels, costs.fallback)
        return prediction

    def _extrapolated(self, kernels: list[Kernel], fallback: np.ndarray) -> list[dict] | None:
        """The kernels the regressor predicts outside the range it was trained on, once per key
        (a table entry was measured: never extrapolated)."""
        if self.kind != "gbdt":
            kernels = [k for k, fb in zip(kernels, fallback, strict=True) if fb]
        used = list({k.key: k for k in kernels}.values())
        if not used:
            return []
        assert self.regressor is not None
        outside = self.regressor.out_of_range(used)
        if outside is None:
            return None
        return [{"key": k.key, "features": f} for k, f in zip(used, outside, strict=True) if f]

    def memory_batch(self, space: Any, archs: Sequence[Any]) -> np.ndarray:
        """Predicted peak memory (MB) of each architecture of a space (``space.footprint(arch)``)."""
        return np.array([self.memory.predict_mb(space.footprint(a)) for a in archs], dtype=float)

    # ----- search spaces ---------------------------------------------------------------
    def _arch_kernels(self, space: Any, arch: Any) -> list[Kernel]:
        if hasattr(space, "cells") and hasattr(space, "cell_indices"):
            cells = space.cells()  # group only this architecture's cells, as _cell_kernels would
            return [
                k
                for i in np.asarray(space.cell_indices(arch))
                for k in self.fusion_rules.group(list(cells[int(i)]))
            ]
        return self.fusion_rules.group(space.ops(arch))

    def _cell_kernels(self, space: Any) -> list[list[Kernel]]:
        return [self.fusion_rules.group(list(cell)) for cell in space.cells()]

    def cell_latency_ms(self, space: Any) -> np.ndarray:
        """What each cell of ``space.cells()`` adds to a network's latency (cached per space)."""
        cached = self._space_cache.get(id(space))
        if cached is not None and cached[0] is space:
            return cached[1]
        cells = self._cell_kernels(space)
        flat = [k for ks in cells for k in ks]
        costs = self._costs(flat).latency_ms if flat else np.zeros(0)
        vector = np.zeros(len(cells))
        at = 0
        for i, ks in enumerate(cells):
            vector[i] = costs[at : at + len(ks)].sum()
            at += len(ks)
        summer = space.cell_sum(vector) if hasattr(space, "cell_sum") else None
        self._space_cache[id(space)] = (space, vector, summer)
        return vector

    def _cell_sum(self, space: Any) -> Any:
        """The space's compiled per-cell summer for this predictor (None if the space has none)."""
        self.cell_latency_ms(space)
        return self._space_cache[id(space)][2]

    def latency_ms(self, space: Any, arch: Any) -> float:
        """One architecture's latency, without the breakdown: the fast path for a single query."""
        summer = self._cell_sum(space)
        if summer is not None:
            return summer.one(arch) + self.table.overhead.intercept_ms
        return float(
            self.cell_latency_ms(space)[space.cell_indices(arch)].sum() + self.table.overhead.intercept_ms
        )

    def predict_batch(self, space: Any, archs: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Latency (ms) of each architecture: per-cell costs gathered and summed, plus the intercept.

        ``archs`` may be a list of architectures or an (n, decisions) int array of option
        indices; the array is the fastest form (a column-major one most of all)."""
        summer = self._cell_sum(space)
        if summer is not None:
            return summer.batch(archs) + self.table.overhead.intercept_ms
        vector = self.cell_latency_ms(space)
        if hasattr(space, "cell_indices_batch"):
            idx = np.asarray(space.cell_indices_batch(archs))
        else:
            idx = np.stack([np.asarray(space.cell_indices(a)) for a in archs])
        return vector.take(idx).sum(axis=1) + self.table.overhead.intercept_ms

    # ----- files ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "device": self.device,
            "backend": self.backend,
            **self.meta,
            "fusion_rules": self.fusion_rules.to_dict(),
            "table": self.table.to_dict(),
            "regressor": self.regressor.to_dict() if self.regressor is not None else None,
            "memory": self.memory.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = self.to_dict()
        data.setdefault("created_at", time.time())
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, allow_nan=False, separators=(",", ":")))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyPredictor:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"predictor file {path} does not exist; train one with hwlat train")
        try:
            data = json.loads(path.read_text())
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested or numbers too deep
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(":")[0]
            raise PredictorFormatError(
                f"{path} is not an hwlat predictor (not readable JSON: {reason})",
                "pass a file from hwlat train -o, or train it again",
            ) from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "predictor") -> LatencyPredictor:
        """A predictor from its file's content, checked field by field (predictor_schema.py)."""
        check_predictor_dict(data, source, FORMAT, FORMAT_VERSION, KINDS)
        regressor = KernelRegressor.from_dict(data["regressor"]) if data.get("regressor") else None
        table = LatencyTable(
            data["table"]["entries"], regressor, OverheadModel.from_dict(data["table"]["overhead"])
        )
        known = {
            "format",
            "version",
            "kind",
            "device",
            "backend",
            "fusion_rules",
            "table",
            "regressor",
            "memory",
        }
        meta = {k: v for k, v in data.items() if k not in known}
        return cls(
            table,
            FusionRules.from_dict(data["fusion_rules"]),
            data["device"],
            data["backend"],
            data["kind"],
            meta,
            MemoryModel.from_dict(data["memory"]) if data.get("memory") else None,
        )
