"""TreeEnsemble: gradient-boosted trees as plain arrays, evaluated with numpy, saved as JSON.

A fitted scikit-learn ``HistGradientBoostingRegressor`` is copied node by node (feature,
threshold, children, leaf value, where missing values go) into this small format, so a
saved predictor never depends on pickle or on scikit-learn's private classes (nn-Meter's
pickled predictors stopped loading when scikit-learn changed). The evaluation follows
scikit-learn's own: start from the baseline, add each tree's leaf value in order, in
float64; a loaded ensemble returns bit-identical predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor


@dataclass
class Tree:
    feature: np.ndarray  # int, -1 at leaves
    threshold: np.ndarray  # float64: go left when x <= threshold
    left: np.ndarray  # int child indices
    right: np.ndarray
    missing_left: np.ndarray  # bool: where NaN goes
    value: np.ndarray  # float64 leaf values

    def predict(self, X: np.ndarray) -> np.ndarray:
        node = np.zeros(len(X), dtype=np.int64)
        rows = np.arange(len(X))
        leaf = self.feature < 0
        active = ~leaf[node]
        while active.any():
            idx = rows[active]
            n = node[idx]
            x = X[idx, self.feature[n]]
            go_left = np.where(np.isnan(x), self.missing_left[n], x <= self.threshold[n])
            node[idx] = np.where(go_left, self.left[n], self.right[n])
            active[idx] = ~leaf[node[idx]]
        return self.value[node]

    def to_dict(self) -> dict:
        return {
            "feature": self.feature.tolist(),
            "threshold": self.threshold.tolist(),
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "missing_left": self.missing_left.astype(int).tolist(),
            "value": self.value.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Tree:
        return cls(
            np.asarray(data["feature"], np.int64),
            np.asarray(data["threshold"], np.float64),
            np.asarray(data["left"], np.int64),
            np.asarray(data["right"], np.int64),
            np.asarray(data["missing_left"], bool),
            np.asarray(data["value"], np.float64),
        )


@dataclass
class TreeEnsemble:
    baseline: float
    trees: list[Tree]
    n_features: int

    @classmethod
    def from_sklearn(cls, model: HistGradientBoostingRegressor) -> TreeEnsemble:
        if getattr(model, "is_categorical_", None) is not None and np.any(model.is_categorical_):
            raise ValueError("categorical splits are not supported; encode categories as numbers")
        trees = []
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            feature = np.where(nodes["is_leaf"].astype(bool), -1, nodes["feature_idx"]).astype(np.int64)
            trees.append(
                Tree(
                    feature,
                    nodes["num_threshold"].astype(np.float64),
                    nodes["left"].astype(np.int64),
                    nodes["right"].astype(np.int64),
                    nodes["missing_go_to_left"].astype(bool),
                    nodes["value"].astype(np.float64),
                )
            )
        baseline = float(np.ravel(model._baseline_prediction)[0])
        return cls(baseline, trees, int(model.n_features_in_))

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a 2-D array with {self.n_features} features, got shape {X.shape}")
        raw = np.zeros(len(X), dtype=np.float64)
        raw += self.baseline
        for tree in self.trees:
            raw += tree.predict(X)
        return raw

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline,
            "n_features": self.n_features,
            "trees": [t.to_dict() for t in self.trees],
        }

    @classmethod
    def from_dict(cls, data: dict) -> TreeEnsemble:
        return cls(
            float(data["baseline"]), [Tree.from_dict(t) for t in data["trees"]], int(data["n_features"])
        )
