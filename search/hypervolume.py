"""Hypervolume of a set of points (minimisation) against a reference point.

Two objectives: exact, a sort and one sweep (O(n log n)).
More objectives: exact, by "hypervolume by slicing objectives" (HSO, While et al. 2006):
sort by the last objective, cut the dominated region into slabs between consecutive
values, and add slab depth x the (m-1)-dimensional hypervolume of the points above it,
recursively. O(n^(m-1)) time, fine for the fronts of a search (hundreds of points,
3-4 objectives); it is not meant for thousands of points in 5+ dimensions.
"""

from __future__ import annotations

import numpy as np


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (points beyond it add nothing)."""
    points = np.asarray(points, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if points.size == 0:
        return 0.0
    if points.ndim != 2 or points.shape[1] != reference.shape[0]:
        raise ValueError(
            f"points of shape {points.shape} do not match a reference point of "
            f"{reference.shape[0]} objectives"
        )
    points = points[np.all(points < reference, axis=1)]
    return _hv(points, reference)


def _hv(points: np.ndarray, reference: np.ndarray) -> float:
    if len(points) == 0:
        return 0.0
    m = points.shape[1]
    if m == 1:
        return float(reference[0] - points[:, 0].min())
    if m == 2:
        return _hv2(points, reference)
    points = points[np.argsort(points[:, -1], kind="stable")]
    total = 0.0
    for i in range(len(points)):
        upper = points[i + 1, -1] if i + 1 < len(points) else reference[-1]
        depth = upper - points[i, -1]
        if depth > 0:
            total += depth * _hv(_non_dominated(points[: i + 1, :-1]), reference[:-1])
    return total


def _hv2(points: np.ndarray, reference: np.ndarray) -> float:
    order = np.lexsort((points[:, 1], points[:, 0]))
    total, best_y = 0.0, reference[1]
    for x, y in points[order]:
        if y < best_y:
            total += (reference[0] - x) * (best_y - y)
            best_y = y
    return float(total)


def _non_dominated(points: np.ndarray) -> np.ndarray:
    le = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    lt = np.any(points[:, None, :] < points[None, :, :], axis=2)
    dominated = (le & lt).any(axis=0)
    return np.unique(points[~dominated], axis=0)
