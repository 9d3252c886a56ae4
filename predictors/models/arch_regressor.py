"""ArchLatencyRegressor: architecture -> latency, learned from (arch, latency) pairs.

For latency tables measured elsewhere (a public benchmark, another lab's table) where no
kernels were profiled. A scikit-learn estimator: ``fit(X, y)``, ``predict(X)``,
``get_params``/``set_params``, usable with ``sklearn.model_selection``.

``X`` is a 2-D array of architecture encodings (``space.encode(arch)``) or a list of dicts
of choices (``space.to_dict(arch)``; strings are one-hot encoded, numbers kept). It may carry
the latencies of the same architectures on *reference* devices (the HELP setting: a new
device needs only 10-20 measured architectures when others are known): with an array, the
last ``reference`` columns; with dicts, the keys listed in ``reference``. Latencies are
modelled in log space: a ridge regression on the log reference latencies and the encoding,
plus gradient-boosted trees on its residual once there are ``min_samples_trees`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import Ridge
from sklearn.utils.validation import check_is_fitted


class ArchLatencyRegressor(RegressorMixin, BaseEstimator):
    def __init__(
        self,
        reference: int | Sequence[str] = 0,
        alpha: float = 1.0,
        reference_alpha: float = 1e-3,
        min_samples_trees: int = 50,
        max_iter: int = 200,
        learning_rate: float = 0.05,
        max_leaf_nodes: int = 15,
        min_samples_leaf: int = 5,
        random_state: int | None = None,
    ) -> None:
        self.reference = reference
        self.alpha = alpha
        self.reference_alpha = reference_alpha
        self.min_samples_trees = min_samples_trees
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def fit(self, X, y) -> ArchLatencyRegressor:
        y = np.asarray(y, dtype=np.float64).ravel()
        if np.any(~np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("latencies must be positive and finite (they are modelled in log space)")
        self._vectorizer = DictVectorizer(sparse=False) if _is_dicts(X) else None
        if self._vectorizer is not None:
            self._vectorizer.fit([_flatten(d, self._ref_keys()) for d in X])
        enc, ref = self._split(X)
        if len(enc) != len(y):
            raise ValueError(f"X has {len(enc)} rows but y has {len(y)} values")
        self.n_features_in_ = enc.shape[1] + ref.shape[1]
        # Encodings are shrunk (alpha); reference latencies, the strong signal, barely (reference_alpha).
        self._scale = np.concatenate(
            [
                np.full(enc.shape[1], 1.0 / np.sqrt(self.alpha)),
                np.full(ref.shape[1], 1.0 / np.sqrt(self.reference_alpha)),
            ]
        )
        Z = self._design(enc, ref)
        target = np.log(y)
        self.linear_ = Ridge(alpha=1.0).fit(Z, target)
        self.trees_ = None
        if len(y) >= self.min_samples_trees:
            self.trees_ = HistGradientBoostingRegressor(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_leaf_nodes=self.max_leaf_nodes,
                min_samples_leaf=self.min_samples_leaf,
                random_state=self.random_state,
            ).fit(Z, target - self.linear_.predict(Z))
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "linear_")
        Z = self._design(*self._split(X))
        out = self.linear_.predict(Z)
        if self.trees_ is not None:
            out = out + self.trees_.predict(Z)
        return np.exp(out)

    # ----- helpers ---------------------------------------------------------------------
    def _ref_keys(self) -> list[str]:
        return [] if isinstance(self.reference, int) else list(self.reference)

    def _split(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(encoding columns, log reference latencies)."""
        if self._vectorizer is not None:
            if not _is_dicts(X):
                raise ValueError("this regressor was fitted on dicts of choices; pass dicts to predict")
            keys = self._ref_keys()
            enc = self._vectorizer.transform([_flatten(d, keys) for d in X])
            missing = [k for k in keys if any(k not in d for d in X)]
            if missing:
                raise ValueError(f"reference latency keys {missing} are missing from some rows")
            ref = np.array([[float(d[k]) for k in keys] for d in X]).reshape(len(X), len(keys))
        else:
            A = np.asarray(X, dtype=np.float64)
            if A.ndim != 2:
                raise ValueError(
                    f"X must be 2-D (n_archs, n_features) or a list of dicts, got shape {A.shape}"
                )
            k = int(self.reference) if isinstance(self.reference, int) else 0
            if k > A.shape[1]:
                raise ValueError(f"reference={k} columns but X has only {A.shape[1]}")
            enc, ref = A[:, : A.shape[1] - k], A[:, A.shape[1] - k :]
        if np.any(ref <= 0):
            raise ValueError("reference latencies must be positive (ms)")
        return enc, np.log(ref)

    def _design(self, enc: np.ndarray, ref: np.ndarray) -> np.ndarray:
        Z = np.column_stack([enc, ref]) if ref.size else enc
        if Z.shape[1] != len(self._scale):
            raise ValueError(f"X has {Z.shape[1]} features; the regressor was fitted on {len(self._scale)}")
        return Z * self._scale


def _is_dicts(X) -> bool:
    return isinstance(X, (list, tuple)) and len(X) > 0 and isinstance(X[0], dict)


def _flatten(d: dict, skip: list[str]) -> dict:
    """Choices as DictVectorizer features: numbers stay, strings one-hot, sequences by index."""
    out: dict = {}
    for key, value in d.items():
        if key in skip:
            continue
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                out[f"{key}[{i}]"] = v if isinstance(v, (int, float)) else str(v)
        elif isinstance(value, bool):
            out[key] = float(value)
        else:
            out[key] = value if isinstance(value, (int, float)) else str(value)
    return out
