"""A dependency-free progress line with rate and ETA, on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``[name] 12/100 12% 3.1 op/s ETA 28s  last-item``; one line per update when not a TTY."""

    def __init__(self, total: int, name: str = "", stream: TextIO | None = None,
                 min_interval_s: float = 0.2) -> None:
        self.total = total
        self.name = name
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.min_interval_s = min_interval_s if self.tty else 2.0
        self._last = 0.0

    def update(self, step: int = 1, note: str = "") -> None:
        self.done += step
        now = time.monotonic()
        if now - self._last < self.min_interval_s and self.done < self.total:
            return
        self._last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100 * self.done / self.total if self.total else 100
        line = (f"[{self.name}] {self.done}/{self.total} {pct:3.0f}% {rate:5.1f}/s "
                f"ETA {_fmt_s(eta)} {note[:60]}")
        if self.tty:
            self.stream.write("\r" + line.ljust(110))
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _fmt_s(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes else f"{sec}s"
