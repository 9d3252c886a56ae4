"""Trial: one evaluated architecture of a study, as stored."""

from __future__ import annotations

from dataclasses import dataclass

from hwlat.search.strategies.base import Arch


@dataclass(frozen=True)
class Trial:
    """``values`` are in the objectives' own units and directions, in study objective order."""

    number: int  # 0-based position in the study
    batch: int  # the ask() it came from (-1: warm start); all but the newest hold batch_size
    arch: Arch
    values: tuple[float, ...]
    feasible: bool  # every budget met
    created_at: float

    def to_dict(self, names: list[str] | None = None) -> dict:
        values = dict(zip(names, self.values, strict=True)) if names else list(self.values)
        return {
            "number": self.number,
            "batch": self.batch,
            "arch": list(self.arch),
            "values": values,
            "feasible": self.feasible,
        }
