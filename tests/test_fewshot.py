"""ArchLatencyRegressor as a few-shot estimator: the scikit-learn contract (fit/predict,
get_params/clone, model selection), its errors, and what each part of the model is for, on
NAS-Bench-201 choices from the real space with synthetic devices (per-operator costs). How
well it transfers on measured tables is benchmarks/bench_fewshot.py's business."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score

from hwlat.errors import HwlatError
from hwlat.predictors import ArchLatencyRegressor
from hwlat.predictors.models.arch_regressor import ArchDataError
from hwlat.search.spaces import get_space

SPACE = get_space("nb201")
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def _archs(n: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [SPACE.sample(rng) for _ in range(n)]


def _device(archs, op_ms: dict[str, float], base_ms: float, seed: int, noise: float = 0.01) -> np.ndarray:
    """Latency = a fixed part + each edge's operator cost, the same on every edge, with noise."""
    rng = np.random.default_rng(seed)
    ms = np.array(
        [base_ms + sum(op_ms[v] for k, v in SPACE.to_dict(a).items() if k != "resolution") for a in archs]
    )
    return ms * np.exp(noise * rng.standard_normal(len(ms)))


GPU = {"none": 0.0, "skip_connect": 0.05, "nor_conv_1x1": 0.3, "nor_conv_3x3": 0.4, "avg_pool_3x3": 0.2}
CPU = {"none": 0.0, "skip_connect": 0.02, "nor_conv_1x1": 0.5, "nor_conv_3x3": 3.0, "avg_pool_3x3": 0.4}
PHONE = {"none": 0.0, "skip_connect": 0.1, "nor_conv_1x1": 1.0, "nor_conv_3x3": 2.0, "avg_pool_3x3": 1.5}


@pytest.fixture(scope="module")
def table():
    archs = _archs(200)
    refs = np.column_stack(
        [_device(archs, GPU, 2.0, 1), _device(archs, CPU, 1.0, 2), _device(archs, PHONE, 3.0, 3)]
    )
    # The target costs a positive mix of the references' operator costs.
    target = (0.5 * refs[:, 0] + 0.4 * refs[:, 1] + 0.1 * refs[:, 2]) * np.exp(
        0.01 * np.random.default_rng(4).standard_normal(len(archs))
    )
    enc = np.stack([SPACE.encode(a) for a in archs])
    dicts = [SPACE.to_dict(a) for a in archs]
    return archs, enc, dicts, refs, target


def _with_refs(dicts, refs):
    return [{**d, "gpu_ms": r[0], "cpu_ms": r[1], "phone_ms": r[2]} for d, r in zip(dicts, refs, strict=True)]


REF_KEYS = ["gpu_ms", "cpu_ms", "phone_ms"]


# ----- the estimator contract ------------------------------------------------------------------
def test_fit_returns_self_and_predict_gives_positive_latencies(table):
    _, enc, dicts, refs, y = table
    for X, reference in ((np.column_stack([enc, refs]), 3), (_with_refs(dicts, refs), REF_KEYS)):
        model = ArchLatencyRegressor(reference=reference)
        assert model.fit(X[:10], y[:10]) is model
        p = model.predict(X[10:])
        assert p.shape == (190,) and np.all(p > 0) and np.all(np.isfinite(p))
        assert model.n_features_in_ == 31 + 3 if reference == 3 else model.n_features_in_ > 3


def test_predict_before_fit_raises(table):
    with pytest.raises(NotFittedError):
        ArchLatencyRegressor().predict(table[1][:3])


def test_get_params_set_params_and_clone(table):
    _, enc, _, refs, y = table
    model = ArchLatencyRegressor(reference=3, alpha=3.0, shared_alpha=0.5, mixture=False, random_state=7)
    params = model.get_params()
    assert params["alpha"] == 3.0 and params["shared_alpha"] == 0.5 and params["mixture"] is False
    assert params["reference"] == 3 and params["random_state"] == 7
    model.fit(np.column_stack([enc, refs])[:20], y[:20])
    copy = clone(model)
    assert copy.get_params() == params and not hasattr(copy, "linear_")  # unfitted, same settings
    assert copy.set_params(alpha=1.0) is copy and copy.alpha == 1.0 and model.alpha == 3.0


def test_model_selection_works(table):
    _, enc, _, refs, y = table
    X = np.column_stack([enc, refs])
    scores = cross_val_score(ArchLatencyRegressor(reference=3), X[:60], y[:60], cv=3, scoring="r2")
    assert np.all(np.isfinite(scores)) and scores.mean() > 0.9
    search = GridSearchCV(ArchLatencyRegressor(reference=3), {"alpha": [1.0, 10.0]}, cv=3).fit(X[:60], y[:60])
    assert search.best_params_["alpha"] in (1.0, 10.0)


def test_refit_forgets_the_previous_fit(table):
    _, enc, dicts, refs, y = table
    model = ArchLatencyRegressor(reference=3).fit(np.column_stack([enc, refs])[:20], y[:20])
    model.set_params(reference=0).fit(enc[:20], y[:20])  # same object, no references now
    assert model.predict(enc[20:25]).shape == (5,) and model.mixture_ is None


# ----- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda enc, y: ArchLatencyRegressor().fit(enc[0], y[:1]), "must be 2-D"),
        (lambda enc, y: ArchLatencyRegressor().fit(enc[:10], y[:9]), "10 rows but y has 9"),
        (lambda enc, y: ArchLatencyRegressor(reference=40).fit(enc[:10], y[:10]), "reference=40 columns"),
        (lambda enc, y: ArchLatencyRegressor().fit(enc[:10], -y[:10]), "positive and finite"),
        (lambda enc, y: ArchLatencyRegressor(alpha=0.0).fit(enc[:10], y[:10]), "alpha=0.0 must be > 0"),
        (lambda enc, y: ArchLatencyRegressor().fit(enc[:10], y[:10]).predict(enc[:5, :30]), "30 features"),
        (
            lambda enc, y: ArchLatencyRegressor(reference=1).fit(enc[:10], y[:10]),
            "reference latencies must be",
        ),
        (lambda enc, y: ArchLatencyRegressor().fit(np.where(enc > 0, np.nan, 0)[:10], y[:10]), "NaN"),
    ],
)
def test_bad_input_is_an_hwlat_error_and_a_value_error(table, make, match):
    _, enc, _, _, y = table
    with pytest.raises(ArchDataError, match=match) as info:
        make(enc, y)
    assert isinstance(info.value, HwlatError) and isinstance(info.value, ValueError)
    assert info.value.fix  # says how to fix it


def test_dict_errors(table):
    _, enc, dicts, refs, y = table
    rows = _with_refs(dicts, refs)
    model = ArchLatencyRegressor(reference=REF_KEYS).fit(rows[:10], y[:10])
    with pytest.raises(ArchDataError, match="fitted on dicts"):
        model.predict(enc[:3])
    with pytest.raises(ArchDataError, match="missing from some rows"):
        model.predict([{k: v for k, v in r.items() if k != "cpu_ms"} for r in rows[:3]])


# ----- what the parts of the model are for ------------------------------------------------------------
def _spearman(model, X, y) -> float:
    return spearmanr(model.predict(X), y).statistic


def test_five_samples_and_references_rank_a_mixed_device(table):
    """The target is a positive mix of the references: 5 samples suffice (the mixture model)."""
    _, enc, dicts, refs, y = table
    rows = _with_refs(dicts, refs)
    model = ArchLatencyRegressor(reference=REF_KEYS).fit(rows[:5], y[:5])
    assert _spearman(model, rows[5:], y[5:]) > 0.97
    assert np.mean(np.abs(model.predict(rows[5:]) / y[5:] - 1) <= 0.10) > 0.9
    assert model.weights_.sum() == pytest.approx(1.0) and np.all(model.weights_ >= 0)


def test_shared_option_counts_let_few_samples_learn_operator_costs(table):
    """No references: with dicts the cost of an operator is shared by every edge that offers
    it, so 20 samples rank a device whose latency is a sum of operator costs; the one-hot array
    (30 separate edge-operator columns) cannot share it."""
    archs, enc, dicts, _, _ = table
    y = _device(archs, CPU, 1.0, 9)
    from_dicts = ArchLatencyRegressor().fit(dicts[:20], y[:20])
    from_arrays = ArchLatencyRegressor().fit(enc[:20], y[:20])
    assert _spearman(from_dicts, dicts[20:], y[20:]) > 0.9
    assert _spearman(from_dicts, dicts[20:], y[20:]) > _spearman(from_arrays, enc[20:], y[20:]) + 0.2


def test_features_that_carry_nothing_shrink_to_the_mean(table):
    _, enc, _, _, _ = table
    y = np.exp(np.random.default_rng(5).standard_normal(len(enc)))  # independent of the architecture
    p = ArchLatencyRegressor().fit(enc[:20], y[:20]).predict(enc[20:])
    assert np.std(np.log(p)) < 0.5 * np.std(np.log(y[:20]))


def test_trees_join_at_min_samples_trees(table):
    _, enc, _, refs, y = table
    X = np.column_stack([enc, refs])
    assert ArchLatencyRegressor(reference=3, min_samples_trees=50).fit(X[:49], y[:49]).trees_ is None
    model = ArchLatencyRegressor(reference=3, min_samples_trees=50, random_state=0).fit(X[:120], y[:120])
    assert model.trees_ is not None and _spearman(model, X[120:], y[120:]) > 0.97
