"""Latency lookup-table files: the ProxylessNAS/OFA YAML, CSV and JSON.

The ``ofa-yaml`` format is what ProxylessNAS's ``LatencyEstimator`` and OFA's
``LatencyTable`` load with ``yaml.load``: one top-level key per block, like
``expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0``,
mapping to ``count``, ``mean`` and ``std`` (milliseconds; they read ``mean``). hwlat writes
and reads that small subset of YAML itself (no PyYAML dependency): block mappings of
scalars, optional quotes around keys, ``#`` comments, and one-line ``{mean: .., std: ..}``
mappings on import.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hwlat.errors import HwlatError

FORMATS = ("ofa-yaml", "csv", "json")
_EXTENSIONS = {".yaml": "ofa-yaml", ".yml": "ofa-yaml", ".csv": "csv", ".json": "json"}
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:x+~|\-]*$")


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
    lines = ["# latency lookup table, milliseconds (hwlat)"]
    lines += [f"# {name}: {value}" for name, value in (header or {}).items()]
    for e in entries:
        key = e.key if _PLAIN_KEY.match(e.key) else json.dumps(e.key)
        lines += [
            f"{key}:",
            f"  count: {e.count}",
            f"  mean: {_number(e.mean_ms)}",
            f"  std: {_number(e.std_ms)}",
        ]
    return "\n".join(lines) + "\n"


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


def parse_ofa_yaml(text: str, source: str = "<table>") -> list[TableEntry]:
    entries: list[TableEntry] = []
    key: str | None = None
    fields: dict[str, str] = {}
    key_line = 0

    def close() -> None:
        if key is not None:
            entries.append(_entry(key, fields, f"{source}:{key_line}"))

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        if not line[0].isspace():
            close()
            key_text, value = _split_mapping(line, f"{source}:{lineno}")
            key, fields, key_line = key_text, {}, lineno
            if value:
                if not (value.startswith("{") and value.endswith("}")):
                    raise TableFormatError(
                        f"{source}:{lineno}: {key!r} must map to count/mean/std, got {value!r}"
                    )
                for item in value[1:-1].split(","):
                    name, item_value = _split_mapping(item.strip(), f"{source}:{lineno}")
                    fields[name] = item_value
        else:
            if key is None:
                raise TableFormatError(f"{source}:{lineno}: indented line before any key")
            name, value = _split_mapping(line.strip(), f"{source}:{lineno}")
            fields[name] = value
    close()
    return entries


def _strip_comment(line: str) -> str:
    """Drop a ``#`` comment (at the line start or after a space, as YAML does) outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _split_mapping(text: str, where: str) -> tuple[str, str]:
    """``name: value`` or ``name:`` -> (name, value). Plain keys hold ``:`` but never ``": "``;
    a quoted key may hold anything."""
    if text[:1] in "'\"":
        name, end = _quoted(text, where)
        rest = text[end:].lstrip()
        if not rest.startswith(":"):
            raise TableFormatError(f"{where}: expected ':' after the quoted key {name!r}")
        return name, rest[1:].strip()
    if text.endswith(":") and ": " not in text:
        return text[:-1].strip(), ""
    name, sep, value = text.partition(": ")
    if not sep:
        raise TableFormatError(f"{where}: expected 'name: value' or 'key:', got {text!r}")
    return name.strip(), value.strip()


def _quoted(text: str, where: str) -> tuple[str, int]:
    """Decode a leading YAML-quoted scalar; returns it and the index after its closing quote."""
    if text[0] == '"':
        try:
            return json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            raise TableFormatError(f"{where}: unterminated double-quoted key in {text!r}") from None
    i = 1
    while True:
        i = text.find("'", i)
        if i < 0:
            raise TableFormatError(f"{where}: unterminated single-quoted key in {text!r}")
        if text[i + 1 : i + 2] != "'":
            return text[1:i].replace("''", "'"), i + 1
        i += 2


def _entry(key: str, fields: dict, where: str) -> TableEntry:
    unknown = sorted(set(fields) - {"mean", "std", "count"})
    if unknown:
        raise TableFormatError(f"{where}: {key!r} has unknown fields {unknown}; expected mean, std, count")
    if "mean" not in fields:
        raise TableFormatError(f"{where}: {key!r} has no 'mean' (the latency in ms)")
    try:
        mean = float(fields["mean"])
        std = float(fields.get("std", 0.0))
        count = int(float(fields.get("count", 1)))
    except (TypeError, ValueError):
        raise TableFormatError(
            f"{where}: {key!r}: mean, std and count must be numbers, got {fields}"
        ) from None
    if not math.isfinite(mean) or mean < 0 or not math.isfinite(std) or std < 0:
        raise TableFormatError(f"{where}: {key!r}: mean and std must be finite and >= 0, got {fields}")
    return TableEntry(key, mean, std, count)


def _parse_csv(text: str, source: str) -> list[TableEntry]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"key", "mean_ms"} <= set(reader.fieldnames):
        raise TableFormatError(
            f"{source}: a CSV table needs the columns key and mean_ms "
            f"(std_ms and count optional); found {reader.fieldnames}"
        )
    entries = []
    for row in reader:
        fields = {"mean": row["mean_ms"]}
        if row.get("std_ms"):
            fields["std"] = row["std_ms"]
        if row.get("count"):
            fields["count"] = row["count"]
        entries.append(_entry(row["key"], fields, f"{source}:{reader.line_num}"))
    return entries


def _parse_json(text: str, source: str) -> list[TableEntry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableFormatError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
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
