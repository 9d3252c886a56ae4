"""Tables for the CLI's reports, drawn by ``rich``; off a terminal they are plain, uncoloured
columns, wide enough never to wrap, so that scripts can read them."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console = Console(file=sys.stdout, highlight=False, width=10_000, no_color=True)
    table = Table(*columns, box=box.SIMPLE if console.is_terminal else None, pad_edge=False)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    console.print(table, markup=False)
