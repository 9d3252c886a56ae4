"""Pareto dominance, constrained non-dominated sorting and crowding distance (Deb et al. 2002).

Everything here works on *losses*: a (n, m) array where lower is better in every column
(maximised objectives are negated before they get here), and *violations*: a (n,) array,
0 for a feasible point and the amount by which it breaks its constraints otherwise.
"""

from __future__ import annotations

import numpy as np


def violation(ratios: np.ndarray) -> np.ndarray:
    """Total relative constraint violation per row of ``ratios`` (value / limit; <= 1 is within)."""
    ratios = np.asarray(ratios, dtype=float)
    if ratios.ndim != 2:
        raise ValueError(f"ratios must be a (n, constraints) array, got shape {ratios.shape}")
    return np.nan_to_num(np.clip(ratios - 1.0, 0.0, None), nan=np.inf).sum(axis=1)


def domination_matrix(losses: np.ndarray, violations: np.ndarray | None = None) -> np.ndarray:
    """``D[i, j]`` is True when point i (constrained-)dominates point j.

    Constrained domination (Deb 2002): a feasible point dominates an infeasible one; of two
    infeasible points the one with the smaller violation dominates; two feasible points
    compare by ordinary Pareto dominance.
    """
    losses = np.asarray(losses, dtype=float)
    le = np.all(losses[:, None, :] <= losses[None, :, :], axis=2)
    lt = np.any(losses[:, None, :] < losses[None, :, :], axis=2)
    pareto = le & lt
    if violations is None:
        return pareto
    v = np.asarray(violations, dtype=float)
    feasible = v <= 0
    both_feasible = feasible[:, None] & feasible[None, :]
    feasible_beats = feasible[:, None] & ~feasible[None, :]
    both_infeasible = ~feasible[:, None] & ~feasible[None, :]
    less_violation = v[:, None] < v[None, :]
    return (both_feasible & pareto) | feasible_beats | (both_infeasible & less_violation)


def non_dominated_sort(losses: np.ndarray, violations: np.ndarray | None = None) -> list[np.ndarray]:
    """Fronts of indices, best first (fast non-dominated sort, O(m n^2))."""
    n = len(losses)
    if n == 0:
        return []
    dom = domination_matrix(losses, violations)
    dominated_by = dom.sum(axis=0)  # how many points dominate each point
    fronts = []
    current = np.flatnonzero(dominated_by == 0)
    remaining = dominated_by.copy()
    while current.size:
        fronts.append(current)
        remaining[current] = -1
        remaining -= dom[current].sum(axis=0)
        current = np.flatnonzero(remaining == 0)
    return fronts


def crowding_distance(losses: np.ndarray) -> np.ndarray:
    """Crowding distance of the points of one front; boundary points get infinity."""
    losses = np.asarray(losses, dtype=float)
    n, m = losses.shape
    distance = np.zeros(n)
    if n <= 2:
        distance[:] = np.inf
        return distance
    for k in range(m):
        order = np.argsort(losses[:, k], kind="stable")
        column = losses[order, k]
        distance[order[0]] = distance[order[-1]] = np.inf
        span = column[-1] - column[0]
        if span > 0 and np.isfinite(span):
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def pareto_front(losses: np.ndarray, violations: np.ndarray | None = None) -> np.ndarray:
    """Indices of the feasible non-dominated points (duplicates of a front point all kept)."""
    losses = np.asarray(losses, dtype=float)
    keep = np.ones(len(losses), dtype=bool) if violations is None else np.asarray(violations) <= 0
    candidates = np.flatnonzero(keep & np.all(np.isfinite(losses), axis=1))
    # Lexicographic order: no point can be dominated by one after it, so one pass against
    # the front found so far suffices (O(n x front size) rather than O(n^2) memory).
    order = candidates[np.lexsort(losses[candidates].T[::-1])]
    front: list[int] = []
    for i in order:
        point = losses[i]
        if front:
            kept = losses[front]
            if np.any(np.all(kept <= point, axis=1) & np.any(kept < point, axis=1)):
                continue
        front.append(int(i))
    return np.array(sorted(front), dtype=int)
