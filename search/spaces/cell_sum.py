"""CellSum: the sum of per-cell values (latencies) over an architecture's cells, compiled for speed.

A search asks for the latency of thousands of architectures per second, and every query is
"sum one table value per slot". The generic path (``cell_indices`` then gather) spends its
time building index arrays; this one folds each slot's cell-index table and the values into
one small float table per slot, indexed directly by the slot's decisions:

* ``one(arch)``: a few nested-list lookups per slot in plain Python (about 2 us for 25 slots);
* ``batch(archs)``: per slot, one combined code ``sum(decision * stride)`` over all
  architectures and one ``take``, so the work is a few vector operations per slot rather than
  per architecture (10-30 M architectures/s; a column-major int array is fastest).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SMALL_BATCH = 32


class CellSum:
    def __init__(
        self,
        tables: Sequence[np.ndarray],
        deps: Sequence[Sequence[int]],
        n_decisions: int,
        cell_values: np.ndarray,
    ) -> None:
        """``tables[s]`` maps slot s's decision options (``deps[s]``) to a cell index;
        ``cell_values[i]`` is what cell i adds."""
        values = np.asarray(cell_values, dtype=np.float64)
        self.n_decisions = n_decisions
        self._nested = []  # per slot: (deps, nested lists of floats) for one architecture
        self._flat = []  # per slot: (deps, strides in elements, flat float table) for batches
        for table, slot_deps in zip(tables, deps, strict=True):
            slot_values = np.ascontiguousarray(values[table])
            strides = tuple(int(np.prod(slot_values.shape[k + 1 :])) for k in range(slot_values.ndim))
            self._nested.append((tuple(slot_deps), slot_values.tolist()))
            self._flat.append((tuple(slot_deps), strides, slot_values.ravel()))

    def one(self, arch: Sequence[int]) -> float:
        total = 0.0
        for deps, table in self._nested:
            for d in deps:
                table = table[arch[d]]
            total += table
        return total

    def batch(self, archs: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        a = np.asarray(archs, dtype=np.intp)
        if a.size == 0:
            return np.zeros(0)
        if a.ndim != 2 or a.shape[1] != self.n_decisions:
            raise ValueError(
                f"expected architectures as an (n, {self.n_decisions}) array of option "
                f"indices, got shape {a.shape}"
            )
        if a.shape[0] <= SMALL_BATCH:  # per-slot vector operations do not pay off yet
            return np.array([self.one(arch) for arch in a.tolist()], dtype=np.float64)
        if not a.flags.f_contiguous:
            a = np.asfortranarray(a)
        columns = [a[:, j] for j in range(a.shape[1])]
        total = np.zeros(a.shape[0])
        for deps, strides, flat in self._flat:
            code = columns[deps[0]] * strides[0]
            for d, stride in zip(deps[1:], strides[1:], strict=True):
                code += columns[d] * stride
            total += flat.take(code)
        return total
