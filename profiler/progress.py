"""Progress bars with rates and ETAs, one per campaign, drawn by ``rich``.

Campaigns on several devices run in parallel threads; their bars share one live display
per stream, and log records go above it (``ProgressLogHandler``). When the stream is not a
terminal (CI logs, a pipe), each bar writes plain lines instead, at most one every
``PLAIN_INTERVAL_S`` and always the last one, so that a log file shows progress too.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

PLAIN_INTERVAL_S = 2.0


class _RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:5.1f}/s" if task.speed else "    ?/s")


class _Board:
    """The bars of every campaign writing to one stream; live only while one is open."""

    def __init__(self, stream: TextIO) -> None:
        self.console = Console(file=stream, highlight=False)
        self.live = self.console.is_terminal
        self.rich = RichProgress(
            TextColumn("[{task.description}]", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            _RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=self.console,
            transient=False,
        )
        self.open = 0
        self.lock = threading.RLock()

    def add(self, name: str, total: int) -> int:
        with self.lock:
            if self.open == 0:
                self.rich.start()
            self.open += 1
            return self.rich.add_task(name, total=total, note="")

    def close(self, task: int) -> None:
        with self.lock:
            self.rich.refresh()
            self.open -= 1
            if self.open == 0:
                self.rich.stop()
                for old in list(self.rich.task_ids):
                    self.rich.remove_task(old)

    def write_above(self, text: str) -> None:
        with self.lock:
            if self.live and self.open:
                self.console.print(text, markup=False, highlight=False)
            else:
                self.console.file.write(text + "\n")
                self.console.file.flush()


_BOARDS: weakref.WeakKeyDictionary[TextIO, _Board] = weakref.WeakKeyDictionary()
_BOARDS_LOCK = threading.Lock()


def _board(stream: TextIO) -> _Board:
    with _BOARDS_LOCK:
        if stream not in _BOARDS:
            _BOARDS[stream] = _Board(stream)
        return _BOARDS[stream]


class Progress:
    """``[name] 12/100 12% 3.1/s ETA 0:00:28  last-item``: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, name: str = "", stream: TextIO | None = None) -> None:
        self.total = total
        self.name = name
        self.done = 0
        self.board = _board(stream if stream is not None else sys.stderr)
        self.start = time.monotonic()
        self._last_line = 0.0
        self._task = self.board.add(name, total) if self.board.live else None

    def update(self, step: int = 1, note: str = "") -> None:
        self.done += step
        if self._task is not None:
            self.board.rich.update(self._task, advance=step, note=note[:60])
            return
        now = time.monotonic()
        if now - self._last_line < PLAIN_INTERVAL_S and self.done < self.total:
            return
        self._last_line = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0.5 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100 * self.done / self.total if self.total else 100
        self.board.write_above(
            f"[{self.name}] {self.done}/{self.total} {pct:3.0f}% {rate:5.1f}/s ETA {_fmt_s(eta)} {note[:60]}"
        )

    def close(self) -> None:
        if self._task is not None:
            self.board.close(self._task)
            self._task = None


class ProgressLogHandler(logging.StreamHandler):
    """Writes log records above the live bars instead of through them."""

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
