"""Measurement: one timed op (or whole model) on one device with one backend."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Measurement:
    """Raw samples plus the facts needed to trust or reproduce them.

    A failed op is a Measurement too (``status="failed"``, ``error_msg`` set; ``"transient"``
    when the agent died or did not answer, which a re-run retries), so a
    campaign records it and moves on instead of dying.
    """

    device: str
    backend: str
    key: str
    kind: str = "op"  # "op" or "model"
    status: str = "ok"  # "ok", "failed" (deterministic: kept until --force) or "transient"
    error_msg: str = ""
    samples_ms: list[float] = field(default_factory=list)
    number: int = 0
    disturbed: bool = False
    disturbance: str = ""
    canary_ratio: float | None = None
    attempts: int = 1
    repeats: int = 1  # times the whole measurement was taken; the median clean pass is kept
    wall_s: float = 0.0  # time the agent spent on it: timing, retries, canaries, profiling
    # Whole models, read in a process of their own (the agent's ``memory_probe``), in MB:
    baseline_rss_mb: float | None = None  # resident before the model is loaded
    load_peak_rss_mb: float | None = None  # the peak while it loads (None: an older row)
    loaded_rss_mb: float | None = None  # resident once loaded
    peak_rss_mb: float | None = None  # the peak while it runs
    backend_version: str = ""
    settings: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # what only some kinds have (kernel nodes, model facts)
    started_at: float | None = None  # when the host asked for it (unix time); None for imported rows
    created_at: float = field(default_factory=time.time)  # when it was stored

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def clean(self) -> bool:
        """Measured and not flagged as disturbed: fit for tables and predictors."""
        return self.ok and not self.disturbed

    @property
    def model_rss_mb(self) -> float | None:
        """A whole model's own peak memory while it serves: its peak resident memory over its
        runs, less the process's baseline. None when the measurement failed or recorded no
        memory, and for rows measured before the load was read apart (their peak mixed the
        load's transient copies in)."""
        if not self.ok or None in (self.peak_rss_mb, self.baseline_rss_mb, self.load_peak_rss_mb):
            return None
        return self.peak_rss_mb - self.baseline_rss_mb

    @property
    def load_rss_mb(self) -> float | None:
        """The model's peak while the runtime loads it, over the baseline (transient: the
        runtime's copies of the weights while it lays them out)."""
        if not self.ok or None in (self.load_peak_rss_mb, self.baseline_rss_mb):
            return None
        return self.load_peak_rss_mb - self.baseline_rss_mb

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples_ms) if self.samples_ms else None

    @property
    def p10_ms(self) -> float | None:
        return _quantile(self.samples_ms, 0.10)

    @property
    def p90_ms(self) -> float | None:
        return _quantile(self.samples_ms, 0.90)

    @property
    def cv(self) -> float | None:
        if len(self.samples_ms) < 2:
            return None
        mean = statistics.fmean(self.samples_ms)
        if mean <= 0:  # every sample below the clock's resolution: no spread to speak of
            return None
        return statistics.pstdev(self.samples_ms) / mean


def _quantile(samples: list[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), without importing numpy."""
    if not samples:
        return None
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
