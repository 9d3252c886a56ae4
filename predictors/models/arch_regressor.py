"""ArchLatencyRegressor: architecture -> latency, learned from (arch, latency) pairs.

For latency tables measured elsewhere (a public benchmark, another lab's table) where no
kernels were profiled, and for a new device with only a few measured architectures. A
scikit-learn estimator: ``fit(X, y)``, ``predict(X)``, ``get_params``/``set_params``, usable
with ``sklearn.model_selection``.

``X`` is a 2-D array of architecture encodings (``space.encode(arch)``) or a list of dicts
of choices (``space.to_dict(arch)``; strings are one-hot encoded, numbers kept). It may carry
the latencies of the same architectures on *reference* devices (the HELP setting: a new
device needs only 5-20 measured architectures when others are known): with an array, the
last ``reference`` columns; with dicts, the keys listed in ``reference``.

Latencies are modelled in log space by two models, blended by their cross-validated error:

* a Bayesian linear model (ridge with an unpenalised intercept) on three feature groups, each
  with its own prior precision: the log reference latencies, standardised and given the
  (Ledoit-Wolf shrunk) correlation between the reference devices as prior covariance, so that
  a few samples choose among the directions the references actually vary in
  (``reference_alpha``); the encoding columns (``alpha``); and, with dicts, one count per
  option value over all decisions (``shared_alpha``; e.g. how many edges are a 3x3 conv), so
  that what one decision's option costs is shared with the other decisions that offer it.
  The overall noise-to-prior ratio is the one of highest marginal likelihood;
* with references, the target as a non-negative mix of the reference latencies (ms) plus a
  non-negative constant: a device whose per-operator costs are a positive mix of the
  references' has exactly this form, and it has nothing to tune, which matters at 5 samples.

Gradient-boosted trees fit the residual once there are ``min_samples_trees`` samples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.covariance import ledoit_wolf
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction import DictVectorizer
from sklearn.utils.validation import check_is_fitted

from hwlat.errors import HwlatError

# Noise-to-prior variance ratios tried by the marginal likelihood.
RATIOS = np.logspace(-3, 3, 25)
MAX_FOLDS = 10  # folds of the cross-validation that weighs the two models


class ArchDataError(HwlatError, ValueError):
    """``X`` or ``y`` unfit for ``ArchLatencyRegressor`` (a ``ValueError`` too, as scikit-learn expects)."""


class ArchLatencyRegressor(RegressorMixin, BaseEstimator):
    def __init__(
        self,
        reference: int | Sequence[str] = 0,
        alpha: float = 10.0,
        shared_alpha: float = 0.3,
        reference_alpha: float = 1.0,
        mixture: bool = True,
        min_samples_trees: int = 50,
        max_iter: int = 200,
        learning_rate: float = 0.05,
        max_leaf_nodes: int = 15,
        min_samples_leaf: int = 5,
        random_state: int | None = None,
    ) -> None:
        self.reference = reference
        self.alpha = alpha
        self.shared_alpha = shared_alpha
        self.reference_alpha = reference_alpha
        self.mixture = mixture
        self.min_samples_trees = min_samples_trees
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def fit(self, X, y) -> ArchLatencyRegressor:
        y = np.asarray(y, dtype=np.float64).ravel()
        if np.any(~np.isfinite(y)) or np.any(y <= 0):
            raise ArchDataError(
                "latencies must be positive and finite", "they are modelled in log space; drop failed rows"
            )
        for name in ("alpha", "shared_alpha", "reference_alpha"):
            if not getattr(self, name) > 0:
                raise ArchDataError(f"{name}={getattr(self, name)} must be > 0", "it is a prior precision")
        dicts = _is_dicts(X)
        self._vectorizers = None
        if dicts:
            keys = self._ref_keys()
            self._vectorizers = (
                DictVectorizer(sparse=False).fit([_flatten(d, keys) for d in X]),
                DictVectorizer(sparse=False).fit([_value_counts(d, keys) for d in X]),
            )
        enc, shared, ref = self._split(X)
        if len(enc) != len(y):
            raise ArchDataError(
                f"X has {len(enc)} rows but y has {len(y)} values", "give one latency per row"
            )
        self.n_features_in_ = enc.shape[1] + ref.shape[1]
        self._n_columns = (enc.shape[1], shared.shape[1], ref.shape[1])
        target = np.log(y)
        self.linear_ = _BayesLinear(self.alpha, self.shared_alpha, self.reference_alpha).fit(
            enc, shared, ref, target
        )
        self.mixture_ = None
        self.weights_ = np.array([1.0, 0.0])
        if self.mixture and ref.shape[1] and len(y) >= 3:
            self.mixture_ = _Mixture().fit(ref, y)
            self.weights_ = _blend_weights(enc, shared, ref, y, self.linear_, self.mixture_)
        self.trees_ = None
        if len(y) >= self.min_samples_trees:
            self.trees_ = HistGradientBoostingRegressor(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_leaf_nodes=self.max_leaf_nodes,
                min_samples_leaf=self.min_samples_leaf,
                random_state=self.random_state,
            ).fit(np.column_stack([enc, shared, ref]), target - self._log_blend(enc, shared, ref))
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "linear_")
        enc, shared, ref = self._split(X)
        if (enc.shape[1], shared.shape[1], ref.shape[1]) != self._n_columns:
            raise ArchDataError(
                f"X has {enc.shape[1] + ref.shape[1]} features; "
                f"the regressor was fitted on {self.n_features_in_}",
                "encode with the same space and the same reference devices",
            )
        out = self._log_blend(enc, shared, ref)
        if self.trees_ is not None:
            out = out + self.trees_.predict(np.column_stack([enc, shared, ref]))
        return np.exp(out)

    # ----- helpers ---------------------------------------------------------------------
    def _log_blend(self, enc: np.ndarray, shared: np.ndarray, ref: np.ndarray) -> np.ndarray:
        out = self.weights_[0] * self.linear_.predict(enc, shared, ref)
        if self.mixture_ is not None:
            out = out + self.weights_[1] * self.mixture_.predict_log(ref)
        return out

    def _ref_keys(self) -> list[str]:
        return [] if isinstance(self.reference, int) else list(self.reference)

    def _split(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(encoding columns, shared option-value counts, log reference latencies)."""
        if self._vectorizers is not None:
            if not _is_dicts(X):
                raise ArchDataError(
                    "this regressor was fitted on dicts of choices", "pass dicts to predict too"
                )
            keys = self._ref_keys()
            missing = [k for k in keys if any(k not in d for d in X)]
            if missing:
                raise ArchDataError(
                    f"reference latency keys {missing} are missing from some rows",
                    "give every row all of them",
                )
            enc = self._vectorizers[0].transform([_flatten(d, keys) for d in X])
            shared = self._vectorizers[1].transform([_value_counts(d, keys) for d in X])
            ref = np.array([[float(d[k]) for k in keys] for d in X]).reshape(len(X), len(keys))
        else:
            A = np.asarray(X, dtype=np.float64)
            if A.ndim != 2:
                raise ArchDataError(
                    f"X must be 2-D (n_archs, n_features) or a list of dicts, got shape {A.shape}",
                    "stack space.encode(arch) rows, or pass space.to_dict(arch) dicts",
                )
            k = int(self.reference) if isinstance(self.reference, int) else 0
            if k > A.shape[1]:
                raise ArchDataError(
                    f"reference={k} columns but X has only {A.shape[1]}",
                    "append the reference latencies to X",
                )
            enc, ref = A[:, : A.shape[1] - k], A[:, A.shape[1] - k :]
            shared = np.zeros((len(A), 0))
        if not (np.all(np.isfinite(enc)) and np.all(np.isfinite(ref))):
            raise ArchDataError("X holds NaN or infinite values", "drop architectures a device failed on")
        if np.any(ref <= 0):
            raise ArchDataError("reference latencies must be positive (ms)", "drop failed reference rows")
        return enc, shared, np.log(ref)


class _BayesLinear:
    """Ridge with an unpenalised intercept and a prior precision per feature group; the
    overall noise-to-prior ratio maximises the marginal likelihood (noise variance profiled)."""

    def __init__(self, alpha: float, shared_alpha: float, reference_alpha: float) -> None:
        self.precisions = (alpha, shared_alpha, reference_alpha)

    def fit(self, enc: np.ndarray, shared: np.ndarray, ref: np.ndarray, target: np.ndarray) -> _BayesLinear:
        parts = (enc, shared, ref)
        self.mean_ = [p.mean(axis=0) for p in parts]
        self.scale_ = [_scale(p) for p in parts]
        F = self._standardised(parts)
        # Prior standard deviation per column: isotropic within the encoding groups; along the
        # eigenvectors of the references' shrunk correlation for the references.
        self.rotation_ = np.eye(ref.shape[1])
        ref_sd = np.ones(ref.shape[1])
        if ref.shape[1] > 1 and len(ref) > 1:
            eigenvalues, self.rotation_ = np.linalg.eigh(ledoit_wolf(F[2])[0])
            ref_sd = np.sqrt(np.clip(eigenvalues, 1e-9, None))
        F[2] = F[2] @ self.rotation_
        prior_sd = np.concatenate(
            [
                np.full(enc.shape[1], 1 / np.sqrt(self.precisions[0])),
                np.full(shared.shape[1], 1 / np.sqrt(self.precisions[1])),
                ref_sd / np.sqrt(self.precisions[2]),
            ]
        )
        G = np.column_stack(F) * prior_sd
        self.intercept_ = float(target.mean())
        yc = target - self.intercept_
        U, s, Vt = np.linalg.svd(G, full_matrices=False)
        uy = U.T @ yc
        rest = max(float(yc @ yc - uy @ uy), 0.0)
        dof = max(len(yc) - 1, 1)

        def log_evidence(ratio: float) -> float:
            shrink = ratio / (s**2 + ratio)
            quad = float(np.sum(shrink * uy**2)) + rest
            return -0.5 * float(np.sum(np.log1p(s**2 / ratio))) - 0.5 * dof * np.log(max(quad, 1e-300) / dof)

        self.ratio_ = float(max(RATIOS, key=log_evidence))
        self.coef_ = prior_sd * (Vt.T @ (s / (s**2 + self.ratio_) * uy))
        return self

    def predict(self, enc: np.ndarray, shared: np.ndarray, ref: np.ndarray) -> np.ndarray:
        F = self._standardised((enc, shared, ref))
        F[2] = F[2] @ self.rotation_
        return self.intercept_ + np.column_stack(F) @ self.coef_

    def _standardised(self, parts) -> list[np.ndarray]:
        return [(p - m) / s for p, m, s in zip(parts, self.mean_, self.scale_, strict=True)]


class _Mixture:
    """latency = c + sum_d w_d * reference_d with c, w >= 0 (non-negative least squares, in ms)."""

    def fit(self, log_ref: np.ndarray, y: np.ndarray) -> _Mixture:
        self.coef_, _ = nnls(_with_ones(np.exp(log_ref)), y)
        return self

    def predict_log(self, log_ref: np.ndarray) -> np.ndarray:
        # Positive unless every coefficient is zero (then the blend gives the mixture no weight).
        return np.log(np.maximum(_with_ones(np.exp(log_ref)) @ self.coef_, 1e-300))


def _blend_weights(enc, shared, ref, y, linear: _BayesLinear, mixture: _Mixture) -> np.ndarray:
    """Weights of (linear, mixture) inversely proportional to their cross-validated squared
    error in log space (leave-one-out up to ``MAX_FOLDS`` samples)."""
    n = len(y)
    folds = np.arange(n) % min(n, MAX_FOLDS)
    target = np.log(y)
    errors = np.zeros(2)
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        lin = _BayesLinear(*linear.precisions).fit(enc[train], shared[train], ref[train], target[train])
        mix = _Mixture().fit(ref[train], y[train])
        errors[0] += np.sum((lin.predict(enc[test], shared[test], ref[test]) - target[test]) ** 2)
        errors[1] += np.sum((mix.predict_log(ref[test]) - target[test]) ** 2)
    inverse = 1.0 / np.maximum(errors, 1e-12)
    return inverse / inverse.sum()


def _scale(part: np.ndarray) -> np.ndarray:
    """Column standard deviations; constant columns keep scale 1 (they are all zero once centred)."""
    sd = part.std(axis=0) if len(part) else np.ones(part.shape[1])
    return np.where(sd > 1e-12, sd, 1.0)


def _with_ones(A: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(A)), A])


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


def _value_counts(d: dict, skip: list[str]) -> dict:
    """How many decisions chose each string option value (numbers are not shared)."""
    values = [v for k, v in _flatten(d, skip).items() if isinstance(v, str)]
    return dict(Counter(values))
