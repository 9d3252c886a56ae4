"""KernelRegressor: predicts the in-context time of kernels never measured.

One model per kernel family (conv, depthwise conv, gemm, pooling, global pool, element-wise,
data movement, squeeze-and-excitation), each a linear model on log cost features
(log FLOPs, log bytes moved, ...) with gradient-boosted trees on its residual, all in log
space (errors are relative). The linear part extrapolates sensibly beyond the sampled
sizes, where trees alone would go flat; the trees learn what is not linear (layout
switches on channel alignment, cache sizes). Below the sampled sizes it would not: every
kernel launch has a fixed cost, so no prediction goes below the fastest kernel of its family
that was measured (a 1x1-pixel conv is not 100 times faster than the smallest conv timed).
Families with too few samples are predicted by a model fitted on every kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from hwlat.errors import PredictorFormatError
from hwlat.predictors.models.features import FEATURES, family, feature_matrix, same_features
from hwlat.predictors.models.trees import TreeEnsemble
from hwlat.profiler.kernel import Kernel

FORMAT_VERSION = 1
LINEAR_FEATURES = ("log_flops", "log_bytes", "log_out_elems", "log_in_elems")
ALL = "all"


class NotFittedError(RuntimeError):
    """The regressor was used before ``fit``."""


class KernelRegressor:
    """scikit-learn style: ``fit(kernels, latency_ms)``, ``predict(kernels) -> ms``."""

    def __init__(
        self,
        max_iter: int = 300,
        learning_rate: float = 0.05,
        max_leaf_nodes: int = 15,
        min_samples_leaf: int = 4,
        l2_regularization: float = 1.0,
        min_family_samples: int = 15,
        random_state: int | None = 0,
    ) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.min_family_samples = min_family_samples
        self.random_state = random_state

    def get_params(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "max_iter",
                "learning_rate",
                "max_leaf_nodes",
                "min_samples_leaf",
                "l2_regularization",
                "min_family_samples",
                "random_state",
            )
        }

    def fit(self, kernels: Sequence[Kernel], latency_ms: Sequence[float]) -> KernelRegressor:
        y = np.log(np.asarray(latency_ms, dtype=np.float64))
        if len(kernels) != len(y) or len(y) == 0:
            raise ValueError(
                f"fit needs as many latencies as kernels (got {len(kernels)} kernels, "
                f"{len(y)} latencies), and at least one"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError("latencies must be positive and finite")
        X = feature_matrix(list(kernels))
        families = np.array([family(k) for k in kernels])
        self.models_: dict[str, _FamilyModel] = {ALL: self._fit_family(X, y)}
        self.ranges_: dict[str, tuple[np.ndarray, np.ndarray]] | None = {ALL: (X.min(0), X.max(0))}
        self.floors_log_ms_: dict[str, float] | None = {ALL: float(y.min())}
        for name in sorted(set(families)):
            mask = families == name
            if mask.sum() >= self.min_family_samples:
                self.models_[name] = self._fit_family(X[mask], y[mask])
                self.ranges_[str(name)] = (X[mask].min(0), X[mask].max(0))
                self.floors_log_ms_[str(name)] = float(y[mask].min())
        self.n_samples_ = {name: int((families == name).sum()) for name in sorted(set(families))}
        return self

    def predict(self, kernels: Sequence[Kernel]) -> np.ndarray:
        log_ms = self.predict_log(feature_matrix(list(kernels)), [family(k) for k in kernels])
        with np.errstate(over="ignore"):  # an absurd file's overflow is reported by the predictor
            return np.exp(log_ms)

    def predict_log(self, X: np.ndarray, families: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "models_"):
            raise NotFittedError("fit the KernelRegressor (or load a predictor) before predicting")
        out = np.empty(len(X))
        families = np.asarray(families)
        floors = self.floors_log_ms_ or {}  # None: a file saved before floors were recorded
        for name in set(families.tolist()):
            mask = families == name
            modelled = name if name in self.models_ else ALL
            out[mask] = np.maximum(self.models_[modelled].predict(X[mask]), floors.get(modelled, -np.inf))
        return out

    def out_of_range(self, kernels: Sequence[Kernel]) -> list[dict[str, dict[str, float]]] | None:
        """Per kernel, the features outside the range seen by the model that predicts it (name ->
        value, min, max; empty when all lie inside): there the regressor extrapolates. None for a
        regressor saved without its training ranges (files written before they were recorded)."""
        ranges = getattr(self, "ranges_", None)
        if ranges is None:
            return None
        X = feature_matrix(list(kernels))
        found = []
        for x, name in zip(X, (family(k) for k in kernels), strict=True):
            lo, hi = ranges[name] if name in self.models_ and name in ranges else ranges[ALL]
            x, lo, hi = x.tolist(), lo.tolist(), hi.tolist()
            outside = [i for i, (v, a, b) in enumerate(zip(x, lo, hi, strict=True)) if not a <= v <= b]
            found.append({FEATURES[i]: {"value": x[i], "min": lo[i], "max": hi[i]} for i in outside})
        return found

    def _fit_family(self, X: np.ndarray, y: np.ndarray) -> _FamilyModel:
        cols = [FEATURES.index(f) for f in LINEAR_FEATURES]
        A = np.column_stack([X[:, cols], np.ones(len(X))])
        ridge = 1e-3 * np.eye(A.shape[1])
        ridge[-1, -1] = 0.0
        coef = np.linalg.solve(A.T @ A + ridge, A.T @ y)
        residual = y - A @ coef
        trees = None
        if len(y) >= 2 * self.min_samples_leaf:
            hgb = HistGradientBoostingRegressor(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_leaf_nodes=self.max_leaf_nodes,
                min_samples_leaf=self.min_samples_leaf,
                l2_regularization=self.l2_regularization,
                early_stopping=False,
                random_state=self.random_state,
            )
            hgb.fit(X, residual)
            trees = TreeEnsemble.from_sklearn(hgb)
        return _FamilyModel(cols, coef, trees)

    # ----- serialization ---------------------------------------------------------------
    def to_dict(self) -> dict:
        if not hasattr(self, "models_"):
            raise NotFittedError("fit the KernelRegressor before saving it")
        return {
            "version": FORMAT_VERSION,
            "params": self.get_params(),
            "features": list(FEATURES),
            "n_samples": self.n_samples_,
            "models": {name: m.to_dict() for name, m in self.models_.items()},
            **({"ranges": self._ranges_dict()} if self.ranges_ is not None else {}),
            **({"floors_log_ms": self.floors_log_ms_} if self.floors_log_ms_ is not None else {}),
        }

    def _ranges_dict(self) -> dict:
        assert self.ranges_ is not None
        return {n: {"min": lo.tolist(), "max": hi.tolist()} for n, (lo, hi) in self.ranges_.items()}

    @classmethod
    def from_dict(cls, data: dict) -> KernelRegressor:
        if data.get("version") != FORMAT_VERSION:
            raise PredictorFormatError(
                f"kernel regressor format {data.get('version')!r} is not {FORMAT_VERSION}"
            )
        if not same_features(list(data["features"])):
            raise PredictorFormatError(
                "the saved kernel regressor uses other features than this hwlat version; train it again"
            )
        reg = cls(**data["params"])
        reg.n_samples_ = dict(data["n_samples"])
        reg.models_ = {name: _FamilyModel.from_dict(m) for name, m in data["models"].items()}
        ranges = data.get("ranges")
        reg.ranges_ = (
            {n: (np.asarray(r["min"], float), np.asarray(r["max"], float)) for n, r in ranges.items()}
            if ranges is not None
            else None
        )
        floors = data.get("floors_log_ms")
        reg.floors_log_ms_ = {n: float(v) for n, v in floors.items()} if floors is not None else None
        return reg


class _FamilyModel:
    def __init__(self, cols: list[int], coef: np.ndarray, trees: TreeEnsemble | None) -> None:
        self.cols = cols
        self.coef = coef
        self.trees = trees

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = X[:, self.cols] @ self.coef[:-1] + self.coef[-1]
        if self.trees is not None:
            out = out + self.trees.predict(X)
        return out

    def to_dict(self) -> dict:
        return {
            "cols": self.cols,
            "coef": self.coef.tolist(),
            "trees": self.trees.to_dict() if self.trees is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> _FamilyModel:
        trees = TreeEnsemble.from_dict(data["trees"]) if data["trees"] is not None else None
        return cls(list(data["cols"]), np.asarray(data["coef"], np.float64), trees)
