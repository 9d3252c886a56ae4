"""Latency lookup tables: export from the store, the ProxylessNAS/OFA YAML, import."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from hwlat.cli import main
from hwlat.predictors.formats.lut_files import (
    TableEntry,
    TableFormatError,
    format_ofa_yaml,
    parse_ofa_yaml,
    read_table,
    write_table,
)
from hwlat.predictors.formats.lut_store import import_table, table_from_store
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.store import Store
from hwlat.search.spaces import get_space

# Written by hand in the format of ProxylessNAS's mobile_trim.yaml (keys in the space's order).
HAND_WRITTEN = """\
Conv-input:224x224x3-output:112x112x32:
  count: 50
  mean: 1.8345
  std: 0.0212
expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0:
  count: 50
  mean: 1.2
  std: 0.05
expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0:
  count: 50
  mean: 3.9175
  std: 0.1
expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:7-stride:1-idskip:1:
  count: 48
  mean: 4.25
  std: 0.0
Logits-input:7x7x1280-output:1000:
  count: 50
  mean: 0.765
  std: 0.003
"""


def _store_all_ops(store: Store, space, device: str) -> dict[str, Measurement]:
    """A real row per unique op, with known samples (what ``hwlat profile`` would have stored)."""
    rows = {}
    for i, op in enumerate(space.unique_ops()):
        base = 0.01 * (1 + i % 17)
        m = Measurement(
            device=device,
            backend="ort",
            key=op.key,
            samples_ms=[base, base * 1.02, base * 0.99, base * 1.01, base * 1.03],
        )
        store.save(m)
        rows[op.key] = m
    return rows


def test_hand_written_ofa_yaml_imports_and_exports_back_identically(tmp_path):
    yaml = pytest.importorskip("yaml")
    source, out, db = tmp_path / "mobile_trim.yaml", tmp_path / "out.yaml", tmp_path / "m.db"
    source.write_text(HAND_WRITTEN)
    assert (
        main(["table", "import", str(source), "--device", "pixel1", "--db", str(db), "--space", "proxyless"])
        == 0
    )
    # Only the imported blocks exist for pixel1, so the other cells are reported missing (exit 1).
    assert (
        main(
            [
                "table",
                "export",
                "--space",
                "proxyless",
                "--device",
                "pixel1",
                "--format",
                "ofa-yaml",
                "-o",
                str(out),
                "--db",
                str(db),
            ]
        )
        == 1
    )
    text = out.read_text()
    assert [line for line in text.splitlines() if not line.startswith("#")] == HAND_WRITTEN.splitlines()
    assert yaml.safe_load(text) == yaml.safe_load(HAND_WRITTEN)


def test_export_sums_the_ops_of_every_cell(tmp_path):
    yaml = pytest.importorskip("yaml")
    space = get_space("proxyless")
    with Store(tmp_path / "m.db") as store:
        rows = _store_all_ops(store, space, "local")
        build = table_from_store(space, store, "local", "ort")
    assert not build.missing and build.from_blocks == 0
    entries = {e.key: e for e in build.entries}
    assert set(entries) == set(space.cell_keys()) - {""}
    for cell, key in zip(space.cells()[1:], space.cell_keys()[1:], strict=True):
        members = [rows[op.key] for op in cell]
        assert entries[key].mean_ms == pytest.approx(sum(m.median_ms for m in members))
        assert entries[key].std_ms == pytest.approx(
            math.sqrt(sum(statistics.pvariance(m.samples_ms) for m in members))
        )
        assert entries[key].count == 5
    # Every sampled architecture finds each of its blocks in the table.
    rng = np.random.default_rng(0)
    keys = space.cell_keys()
    for arch in (space.sample(rng) for _ in range(200)):
        assert all(keys[i] in entries for i in space.cell_indices(arch) if i)
    path = tmp_path / "table.yaml"
    write_table(build.entries, path, "ofa-yaml", {"space": "proxyless"})
    loaded = yaml.safe_load(path.read_text())
    assert set(loaded) == set(entries)
    assert all(loaded[k]["mean"] == entries[k].mean_ms for k in loaded)  # written exactly (repr)


@pytest.mark.parametrize("fmt,suffix", [("csv", ".csv"), ("json", ".json"), ("ofa-yaml", ".yml")])
def test_every_format_round_trips(tmp_path, fmt, suffix):
    entries = [
        TableEntry("Conv-input:224x224x3-output:112x112x32", 1.25, 0.01, 9),
        TableEntry('odd key, with "quotes": and spaces', 0.1 + 0.2, 0.0, 1),
    ]
    path = tmp_path / f"table{suffix}"
    write_table(entries, path, fmt, {"device": "local"})
    assert read_table(path) == entries


def test_yaml_variants_the_ofa_loader_accepts_are_read():
    text = """# a comment
---
'quoted-key:1': {mean: 2.5, std: 0.5, count: 3}
plain-input:7x7x3-output:1000:   # trailing comment
  mean: 1e-3
"""
    assert parse_ofa_yaml(text) == [
        TableEntry("quoted-key:1", 2.5, 0.5, 3),
        TableEntry("plain-input:7x7x3-output:1000", 0.001, 0.0, 1),
    ]
    assert parse_ofa_yaml(format_ofa_yaml(parse_ofa_yaml(text))) == parse_ofa_yaml(text)


@pytest.mark.parametrize(
    "text,message",
    [
        ("key-a:\n  std: 0.1\n", "t.yaml:1: 'key-a' has no 'mean'"),
        ("key-a:\n  mean: fast\n", "must be numbers"),
        ("key-a:\n  mean: 1.0\n  median: 1.0\n", "unknown fields"),
        ("  mean: 1.0\n", "t.yaml:1: 'mean' must map to count/mean/std"),
        ("key-a: 1.0\n", "must map to count/mean/std"),
        ("key-a:\n  mean: -1\n", "finite and >= 0"),
    ],
)
def test_bad_yaml_is_refused_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(TableFormatError, match=message):
        read_table(path)


def test_bad_csv_json_and_extension_are_refused(tmp_path):
    (tmp_path / "t.csv").write_text("name,latency\nx,1\n")
    with pytest.raises(TableFormatError, match="columns key and mean_ms"):
        read_table(tmp_path / "t.csv")
    (tmp_path / "t.json").write_text('{"Conv": {"mean": 1}}')
    with pytest.raises(TableFormatError, match="'entries' object"):
        read_table(tmp_path / "t.json")
    (tmp_path / "t.txt").write_text("")
    with pytest.raises(TableFormatError, match="from its extension"):
        read_table(tmp_path / "t.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "missing.yaml")


def test_imported_blocks_take_precedence_over_measured_ops(tmp_path):
    space = get_space("proxyless")
    stem = space.cell_keys()[1]
    with Store(tmp_path / "m.db") as store:
        _store_all_ops(store, space, "local")
        import_table([TableEntry(stem, 42.0, 1.0, 7)], store, "local", "ort", source="phone.yaml")
        build = table_from_store(space, store, "local", "ort")
    assert build.from_blocks == 1
    assert next(e for e in build.entries if e.key == stem) == TableEntry(stem, 42.0, 1.0, 7)


@pytest.mark.slow  # 35 real op measurements: ~20 s on a quiet machine, 2 min on a busy one
def test_profile_then_export_end_to_end(tmp_path, capsys):
    """``hwlat profile --space`` measures for real; the exported table then has every cell."""
    db, out = str(tmp_path / "m.db"), tmp_path / "nb201.csv"
    assert main(["profile", "--space", "nb201", "--quick", "--no-progress", "--db", db]) == 0
    assert "35 measured" in capsys.readouterr().out
    assert main(["table", "export", "--space", "nb201", "--format", "csv", "-o", str(out), "--db", db]) == 0
    entries = read_table(out)
    assert len(entries) == len(get_space("nb201").cells()) - 1
    assert all(e.mean_ms > 0 for e in entries)


def test_a_key_given_twice_is_reported_with_both_lines(tmp_path):
    doubled = HAND_WRITTEN + "Conv-input:224x224x3-output:112x112x32:\n  count: 1\n  mean: 9.0\n  std: 0.0\n"
    with pytest.raises(TableFormatError, match=r"line 21: key .* given twice \(first on line 1\)"):
        parse_ofa_yaml(doubled, "t.yaml")
