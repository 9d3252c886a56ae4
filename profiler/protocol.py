"""The timing protocol: how one op is timed, and when a timing counts as disturbed.

Modelled on TVM's ``time_evaluator``: warm up, raise the inner loop count ``number``
until one repeat lasts at least ``min_repeat_ms``, then take ``repeat`` repeats and
report their per-call times. On top of that, every measurement is bracketed by a
fixed *canary* op whose quiet-machine time is known; see ``DISTURBANCE_RULE``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hwlat.errors import ConfigError

DISTURBANCE_RULE = """\
A measurement is disturbed when either
  (a) the canary op, timed right before and right after it, ran more than
      canary_tolerance slower than its reference (the fastest canary time this
      device/backend/thread setting has ever recorded in the store, or seen at the
      start of this campaign), or
  (b) the coefficient of variation of its repeats exceeds max_cv.
A disturbed measurement is re-taken up to max_retries times, waiting
retry_backoff_s * 2**attempt between tries. If every try is disturbed, the try with
the lowest median is stored with disturbed=1 and the reasons, so that predictors can
leave it out and a re-run of the campaign measures it again."""


@dataclass(frozen=True)
class TimingProtocol:
    warmup_ms: float = 30.0
    warmup_runs: int = 3
    min_repeat_ms: float = 20.0
    repeat: int = 9
    cooldown_ms: float = 0.0
    max_cv: float = 0.10
    canary_tolerance: float = 0.10
    canary_repeat: int = 3
    canary_min_repeat_ms: float = 10.0
    max_retries: int = 3
    retry_backoff_s: float = 0.5
    op_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"TimingProtocol.{name}={value} must be a finite number >= 0")
        if self.repeat < 1:
            raise ConfigError(f"TimingProtocol.repeat={self.repeat} must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def quick(cls) -> TimingProtocol:
        """A cheaper protocol for tests and smoke runs (less precise)."""
        return cls(
            warmup_ms=5.0,
            warmup_runs=1,
            min_repeat_ms=2.0,
            repeat=5,
            canary_repeat=2,
            canary_min_repeat_ms=2.0,
            max_retries=1,
            retry_backoff_s=0.05,
        )
