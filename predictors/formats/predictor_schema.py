"""The predictor file's schema, checked before anything is built from it.

A predictor file is JSON a user may have edited, truncated or carried over from an older hwlat
(predictors/predictor.py documents the layout). Every field a loaded predictor reads is checked
here for presence, type and range, and the trees for shape (children after their parent, so
evaluation ends; features within the feature vector), so that a bad file is one
``PredictorFormatError`` naming the field, never a KeyError, a TypeError or a hang at predict time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from hwlat.errors import PredictorFormatError
from hwlat.predictors.kernels.fusion import RULES_VERSION
from hwlat.predictors.models.features import FEATURES, same_features
from hwlat.predictors.models.kernel_regressor import ALL
from hwlat.predictors.models.kernel_regressor import FORMAT_VERSION as REGRESSOR_VERSION
from hwlat.profiler.opspec import DTYPES

RETRAIN = "train it again with hwlat train"

Check = Callable[[Any, str], None]


class _Bad(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


def check_predictor_dict(data: Any, source: str, fmt: str, version: int, kinds: tuple[str, ...]) -> None:
    """Raise PredictorFormatError (naming ``source`` and the field) unless ``data`` is a whole,
    current predictor file."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise PredictorFormatError(
            f"{source} is not an hwlat latency predictor (format {found!r})",
            "pass a file from hwlat train -o",
        )
    if data.get("version") != version:
        raise PredictorFormatError(
            f"{source} has predictor format version {data.get('version')!r}; this hwlat reads {version}",
            RETRAIN,
        )
    try:
        _predictor(kinds)(data, "")
        if data["kind"] == "gbdt" and data["regressor"] is None:
            raise _Bad("regressor", "a gbdt predictor needs its kernel regressor, found null")
    except _Bad as exc:
        raise PredictorFormatError(f"{source}: {exc}", RETRAIN) from None


# ----- checks, composed --------------------------------------------------------------------------
def _show(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)[:40]
    return "a list" if isinstance(value, list) else "an object"


def _at(path: str, key: str | int) -> str:
    """``path.key``, ``path[3]``, or ``path['conv-in:...']`` for keys that are not names."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key.isidentifier():
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def number(minimum: float = -math.inf, above: bool = False) -> Check:
    def check(value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Bad(path, f"expected a finite number, found {_show(value)}")
        if value < minimum or (above and value == minimum):
            raise _Bad(path, f"expected a number {'>' if above else '>='} {minimum:g}, found {value!r}")

    return check


def integer(minimum: int = 0) -> Check:
    def check(value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Bad(path, f"expected a whole number >= {minimum}, found {_show(value)}")

    return check


def of_type(kind: type, name: str) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, kind):
            raise _Bad(path, f"expected {name}, found {_show(value)}")

    return check


TEXT = of_type(str, "a string")
FLAG = of_type(bool, "true or false")
ANY_LIST = of_type(list, "a list")


def one_of(*choices: Any) -> Check:
    def check(value: Any, path: str) -> None:
        if value not in choices:
            raise _Bad(path, f"expected one of {', '.join(map(repr, choices))}, found {_show(value)}")

    return check


def nullable(inner: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if value is not None:
            inner(value, path)

    return check


def list_of(item: Check) -> Check:
    def check(value: Any, path: str) -> None:
        ANY_LIST(value, path)
        for i, v in enumerate(value):
            item(v, _at(path, i))

    return check


def mapping(item: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Bad(path, f"expected an object, found {_show(value)}")
        for k, v in value.items():
            item(v, _at(path, k))

    return check


def record(
    required: dict[str, Check], optional: dict[str, Check] | None = None, closed: bool = True
) -> Check:
    """An object with these fields (``closed``: and no others, which a constructor would refuse)."""
    optional = optional or {}

    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Bad(path, f"expected an object, found {_show(value)}")
        missing = [k for k in required if k not in value]
        if missing:
            raise _Bad(path or "the file", f"missing field{'s' * (len(missing) > 1)} {', '.join(missing)}")
        unknown = sorted(set(value) - set(required) - set(optional))
        if closed and unknown:
            raise _Bad(path, f"unknown fields {', '.join(unknown)}")
        for k, spec in [*required.items(), *optional.items()]:
            if k in value:
                spec(value[k], _at(path, k))

    return check


# ----- the predictor file ------------------------------------------------------------------------
N_FEATURES = len(FEATURES)
_TREE_FIELDS = ("feature", "threshold", "left", "right", "missing_left", "value")


def _numbers(
    value: Any, path: str, integral: bool, low: float = -math.inf, high: float = math.inf
) -> np.ndarray:
    """A list of finite numbers within [low, high], checked at once (trees hold thousands)."""
    ANY_LIST(value, path)
    kinds = (int,) if integral else (int, float)
    what = "a whole number" if integral else "a finite number"
    if not all(type(v) in kinds for v in value):
        i = next(i for i, v in enumerate(value) if type(v) not in kinds)
        raise _Bad(_at(path, i), f"expected {what}, found {_show(value[i])}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise _Bad(path, f"expected {what} per item, found one too large for a float") from None
    bad = ~np.isfinite(array) | (array < low) | (array > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        within = f" in {low:g}..{high:g}" if math.isfinite(low) or math.isfinite(high) else ""
        raise _Bad(_at(path, i), f"expected {what}{within}, found {value[i]!r}")
    return array


def _tree(value: Any, path: str) -> None:
    record(dict.fromkeys(_TREE_FIELDS, ANY_LIST))(value, path)
    n = len(value["feature"])
    if n == 0:
        raise _Bad(_at(path, "feature"), "a tree needs at least one node")
    for name in _TREE_FIELDS:
        if len(value[name]) != n:
            raise _Bad(_at(path, name), f"expected {n} nodes, as in feature, found {len(value[name])}")
    feature = _numbers(value["feature"], _at(path, "feature"), True, -1, N_FEATURES - 1)
    _numbers(value["threshold"], _at(path, "threshold"), False)
    _numbers(value["missing_left"], _at(path, "missing_left"), True, 0, 1)
    _numbers(value["value"], _at(path, "value"), False)
    node = np.arange(n)
    for side in ("left", "right"):
        child = _numbers(value[side], _at(path, side), True, 0, n - 1)
        # A split's children come after it (as scikit-learn numbers them), so evaluation ends.
        bad = (feature >= 0) & (child <= node)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _Bad(_at(_at(path, side), i), f"a split's child must come after it, found {value[side][i]}")


def _ensemble(value: Any, path: str) -> None:
    record({"baseline": number(), "n_features": one_of(N_FEATURES), "trees": list_of(_tree)})(value, path)


def _family(value: Any, path: str) -> None:
    record({"cols": ANY_LIST, "coef": ANY_LIST, "trees": nullable(_ensemble)})(value, path)
    _numbers(value["cols"], _at(path, "cols"), True, 0, N_FEATURES - 1)
    _numbers(value["coef"], _at(path, "coef"), False)
    if len(value["coef"]) != len(value["cols"]) + 1:
        raise _Bad(
            _at(path, "coef"), f"expected {len(value['cols']) + 1} numbers (one per column and the intercept)"
        )


def _features(value: Any, path: str) -> None:
    if not isinstance(value, list) or not same_features(value):
        raise _Bad(path, "the kernel regressor was trained on the features of another hwlat version")


def _models(value: Any, path: str) -> None:
    mapping(_family)(value, path)
    if ALL not in value:
        raise _Bad(path, f"missing the {ALL!r} model, which predicts kernels of every family")


def _ranges(value: Any, path: str) -> None:
    """Each model's training range per feature (min, max), as the models list names them."""
    mapping(record({"min": ANY_LIST, "max": ANY_LIST}))(value, path)
    for name, r in value.items():
        at = _at(path, name)
        lo = _numbers(r["min"], _at(at, "min"), False)
        hi = _numbers(r["max"], _at(at, "max"), False)
        for side, array in (("min", lo), ("max", hi)):
            if len(array) != N_FEATURES:
                found = f"found {len(array)}"
                raise _Bad(_at(at, side), f"expected {N_FEATURES} numbers (one per feature), {found}")
        if (lo > hi).any():
            i = int(np.flatnonzero(lo > hi)[0])
            raise _Bad(_at(_at(at, "min"), i), f"a minimum above its maximum ({lo[i]!r} > {hi[i]!r})")
    if ALL not in value:
        raise _Bad(path, f"missing the {ALL!r} model's range")


_REGRESSOR = record(
    {
        "version": one_of(REGRESSOR_VERSION),
        "params": record(
            {},
            {
                "max_iter": integer(1),
                "learning_rate": number(0, above=True),
                "max_leaf_nodes": integer(2),
                "min_samples_leaf": integer(1),
                "l2_regularization": number(0),
                "min_family_samples": integer(1),
                "random_state": nullable(integer(0)),
            },
        ),
        "features": _features,
        "n_samples": mapping(integer(0)),
        "models": _models,
    },
    {"ranges": _ranges, "floors_log_ms": mapping(number())},
)
_OVERHEAD = record(
    {
        "intercept_ms": number(),
        "per_kernel_ms": number(),
        "weight_ms_per_mb": number(),
        "compute_scale": number(),
        "memory_scale": number(),
        "fitted_on": integer(0),
    },
    {"eight_bit_scale": number()},
)
_ROOFLINE = record(
    {"gflops": number(0, above=True), "gbps": number(0, above=True)}, {"fitted_on": integer(0)}
)
_MEMORY = record(
    {"offset_mb": number(), "weight_scale": number(), "activation_scale": number(), "fitted_on": integer(0)},
    {"arena": FLAG},
)


def _predictor(kinds: tuple[str, ...]) -> Check:
    return record(
        {
            "kind": one_of(*kinds),
            "device": TEXT,
            "backend": TEXT,
            "fusion_rules": record(
                {
                    "version": one_of(RULES_VERSION),
                    "backend": TEXT,
                    "fused": mapping(FLAG),
                    "evidence": ANY_LIST,
                }
            ),
            "table": record({"entries": mapping(number(0, above=True)), "overhead": _OVERHEAD}),
            "regressor": nullable(_REGRESSOR),
        },
        {
            "memory": nullable(_MEMORY),
            "roofline": nullable(_ROOFLINE),
            "calibration": record({}, {"residuals_pct": list_of(number())}, closed=False),
            "training": record({}, {"dtypes": list_of(one_of(*DTYPES))}, closed=False),
            "created_at": number(0),
        },
        closed=False,  # more metadata (settings, host, notes) is kept as it is
    )
