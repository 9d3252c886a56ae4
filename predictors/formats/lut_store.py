"""Lookup tables and the store: a space's table from measured ops, and imported tables.

A table has one entry per cell of the space (``space.cells()``: the stem, each block choice
at each position and resolution, the head), keyed by ``space.cell_keys()``. An entry comes
from, in this order:
  1. an imported block row (``kind="block"``, written by ``import_table``) with that key;
  2. the cell's ops (``kind="op"`` rows from ``hwlat profile``): mean = the sum of their
     medians, std = the root of the sum of their repeat variances (ops timed independently),
     count = the fewest repeats among them.
Cells for which neither exists are reported as missing.

The space is duck-typed (``cells()`` and ``cell_keys()``), so predictors do not import search.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from hwlat.predictors.formats.lut_files import TableEntry
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.store import Store

BLOCK_KIND = "block"
IMPORTED_VERSION = "imported"


@dataclass
class TableBuild:
    entries: list[TableEntry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # cell keys without data
    from_blocks: int = 0  # entries taken from imported block rows
    with_disturbed_ops: int = 0  # entries summing an op whose only measurement is disturbed


def table_from_store(space, store: Store, device: str, backend: str) -> TableBuild:
    """The space's table for (device, backend); build the space for fewer resolutions to narrow it."""
    ops = {m.key: m for m in store.measurements(device, backend, kind="op") if m.ok}
    blocks = {m.key: m for m in store.measurements(device, backend, kind=BLOCK_KIND) if m.ok}
    row_of: dict = {}  # OpSpec -> its row or None; op keys are built once per distinct op
    build = TableBuild()
    for cell, key in zip(space.cells(), space.cell_keys(), strict=True):
        if not cell:
            continue
        if key in blocks:
            build.entries.append(_block_entry(blocks[key]))
            build.from_blocks += 1
            continue
        members = []
        for op in cell:
            if op not in row_of:
                row_of[op] = ops.get(op.key)
            members.append(row_of[op])
        if all(members):
            build.entries.append(_sum_entry(key, members))
            build.with_disturbed_ops += any(m.disturbed for m in members)
        else:
            build.missing.append(key)
    return build


def import_table(entries: Iterable[TableEntry], store: Store, device: str, backend: str, source: str) -> int:
    """Store each entry as a block row for (device, backend), all in one transaction (an import
    that fails half-way changes nothing); an existing row is replaced."""
    return store.save_all(
        Measurement(
            device=device,
            backend=backend,
            key=e.key,
            kind=BLOCK_KIND,
            samples_ms=[e.mean_ms],
            number=e.count,
            backend_version=IMPORTED_VERSION,
            extra={"mean_ms": e.mean_ms, "std_ms": e.std_ms, "count": e.count, "source": source},
        )
        for e in entries
    )


def _block_entry(m: Measurement) -> TableEntry:
    extra = m.extra
    if "mean_ms" in extra:
        return TableEntry(m.key, extra["mean_ms"], extra["std_ms"], extra["count"])
    std = statistics.pstdev(m.samples_ms) if len(m.samples_ms) > 1 else 0.0
    return TableEntry(m.key, m.median_ms, std, len(m.samples_ms))


def _sum_entry(key: str, members: list[Measurement]) -> TableEntry:
    variance = sum(statistics.pvariance(m.samples_ms) for m in members if len(m.samples_ms) > 1)
    return TableEntry(
        key, sum(m.median_ms for m in members), math.sqrt(variance), min(len(m.samples_ms) for m in members)
    )
