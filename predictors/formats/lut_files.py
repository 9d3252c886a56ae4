"""Latency lookup-table files: the ProxylessNAS/OFA YAML, CSV and JSON.

The ``ofa-yaml`` format is what ProxylessNAS's ``LatencyEstimator`` and OFA's
``LatencyTable`` load with ``yaml.load``: one top-level key per block, like
``expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0``,
mapping to ``count``, ``mean`` and ``std`` (milliseconds; they read ``mean``). PyYAML reads
and writes it; a key given twice is an error naming both lines (YAML itself keeps the last).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from hwlat.errors import HwlatError
from hwlat.profiler.opspec import OP_TYPES, InvalidOpSpecError, OpSpec

FORMATS = ("ofa-yaml", "csv", "json")
_EXTENSIONS = {".yaml": "ofa-yaml", ".yml": "ofa-yaml", ".csv": "csv", ".json": "json"}


class TableFormatError(HwlatError):
    """A lookup-table file that cannot be read (the message names the file and line)."""


@dataclass(frozen=True)
class TableEntry:
    """One block of a lookup table: its latency mean and spread (ms) and how many runs."""

    key: str
    mean_ms: float
    std_ms: float = 0.0
    count: int = 1


def format_for(path: str | Path, fmt: str | None = None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise TableFormatError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise TableFormatError(
            f"cannot tell the format of {path} from its extension; use .yaml, "
            f".csv or .json, or pass --format ({', '.join(FORMATS)})"
        )
    return _EXTENSIONS[suffix]


# ----- writing ----------------------------------------------------------------
def write_table(entries: Iterable[TableEntry], path: str | Path, fmt: str, header: dict | None = None) -> int:
    """Write entries in ``fmt``; ``header`` (space, device, backend...) goes into a comment or
    the JSON object. Returns the number of entries."""
    entries = list(entries)
    text = {"ofa-yaml": format_ofa_yaml, "csv": _format_csv, "json": _format_json}[format_for(path, fmt)](
        entries, header or {}
    )
    Path(path).write_text(text, encoding="utf-8")
    return len(entries)


def format_ofa_yaml(entries: Iterable[TableEntry], header: dict | None = None) -> str:
    comments = ["# latency lookup table, milliseconds (hwlat)"]
    comments += [f"# {name}: {value}" for name, value in (header or {}).items()]
    body = {e.key: {"count": e.count, "mean": float(e.mean_ms), "std": float(e.std_ms)} for e in entries}
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=1 << 20) if body else ""
    return "\n".join(comments) + "\n" + text


def _format_csv(entries: list[TableEntry], header: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "mean_ms", "std_ms", "count"])
    for e in entries:
        writer.writerow([e.key, _number(e.mean_ms), _number(e.std_ms), e.count])
    return out.getvalue()


def _format_json(entries: list[TableEntry], header: dict) -> str:
    body = {e.key: {"mean": e.mean_ms, "std": e.std_ms, "count": e.count} for e in entries}
    return json.dumps({**header, "unit": "ms", "entries": body}, indent=1) + "\n"


def _number(value: float) -> str:
    return repr(float(value))


# ----- reading ----------------------------------------------------------------
def read_table(path: str | Path, fmt: str | None = None) -> list[TableEntry]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"lookup table {path} does not exist")
    fmt = format_for(path, fmt)
    text = path.read_text(encoding="utf-8")
    if fmt == "ofa-yaml":
        return parse_ofa_yaml(text, str(path))
    if fmt == "csv":
        return _parse_csv(text, str(path))
    return _parse_json(text, str(path))


class _TableLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise TableFormatError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} is given twice "
                    f"(first on line {seen[key] + 1})",
                    "keep one of them",
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_ofa_yaml(text: str, source: str = "<table>") -> list[TableEntry]:
    try:
        root = yaml.compose(text, Loader=_TableLoader)
        data = _TableLoader(text).get_single_data() if root is not None else {}
    except TableFormatError as exc:
        raise TableFormatError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise TableFormatError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise TableFormatError(f"{source}: not readable YAML (nested too deep)") from None
    if not isinstance(data, dict):
        raise TableFormatError(f"{source}: a table maps each block key to count/mean/std")
    lines = {n.value: n.start_mark.line + 1 for n, _ in root.value} if root is not None else {}
    entries = []
    for key, fields in data.items():
        where = f"{source}:{lines[str(key)]}" if str(key) in lines else source
        if not isinstance(fields, dict):
            raise TableFormatError(f"{where}: {key!r} must map to count/mean/std, got {fields!r}")
        entries.append(_entry(key, fields, where))
    return entries


MAX_KEY_CHARS = 1000
# Stored in an INTEGER column, 32 bits on PostgreSQL.
MAX_COUNT = 2**31 - 1


def _check_key(key: object, where: str) -> str:
    """A block key is any printable text (it is a primary key); hwlat's own op keys must parse."""
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= MAX_KEY_CHARS
        or not key.isprintable()
        or key != key.strip()
    ):
        raise TableFormatError(
            f"{where}: {key!r} is not a block key",
            f"keys are printable text of 1 to {MAX_KEY_CHARS} characters without spaces at either end",
        )
    op = key.split("-", 1)[0]
    if op in OP_TYPES and key.startswith(f"{op}-in:"):
        try:
            OpSpec.from_key(key)
        except InvalidOpSpecError as exc:
            raise TableFormatError(f"{where}: {exc}", "fix the key or leave the entry out") from None
    return key


def _number(value: object) -> float | None:
    """A float from a number or numeric text (inf and nan included); None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _entry(key: object, fields: dict, where: str) -> TableEntry:
    key = _check_key(key, where)
    unknown = sorted(set(fields) - {"mean", "std", "count"})
    if unknown:
        raise TableFormatError(f"{where}: {key!r} has unknown fields {unknown}; expected mean, std, count")
    if "mean" not in fields:
        raise TableFormatError(f"{where}: {key!r} has no 'mean' (the latency in ms)")
    mean, std, count = (
        _number(fields.get(name, default)) for name, default in (("mean", 0), ("std", 0), ("count", 1))
    )
    if mean is None or std is None or count is None:
        raise TableFormatError(f"{where}: {key!r}: mean, std and count must be numbers, got {fields}")
    if not (0 <= mean < math.inf and 0 <= std < math.inf):
        raise TableFormatError(
            f"{where}: {key!r}: mean and std must be finite and >= 0, got {fields}",
            "give milliseconds as plain numbers",
        )
    if not (1 <= count <= MAX_COUNT and count.is_integer()):
        raise TableFormatError(
            f"{where}: {key!r}: count must be a whole number from 1 to {MAX_COUNT}, got {fields['count']!r}",
            "give how many runs the mean is over",
        )
    return TableEntry(key, mean, std, int(count))


def _refuse_duplicate(key: str, where: str, first: str) -> None:
    raise TableFormatError(
        f"{where}: key {key!r} is given twice (first on {first})", "keep one of them; nothing was imported"
    )


def _parse_csv(text: str, source: str) -> list[TableEntry]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"key", "mean_ms"} <= set(reader.fieldnames):
        raise TableFormatError(
            f"{source}: a CSV table needs the columns key and mean_ms "
            f"(std_ms and count optional); found {reader.fieldnames}"
        )
    entries, first_line = [], {}
    for row in reader:
        fields = {"mean": row["mean_ms"]}
        if row.get("std_ms"):
            fields["std"] = row["std_ms"]
        if row.get("count"):
            fields["count"] = row["count"]
        where = f"{source}:{reader.line_num}"
        entry = _entry(row["key"], fields, where)
        if entry.key in first_line:
            _refuse_duplicate(entry.key, where, f"line {first_line[entry.key]}")
        first_line[entry.key] = reader.line_num
        entries.append(entry)
    return entries


def _parse_json(text: str, source: str) -> list[TableEntry]:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                lines = [n for n, line in enumerate(text.splitlines(), 1) if json.dumps(key) in line]
                where = f"{source}:{lines[-1]}" if len(lines) > 1 else source
                _refuse_duplicate(key, where, f"line {lines[0]}" if len(lines) > 1 else "an earlier line")
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise TableFormatError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:  # a number of thousands of digits, or nested too deep
        raise TableFormatError(f"{source}: not readable JSON ({str(exc).split(':')[0]})") from None
    body = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(body, dict):
        raise TableFormatError(
            f"{source}: a JSON table is an object with an 'entries' object "
            "mapping keys to {mean, std, count}"
        )
    entries = []
    for key, value in body.items():
        if not isinstance(value, dict):
            raise TableFormatError(f"{source}: entry {key!r} must be an object, got {value!r}")
        entries.append(_entry(key, value, source))
    return entries
