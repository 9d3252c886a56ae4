"""Dependency-free progress lines with rate and ETA, on stderr, one line per campaign.

Campaigns on several devices run in parallel threads; their bars share one ``_Board``
per stream. On a terminal the board redraws its block of lines in place (log messages
go above it through ``ProgressLogHandler``); otherwise every update is one plain line.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
import weakref
from typing import TextIO


class _Board:
    """The progress lines of every campaign writing to one stream."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.rows: list[Progress] = []
        self.drawn = 0  # lines of the block currently on screen (terminal only)
        self.lock = threading.RLock()

    def add(self, row: Progress) -> None:
        with self.lock:
            self.rows.append(row)

    def show(self, row: Progress) -> None:
        with self.lock:
            if self.tty:
                self._redraw()
            else:
                self.stream.write(row.line + "\n")
            self.stream.flush()

    def close(self, row: Progress) -> None:
        """Once every row is closed the block is left on screen as it is and forgotten."""
        with self.lock:
            row.closed = True
            if all(r.closed for r in self.rows):
                self.rows.clear()
                self.drawn = 0

    def write_above(self, text: str) -> None:
        with self.lock:
            if self.tty and self.drawn:
                self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # to the block's top, clear below
                self.drawn = 0
            self.stream.write(text + "\n")
            if self.tty and self.rows:
                self._redraw()
            self.stream.flush()

    def _redraw(self) -> None:
        width = max(shutil.get_terminal_size().columns - 1, 20)  # a wrapped line breaks the block
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.stream.write(up + "".join(r.line[:width] + "\x1b[K\n" for r in self.rows))
        self.drawn = len(self.rows)


_BOARDS: weakref.WeakKeyDictionary[TextIO, _Board] = weakref.WeakKeyDictionary()
_BOARDS_LOCK = threading.Lock()


def _board(stream: TextIO) -> _Board:
    with _BOARDS_LOCK:
        if stream not in _BOARDS:
            _BOARDS[stream] = _Board(stream)
        return _BOARDS[stream]


class Progress:
    """``[name] 12/100 12% 3.1/s ETA 28s  last-item``; one line per update when not a terminal."""

    def __init__(
        self, total: int, name: str = "", stream: TextIO | None = None, min_interval_s: float = 0.2
    ) -> None:
        self.total = total
        self.name = name
        self.done = 0
        self.closed = False
        self.board = _board(stream if stream is not None else sys.stderr)
        self.start = time.monotonic()
        self.min_interval_s = min_interval_s if self.board.tty else 2.0
        self._last = 0.0
        self.line = f"[{name}] 0/{total}"
        self.board.add(self)

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
        self.line = (
            f"[{self.name}] {self.done}/{self.total} {pct:3.0f}% {rate:5.1f}/s ETA {_fmt_s(eta)} {note[:60]}"
        )
        self.board.show(self)

    def close(self) -> None:
        self.board.close(self)


class ProgressLogHandler(logging.StreamHandler):
    """Writes log records above the progress block instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _board(self.stream).write_above(self.format(record))
        except Exception:
            self.handleError(record)


def _fmt_s(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes else f"{sec}s"
