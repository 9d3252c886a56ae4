"""Random search: uniform samples from the space; the baseline every strategy must beat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hwlat.search.strategies.base import Arch, Strategy, register_strategy


@register_strategy
class RandomSearch(Strategy):
    name = "random"
    default_batch_size = 64

    def ask(self, n: int) -> list[Arch]:
        return [tuple(self.space.sample(self.rng)) for _ in range(n)]

    def tell(self, archs: Sequence[Arch], losses: np.ndarray, ratios: np.ndarray) -> None:
        """Random search learns nothing."""
